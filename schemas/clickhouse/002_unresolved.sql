-- Events that could not be attributed to an account yet, kept with what would resolve
-- them, and the record of each one's later resolution. Every statement is idempotent.

-- One row per unresolved event (a source's retry collapses under FINAL). `event` is the
-- canonical event as JSON, re-routed as it was once its domain becomes known.
CREATE TABLE IF NOT EXISTS unresolved_events
(
    event_id       String,
    source         LowCardinality(String),
    type           LowCardinality(String),
    waiting_on     String,  -- what would resolve it: a registrable domain, or contact:id:... / contact:email:...; '' when nothing can
    contact_id     String,
    email          String,
    account_domain String,
    occurred_at    DateTime64(3, 'UTC'),
    received_at    DateTime64(3, 'UTC'),
    event          String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (waiting_on, source, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- An unresolved event resolved later, when the account directory learned its domain.
CREATE TABLE IF NOT EXISTS unresolved_resolutions
(
    event_id    String,
    source      LowCardinality(String),
    waiting_on  String,
    account_id  String,
    resolved_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (waiting_on, source, event_id);

-- What still waits: BI and on-call look here; the worker re-resolves from here.
CREATE VIEW IF NOT EXISTS unresolved_pending AS
SELECT *
FROM unresolved_events FINAL
WHERE (waiting_on, source, event_id) NOT IN (SELECT waiting_on, source, event_id FROM unresolved_resolutions);
