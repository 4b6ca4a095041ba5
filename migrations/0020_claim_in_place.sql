-- The claim becomes a HOT update (issue 22). Before, it moved a delivery to `in_flight`
-- and its `due_at` to the lease's end: both are in indexes (`deliveries_pending`'s and
-- the order's predicates, `deliveries_in_flight`'s key), so every claim wrote a new
-- version of the row elsewhere and an entry in each of the table's indexes (714 B of WAL
-- a delivery, docs/layout-study). Now a claimed delivery stays `pending`, keeps the
-- `due_at` it fell due at, and holds a claim token and a lease's end (`leased_until`),
-- neither indexed: the claim changes no indexed column, so PostgreSQL writes the new
-- version beside the old one, with no index entry, where the page has room. Support and
-- the metrics call a pending delivery with a claim token "in flight", as before.
--
-- Expired leases cannot be found by an index on the lease (writing it would end the
-- HOT update), so each claim writes one row to `dispatcher.leases`: its token, when it
-- ends, the deliveries it took. The rescuer reads those by their end.
--
-- `fillfactor = 50` leaves each new page of `deliveries` half empty for the claims'
-- versions (91% of the claims in the `drain` bench were HOT; a claimed version is 24 B
-- longer, so a full half page does not always hold them all); pages written before keep
-- what they have.
--
-- A daemon from before 0020 still running beside this version claims by writing
-- `in_flight` and the lease's end into `due_at`, and its claim takes any pending row that
-- is due, claimed or not. The triggers below put what it writes in the new form (see
-- them) and leave out of its claims a row this version has claimed, so nothing is sent
-- twice. Its rescuer looks for `in_flight` rows, finds none, and leaves its lost claims
-- to this version's; `deliveries_in_flight` stays (empty) so that its looks for them
-- stay cheap. A later migration drops the triggers and that index, once no daemon from
-- before 0020 can be running. The rows in flight when this runs are moved to the new
-- form with their token and lease, so whichever daemon holds them records them.
--
-- The transaction takes ACCESS EXCLUSIVE on `deliveries` for a moment (catalog only, and
-- the in-flight rows' update), under the migration's lock_timeout. A run stopped in the
-- validation starts this file again: each step does nothing the second time.
ALTER TABLE dispatcher.deliveries ADD COLUMN IF NOT EXISTS leased_until timestamptz;
ALTER TABLE dispatcher.deliveries SET (fillfactor = 50);

CREATE TABLE IF NOT EXISTS dispatcher.leases (
    claim_token uuid PRIMARY KEY,
    lease_end   timestamptz NOT NULL,
    deliveries  uuid[] NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_end ON dispatcher.leases (lease_end);

-- 0017's constraint (a claim token only while `in_flight`) goes before the rows in
-- flight are moved to the new form; its replacement comes after them.
ALTER TABLE dispatcher.deliveries DROP CONSTRAINT IF EXISTS deliveries_claimed_in_flight;

UPDATE dispatcher.deliveries
SET claim_token = COALESCE(claim_token, gen_random_uuid())
WHERE state = 'in_flight' AND claim_token IS NULL;
INSERT INTO dispatcher.leases (claim_token, lease_end, deliveries)
SELECT claim_token, max(due_at), array_agg(id)
FROM dispatcher.deliveries
WHERE state = 'in_flight'
GROUP BY claim_token
ON CONFLICT (claim_token) DO NOTHING;
-- Their `due_at` (the lease's end, as the claim before 0020 wrote it) stays: the time
-- each fell due is gone. Nothing reads a claimed one's `due_at` until it is recorded or
-- rescued, which set it again.
UPDATE dispatcher.deliveries
SET state = 'pending', leased_until = due_at
WHERE state = 'in_flight';

-- What a daemon from before 0020 writes, put in this version's terms:
-- - its claim of an unclaimed delivery (`in_flight`, the lease's end in `due_at`) is
--   stored as this version's claim, with a lease row for the rescuer;
-- - its claim, cancel or settle (`waiting`) of a delivery already claimed is skipped
--   (the row is left as it is and the statement does not return it): a claimed delivery
--   finishes, as this version's own cancel and settle leave it to;
-- - its routing's claim as it inserts is stored as a plain pending delivery, due now,
--   for a claim (its router sends only what comes back `in_flight`, so it does not send
--   this one, and a claim by either version takes it).
-- SECURITY DEFINER: the old daemon's role was granted nothing on `leases` (grants come
-- after `migrate`), and its claims must not fail meanwhile.
CREATE OR REPLACE FUNCTION dispatcher.claim_from_before_0020() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, dispatcher AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.state := 'pending';
        NEW.claim_token := NULL;
        NEW.leased_until := NULL;
        NEW.due_at := now();
        RETURN NEW;
    END IF;
    IF OLD.claim_token IS NOT NULL THEN
        RETURN NULL;
    END IF;
    NEW.state := 'pending';
    NEW.claim_token := COALESCE(NEW.claim_token, gen_random_uuid());
    NEW.leased_until := NEW.due_at;
    NEW.due_at := OLD.due_at;
    INSERT INTO dispatcher.leases AS l (claim_token, lease_end, deliveries)
    VALUES (NEW.claim_token, NEW.leased_until, ARRAY[NEW.id])
    ON CONFLICT (claim_token) DO UPDATE
        SET deliveries = l.deliveries || excluded.deliveries,
            lease_end = greatest(l.lease_end, excluded.lease_end);
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS deliveries_claimed_before_0020 ON dispatcher.deliveries;
DROP TRIGGER IF EXISTS deliveries_routed_before_0020 ON dispatcher.deliveries;
CREATE TRIGGER deliveries_claimed_before_0020
    BEFORE UPDATE OF state ON dispatcher.deliveries
    FOR EACH ROW WHEN (NEW.state = 'in_flight'
                       OR (NEW.state IN ('cancelled', 'waiting') AND OLD.claim_token IS NOT NULL))
    EXECUTE FUNCTION dispatcher.claim_from_before_0020();
CREATE TRIGGER deliveries_routed_before_0020
    BEFORE INSERT ON dispatcher.deliveries
    FOR EACH ROW WHEN (NEW.state = 'in_flight')
    EXECUTE FUNCTION dispatcher.claim_from_before_0020();

-- A claim token means claimed, which is now `pending` with a token.
ALTER TABLE dispatcher.deliveries DROP CONSTRAINT IF EXISTS deliveries_claimed_pending;
ALTER TABLE dispatcher.deliveries
    ADD CONSTRAINT deliveries_claimed_pending CHECK (claim_token IS NULL OR state = 'pending') NOT VALID;

-- dispatcher:no-transaction

ALTER TABLE dispatcher.deliveries VALIDATE CONSTRAINT deliveries_claimed_pending;
