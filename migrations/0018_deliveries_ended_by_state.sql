-- `deliveries_by_state` (state, created_at) gives way to `deliveries_ended_by_state`,
-- the same index of ended deliveries only (issue 22). It held every row, so routing's
-- insert and the claim's update each wrote an entry in it that no reader needs: what is
-- unfinished is found by the queue's own partial indexes (`deliveries_pending`,
-- `deliveries_in_flight`, `deliveries_waiting`, `deliveries_unfinished_by_patient`).
-- Support's lists of unfinished states, its overview, its chart and the rescuer's look
-- for stranded waiting deliveries name each state apart (src/store/support/,
-- src/store/queue/order.rs) so that the planner takes those. What still needs this one
-- are support's lists, previews and bulk resends of ended states, delivered included
-- (`deliveries list --state delivered --since ... --until ...` finds a time window by
-- it), whose rows have all ended.
--
-- `scripts/bench --scenario drain --scale 0.5` (routing, claim and record of 50,000):
-- 3,061 -> 2,896 bytes of WAL per delivery, Btree/INSERT_LEAF 19.9 -> 18.1 a delivery
-- (pg_waldump --stats=record); `baseline` (claim and record only): 2,601 -> 2,517 bytes.
--
-- Built and dropped CONCURRENTLY, each on its own outside a transaction, so that the
-- enrollment flow's inserts and the daemon's writes go on meanwhile; run again, each
-- statement does nothing (an INVALID build is dropped and built again by the runner).
-- The lists of ended states have both indexes, or one, at every moment.

-- dispatcher:no-transaction

CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_ended_by_state ON dispatcher.deliveries (state, created_at)
    WHERE state NOT IN ('pending', 'waiting', 'in_flight');
DROP INDEX CONCURRENTLY IF EXISTS dispatcher.deliveries_by_state;
