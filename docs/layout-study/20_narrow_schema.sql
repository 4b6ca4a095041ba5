-- Layout b: the narrow queue, a direct port. Unfinished deliveries (pending, waiting,
-- in_flight) live in dispatcher.queue with the order's, the claim's and the rescue's
-- indexes as today's partial ones; dispatcher.deliveries becomes the history: a row
-- written once, when the delivery ends, with today's history indexes (primary key,
-- (event, partner), by_state, by_patient, ended, answers_kept).
--
-- What support sees of an unfinished delivery, kept in the queue: partner, patient,
-- event, event name, state, due time, attempts (and attempts before the last resend),
-- the last status and error of a retry (why it is pending again), created_at (its age).
-- Its attempts are in dispatcher.attempts from the first one on.
DROP INDEX dispatcher.deliveries_pending, dispatcher.deliveries_in_flight,
           dispatcher.deliveries_unfinished_by_patient, dispatcher.deliveries_waiting;
-- Attempts are written while the delivery is still in the queue (a retry's), so they
-- cannot reference the history row; in a partitioned history they could not anyway.
ALTER TABLE dispatcher.attempts DROP CONSTRAINT attempts_delivery_id_fkey;

CREATE TABLE dispatcher.queue (
    id                     uuid        PRIMARY KEY,
    event_id               bigint      NOT NULL,
    partner                text        NOT NULL,   -- placeholders go to the history at once
    event_name             text        NOT NULL,
    patient_id             text,
    state                  text        NOT NULL CHECK (state IN ('pending', 'waiting', 'in_flight')),
    due_at                 timestamptz,
    claim_token            uuid,
    attempt_count          integer     NOT NULL DEFAULT 0,
    attempts_before_resend integer     NOT NULL DEFAULT 0,
    last_status            integer,
    last_error             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, partner)
);
CREATE INDEX queue_pending ON dispatcher.queue (partner, due_at) WHERE state = 'pending';
CREATE INDEX queue_in_flight ON dispatcher.queue (due_at) WHERE state = 'in_flight';
CREATE INDEX queue_unfinished_by_patient ON dispatcher.queue (partner, patient_id, event_id)
    WHERE state IN ('pending', 'in_flight');
CREATE INDEX queue_waiting ON dispatcher.queue (partner, patient_id, event_id) WHERE state = 'waiting';
