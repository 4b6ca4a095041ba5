-- The API's `Idempotency-Key` on its bulk actions (src/store/idempotency.rs): a key, per
-- caller, holds the first answer, so a repeat of the request gets that answer and touches
-- nothing. The key's row is written in the transaction that does the work, so a second
-- request with the key waits on the first's row (the primary key) and then reads its
-- answer. Kept 24 hours, then deleted by the pruner (`store::retention::prune`).
CREATE TABLE dispatcher.idempotency_keys (
    -- Who asked: the provider's subject or the token's id, else the name the record shows.
    caller      text        NOT NULL,
    key         text        NOT NULL,
    -- SHA-256 (hex) of the operation and the request as read: the same key with another
    -- request is refused, never answered with the first one's answer.
    fingerprint text        NOT NULL,
    -- The first answer, status and JSON body, written before the transaction commits.
    status      smallint    NOT NULL,
    answer      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);

CREATE INDEX idempotency_keys_by_age ON dispatcher.idempotency_keys (created_at);
