-- Layout f: layout e's statements, routing's insert into the queue without ON CONFLICT and
-- the learned external id sent only when it changed (see 60_lean.sql).
-- Layout e (layout d, the only attempt of a delivery ended at its first try kept in its
-- history row): layout d's statements with the record's history and attempt parts changed.
-- Layout d: layout c's statements but
-- for the ON CONFLICT on the history (placeholders), which has no unique (event, partner) key. Derived from layout b's, itself from layout a's, migrations 0001-0016): the daemon's statements from
-- src/store/queue/{mod.rs,claim.rs,order.rs,record.rs}, verbatim but for where the
-- routing batch's arrays come from (the outbox rows of an id range, instead of arrays the
-- daemon built from the same rows) and the record's arrays (passed by the driver).
-- routing insert: $1..$2 outbox ids, $3 = offer every delivery (routing claims at insert)
PREPARE route(int8, int8, bool, uuid) AS
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
                        SELECT 1 FROM dispatcher.queue other
                        WHERE other.partner = new.partner
                          AND other.patient_id = new.patient_id
                          AND other.state = 'waiting'))
                    AS in_order
         FROM new
         LEFT JOIN LATERAL (
             SELECT other.event_id FROM dispatcher.queue other
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
         FROM (SELECT DISTINCT partner FROM new WHERE $3) AS listed
         WHERE EXISTS (
             SELECT 1 FROM dispatcher.queue due
             WHERE due.partner = listed.partner AND due.state = 'pending'
               AND due.due_at <= now()
             ORDER BY due.due_at)
     ),
     placed AS (
         SELECT seen.*, body.event AS body, body.traceparent,
                body.event IS NOT NULL AS claimed
         FROM seen
         LEFT JOIN LATERAL (
             SELECT o.event::text AS event, o.traceparent
             FROM dispatcher.outbox o
             WHERE $3 AND seen.state = 'pending' AND NOT seen.in_order
               AND NOT EXISTS (SELECT 1 FROM queued WHERE queued.partner = seen.partner)
               AND o.id = seen.event_id
             OFFSET 0
         ) AS body ON true
     ),
     inserted AS (
         INSERT INTO dispatcher.queue
             (id, event_id, partner, event_name, patient_id, state,
              due_at, claim_token, leased_until)
         SELECT id, event_id, partner, event_name, patient_id,
                CASE WHEN behind THEN 'waiting'
                     WHEN claimed THEN 'in_flight'
                     ELSE state END,
                CASE WHEN NOT behind THEN now() END,
                CASE WHEN claimed THEN $4::uuid END,
                CASE WHEN claimed THEN now() + make_interval(secs => 300) END
         FROM placed
         WHERE state = 'pending' AND partner IS NOT NULL
           -- ended already (the queue's key sees only unfinished ones)
           AND NOT EXISTS (SELECT 1 FROM dispatcher.deliveries h
                           WHERE h.event_id = placed.event_id AND h.partner = placed.partner)
           AND NOT EXISTS (SELECT 1 FROM dispatcher.queue q
                           WHERE q.event_id = placed.event_id AND q.partner = placed.partner)
         RETURNING id, state
     ),
     -- placeholders (unrouted, invalid) end at routing: straight to the history
     placeholders AS (
         INSERT INTO dispatcher.deliveries
             (id, event_id, partner, event_name, patient_id, state, last_error, ended_at)
         SELECT id, event_id, partner, event_name, patient_id, state, last_error, now()
         FROM placed WHERE (state <> 'pending' OR partner IS NULL)
           AND NOT EXISTS (SELECT 1 FROM dispatcher.deliveries h
                           WHERE h.event_id = placed.event_id
                             AND h.partner IS NOT DISTINCT FROM placed.partner)
     ),
     lease AS (
         INSERT INTO dispatcher.queue_leases (claim_token, lease_end, ids)
         SELECT $4::uuid, now() + make_interval(secs => 300), array_agg(id)
         FROM inserted WHERE state = 'in_flight'
         HAVING count(*) > 0
     )
     SELECT inserted.id, inserted.state, placed.in_order,
            placed.event_id, placed.partner, placed.event_name, 0 AS attempts_used,
            placed.body AS event, placed.traceparent,
            CASE WHEN inserted.state = 'in_flight' THEN
                (SELECT known.external_id FROM dispatcher.partner_patients known
                 WHERE known.partner = placed.partner
                   AND known.patient_id = placed.patient_id)
            END AS external_id
     FROM inserted JOIN placed ON placed.id = inserted.id;

-- claim.rs CLAIM_DUE, verbatim
PREPARE claim(int8, float8, uuid, text[], int8[]) AS
WITH RECURSIVE waiting(partner) AS (
             (SELECT partner FROM dispatcher.queue
              WHERE due_at IS NOT NULL
              ORDER BY partner LIMIT 1)
             UNION ALL
             SELECT (SELECT d.partner FROM dispatcher.queue d
                     WHERE d.due_at IS NOT NULL AND d.partner > waiting.partner
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
             FROM dispatcher.queue d
             WHERE d.partner = room.partner
               AND d.due_at IS NOT NULL
               AND d.due_at <= now()
               AND d.state = 'pending'
               AND NOT EXISTS (
                   SELECT 1 FROM dispatcher.queue earlier
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
         SELECT d.id, d.event_id, d.partner, d.patient_id
         FROM dispatcher.queue d
         WHERE d.id = ANY(ARRAY(SELECT candidate.id FROM candidate))
           AND d.state = 'pending' AND d.due_at <= now()
         ORDER BY d.due_at
         LIMIT $1
         FOR UPDATE OF d SKIP LOCKED
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
         UPDATE dispatcher.queue d
         SET state = 'in_flight',
             leased_until = now() + make_interval(secs => $2),
             claim_token = $3::uuid
         WHERE d.id = ANY(ARRAY(SELECT due.id FROM due))
         RETURNING d.id, d.event_id, d.partner, d.event_name,
                   d.attempt_count - d.attempts_before_resend AS attempts_used
     ),
     lease AS (
         INSERT INTO dispatcher.queue_leases (claim_token, lease_end, ids)
         SELECT $3::uuid, now() + make_interval(secs => $2), array_agg(id)
         FROM claimed
         HAVING count(*) > 0
     )
     SELECT claimed.id, claimed.event_id, claimed.partner, claimed.event_name,
            claimed.attempts_used, due.event, due.external_id, due.traceparent
     FROM claimed JOIN due ON due.id = claimed.id;

-- order.rs lock(rows, patients_of), verbatim
PREPARE lock(uuid[], uuid[]) AS
WITH patients AS (
         SELECT DISTINCT partner, patient_id FROM dispatcher.queue
         WHERE id = ANY($2) AND partner IS NOT NULL AND patient_id IS NOT NULL
     ),
     unfinished AS (
         SELECT p.partner, p.patient_id, u.id, u.state, u.event_id
         FROM patients p CROSS JOIN LATERAL (
             (SELECT d.id, d.state, d.event_id FROM dispatcher.queue d
              WHERE d.partner = p.partner AND d.patient_id = p.patient_id
                AND d.state IN ('pending', 'in_flight')
              OFFSET 0)
             UNION ALL
             (SELECT d.id, d.state, d.event_id FROM dispatcher.queue d
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
     SELECT d.id FROM dispatcher.queue d
     WHERE d.id = ANY(ARRAY(SELECT targets.id FROM targets))
     ORDER BY d.id
     FOR NO KEY UPDATE OF d;

-- record.rs write: every result a 200 with the partner's answer (as the bench's nginx
-- gives), one attempt each, the partner's id for the patient learned from each answer.
-- $1 ids, $2 claim tokens, $3 learned external ids; the other arrays are built here.
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
     -- an ended delivery leaves the queue ...
     ended AS (
         DELETE FROM dispatcher.queue d
         USING result r
         WHERE d.id = r.id AND d.claim_token = r.claim_token AND d.state = 'in_flight'
           AND r.state <> 'pending'
         RETURNING d.id, d.event_id, d.partner, d.event_name, d.patient_id, r.state,
                   d.attempt_count + r.attempted::int AS attempt_count, d.attempts_before_resend,
                   CASE WHEN r.attempted THEN r.http_status ELSE d.last_status END AS last_status,
                   CASE WHEN r.attempted OR r.error IS NOT NULL THEN r.error
                        ELSE d.last_error END AS last_error,
                   d.created_at, r.claim_token,
                   d.patient_id IS NOT NULL AND (
                       EXISTS (SELECT 1 FROM dispatcher.queue other
                               WHERE other.partner = d.partner
                                 AND other.patient_id = d.patient_id
                                 AND other.id <> d.id
                                 AND other.state IN ('pending', 'in_flight'))
                       OR EXISTS (SELECT 1 FROM dispatcher.queue other
                                  WHERE other.partner = d.partner
                                    AND other.patient_id = d.patient_id
                                    AND other.state = 'waiting'))
                       AS in_order
     ),
     -- ... into the history, once; ended at its first try, with that attempt
     history AS (
         INSERT INTO dispatcher.deliveries
             (id, event_id, partner, event_name, patient_id, state, attempt_count,
              attempts_before_resend, last_status, last_error, created_at, ended_at,
              only_attempt_started_at, only_attempt_duration_ms, only_attempt_error_kind,
              only_attempt_error, only_attempt_response_body)
         SELECT e.id, e.event_id, e.partner, e.event_name, e.patient_id, e.state, e.attempt_count,
                e.attempts_before_resend, e.last_status, e.last_error, e.created_at, now(),
                r.started_at, r.duration_ms, r.error_kind, r.attempt_error, r.response_body
         FROM ended e LEFT JOIN result r ON r.id = e.id AND r.attempted AND e.attempt_count = 1
     ),
     -- a retry stays in the queue
     retried AS (
         UPDATE dispatcher.queue d
         SET state = r.state,
             due_at = now() + make_interval(secs => r.due_in),
             claim_token = NULL,
             leased_until = NULL,
             attempt_count = d.attempt_count + r.attempted::int,
             last_status = CASE WHEN r.attempted THEN r.http_status ELSE d.last_status END,
             last_error = CASE WHEN r.attempted OR r.error IS NOT NULL THEN r.error
                               ELSE d.last_error END
         FROM result r
         WHERE d.id = r.id AND d.claim_token = r.claim_token AND d.state = 'in_flight'
           AND r.state = 'pending'
         RETURNING d.id, r.claim_token, d.attempt_count, d.partner, d.patient_id, false AS in_order
     ),
     updated AS (
         SELECT id, claim_token, attempt_count, partner, patient_id, in_order FROM ended
         UNION ALL
         SELECT id, claim_token, attempt_count, partner, patient_id, in_order FROM retried
     ),
     attempt AS (
         INSERT INTO dispatcher.attempts
             (delivery_id, number, started_at, duration_ms, http_status, error_kind, error, response_body)
         SELECT u.id, u.attempt_count, r.started_at, r.duration_ms, r.http_status,
                r.error_kind, r.attempt_error, r.response_body
         FROM updated u JOIN result r ON r.id = u.id AND r.claim_token = u.claim_token
         WHERE r.attempted
           AND NOT (u.attempt_count = 1 AND u.id IN (SELECT id FROM ended))
     ),
     learned AS (
         INSERT INTO dispatcher.partner_patients (partner, patient_id, external_id)
         SELECT DISTINCT ON (u.partner, u.patient_id) u.partner, u.patient_id, r.learned_external_id
         FROM updated u JOIN result r ON r.id = u.id AND r.claim_token = u.claim_token
         WHERE r.learned_external_id IS NOT NULL AND u.patient_id IS NOT NULL
         ON CONFLICT (partner, patient_id)
         DO UPDATE SET external_id = excluded.external_id, learned_at = now()
     )
     SELECT id, in_order FROM updated;

-- What the daemon holds after its claims: the in-flight deliveries of 100 events, found
-- on the (event, partner) key (a read: no WAL; it touches only pages the record writes).
PREPARE held(int8) AS
SELECT array_agg(id ORDER BY id) AS ids, array_agg(claim_token ORDER BY id) AS toks,
       array_agg(CASE WHEN EXISTS (SELECT 1 FROM dispatcher.partner_patients k
                                  WHERE k.partner = q0.partner AND k.patient_id = q0.patient_id
                                    AND k.external_id = 'ext-' || md5(q0.patient_id))
                      THEN NULL ELSE 'ext-' || md5(patient_id) END ORDER BY id) AS learned
FROM dispatcher.queue q0 WHERE event_id BETWEEN $1 AND $1 + 99 AND state = 'in_flight';

-- Interleaved runs (MODE cycle): the deliveries the claim with token $1 took, from its lease.
PREPARE held_claimed(uuid) AS
SELECT array_agg(id ORDER BY id) AS ids, array_agg(claim_token ORDER BY id) AS toks,
       array_agg(CASE WHEN EXISTS (SELECT 1 FROM dispatcher.partner_patients k
                                  WHERE k.partner = q0.partner AND k.patient_id = q0.patient_id
                                    AND k.external_id = 'ext-' || md5(q0.patient_id))
                      THEN NULL ELSE 'ext-' || md5(patient_id) END ORDER BY id) AS learned
FROM dispatcher.queue q0
WHERE id = ANY(ARRAY(SELECT unnest(ids) FROM dispatcher.queue_leases WHERE claim_token = $1))
  AND claim_token = $1;
