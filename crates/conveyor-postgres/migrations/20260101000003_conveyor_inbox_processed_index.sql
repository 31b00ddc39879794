-- Inbox::prune (`conveyor postgres prune-inbox`) deletes an inbox's ids recorded before a time:
-- without this index that is a scan of the whole inbox. A plain CREATE INDEX, in the
-- migration's transaction: inbox writes wait while it builds (on a large inbox, run
-- `conveyor postgres migrate` at a quiet moment, or create the index CONCURRENTLY by hand
-- first: IF NOT EXISTS then skips it). Not CONCURRENTLY here: it waits for every other
-- transaction, including other processes waiting on sqlx's migration lock, and deadlocked
-- when several processes started at once.
CREATE INDEX IF NOT EXISTS conveyor_inbox_processed ON conveyor_inbox (inbox, processed_at);
