-- Question 3, layout a (today's: main at 15c852d, migrations 0001-0022, and 0023 as the
-- first-attempt branch's work in progress has it: the first attempt in the delivery's row).
-- The daemon's statements, verbatim but for where the arrays come from:
--   route  src/store/queue/mod.rs `insert` (its arrays from the outbox rows of an id range;
--          nothing offered: SendNow::NONE), then lock_patients/settle skipped as the daemon
--          skips them for patients with nothing else unfinished
--   claim  src/store/queue/claim.rs CLAIM_DUE (partners_waiting!, lease_of!)
--   lock   src/store/queue/order.rs `lock` (unfinished_of_patients!, shown_state!)
--   write  src/store/queue/record.rs `write`, with 0023's first-attempt columns
--          (first-attempt branch, uncommitted at 15:00 UTC): a 200 with the bench's
--          nginx answer (183 B), the partner's id learned only for a patient not known yet
--   leases src/store/queue/rescue.rs `end_leases_recorded`
-- Layout b's file (q3_20_stmts.sql) is made from this one by q3_make_b_stmts.sh.
PREPARE route(int8, int8) AS
WITH new AS (
         SELECT *,
                count(*) FILTER (WHERE state = 'pending') OVER (
                    PARTITION BY partner, patient_id ORDER BY event_id
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) > 0
                    AS behind_this_batch,
                count(*) FILTER (WHERE state = 'pending') OVER (
                    PARTITION BY partner, patient_id) > 1
                    AS siblings_in_batch
         FROM (SELECT public.bench_uuid_v7() AS id, o.id AS event_id,
                      'partner-' || (o.id % 4) AS partner, o.event_name,
                      o.event -> 'patient' ->> 'id' AS patient_id,
                      'pending'::text AS state, NULL::text AS last_error
               FROM dispatcher.outbox o WHERE o.id BETWEEN $1 AND $2) AS new
     ),
     seen AS (
         SELECT new.*,
                new.state = 'pending' AND new.patient_id IS NOT NULL AND (
                    new.behind_this_batch
                    OR COALESCE(ahead.event_id < new.event_id, false))
                    AS behind,
                new.state = 'pending' AND new.patient_id IS NOT NULL AND (
                    new.siblings_in_batch
                    OR ahead.event_id IS NOT NULL
                    OR EXISTS (
                        SELECT 1 FROM dispatcher.deliveries other
                        WHERE other.partner = new.partner
                          AND other.patient_id = new.patient_id
                          AND other.state = 'waiting'
                        OFFSET 0))
                    AS in_order
         FROM new
         LEFT JOIN LATERAL (
             SELECT other.event_id FROM dispatcher.deliveries other
             WHERE new.state = 'pending'
               AND other.partner = new.partner
               AND other.patient_id = new.patient_id
               AND other.state IN ('pending', 'in_flight')
             ORDER BY other.event_id
             LIMIT 1
         ) AS ahead ON true
     ),
     queued AS MATERIALIZED (
         SELECT listed.partner
         FROM (SELECT DISTINCT partner FROM new WHERE id = ANY('{}'::uuid[])) AS listed
         CROSS JOIN LATERAL (
             SELECT 1 FROM dispatcher.deliveries due
             WHERE due.partner = listed.partner AND due.state = 'pending'
               AND due.due_at <= now()
               AND due.claim_token IS NULL
             ORDER BY due.due_at
             LIMIT 1
         ) AS due
     ),
     placed AS (
         SELECT seen.*, body.event AS body, body.traceparent,
                body.event IS NOT NULL AS claimed
         FROM seen
         LEFT JOIN LATERAL (
             SELECT o.event::text AS event, o.traceparent
             FROM dispatcher.outbox o
             WHERE seen.id = ANY('{}'::uuid[]) AND seen.state = 'pending' AND NOT seen.in_order
               AND NOT EXISTS (SELECT 1 FROM queued WHERE queued.partner = seen.partner)
               AND o.id = seen.event_id
             OFFSET 0
         ) AS body ON true
     ),
     inserted AS (
         INSERT INTO dispatcher.deliveries
             (id, event_id, partner, event_name, patient_id, state, last_error,
              due_at, ended_at, claim_token, leased_until)
         SELECT id, event_id, partner, event_name, patient_id,
                CASE WHEN behind THEN 'waiting' ELSE state END,
                last_error,
                CASE WHEN state = 'pending' THEN now() END,
                CASE WHEN state = 'pending' THEN NULL ELSE now() END,
                CASE WHEN claimed THEN gen_random_uuid() END,
                CASE WHEN claimed THEN now() + make_interval(secs => 300) END
         FROM placed
         ON CONFLICT (event_id, partner) DO NOTHING
         RETURNING id, state, claim_token IS NOT NULL AS claimed
     ),
     lease AS (
         INSERT INTO dispatcher.leases (claim_token, lease_end, deliveries)
         SELECT gen_random_uuid(), now() + make_interval(secs => 300), array_agg(id)
         FROM inserted WHERE inserted.claimed
         HAVING count(*) > 0
     )
     SELECT inserted.id, inserted.state, inserted.claimed, placed.in_order,
            placed.event_id, placed.partner, placed.event_name, 0 AS attempts_used,
            placed.body AS event, placed.traceparent,
            CASE WHEN inserted.claimed THEN
                (SELECT known.external_id FROM dispatcher.partner_patients known
                 WHERE known.partner = placed.partner
                   AND known.patient_id = placed.patient_id)
            END AS external_id
     FROM inserted JOIN placed ON placed.id = inserted.id;

