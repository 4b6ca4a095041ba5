-- Question 3: a queue and a history for parts 4 and 6, on a database with q3_20_schema.sql.
-- psql -v queue=N -v history_days=D -v per_day=M: N unfinished deliveries (pending, due,
-- 4 partners, distinct patients), and M ended deliveries (delivered at the first attempt,
-- the 183 B answer in the row) in each of the D days before today (creating the days).
SELECT dispatcher.q3_create_day((current_date - d)::date) FROM generate_series(1, :history_days) d;
INSERT INTO dispatcher.deliveries_queue (id, event_id, partner, event_name, patient_id, state, due_at, created_at)
SELECT gen_random_uuid(), 100000000 + g, 'partner-' || (g % 4), 'HelpAround.Patient.CompleteEnrollment',
       'pq' || lpad(g::text, 9, '0'), 'pending', now() - interval '1 minute', now() - interval '1 minute'
FROM generate_series(1, :queue) g;
INSERT INTO dispatcher.deliveries (id, event_id, partner, event_name, patient_id, state, attempt_count,
                                   last_status, created_at, ended_at, first_attempt_started_at,
                                   first_attempt_duration_ms, first_attempt_http_status,
                                   first_attempt_response_body)
SELECT gen_random_uuid(), d * 10000000 + g, 'partner-' || (g % 4), 'HelpAround.Patient.CompleteEnrollment',
       'pt' || lpad((random() * 100000000)::int::text, 9, '0'), 'delivered', 1, 200, t - interval '1 s', t,
       t - interval '5 ms', 5, 200,
       '{"success": true, "data": {"supportProgramId": "78ef982b-00ea-39c2-a875-f549c40e92ad", "patientId": "ha61236024160af", "externalId": "4aadb997-e9fd-3909-a2f0-833b821544bd"}}'
FROM generate_series(1, :history_days) d, generate_series(1, :per_day) g,
     LATERAL (SELECT (current_date - d)::timestamp AT TIME ZONE 'UTC' + (g - 1) * (interval '1 day' / :per_day) AS t) AS at;
VACUUM (ANALYZE) dispatcher.deliveries;
