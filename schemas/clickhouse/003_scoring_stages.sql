-- Engagement breadth, event-time rolling counts and stage reasons. Idempotent.

-- Per account, as of `score_at` (the event time of its latest event or evaluation):
-- engaged contacts over 30 days, events per type over 7, 30 and 90 days, and why it is
-- in its stage.
ALTER TABLE account_scores ADD COLUMN IF NOT EXISTS engaged_contacts_30d UInt32;
ALTER TABLE account_scores ADD COLUMN IF NOT EXISTS events_7d Map(String, UInt32);
ALTER TABLE account_scores ADD COLUMN IF NOT EXISTS events_30d Map(String, UInt32);
ALTER TABLE account_scores ADD COLUMN IF NOT EXISTS events_90d Map(String, UInt32);
ALTER TABLE account_scores ADD COLUMN IF NOT EXISTS stage_reason String;

-- Why each transition happened; event_id is '' for a fall-back as event time passed.
ALTER TABLE stage_transitions ADD COLUMN IF NOT EXISTS reason String;
