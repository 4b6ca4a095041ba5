-- The outbox's wake-up (migration 0006) without its three weak points:
--
-- * Its lock was an advisory key, which any role that may connect can take: one
--   `SELECT pg_advisory_lock(7522537982887291749)` held every enrollment's COMMIT for as
--   long as that session liked. The lock is now on a table of the dispatcher's that no one
--   else has a right to, taken by producers only inside the trigger's function, which runs
--   with its owner's rights.
-- * The router's sleep check wrote its flag to a logged sequence inside that lock, which
--   took a transaction id, a WAL flush and a synchronous replica's answer while producers
--   queued behind it. The flag is now an unlogged sequence: no WAL, no transaction id, so
--   the check's commit waits on no disk and no replica.
-- * A producer using two-phase commit was refused (on the NOTIFY) while the router waited
--   and prepared while it was busy. It is now refused in every state.
--
-- The protocol is 0006's: producers take the wake-up lock (here ROW EXCLUSIVE on
-- dispatcher.outbox_wakeup, which producers share) before they read the flag and hold it
-- until their transaction ends; the router sets the flag to waiting and only then tries
-- the lock in a mode that conflicts with theirs (SHARE, NOWAIT). If it gets it, every
-- producer that may have read "busy" has committed and its row is visible to the router's
-- next look, and every later one reads "waiting" and notifies.

-- The flag: 1 while a router waits for a NOTIFY, 0 while it routes and looks again by
-- itself. Unlogged: after a crash (or on a promoted replica) PostgreSQL resets it to its
-- state at creation, START WITH 1, "waiting": the safe value, as producers then notify
-- until a router says it is busy. So never ALTER it: that rewrites its reset state with
-- whatever value it holds then; drop and create it instead. No right is granted on it:
-- producers read it inside the trigger's function, and only the router sets it.
DROP SEQUENCE dispatcher.router_waiting;
CREATE UNLOGGED SEQUENCE dispatcher.router_waiting MINVALUE 0 MAXVALUE 1 START WITH 1 NO CYCLE;

-- The wake-up lock. It holds no rows; only its lock is used. No right on it is granted:
-- without one, no role can lock it (LOCK TABLE wants a write right on it, and USAGE on
-- the schema to name it), so only the dispatcher's own role and the trigger's function
-- take it. Producers take ROW EXCLUSIVE, which PostgreSQL keeps in each backend's own
-- fast-path slots, so their commits do not meet in a shared lock table. The router tries
-- SHARE, which conflicts with theirs but not with ACCESS SHARE, the one lock PostgreSQL
-- lets a stranger take on any table (briefly, e.g. in pg_relation_size).
CREATE TABLE dispatcher.outbox_wakeup ();
COMMENT ON TABLE dispatcher.outbox_wakeup IS
    'No rows: its lock is the outbox''s wake-up lock (migration 0008).';

-- Runs at each producer's commit, once per row (deferred; see 0006), with its owner's
-- rights (SECURITY DEFINER) so that a producer needs no right on the lock or the flag.
-- Its search_path is fixed, so a producer's own search_path cannot put its objects in
-- the way of those rights.
--
-- Two-phase commit: a transaction that queued a NOTIFY, LISTEN or UNLISTEN cannot be
-- prepared, and nothing of the dispatcher's runs at COMMIT PREPARED, so a prepared
-- producer could not wake a router that sleeps. It is refused in every state instead:
-- each row queues an UNLISTEN of a channel no one listens on, which costs nothing at
-- commit. PostgreSQL ignores an UNLISTEN from a session that has never listened, so a
-- session's first transaction also queues a LISTEN of that channel; the session setting
-- `dispatcher.outbox_refuses_two_phase_commit` remembers that it did (a LISTEN and its
-- UNLISTEN in one transaction leave the session listening on nothing, but the LISTEN
-- takes the notification queue's lock at commit, so once a session is enough).
-- PREPARE TRANSACTION then fails with "cannot PREPARE a transaction that has executed
-- LISTEN, UNLISTEN, or NOTIFY" (SQLSTATE 0A000), whatever the router is doing.
CREATE OR REPLACE FUNCTION dispatcher.notify_outbox() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('dispatcher.outbox_refuses_two_phase_commit', true)
            IS DISTINCT FROM 'on' THEN
        LISTEN dispatcher_outbox_refuses_two_phase_commit;
        PERFORM set_config('dispatcher.outbox_refuses_two_phase_commit', 'on', false);
    END IF;
    UNLISTEN dispatcher_outbox_refuses_two_phase_commit;
    LOCK TABLE dispatcher.outbox_wakeup IN ROW EXCLUSIVE MODE;
    IF (SELECT last_value FROM dispatcher.router_waiting) = 1 THEN
        PERFORM pg_notify('dispatcher_outbox', '');
    END IF;
    RETURN NULL;
END
$$;
-- A trigger's function is not checked for EXECUTE when the trigger fires; this only
-- keeps other roles from attaching it to tables of theirs to hold the lock.
REVOKE EXECUTE ON FUNCTION dispatcher.notify_outbox() FROM PUBLIC;

-- The router, finding nothing to route: may it sleep until a NOTIFY? Sets the flag to
-- waiting first, then tries the wake-up lock without waiting (so it holds up a producer's
-- commit for an instant at most: the statement's own transaction writes nothing, so its
-- commit waits for no flush). True: every commit that read "busy" is visible now, so one
-- more look at the outbox, and if it is empty, sleep. False: a producer is between
-- reading the flag and the end of its commit; look again shortly.
CREATE OR REPLACE FUNCTION dispatcher.router_may_sleep() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM setval('dispatcher.router_waiting', 1);
    BEGIN
        LOCK TABLE dispatcher.outbox_wakeup IN SHARE MODE NOWAIT;
    EXCEPTION WHEN lock_not_available THEN
        RETURN false;
    END;
    RETURN true;
END
$$;
REVOKE EXECUTE ON FUNCTION dispatcher.router_may_sleep() FROM PUBLIC;
