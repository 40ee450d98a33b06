-- The analytics layer: dead letters, fact tables fed from `events` by materialized
-- views, and the BI views of README.md ("BI views"). Every statement is idempotent.
--
-- Materialized views fire on every insert into their source table. The sink inserts
-- with an insert_deduplication_token and deduplicate_blocks_in_dependent_materialized_views=1,
-- and every target table keeps a deduplication window: a retried insert (same token)
-- is dropped by the source table and by every view it feeds, so nothing doubles.
--
-- A contact is its contact_id, else its email ("contact key"). Engagement means an
-- action of a person: opens (machine opens excluded), clicks, page views, webinars,
-- forms, downloads, meetings, ad clicks and NPS answers; sends, deliveries, bounces,
-- ad impressions and CRM updates are not engagement.

-- Messages that failed validation: the reason and the original bytes. One row per
-- source position (a redelivered dead letter collapses under FINAL).
CREATE TABLE IF NOT EXISTS dead_letters
(
    topic      LowCardinality(String),
    partition  UInt32,
    offset     UInt64,
    at         DateTime64(3, 'UTC'),  -- the Kafka timestamp of the rejected message
    reason     LowCardinality(String),
    message    String,
    key        String,
    payload    String
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, partition, offset)
SETTINGS non_replicated_deduplication_window = 1000;

-- Every version of every account's score and stage (account_scores keeps the latest).
CREATE TABLE IF NOT EXISTS account_score_history
(
    account_id            String,
    version               UInt64,
    engagement_score      Float64,
    score_at              DateTime64(3, 'UTC'),
    stage                 LowCardinality(String),
    engaged_contacts_90d  UInt32,
    events_total          UInt64,
    updated_at            DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, version)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS account_score_history_mv TO account_score_history AS
SELECT account_id, version, engagement_score, score_at, stage, engaged_contacts_90d, events_total, updated_at
FROM account_scores;

