-- Question 3: a few deliveries for q3_concurrency.sh, the same in both layouts.
-- Patient pA to partner-0: X1 pending and claimed (token T1), X2 waiting behind it.
-- Patient pB to partner-0: E1 delivered yesterday. Patient pC to partner-1: U1 pending, due.
-- Patient pD to partner-2: R1 claimed, its lease run out, at its last attempt.
CREATE OR REPLACE FUNCTION public.bench_uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT gen_random_uuid() $$;
TRUNCATE dispatcher.outbox, dispatcher.attempts, dispatcher.leases CASCADE;
DELETE FROM dispatcher.deliveries;
INSERT INTO dispatcher.outbox (id, event_name, event) OVERRIDING SYSTEM VALUE
SELECT g, 'HelpAround.Patient.CompleteEnrollment', '{"patient": {"id": "p"}}' FROM generate_series(1, 5) g;
INSERT INTO dispatcher.deliveries (id, event_id, partner, event_name, patient_id, state, due_at,
                                   claim_token, leased_until, attempt_count, ended_at)
VALUES ('00000000-0000-7000-8000-0000000000a1', 1, 'partner-0', 'e', 'pA', 'pending', now(),
        '00000000-0000-4000-8000-0000000000f1', now() + interval '5 min', 0, NULL),
       ('00000000-0000-7000-8000-0000000000a2', 2, 'partner-0', 'e', 'pA', 'waiting', now(), NULL, NULL, 0, NULL),
       ('00000000-0000-7000-8000-0000000000b1', 3, 'partner-0', 'e', 'pB', 'delivered', NULL, NULL, NULL, 1,
        now() - interval '1 day'),
       ('00000000-0000-7000-8000-0000000000c1', 4, 'partner-1', 'e', 'pC', 'pending', now() - interval '1 s',
        NULL, NULL, 0, NULL),
       ('00000000-0000-7000-8000-0000000000d1', 5, 'partner-2', 'e', 'pD', 'pending', now(),
        '00000000-0000-4000-8000-0000000000f2', now() - interval '1 s', 4, NULL);
INSERT INTO dispatcher.leases VALUES
    ('00000000-0000-4000-8000-0000000000f1', now() + interval '5 min', '{00000000-0000-7000-8000-0000000000a1}'),
    ('00000000-0000-4000-8000-0000000000f2', now() - interval '1 s', '{00000000-0000-7000-8000-0000000000d1}');
