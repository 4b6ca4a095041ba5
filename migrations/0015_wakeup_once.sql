-- One NOTIFY per sleep of the router, not one per commit (issue 22, point 4). Until now
-- every producer that committed while the router waited sent a NOTIFY, until the woken
-- router had routed a batch and set the flag busy; PostgreSQL serialises notifying
-- commits on one global lock held through each commit's WAL flush, so a burst after a
-- quiet spell committed one at a time for the router's whole wake-up. Now the producer
-- that finds the flag "waiting" sets it "busy" itself, then notifies: the producers after
-- it find it busy and send nothing. Only the trigger's function changes (0008's, plus
-- that one `setval`): online, no table is locked.
--
-- The setval is like the router's: on the unlogged sequence, so it writes no WAL, takes
-- no transaction id, is seen by every producer at once and is not rolled back.
--
-- Why no committed event is stranded (0006's and 0008's argument, extended). Producers
-- take the wake-up lock before they read the flag and hold it until their transaction
-- ends; a router sleeps only after it set the flag "waiting", then got the lock (SHARE,
-- NOWAIT: every producer that read "busy" before has ended), then looked once more and
-- found nothing. A producer Q that reads "busy" read a value set by one of:
--
-- * a daemon that routed events (`router_busy`): it keeps looking until its own sleep
--   check succeeds and one more look is made (0008);
-- * a producer P that found "waiting" and notifies at its commit. If P commits, its event
--   is visible after its setval, and P's NOTIFY wakes a router (or a busy one finds it):
--   some daemon routes P's event, later than P's setval, and a daemon that routed an
--   event keeps looking as above. Its sleep check sets "waiting" later than P's "busy":
--   if Q read before that, Q held the lock then, so the check fails until Q has ended and
--   the last look sees Q's event; if Q read after it, the "busy" Q read was set later
--   still, by one of these two again.
--
-- The router's setval and a producer's are both last-writer-wins. A producer that reads
-- "waiting" while a router is in its sleep check holds the lock, so the check fails and
-- is made again (setting "waiting" again); one that reads it after the router got the
-- lock waits for the check's statement to end (a moment), and its NOTIFY wakes the router
-- or is kept for its next wait. Two producers may both read "waiting" before either sets
-- "busy": both notify, which is only a NOTIFY more.
--
-- What this gives up: P may roll back after its trigger ran (another deferred constraint
-- fails after it, a SERIALIZABLE transaction's serialization failure at commit, a refused
-- PREPARE TRANSACTION). Its NOTIFY is then not sent but the flag stays "busy" with no
-- router awake: the events committed after it send no NOTIFY and wait for the poll
-- interval (`[dispatch] poll_interval`, 1 s by default). A router woken by its poll
-- interval sets the flag "waiting" again, even when it finds nothing (src/daemon/
-- router.rs), so one poll puts it right (tests/it/wakeup.rs).
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
        PERFORM setval('dispatcher.router_waiting', 0);
        PERFORM pg_notify('dispatcher_outbox', '');
    END IF;
    RETURN NULL;
END
$$;
-- CREATE OR REPLACE keeps 0008's REVOKE; said again so this file reads whole.
REVOKE EXECUTE ON FUNCTION dispatcher.notify_outbox() FROM PUBLIC;
