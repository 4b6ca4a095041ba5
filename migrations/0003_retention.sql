-- Retention (see src/store/retention.rs): an event's body and the partners' answers are
-- erased `payload_days` after the deliveries end; the rows themselves go after
-- `metadata_days`. (Version 3: version 2, 0002_support_actions.sql, was developed beside
-- this one; neither touches the other's tables.)

-- An erased body is NULL, with the time it was erased; the enrollment flow still cannot
-- insert a NULL body.
ALTER TABLE dispatcher.outbox
    ALTER COLUMN event DROP NOT NULL,
    ADD COLUMN event_erased_at timestamptz,
    ADD CONSTRAINT outbox_event_kept_or_erased CHECK (event IS NOT NULL OR event_erased_at IS NOT NULL);

-- Each outbox row is in exactly one of these, so neither pruning step walks over the
-- rows the other one is about.
CREATE INDEX outbox_body_kept ON dispatcher.outbox (created_at) WHERE event IS NOT NULL;
CREATE INDEX outbox_body_erased ON dispatcher.outbox (created_at) WHERE event IS NULL;

-- When the partners' answers to this delivery (attempts' response bodies and error texts,
-- the delivery's last error) were erased. A resend clears it, so the new answers are
-- erased in their turn.
ALTER TABLE dispatcher.deliveries ADD COLUMN answers_erased_at timestamptz;

CREATE INDEX deliveries_answers_kept ON dispatcher.deliveries (ended_at)
    WHERE answers_erased_at IS NULL;
CREATE INDEX deliveries_ended ON dispatcher.deliveries (ended_at);

ALTER TABLE dispatcher.attempts ADD COLUMN answer_erased_at timestamptz;
