-- `deliveries_by_state` (state, created_at) leaves out the delivered deliveries (issue
-- 22). A delivery is written three times (routed, claimed, recorded) and none of the
-- three can be a HOT update, so each added an entry to it; support's lists use it only to
-- find the deliveries in other states (pending, failed...), while a newest-first list of
-- the delivered ones, nearly every row, reads the primary key backwards. The record of
-- each delivered delivery now writes one index entry fewer.
--
-- Built CONCURRENTLY under a new name, then the old one dropped CONCURRENTLY, each on its
-- own outside a transaction: the enrollment flow's inserts and the daemon's writes go on.

-- dispatcher:no-transaction

CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_undelivered ON dispatcher.deliveries (state, created_at)
    WHERE state <> 'delivered';

DROP INDEX CONCURRENTLY IF EXISTS dispatcher.deliveries_by_state;
