-- Common seed for every layout: :n events in the outbox (the contract's enrollment
-- example, 1.46 KB of JSON, a patient each), 20% of (partner, patient)s already known in
-- partner_patients. Run after the schema. psql -v n=50000 -v body="$(cat event.json)"
CREATE OR REPLACE FUNCTION public.bench_uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
           PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
           FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;
-- Producers' inserts are not measured: they happen before the first checkpoint.
INSERT INTO dispatcher.outbox (event_name, event)
SELECT 'HelpAround.Patient.CompleteEnrollment',
       jsonb_set(:'body'::jsonb, '{patient,id}', to_jsonb('pt' || lpad(p::text, 9, '0')))
FROM generate_series(1, :n) AS p;
-- One delivery per event, to one of 4 partners by event id; 20% of patients known.
INSERT INTO dispatcher.partner_patients (partner, patient_id, external_id)
SELECT 'partner-' || (o.id % 4), o.event -> 'patient' ->> 'id',
       'ext-' || md5(o.event -> 'patient' ->> 'id')
FROM dispatcher.outbox o WHERE o.id % 5 = 0;
VACUUM (ANALYZE) dispatcher.outbox;
VACUUM (ANALYZE) dispatcher.partner_patients;
