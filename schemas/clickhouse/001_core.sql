-- Core tables of the vertical slice. Every statement is idempotent (IF NOT EXISTS).

-- Raw, validated events: one row per event. Source offsets are kept so a sink
-- batch can be traced back to (and de-duplicated against) its Kafka position.
CREATE TABLE IF NOT EXISTS events
(
    event_id      String,
    type          LowCardinality(String),
    source        LowCardinality(String),
    account_id    String,
    contact_id    String,
    email         String,
    campaign_id   String,
    url           String,
    content_id    String,
    occurred_at   DateTime64(3, 'UTC'),
    received_at   DateTime64(3, 'UTC'),
    properties    String,
    src_partition UInt16,
    src_offset    UInt64,
    src_index     UInt32
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Latest state per account; every checkpoint appends the accounts it changed and
-- the highest version wins (query with FINAL, or through the views).
CREATE TABLE IF NOT EXISTS account_scores
(
    account_id            String,
    engagement_score      Float64,
    score_at              DateTime64(3, 'UTC'),
    stage                 LowCardinality(String),
    stage_since           DateTime64(3, 'UTC'),
    events_total          UInt64,
    email_opens           UInt64,
    email_clicks          UInt64,
    page_views            UInt64,
    webinar_signups       UInt64,
    engaged_contacts_90d  UInt32,
    first_event_at        DateTime64(3, 'UTC'),
    last_event_at         DateTime64(3, 'UTC'),
    updated_at            DateTime64(3, 'UTC'),
    version               UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY account_id;

-- Every funnel-stage change, at the event time that caused it.
CREATE TABLE IF NOT EXISTS stage_transitions
(
    account_id  String,
    from_stage  LowCardinality(String),
    to_stage    LowCardinality(String),
    at          DateTime64(3, 'UTC'),
    score       Float64,
    event_id    String
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, at, to_stage, from_stage);

CREATE VIEW IF NOT EXISTS account_scores_latest AS
SELECT * FROM account_scores FINAL;
