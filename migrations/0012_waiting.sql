-- Per (partner, patient) order without walking what waits (issue 20): a delivery behind
-- an unfinished earlier event of the same patient to the same partner is `waiting`, with
-- no `due_at`, so it is in neither `deliveries_pending` nor the claim's path. It becomes
-- `pending`, due at once, in the transaction that ends the last earlier one
-- (src/store/queue/order.rs). Before this, such deliveries were `pending` and every claim
-- read each of them and filtered it out again (100,000 waiting: 214-262 ms a claim).
--
-- Online: the transaction holds `deliveries` (ACCESS EXCLUSIVE, for the constraint)
-- only as long as the backlog's update takes; the enrollment flow's inserts into the
-- outbox never wait for it. The constraint is checked against the rows already there,
-- and the index built, afterwards, beside the daemon's writes.
ALTER TABLE dispatcher.deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE dispatcher.deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN (
    'pending', 'waiting', 'in_flight', 'delivered', 'rejected',
    'dead', 'invalid', 'cancelled', 'unrouted')) NOT VALID;

-- What waits already: pending behind an earlier pending or in-flight delivery of the same
-- (partner, patient), which is what the claim filtered out. A daemon from before this
-- migration, still running beside it, ends deliveries without releasing what waits behind
-- them; the new daemon's rescuer releases those (queue::release_stranded).
UPDATE dispatcher.deliveries d
SET state = 'waiting', due_at = NULL
WHERE d.state = 'pending'
  AND d.patient_id IS NOT NULL
  AND EXISTS (
      SELECT 1 FROM dispatcher.deliveries earlier
      WHERE earlier.partner = d.partner
        AND earlier.patient_id = d.patient_id
        AND earlier.event_id < d.event_id
        AND earlier.state IN ('pending', 'in_flight'));

-- dispatcher:no-transaction

ALTER TABLE dispatcher.deliveries VALIDATE CONSTRAINT deliveries_state_check;

-- Waiting deliveries have an index of their own, in event order per (partner, patient):
-- where the next one to release is found. `deliveries_unfinished_by_patient` keeps only
-- pending and in-flight ones, so nothing a claim reads or writes grows with what waits.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_waiting ON dispatcher.deliveries (partner, patient_id, event_id)
    WHERE state = 'waiting';
