-- Routing keeps its own position instead of marking each outbox row (issue 22): the
-- `routed_at` UPDATE rewrote every routed event's whole row (its body about 1.2 KB), 4 KB
-- of WAL of the 6.4 KB each delivery cost, and an index entry in every outbox index.
--
-- Each new event carries its producer's transaction id (`xid`, set by its default: the
-- enrollment flow's INSERT does not change). The router remembers a snapshot,
-- `routing_position.through`: every event whose transaction had committed in it is
-- routed. A round takes a newer snapshot, `upto`, and routes the events whose
-- transactions committed between the two (visible in `upto`, not in `through`), in
-- (xid, id) order, `after_xid`/`after_id` marking how far it got when a batch is partial;
-- then `upto` becomes `through`. A producer that commits late (its transaction began
-- before others that committed first) is routed in the round after its commit: nothing
-- is skipped, and no event waits for an older, unrelated transaction to end (as a cursor
-- on the id alone, or on the oldest running transaction, would). What a long-running
-- writer costs instead: while it runs, each round reads again, on the index, the events
-- committed since it began (their xids are above the snapshots' oldest running one) and
-- passes over those already routed.
--
-- Events written before this migration have no `xid`: they keep `routed_at`, and the
-- router routes those still unrouted the old way until none is left.
--
-- Online: the column is added without a default (no rewrite) and the default set after
-- (catalog only), under ACCESS EXCLUSIVE on the outbox for that moment; the index built
-- and the old one swapped concurrently.
ALTER TABLE dispatcher.outbox ADD COLUMN xid xid8;
ALTER TABLE dispatcher.outbox ALTER COLUMN xid SET DEFAULT pg_current_xact_id();

-- One row. Its row lock is also the routing lock: only one daemon routes at a time, in
-- order, and only a role with UPDATE on this table can take it (the old lock was an
-- advisory key any session could hold).
CREATE TABLE dispatcher.routing_position (
    one       boolean     PRIMARY KEY DEFAULT true CHECK (one),
    through   pg_snapshot NOT NULL,
    upto      pg_snapshot,
    after_xid xid8,
    after_id  bigint,
    CHECK ((upto IS NULL) = (after_xid IS NULL) AND (upto IS NULL) = (after_id IS NULL))
);
-- Every event with an `xid` is written after this commits, so none is visible in a
-- snapshot taken now (the ALTER above holds the outbox until then).
INSERT INTO dispatcher.routing_position (through) VALUES (pg_current_snapshot());

-- Events support asked to route again (an event that reached no partner, once one takes
-- its program): the router routes these first.
CREATE TABLE dispatcher.outbox_route_again (
    event_id bigint PRIMARY KEY REFERENCES dispatcher.outbox (id) ON DELETE CASCADE
);
-- How many events wait to be routed, by the router's own reading (for `check`, the
-- tests and the bench; it reads the outbox's newest events on their index).
CREATE FUNCTION dispatcher.unrouted_events() RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (SELECT count(*) FROM dispatcher.outbox o
            WHERE o.routed_at IS NULL AND o.xid IS NULL)
         + (SELECT count(*) FROM dispatcher.outbox_route_again)
         + (SELECT count(*) FROM dispatcher.outbox o, dispatcher.routing_position p
            WHERE o.xid >= pg_snapshot_xmin(p.through)
              AND NOT pg_visible_in_snapshot(o.xid, p.through)
              AND NOT (p.upto IS NOT NULL
                       AND pg_visible_in_snapshot(o.xid, p.upto)
                       AND (o.xid, o.id) <= (p.after_xid, p.after_id)))
$$;

-- dispatcher:no-transaction

-- The events to route, in the order they are routed.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_by_xid ON dispatcher.outbox (xid, id)
    WHERE xid IS NOT NULL;

-- The old way's unrouted events only: new events never have `routed_at`, and would stay
-- in `outbox_unrouted` for ever.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_unrouted_before_xid ON dispatcher.outbox (id)
    WHERE routed_at IS NULL AND xid IS NULL;
DROP INDEX CONCURRENTLY IF EXISTS dispatcher.outbox_unrouted;
