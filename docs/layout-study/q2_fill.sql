-- One day (:'day') of :n events with their bodies (the contract's enrollment example,
-- 1.46 KB of JSON), one delivery each, delivered at its first attempt with the partner's
-- answer. psql -v day=2025-11-01 -v n=1000000 -v body="$(cat event.json)"
SELECT dispatcher.create_day(:'day'::date);
-- Spread over the day: row i at day + i * 86,400,000 / n ms.
INSERT INTO dispatcher.outbox (event_name, event, created_at, routed_at)
SELECT 'HelpAround.Patient.CompleteEnrollment',
       jsonb_set(:'body'::jsonb, '{patient,id}', to_jsonb('pt' || lpad(i::text, 9, '0'))),
       :'day'::timestamptz + make_interval(secs => i * 86400.0 / :n),
       :'day'::timestamptz + make_interval(secs => i * 86400.0 / :n)
FROM generate_series(0, :n - 1) AS i;
CREATE TEMP TABLE day_deliveries AS
SELECT (lpad(to_hex((extract(epoch FROM o.created_at) * 1000)::bigint), 12, '0')
        || '7' || substr(md5(o.id::text), 1, 3) || '8' || substr(md5(o.id::text), 4, 15))::uuid AS id,
       o.id AS event_id, o.created_at, o.event -> 'patient' ->> 'id' AS patient_id
FROM dispatcher.outbox o
WHERE o.created_at >= :'day'::timestamptz AND o.created_at < :'day'::timestamptz + interval '1 day';
INSERT INTO dispatcher.deliveries
    (id, event_id, partner, event_name, patient_id, state, attempt_count, last_status,
     created_at, ended_at)
SELECT id, event_id, 'partner-' || (event_id % 4), 'HelpAround.Patient.CompleteEnrollment',
       patient_id, 'delivered', 1, 200, created_at, created_at + interval '50 ms'
FROM day_deliveries;
INSERT INTO dispatcher.attempts
    (delivery_id, number, started_at, duration_ms, http_status, response_body)
SELECT id, 1, created_at + interval '40 ms', 10, 200,
       '{"success": true, "data": {"supportProgramId": "78ef982b-00ea-39c2-a875-f549c40e92ad", "patientId": "ha61236024160af", "externalId": "4aadb997-e9fd-3909-a2f0-833b821544bd"}}'
FROM day_deliveries;
