-- The order's index of unfinished deliveries (partner, patient_id, event_id) keeps only
-- deliveries with a patient (issue 22). The statements that read it ask for one
-- patient's deliveries, and the patient id they name implies `patient_id IS NOT NULL`; a
-- statement that asks only for a state no longer finds it usable. Before, its predicate
-- (pending or in flight) was implied by `state = 'pending'` and by `state = 'in_flight'`,
-- so each such question had two partial indexes to choose from, and statistics taken
-- beside a small queue (one row estimated in each) chose this one in a full scan, with
-- the state as a filter: the rescuer's look for expired leases and the next lease's end
-- read every pending delivery, a held partner's backlog of 30,000 at every tick
-- (tests/it/overload.rs), and routing's look for partners with deliveries due went
-- through it too. Now each state's question has one partial index: `deliveries_pending`,
-- `deliveries_in_flight`, `deliveries_waiting`.
--
-- Built, then the old one dropped and the new one renamed, each on its own outside a
-- transaction, so the enrollment flow's inserts and the daemon's writes go on meanwhile.
-- A run stopped between the rename and the recorded version builds the new index once
-- more and drops the renamed one, which ends in the same place; an INVALID build is
-- dropped and built again by the runner.

-- dispatcher:no-transaction

CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_unfinished_of_patients ON dispatcher.deliveries (partner, patient_id, event_id)
    WHERE state IN ('pending', 'in_flight') AND patient_id IS NOT NULL;
DROP INDEX CONCURRENTLY IF EXISTS dispatcher.deliveries_unfinished_by_patient;
ALTER INDEX IF EXISTS dispatcher.deliveries_unfinished_of_patients RENAME TO deliveries_unfinished_by_patient;
