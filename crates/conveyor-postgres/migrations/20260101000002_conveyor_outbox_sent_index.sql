-- The relay deletes sent rows older than its retention every minute: without this index that
-- is a scan of the whole outbox.
CREATE INDEX IF NOT EXISTS conveyor_outbox_sent ON conveyor_outbox (sent_at) WHERE sent_at IS NOT NULL;
