-- A history beside the queue: :h ended deliveries of earlier today (random patient ids drawn like the seed's (01_seed_random.sql), so their keys interleave,
-- ids UUIDv7 of the last hours), their attempts, and :h / 2 known patients. Run after the
-- layout's schema and the seed; the layout's history is dispatcher.deliveries either way.
INSERT INTO dispatcher.deliveries
    (id, event_id, partner, event_name, patient_id, state, attempt_count, last_status,
     created_at, ended_at)
SELECT (lpad(to_hex((extract(epoch FROM now() - interval '3 hours') * 1000)::bigint + i), 12, '0')
        || '7' || substr(md5(i::text), 1, 3) || '8' || substr(md5(i::text), 4, 15))::uuid,
       -i, 'partner-' || (i % 4), 'HelpAround.Patient.CompleteEnrollment',
       'pt' || substr(md5('h' || i), 1, 12), 'delivered', 1, 200,
       now() - interval '3 hours', now() - interval '3 hours'
FROM generate_series(1, :h) AS i;
INSERT INTO dispatcher.attempts (delivery_id, number, started_at, duration_ms, http_status, response_body)
SELECT id, 1, created_at, 10, 200, '{"success": true}' FROM dispatcher.deliveries WHERE event_id < 0;
INSERT INTO dispatcher.partner_patients (partner, patient_id, external_id)
SELECT 'partner-' || (i % 4), 'pt' || substr(md5('h' || i), 1, 12), 'ext-' || md5('h' || i)
FROM generate_series(1, :h / 2) AS i ON CONFLICT DO NOTHING;
VACUUM ANALYZE;
