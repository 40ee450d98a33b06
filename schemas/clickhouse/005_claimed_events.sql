-- Event rows reach `events` only from the current owner of their by-account partition.
-- A revocation can abandon a checkpoint whose insert is still on its way to a server (or
-- queued there); landing after the partition's next owner has read which rows lie past
-- the committed offsets, it would count its events twice. Each owner claims its
-- partitions at every assignment, above every earlier claim, before it reads them
-- (streams.store.claim_partitions); its rows carry that claim and pass only while it is
-- the partition's latest. The sink inserts into `events_claimed`; `events` and every view
-- over it are filled from there.

CREATE TABLE IF NOT EXISTS partition_claims
(
    partition  UInt16,
    claim      UInt64,
    claimed_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (partition, claim);

-- The columns of events, and the claim; a later column of events is to be added here too.
CREATE TABLE IF NOT EXISTS events_claimed AS events ENGINE = Null;
ALTER TABLE events_claimed ADD COLUMN IF NOT EXISTS claim UInt64;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_claimed_mv TO events AS
SELECT * EXCEPT claim
FROM events_claimed
WHERE (src_partition, claim) IN (SELECT partition, max(claim) FROM partition_claims GROUP BY partition);
