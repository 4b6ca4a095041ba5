-- Support resent the delivery after this attempt: the attempt closed a round, whatever
-- came of it, and was not retried by the dispatcher. One mark per resend, kept with the
-- attempt, so the 24-hour chart and a delivery's timeline read the same boundaries
-- (the delivery's attempts_before_resend keeps only the last resend's).
ALTER TABLE dispatcher.attempts ADD COLUMN resent_after boolean NOT NULL DEFAULT false;

-- The resends before this column, from support's record: each marks the last attempt
-- started before it (a resend only takes a delivery that has ended, so none was on the
-- wire). support_actions is small; attempts are found by their primary key.
UPDATE dispatcher.attempts a
SET resent_after = true
FROM (
    SELECT DISTINCT s.delivery_id, last.number
    FROM dispatcher.support_actions s
    CROSS JOIN LATERAL (
        SELECT number FROM dispatcher.attempts
        WHERE delivery_id = s.delivery_id AND started_at <= s.at
        ORDER BY number DESC
        LIMIT 1
    ) last
    WHERE s.action = 'resend'
) resent
WHERE a.delivery_id = resent.delivery_id AND a.number = resent.number;