PREPARE claim(int8, float8, uuid, text[], int8[]) AS
WITH RECURSIVE waiting(partner) AS (
             (SELECT partner FROM dispatcher.deliveries
              WHERE state = 'pending' AND partner IS NOT NULL
              ORDER BY partner LIMIT 1)
             UNION ALL
             SELECT (SELECT d.partner FROM dispatcher.deliveries d
                     WHERE d.state = 'pending' AND d.partner > waiting.partner
                     ORDER BY d.partner LIMIT 1)
             FROM waiting WHERE waiting.partner IS NOT NULL
         ),
     room AS (
         SELECT waiting.partner, least(COALESCE(configured.free, $1), $1) AS free
         FROM waiting
         LEFT JOIN (SELECT DISTINCT ON (partner) partner, free
                    FROM unnest($4::text[], $5::int8[]) AS listed(partner, free)
                    ORDER BY partner, free) AS configured
                ON configured.partner = waiting.partner
         WHERE waiting.partner IS NOT NULL
     ),
     candidate AS (
         SELECT chosen.id, chosen.due_at
         FROM room CROSS JOIN LATERAL (
             SELECT d.id, d.due_at
             FROM dispatcher.deliveries d
             WHERE d.partner = room.partner
               AND d.state = 'pending'
               AND d.due_at <= now()
               AND d.claim_token IS NULL
               AND NOT EXISTS (
                   SELECT 1 FROM dispatcher.deliveries earlier
                   WHERE earlier.partner = d.partner
                     AND earlier.patient_id = d.patient_id
                     AND earlier.event_id < d.event_id
                     AND earlier.state IN ('pending', 'in_flight')
                   OFFSET 0)
             ORDER BY d.due_at
             LIMIT room.free
         ) AS chosen
         WHERE room.free > 0
         ORDER BY chosen.due_at
         LIMIT 2 * $1
     ),
     locked AS (
         SELECT taken.id, taken.event_id, taken.partner, taken.patient_id
         FROM (
             SELECT d.id, d.event_id, d.partner, d.patient_id, d.state
             FROM dispatcher.deliveries d
             WHERE d.id = ANY(ARRAY(SELECT candidate.id FROM candidate))
               AND d.due_at <= now()
               AND d.claim_token IS NULL
             ORDER BY d.due_at
             LIMIT $1
             FOR UPDATE OF d SKIP LOCKED
         ) AS taken
         WHERE taken.state = 'pending'
     ),
     due AS (
         SELECT locked.id, o.event, o.traceparent,
                (SELECT known.external_id FROM dispatcher.partner_patients known
                 WHERE known.partner = locked.partner AND known.patient_id = locked.patient_id)
                    AS external_id
         FROM locked
         CROSS JOIN LATERAL (
             SELECT o.event::text AS event, o.traceparent
             FROM dispatcher.outbox o WHERE o.id = locked.event_id
             OFFSET 0
         ) AS o
     ),
     claimed AS (
         UPDATE dispatcher.deliveries d
         SET claim_token = $3::uuid,
             leased_until = now() + make_interval(secs => $2)
         WHERE d.id = ANY(ARRAY(SELECT due.id FROM due))
         RETURNING d.id, d.event_id, d.partner, d.event_name,
                   d.attempt_count - d.attempts_before_resend AS attempts_used
     ),
     lease AS (
         INSERT INTO dispatcher.leases (claim_token, lease_end, deliveries)
         SELECT $3::uuid, now() + make_interval(secs => $2), array_agg(id)
         FROM claimed
         HAVING count(*) > 0
     )
     SELECT claimed.id, claimed.event_id, claimed.partner, claimed.event_name,
            claimed.attempts_used, due.event, due.external_id, due.traceparent
     FROM claimed JOIN due ON due.id = claimed.id;

