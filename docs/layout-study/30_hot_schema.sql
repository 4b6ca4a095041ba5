-- Layout c: the narrow queue with a HOT claim. As layout b (history = today's
-- deliveries less the unfinished indexes, attempts without the foreign key), but the
-- queue's indexes mention no column the claim writes: `state` is in no index and no
-- predicate, `due_at` keeps the time the delivery fell due while it is in flight, and the
-- lease's end is `leased_until`, unindexed. So the claim's update is HOT when its page
-- has room (fillfactor), and adds no index entry.
--   * the claim reads each partner's due deliveries on queue_due and passes over the ones
--     in flight (at most the partner's max_in_flight, at the head of its due order);
--   * waiting deliveries have no due_at, so they are not in queue_due;
--   * the rescue finds expired leases in dispatcher.queue_leases: one row per claim
--     (its token, its end and the ids it took), written by the claim.
DROP INDEX dispatcher.deliveries_pending, dispatcher.deliveries_in_flight,
           dispatcher.deliveries_unfinished_by_patient, dispatcher.deliveries_waiting;
ALTER TABLE dispatcher.attempts DROP CONSTRAINT attempts_delivery_id_fkey;

CREATE TABLE dispatcher.queue (
    id                     uuid        PRIMARY KEY,
    event_id               bigint      NOT NULL,
    partner                text        NOT NULL,
    event_name             text        NOT NULL,
    patient_id             text,
    state                  text        NOT NULL CHECK (state IN ('pending', 'waiting', 'in_flight')),
    -- pending / in_flight: when it fell due (a retry: when it is due again); waiting: NULL
    due_at                 timestamptz,
    claim_token            uuid,
    leased_until           timestamptz,
    attempt_count          integer     NOT NULL DEFAULT 0,
    attempts_before_resend integer     NOT NULL DEFAULT 0,
    last_status            integer,
    last_error             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, partner)
) WITH (fillfactor = 50);
CREATE INDEX queue_due ON dispatcher.queue (partner, due_at) WHERE due_at IS NOT NULL;
CREATE INDEX queue_by_patient ON dispatcher.queue (partner, patient_id, event_id);

CREATE TABLE dispatcher.queue_leases (
    claim_token uuid        PRIMARY KEY,
    lease_end   timestamptz NOT NULL,
    ids         uuid[]      NOT NULL
);
CREATE INDEX queue_leases_end ON dispatcher.queue_leases (lease_end);
