-- The outbox wakes the router only while the router waits for it (src/daemon/router.rs);
-- a busy router polls. Migration 0001's trigger sent a NOTIFY at every producer's commit,
-- and PostgreSQL serialises every notifying commit on one global lock held through the
-- commit's WAL flush, so the dispatcher's wake-up serialised the enrollment flow itself.
--
-- The flag: 1 while a router waits for a NOTIFY, 0 while it routes and looks again by
-- itself. A sequence, because a sequence is not MVCC: a producer in any isolation level
-- reads its latest value, and `setval` is seen by everyone at once and is never rolled
-- back. It starts at 1, so a daemon that does not know the flag yet is still woken.
CREATE SEQUENCE dispatcher.router_waiting MINVALUE 0 MAXVALUE 1 START WITH 1 NO CYCLE;
-- The trigger runs with the producer's rights, and the enrollment flow may insert as a
-- role that may only insert: everyone may read the flag (a 0 or a 1); only the
-- dispatcher's role, its owner, may set it.
GRANT SELECT ON SEQUENCE dispatcher.router_waiting TO PUBLIC;

-- Producers take the wake-up lock (key 0x68656c7077616b65, "helpwake"; WAKEUP_LOCK in
-- src/store/notify.rs) shared before they read the flag, and hold it until their
-- transaction ends, when their row is visible. The router sets the flag to 1 and only
-- then tries the lock exclusively: if it gets it, every producer that may have read 0 has
-- committed (its row is visible to the router's next look) and every later one reads 1
-- and notifies. This is the argument that no committed row is stranded.
--
-- Per row, deferred to the producer's commit: the flag is read as late as possible (an
-- enrollment transaction may be long), and a constraint trigger cannot be per statement.
-- A NOTIFY sent twice in one transaction is sent once, so a 1,000-row insert costs 1,000
-- calls at commit (about 5 microseconds each, measured) and at most one notification.
CREATE OR REPLACE FUNCTION dispatcher.notify_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7522537982887291749);
    IF (SELECT last_value FROM dispatcher.router_waiting) = 1 THEN
        PERFORM pg_notify('dispatcher_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER outbox_notify ON dispatcher.outbox;

CREATE CONSTRAINT TRIGGER outbox_notify
    AFTER INSERT ON dispatcher.outbox
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION dispatcher.notify_outbox();

-- The router, finding nothing to route: may it sleep until a NOTIFY? Sets the flag to
-- waiting first, then tries the wake-up lock without waiting (so it holds up a producer's
-- commit for an instant at most). True: every commit that read "busy" is visible now, so
-- one more look at the outbox, and if it is empty, sleep. False: a producer is between
-- reading the flag and the end of its commit; look again shortly.
CREATE FUNCTION dispatcher.router_may_sleep() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM setval('dispatcher.router_waiting', 1);
    RETURN pg_try_advisory_xact_lock(7522537982887291749);
END
$$;
