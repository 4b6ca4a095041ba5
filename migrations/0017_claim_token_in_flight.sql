-- A claim token is held only while a delivery is in flight (issue 22). The claim and
-- routing's claim set it with `in_flight`; the record, the rescue and support's cancel
-- clear it as the delivery leaves that state. The record then finds the rows it writes
-- by id and token alone (src/store/queue/record.rs): a `state = 'in_flight'` beside them
-- let the planner read the in-flight index instead of the primary key, whole, with the
-- dead entry every delivery sent since the last vacuum leaves there (45 buffers a
-- delivery in the `stream-1000` bench). This constraint keeps the token meaning the
-- state, so dropping the state from that statement loses no check.
--
-- Online: added NOT VALID (a moment of ACCESS EXCLUSIVE, catalog only, under the
-- migration's lock_timeout), then validated beside the daemon's writes (SHARE UPDATE
-- EXCLUSIVE: it reads the table but blocks no insert or update). A run stopped during
-- the validation (it reads the whole history) starts this file again: the first part
-- drops what it added, so it runs twice.
ALTER TABLE dispatcher.deliveries DROP CONSTRAINT IF EXISTS deliveries_claimed_in_flight;
ALTER TABLE dispatcher.deliveries
    ADD CONSTRAINT deliveries_claimed_in_flight CHECK (claim_token IS NULL OR state = 'in_flight') NOT VALID;

-- dispatcher:no-transaction

ALTER TABLE dispatcher.deliveries VALIDATE CONSTRAINT deliveries_claimed_in_flight;
