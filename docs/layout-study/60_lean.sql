-- Layout f: layout e, and
--  * the history's (event, partner) index is a BRIN (event ids grow with the routing
--    time, as the delivery ids of the partition do): support's search by event reads a
--    block range instead of a btree leaf, and an insert writes nothing to it until a
--    range's summary changes;
--  * (in the statements) routing inserts without ON CONFLICT: one router routes at a
--    time (the routing position's row lock), so a NOT EXISTS look decides; the queue's
--    unique key still refuses a duplicate (the batch then fails, loudly). Saves the
--    speculative insertion's confirm record;
--  * (in the driver) the daemon sends a learned external id only when it differs from the
--    one the claim returned, so a known patient's answer writes nothing to
--    partner_patients.
-- Apply after 50_inline_attempt.sql.
DROP INDEX dispatcher.deliveries_by_event;
CREATE INDEX deliveries_by_event ON dispatcher.deliveries USING brin (event_id) WITH (pages_per_range = 32);
