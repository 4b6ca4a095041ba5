-- The dispatcher's whole state lives in the schema `dispatcher`.

CREATE SCHEMA IF NOT EXISTS dispatcher;

-- Which migrations have run; `dispatcher run` refuses a database that does not match.
CREATE TABLE dispatcher.schema_migrations (
    version    integer     PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Written by the enrollment flow inside its own transactions (transactional outbox).
-- Only `event_name` and `event` are theirs to set; the insert stays one row and one
-- statement-level trigger, so it costs their transaction next to nothing.
CREATE TABLE dispatcher.outbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_name  text        NOT NULL,
    event       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Set once the event has been fanned out into deliveries.
    routed_at   timestamptz
);

CREATE INDEX outbox_unrouted ON dispatcher.outbox (id) WHERE routed_at IS NULL;

-- One notification per inserting statement wakes the daemons; polling is only the fallback.
CREATE FUNCTION dispatcher.notify_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dispatcher_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON dispatcher.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION dispatcher.notify_outbox();

-- One delivery per (event, partner). `id` is the webhook-id the partner sees on every try.
-- An event that reaches no partner (unrouted, or too broken to route) keeps one row with
-- partner NULL, so support sees it.
CREATE TABLE dispatcher.deliveries (
    id                     uuid        PRIMARY KEY,
    event_id               bigint      NOT NULL REFERENCES dispatcher.outbox (id),
    partner                text,
    event_name             text        NOT NULL,
    patient_id             text,
    state                  text        NOT NULL CHECK (state IN (
                               'pending', 'in_flight', 'delivered', 'rejected',
                               'dead', 'invalid', 'cancelled', 'unrouted')),
    -- pending: when the next attempt is due; in_flight: when the claim's lease runs out
    -- (and the delivery becomes claimable again); NULL once ended.
    due_at                 timestamptz,
    -- Set by each claim; a result is only written by the holder of the current claim.
    claim_token            uuid,
    attempt_count          integer     NOT NULL DEFAULT 0,
    -- attempt_count when support last resent it: each resend gets a fresh set of attempts.
    attempts_before_resend integer     NOT NULL DEFAULT 0,
    last_status            integer,
    last_error             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    ended_at               timestamptz,
    UNIQUE NULLS NOT DISTINCT (event_id, partner)
);

CREATE INDEX deliveries_due ON dispatcher.deliveries (due_at)
    WHERE state IN ('pending', 'in_flight');

-- Per (partner, patient) ordering: the earliest unfinished event goes first.
CREATE INDEX deliveries_unfinished_by_patient ON dispatcher.deliveries (partner, patient_id, event_id)
    WHERE state IN ('pending', 'in_flight');

CREATE INDEX deliveries_by_state ON dispatcher.deliveries (state, created_at);

-- Every request made, and what the partner answered.
CREATE TABLE dispatcher.attempts (
    delivery_id   uuid        NOT NULL REFERENCES dispatcher.deliveries (id) ON DELETE CASCADE,
    number        integer     NOT NULL,
    started_at    timestamptz NOT NULL,
    duration_ms   integer     NOT NULL,
    -- NULL when no answer came (timeout, connection or TLS error).
    http_status   integer,
    error_kind    text,
    error         text,
    -- The partner's answer, capped.
    response_body text,
    PRIMARY KEY (delivery_id, number)
);

-- The partner's own id for a patient, learned from its 200 answers (contract R9, R10).
CREATE TABLE dispatcher.partner_patients (
    partner     text        NOT NULL,
    patient_id  text        NOT NULL,
    external_id text        NOT NULL,
    learned_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partner, patient_id)
);