-- Engagement per account, day and event type: events, distinct contacts, and each
-- contact's first engagement that day (merged over days: when a contact first engaged).
CREATE TABLE IF NOT EXISTS account_daily_engagement
(
    account_id      String,
    day             Date,
    type            LowCardinality(String),
    events          SimpleAggregateFunction(sum, UInt64),
    contacts        AggregateFunction(uniqExact, Nullable(String)),
    contacts_first  AggregateFunction(minMap, Array(String), Array(DateTime64(3, 'UTC')))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (account_id, day, type)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS account_daily_engagement_mv TO account_daily_engagement AS
SELECT account_id, toDate(occurred_at) AS day, type, count() AS events,
       uniqExactState(nullIf(contact_key, '')) AS contacts,
       minMapState(if(contact_key != '', [contact_key], []), if(contact_key != '', [occurred_at], [])) AS contacts_first
FROM
(
    SELECT account_id, type, occurred_at, if(contact_id != '', contact_id, email) AS contact_key
    FROM events
    WHERE type IN ('email_open', 'email_click', 'page_view', 'webinar_signup', 'webinar_attended', 'form_submitted',
                   'content_downloaded', 'meeting_booked', 'ad_click', 'nps_response')
      AND NOT (type = 'email_open' AND JSONExtractBool(properties, 'machine_open'))
)
GROUP BY account_id, day, type;

-- Email and ad campaign facts, one row per event.
CREATE TABLE IF NOT EXISTS campaign_facts
(
    campaign_id   String,
    type          LowCardinality(String),
    occurred_at   DateTime64(3, 'UTC'),
    account_id    String,
    contact_key   String,
    url           String,
    machine_open  UInt8,
    bounce_type   LowCardinality(String),
    source        LowCardinality(String),
    event_id      String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (campaign_id, type, occurred_at)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS campaign_facts_mv TO campaign_facts AS
SELECT campaign_id, type, occurred_at, account_id, if(contact_id != '', contact_id, email) AS contact_key, url,
       JSONExtractBool(properties, 'machine_open') AS machine_open, JSONExtractString(properties, 'bounce_type') AS bounce_type,
       source, event_id
FROM events
WHERE type IN ('email_sent', 'email_delivered', 'email_bounced', 'email_open', 'email_click', 'ad_impression', 'ad_click');

-- Every change of a CRM opportunity (the `opportunities` view has the latest).
CREATE TABLE IF NOT EXISTS opportunity_updates
(
    opportunity_id  String,
    account_id      String,
    occurred_at     DateTime64(3, 'UTC'),
    stage           LowCardinality(String),
    amount          Nullable(Float64),
    currency        LowCardinality(String),
    is_closed       UInt8,
    is_won          UInt8,
    source          LowCardinality(String),
    event_id        String
)
ENGINE = MergeTree
ORDER BY (opportunity_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS opportunity_updates_mv TO opportunity_updates AS
SELECT JSONExtractString(properties, 'opportunity_id') AS opportunity_id, account_id, occurred_at,
       JSONExtractString(properties, 'stage') AS stage,
       if(JSONHas(properties, 'amount'), JSONExtractFloat(properties, 'amount'), NULL) AS amount,
       JSONExtractString(properties, 'currency') AS currency,
       JSONExtractBool(properties, 'is_closed') AS is_closed,
       JSONExtractBool(properties, 'is_closed') AND JSONExtractBool(properties, 'is_won') AS is_won,
       source, event_id
FROM events
WHERE type = 'opportunity_stage_changed';

-- Net-promoter answers.
CREATE TABLE IF NOT EXISTS nps_responses
(
    account_id   String,
    contact_key  String,
    occurred_at  DateTime64(3, 'UTC'),
    score        UInt8,
    comment      String,
    source       LowCardinality(String),
    event_id     String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (account_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS nps_responses_mv TO nps_responses AS
SELECT account_id, if(contact_id != '', contact_id, email) AS contact_key, occurred_at,
       JSONExtractUInt(properties, 'score') AS score, JSONExtractString(properties, 'comment') AS comment, source, event_id
FROM events
WHERE type = 'nps_response';

-- ------------------------------------------------------------------ BI views

-- Funnel: accounts per stage now.
CREATE VIEW IF NOT EXISTS funnel_now AS
SELECT stage, count() AS accounts
FROM account_scores FINAL
GROUP BY stage;

-- Funnel over time: per day with changes and stage (target excluded: accounts enter it
-- from the directory, not from events), accounts that entered, left, and were in it at
-- the end of that day.
CREATE VIEW IF NOT EXISTS funnel_daily AS
SELECT day, stage, entered, left,
       sum(toInt64(entered) - toInt64(left)) OVER (PARTITION BY stage ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS accounts
FROM
(
    SELECT day, stage, sum(entering) AS entered, sum(leaving) AS left
    FROM
    (
        SELECT toDate(at) AS day, to_stage AS stage, 1 AS entering, 0 AS leaving FROM stage_transitions FINAL
        UNION ALL
        SELECT toDate(at) AS day, from_stage AS stage, 0 AS entering, 1 AS leaving FROM stage_transitions FINAL
    )
    WHERE stage != 'target'
    GROUP BY day, stage
);

-- Funnel conversion: accounts that ever reached each stage (or a later one) and the
-- share of them that reached a later stage.
CREATE VIEW IF NOT EXISTS stage_conversion AS
WITH ['target', 'awareness', 'consideration', 'decision', 'customer'] AS stages
SELECT stages[rank] AS stage, countIf(max_rank >= rank) AS reached, countIf(max_rank > rank) AS advanced,
       advanced / nullIf(reached, 0) AS conversion_rate
FROM
(
    SELECT account_id, max(indexOf(stages, to_stage)) AS max_rank
    FROM stage_transitions FINAL
    GROUP BY account_id
)
ARRAY JOIN range(1, length(stages)) AS rank
GROUP BY rank
ORDER BY rank;

-- Velocity: how long accounts stayed in a stage before leaving it (from the transition
-- that entered it to the one that left it; an account's first stage has no known entry).
CREATE VIEW IF NOT EXISTS stage_velocity AS
SELECT stage, count() AS exits, avg(seconds) / 86400 AS avg_days, quantileExact(0.5)(seconds) / 86400 AS median_days
FROM
(
    SELECT from_stage AS stage, dateDiff('second', entered_at, at) AS seconds, n
    FROM
    (
        SELECT from_stage, at,
               lagInFrame(at) OVER (PARTITION BY account_id ORDER BY at, to_stage ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS entered_at,
               row_number() OVER (PARTITION BY account_id ORDER BY at, to_stage) AS n
        FROM stage_transitions FINAL
    )
    WHERE n > 1
)
GROUP BY stage;

-- Leaderboard: each account's score (as of its last event), stage, breadth (contacts
-- engaged in the 90 days before its last event) and trend (engagement events in the last
-- 7 days against the 7 before).
CREATE VIEW IF NOT EXISTS account_leaderboard AS
SELECT s.account_id AS account_id, s.engagement_score AS engagement_score, s.score_at AS score_at, s.stage AS stage,
       s.engaged_contacts_90d AS breadth, e.events_7d AS events_7d, e.events_prev_7d AS events_prev_7d,
       toInt64(e.events_7d) - toInt64(e.events_prev_7d) AS trend
FROM account_scores AS s FINAL
LEFT JOIN
(
    SELECT account_id, sumIf(events, day > today() - 7) AS events_7d,
           sumIf(events, day <= today() - 7 AND day > today() - 14) AS events_prev_7d
    FROM account_daily_engagement
    WHERE day > today() - 14
    GROUP BY account_id
) AS e ON e.account_id = s.account_id
ORDER BY engagement_score DESC, account_id;

-- Email KPIs per campaign. Opens and clicks count contacts (unique); machine opens are
-- not opens. Rates are over delivered emails; click-to-open is clicks over opens.
CREATE VIEW IF NOT EXISTS campaign_email_kpis AS
SELECT campaign_id,
       countIf(type = 'email_sent') AS sent,
       countIf(type = 'email_delivered') AS delivered,
       countIf(type = 'email_bounced') AS bounced,
       uniqExactIf(contact_key, type = 'email_open' AND machine_open = 0) AS unique_opens,
       countIf(type = 'email_open' AND machine_open = 1) AS machine_opens,
       uniqExactIf(contact_key, type = 'email_click') AS unique_clicks,
       unique_opens / nullIf(delivered, 0) AS open_rate,
       unique_clicks / nullIf(delivered, 0) AS click_through_rate,
       unique_clicks / nullIf(unique_opens, 0) AS click_to_open_rate
FROM campaign_facts
WHERE type LIKE 'email\\_%'
GROUP BY campaign_id;

-- Content engagement per asset (downloads, webinar signups and attendance).
CREATE VIEW IF NOT EXISTS content_engagement AS
SELECT content_id,
       countIf(type = 'content_downloaded') AS downloads,
       countIf(type = 'webinar_signup') AS webinar_signups,
       countIf(type = 'webinar_attended') AS webinar_attendances,
       uniqExact(nullIf(if(contact_id != '', contact_id, email), '')) AS contacts,
       uniqExact(account_id) AS accounts
FROM events
WHERE type IN ('content_downloaded', 'webinar_signup', 'webinar_attended') AND content_id != ''
GROUP BY content_id;

-- Form fills per call to action ('' = none), and conversion: the share of the contacts
-- who filled a form through it that booked a meeting at or after their first fill.
CREATE VIEW IF NOT EXISTS cta_conversions AS
SELECT cta_id, sum(fills) AS form_fills, countIf(contact_key != '') AS contacts,
       countIf(contact_key != '' AND meeting_at >= first_fill_at) AS converted, converted / nullIf(contacts, 0) AS conversion_rate
FROM
(
    SELECT JSONExtractString(properties, 'cta_id') AS cta_id, if(contact_id != '', contact_id, email) AS contact_key,
           count() AS fills, min(occurred_at) AS first_fill_at
    FROM events
    WHERE type = 'form_submitted'
    GROUP BY cta_id, contact_key
) AS f
LEFT JOIN
(
    SELECT if(contact_id != '', contact_id, email) AS contact_key, max(occurred_at) AS meeting_at
    FROM events
    WHERE type = 'meeting_booked' AND contact_key != ''
    GROUP BY contact_key
) AS m ON m.contact_key = f.contact_key
GROUP BY cta_id;

-- Meetings booked per account and week (Monday).
CREATE VIEW IF NOT EXISTS meetings_booked AS
SELECT toMonday(occurred_at) AS week, account_id, count() AS meetings,
       countIf(JSONExtractString(properties, 'meeting_type') = 'demo') AS demos,
       countIf(JSONExtractString(properties, 'meeting_type') = 'call') AS calls
FROM events
WHERE type = 'meeting_booked'
GROUP BY week, account_id;

-- The latest state of every opportunity (its last change by event time).
CREATE VIEW IF NOT EXISTS opportunities AS
SELECT opportunity_id,
       argMax(account_id, (occurred_at, event_id)) AS account_id,
       min(occurred_at) AS created_at,
       max(occurred_at) AS updated_at,
       argMax(stage, (occurred_at, event_id)) AS stage,
       argMaxIf(amount, (occurred_at, event_id), opportunity_updates.amount IS NOT NULL) AS amount,
       argMaxIf(currency, (occurred_at, event_id), opportunity_updates.amount IS NOT NULL) AS currency,
       argMax(is_closed, (occurred_at, event_id)) AS is_closed,
       argMax(is_won, (occurred_at, event_id)) AS is_won
FROM opportunity_updates
GROUP BY opportunity_id;

-- Pipeline and closed-won revenue of accounts engaged before the opportunity was
-- created (any engagement on or before its first day) against the others, per currency.
CREATE VIEW IF NOT EXISTS pipeline_by_engagement AS
SELECT engaged, currency, count() AS opportunities, coalesce(sum(amount), 0) AS pipeline,
       countIf(is_won = 1) AS won, countIf(is_closed = 1 AND is_won = 0) AS lost,
       coalesce(sumIf(amount, is_won = 1), 0) AS closed_won_revenue, won / nullIf(won + lost, 0) AS win_rate
FROM
(
    SELECT o.currency AS currency, o.amount AS amount, o.is_closed AS is_closed, o.is_won AS is_won,
           e.known = 1 AND e.first_engaged <= toDate(o.created_at) AS engaged
    FROM opportunities AS o
    LEFT JOIN
    (
        SELECT account_id, min(day) AS first_engaged, 1 AS known
        FROM account_daily_engagement
        GROUP BY account_id
    ) AS e ON e.account_id = o.account_id
)
GROUP BY engaged, currency;

-- Account health: net promoter score per account (promoters 9-10, detractors 0-6).
CREATE VIEW IF NOT EXISTS account_nps AS
SELECT account_id, count() AS responses, countIf(score >= 9) AS promoters, countIf(score BETWEEN 7 AND 8) AS passives,
       countIf(score <= 6) AS detractors, 100 * (toInt64(promoters) - toInt64(detractors)) / responses AS nps, max(occurred_at) AS last_response_at
FROM nps_responses
GROUP BY account_id;

-- Customer retention per month: customers are accounts with a closed-won opportunity
-- (from the month it was won); one is retained in a month when any of its contacts engaged.
CREATE VIEW IF NOT EXISTS customer_retention AS
SELECT month, count() AS customers, countIf(active) AS retained, retained / customers AS retention_rate
FROM
(
    SELECT account_id, month,
           (account_id, month) IN (SELECT account_id, toStartOfMonth(day) FROM account_daily_engagement) AS active
    FROM
    (
        SELECT account_id, toStartOfMonth(min(updated_at)) AS since
        FROM opportunities
        WHERE is_won = 1
        GROUP BY account_id
    )
    ARRAY JOIN arrayMap(i -> addMonths(since, i), range(toUInt64(greatest(0, dateDiff('month', since, today())) + 1))) AS month
)
GROUP BY month;

-- Audience growth: contacts engaged for the first time, per account and week (Monday).
CREATE VIEW IF NOT EXISTS audience_growth_weekly AS
SELECT account_id, toMonday(first_at) AS week, count() AS new_contacts
FROM
(
    SELECT account_id, minMapMerge(contacts_first) AS first
    FROM account_daily_engagement
    GROUP BY account_id
)
ARRAY JOIN first.2 AS first_at
GROUP BY account_id, week;