PREPARE lock(uuid[], uuid[]) AS
WITH patients AS (
         SELECT DISTINCT partner, patient_id FROM (
             SELECT partner, patient_id FROM dispatcher.deliveries
             WHERE id = ANY($2)
             OFFSET 0
         ) AS given
         WHERE partner IS NOT NULL AND patient_id IS NOT NULL
     ),
     unfinished AS (
         SELECT p.partner, p.patient_id, u.id, u.state, u.event_id
         FROM patients p CROSS JOIN LATERAL (
             (SELECT d.id, CASE WHEN d.claim_token IS NOT NULL THEN 'in_flight' ELSE d.state END AS state, d.event_id
              FROM dispatcher.deliveries d
              WHERE d.partner = p.partner AND d.patient_id = p.patient_id
                AND d.state IN ('pending', 'in_flight')
              OFFSET 0)
             UNION ALL
             (SELECT d.id, d.state, d.event_id FROM dispatcher.deliveries d
              WHERE d.partner = p.partner AND d.patient_id = p.patient_id
                AND d.state = 'waiting'
              OFFSET 0)
         ) AS u
     ),
     targets AS (
         SELECT unnest($1::uuid[]) AS id
         UNION
         SELECT id FROM unfinished
     )
     SELECT d.id FROM dispatcher.deliveries d
     WHERE d.id = ANY(ARRAY(SELECT targets.id FROM targets))
     ORDER BY d.id
     FOR NO KEY UPDATE OF d;

