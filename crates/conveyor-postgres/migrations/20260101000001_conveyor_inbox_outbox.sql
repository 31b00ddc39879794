-- conveyor-postgres: the inbox and the outbox. Applied by `conveyor postgres migrate` (or
-- conveyor_postgres::migrate); sqlx records it in _sqlx_migrations.

-- Inbox: one row per message id a handler ran (its effects committed in the same transaction).
-- `inbox` names the consumer (several handlers may each run a message once); the message id
-- alone is unique within it.
CREATE TABLE conveyor_inbox (
    inbox        text        NOT NULL,
    message_id   text        NOT NULL,
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (inbox, message_id)
);

-- Outbox: jobs enqueued in the application's transactions, published by the relay in id order
-- and then marked sent. The message id is fixed at insert, so a relay publishing a row twice
-- publishes the same id.
CREATE TABLE conveyor_outbox (
    id            bigserial   PRIMARY KEY,
    topic         text        NOT NULL,
    message_id    text        NOT NULL,
    job_type      text        NOT NULL,
    key           bytea,
    payload       bytea       NOT NULL,
    content_type  text,
    header_names  text[]      NOT NULL DEFAULT '{}',
    header_values bytea[]     NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz
);

-- What the relay reads: the unsent rows, in id order.
CREATE INDEX conveyor_outbox_unsent ON conveyor_outbox (id) WHERE sent_at IS NULL;
