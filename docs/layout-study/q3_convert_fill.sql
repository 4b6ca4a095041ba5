-- Question 3, part 5: today's unpartitioned deliveries (migrations 0001-0023) with
-- 1,000,000 rows: 990,000 ended over the last 10 days (delivered at the first attempt, the
-- 183 B answer in the row), 10,000 pending; and the writer pgbench runs (q3_convert_writer.pgbench).
INSERT INTO dispatcher.deliveries (id, event_id, partner, event_name, patient_id, state, attempt_count,
                                   last_status, created_at, ended_at, due_at, first_attempt_started_at,
                                   first_attempt_duration_ms, first_attempt_http_status,
                                   first_attempt_response_body)
SELECT gen_random_uuid(), g, 'partner-' || (g % 4), 'HelpAround.Patient.CompleteEnrollment',
       'pt' || lpad((random() * 100000000)::int::text, 9, '0'),
       CASE WHEN g > 990000 THEN 'pending' ELSE 'delivered' END,
       CASE WHEN g > 990000 THEN 0 ELSE 1 END, CASE WHEN g > 990000 THEN NULL ELSE 200 END,
       t - interval '1 s', CASE WHEN g > 990000 THEN NULL ELSE t END,
       CASE WHEN g > 990000 THEN t END,
       CASE WHEN g > 990000 THEN NULL ELSE t - interval '5 ms' END, CASE WHEN g > 990000 THEN NULL ELSE 5 END,
       CASE WHEN g > 990000 THEN NULL ELSE 200 END,
       CASE WHEN g > 990000 THEN NULL ELSE '{"success": true, "data": {"supportProgramId": "78ef982b-00ea-39c2-a875-f549c40e92ad", "patientId": "ha61236024160af", "externalId": "4aadb997-e9fd-3909-a2f0-833b821544bd"}}' END
FROM generate_series(1, 1000000) g,
     LATERAL (SELECT now() - interval '10 days' + g * (interval '10 days' / 1000000) - interval '1 minute' AS t) AS at;
VACUUM (ANALYZE) dispatcher.deliveries;
CREATE SEQUENCE public.q3_events START 2000000;
CREATE UNLOGGED TABLE public.q3_failures (at timestamptz DEFAULT clock_timestamp(), step text, sqlstate text, message text);
CREATE UNLOGGED TABLE public.q3_step (step text);
INSERT INTO public.q3_step VALUES ('before');
-- What the writer does, like the daemon (each a transaction of its own): routing inserts a
-- pending delivery; a claim + record ends the earliest due pending one of a partner. The
-- statements name dispatcher.deliveries and work in both layouts (no ON CONFLICT: see
-- q3_arbiters.sql; `ended_at IS NULL` prunes to the queue once it is a partition). A
-- failure is counted (each pgbench client ends its own partner's deliveries, so the two
-- never race for one row: that race is q3_concurrency.sh's 3b), with its SQLSTATE, instead of ending the pgbench client.
CREATE FUNCTION public.q3_route() RETURNS void LANGUAGE plpgsql AS $$
DECLARE e bigint := nextval('public.q3_events');
BEGIN
    INSERT INTO dispatcher.deliveries (id, event_id, partner, event_name, patient_id, state, due_at)
    VALUES (gen_random_uuid(), e, 'partner-' || (e % 4), 'HelpAround.Patient.CompleteEnrollment',
            'pw' || e, 'pending', now());
EXCEPTION WHEN OTHERS THEN
    INSERT INTO public.q3_failures (step, sqlstate, message) SELECT step, SQLSTATE, 'route: ' || SQLERRM FROM public.q3_step;
END $$;
CREATE FUNCTION public.q3_record(client int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dispatcher.deliveries SET state = 'delivered', ended_at = now(), attempt_count = 1, last_status = 200,
        first_attempt_started_at = now(), first_attempt_duration_ms = 5, first_attempt_http_status = 200
    WHERE id = (SELECT id FROM dispatcher.deliveries
                WHERE ended_at IS NULL AND state = 'pending' AND partner = 'partner-' || client
                ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED)
      AND ended_at IS NULL;
EXCEPTION WHEN OTHERS THEN
    INSERT INTO public.q3_failures (step, sqlstate, message) SELECT step, SQLSTATE, 'record: ' || SQLERRM FROM public.q3_step;
END $$;