PREPARE write(uuid[], uuid[], text[]) AS
WITH result AS (
         SELECT r.id, r.claim_token, 'delivered'::text AS state, NULL::float8 AS due_in,
                NULL::text AS error, true AS attempted, 200 AS http_status,
                now() - interval '5 ms' AS started_at, 5 AS duration_ms, NULL::text AS error_kind,
                NULL::text AS attempt_error,
                '{"success": true, "data": {"supportProgramId": "78ef982b-00ea-39c2-a875-f549c40e92ad", "patientId": "ha61236024160af", "externalId": "4aadb997-e9fd-3909-a2f0-833b821544bd"}}'::text AS response_body,
                r.learned_external_id
         FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS r(id, claim_token, learned_external_id)
     ),
     updated AS (
         UPDATE dispatcher.deliveries d
         SET state = r.state,
             due_at = now() + make_interval(secs => r.due_in),
             claim_token = NULL,
             leased_until = NULL,
             attempt_count = d.attempt_count + r.attempted::int,
             last_status = CASE WHEN r.attempted THEN r.http_status ELSE d.last_status END,
             last_error = CASE WHEN r.attempted OR r.error IS NOT NULL THEN r.error
                               ELSE d.last_error END,
             ended_at = CASE WHEN r.state = 'pending' THEN NULL ELSE now() END,
             first_attempt_started_at = CASE WHEN r.attempted AND d.attempt_count = 0
                 THEN r.started_at ELSE d.first_attempt_started_at END,
             first_attempt_duration_ms = CASE WHEN r.attempted AND d.attempt_count = 0
                 THEN r.duration_ms ELSE d.first_attempt_duration_ms END,
             first_attempt_http_status = CASE WHEN r.attempted AND d.attempt_count = 0
                 THEN r.http_status ELSE d.first_attempt_http_status END,
             first_attempt_error_kind = CASE WHEN r.attempted AND d.attempt_count = 0
                 THEN r.error_kind ELSE d.first_attempt_error_kind END,
             first_attempt_error = CASE WHEN r.attempted AND d.attempt_count = 0
                 THEN r.attempt_error ELSE d.first_attempt_error END,
             first_attempt_response_body = CASE WHEN r.attempted AND d.attempt_count = 0
                 THEN r.response_body ELSE d.first_attempt_response_body END
         FROM result r
         WHERE d.id = ANY($1) AND d.id = r.id AND d.claim_token = r.claim_token
         RETURNING d.id, r.claim_token, d.attempt_count, d.partner, d.patient_id,
                   r.state <> 'pending' AND d.patient_id IS NOT NULL AND (
                       EXISTS (SELECT 1 FROM dispatcher.deliveries other
                               WHERE other.partner = d.partner
                                 AND other.patient_id = d.patient_id
                                 AND other.id <> d.id
                                 AND other.state IN ('pending', 'in_flight'))
                       OR EXISTS (SELECT 1 FROM dispatcher.deliveries other
                                  WHERE other.partner = d.partner
                                    AND other.patient_id = d.patient_id
                                    AND other.state = 'waiting'))
                       AS in_order
     ),
     attempt AS (
         INSERT INTO dispatcher.attempts
             (delivery_id, number, started_at, duration_ms, http_status, error_kind, error, response_body)
         SELECT u.id, u.attempt_count, r.started_at, r.duration_ms, r.http_status,
                r.error_kind, r.attempt_error, r.response_body
         FROM updated u JOIN result r ON r.id = u.id AND r.claim_token = u.claim_token
         WHERE r.attempted AND u.attempt_count > 1
     ),
     learned AS (
         INSERT INTO dispatcher.partner_patients (partner, patient_id, external_id)
         SELECT DISTINCT ON (u.partner, u.patient_id) u.partner, u.patient_id, r.learned_external_id
         FROM updated u JOIN result r ON r.id = u.id AND r.claim_token = u.claim_token
         WHERE r.learned_external_id IS NOT NULL AND u.patient_id IS NOT NULL
         ON CONFLICT (partner, patient_id)
         DO UPDATE SET external_id = excluded.external_id, learned_at = now()
         WHERE partner_patients.external_id IS DISTINCT FROM excluded.external_id
     )
     SELECT id, in_order FROM updated;

PREPARE leases(uuid[]) AS
DELETE FROM dispatcher.leases
WHERE claim_token = ANY(ARRAY(
    SELECT l.claim_token FROM dispatcher.leases l
    WHERE l.claim_token = ANY($1)
      AND NOT EXISTS (
          SELECT 1 FROM dispatcher.deliveries d
          WHERE d.id = ANY(l.deliveries) AND d.claim_token = l.claim_token
          OFFSET 0)
    FOR UPDATE SKIP LOCKED));

-- What the daemon holds after its claim (a read: no WAL): the deliveries claim $1 took,
-- their tokens, and the partner's id learned from each answer, sent only for a patient
-- not known yet (Resolution::after_attempt sends an unchanged id not at all).
PREPARE held(uuid) AS
SELECT array_agg(d.id ORDER BY d.id) AS ids, array_agg(d.claim_token ORDER BY d.id) AS toks,
       array_agg(CASE WHEN k.external_id IS NULL THEN 'ext-' || md5(d.patient_id) END ORDER BY d.id) AS learned,
       ARRAY[$1] AS claims
FROM dispatcher.deliveries d
LEFT JOIN dispatcher.partner_patients k ON k.partner = d.partner AND k.patient_id = d.patient_id
WHERE d.id = ANY((SELECT deliveries FROM dispatcher.leases WHERE claim_token = $1)::uuid[]);
