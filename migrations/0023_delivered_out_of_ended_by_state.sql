-- `deliveries_ended_by_state` no longer holds the delivered deliveries made from now on
-- (issue 22): the record of a 200 wrote an entry there that only support's time window of
-- delivered deliveries read (`deliveries list --state delivered --since ... --until ...`,
-- the API's and the page's list, the bulk resend's preview and resend). 83 B of WAL a
-- delivery in `scripts/bench --scenario drain` (docs/benchmarks.md).
--
-- That window is now a range of the primary key. This version makes a delivery's id a
-- UUIDv7 of the millisecond of its `created_at`, both of PostgreSQL's clock (the routing
-- transaction's `now()`, src/delivery/id.rs), so the ids of a window's deliveries lie
-- between the least ids of its two ends. Ids made before were of each daemon's own clock
-- (a daemon an hour ahead made ids an hour ahead), and so are those a daemon from before
-- this version makes until it is replaced (Upgrading: it goes on routing). So the index
-- keeps the delivered deliveries whose id is off the database's clock:
-- `delivery_id_off_clock`, those made before this migration and by old daemons, and
-- never one this version makes. A window of delivered deliveries (store/support/
-- selection.rs) reads the primary key over its ids, widened to the least and greatest id
-- of its off-clock deliveries, which this index finds by `created_at`; the window's
-- `created_at` conditions stay, so what it returns is exact. What it reads: for a window
-- of deliveries made since, its own rows; for one over deliveries made before (nearly
-- all of them off the clock, kept `metadata_days`), its rows in this index, then the
-- primary key's over the widened range: a few times what the old index read, and for a
-- window open at one end (`--since` alone) every delivered delivery made before that
-- this version keeps, rather than the page it shows. That passes as they are pruned.
--
-- Not the other ways: a predicate with this migration's time cannot be written, as the
-- index is built CONCURRENTLY, which no DO block may run, and old daemons make off-clock
-- ids after that time; a skew measured now over the whole table would read it all and be
-- outgrown by those old daemons too. This predicate is true of exactly the rows a
-- primary key range could miss, whoever made them.
--
-- The functions are IMMUTABLE (an index predicate must be) and inlined by the planner,
-- so support's conditions name the same expression as the predicate and prove it. They
-- are granted to PUBLIC, whatever default privileges a site set: every role that writes
-- a delivery evaluates the predicate (without EXECUTE, the daemon's role could not
-- record a 200), and support's role reads a window through them. The millisecond of a
-- `timestamptz` is read from its distance to 1970 (an interval: no time zone), as a
-- UUIDv7 counts it.
--
-- Built, then the old index dropped and the new one renamed, each on its own outside a
-- transaction, as 0019 does: the enrollment flow's inserts and the daemon's writes go on,
-- and a run stopped part way ends in the same place when run again. Delivered deliveries
-- already in the old index and on the database's clock (made within the millisecond of
-- their transaction's start) are left out of the new one: the primary key finds them.

CREATE OR REPLACE FUNCTION dispatcher.unix_millis(at timestamptz) RETURNS int8
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN floor(extract(epoch FROM at - timestamptz 'epoch') * 1000)::int8;

-- The least UUID of a millisecond: every UUIDv7 made in `millis` is at least this, every
-- one made before is less.
CREATE OR REPLACE FUNCTION dispatcher.first_uuid_of_millis(millis int8) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (lpad(to_hex(millis), 12, '0') || '00000000000000000000')::uuid;

-- Whether a delivery's id is of another time than its `created_at`'s millisecond.
CREATE OR REPLACE FUNCTION dispatcher.delivery_id_off_clock(id uuid, created_at timestamptz)
    RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN id < dispatcher.first_uuid_of_millis(dispatcher.unix_millis(created_at))
        OR id >= dispatcher.first_uuid_of_millis(dispatcher.unix_millis(created_at) + 1);

GRANT EXECUTE ON FUNCTION dispatcher.unix_millis(timestamptz),
    dispatcher.first_uuid_of_millis(int8),
    dispatcher.delivery_id_off_clock(uuid, timestamptz) TO PUBLIC;

-- dispatcher:no-transaction

CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_ended_but_delivered ON dispatcher.deliveries (state, created_at)
    WHERE state NOT IN ('pending', 'waiting', 'in_flight', 'delivered')
       OR (state = 'delivered' AND dispatcher.delivery_id_off_clock(id, created_at));
DROP INDEX CONCURRENTLY IF EXISTS dispatcher.deliveries_ended_by_state;
ALTER INDEX IF EXISTS dispatcher.deliveries_ended_but_delivered RENAME TO deliveries_ended_by_state;
