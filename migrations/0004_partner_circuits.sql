-- Each partner's circuit breaker (see src/delivery/breaker.rs; its SQL is in src/store/circuits.rs) as the daemons last reported it:
-- what `dispatcher deliveries list`, the API and the metrics show, and what a daemon
-- starts from after a restart. Each daemon decides on its own copy in memory and writes
-- its changes here, so with several daemons a row holds the latest change any of them
-- made.
CREATE TABLE dispatcher.partner_circuits (
    partner              text        PRIMARY KEY,
    state                text        NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    -- Failed attempts in a row: no answer (timeout, connection, TLS) or an answer that is
    -- retried (5xx, 429, 408, ...). Any other answer resets it.
    consecutive_failures integer     NOT NULL DEFAULT 0,
    -- While not closed: when the circuit opened, and when one probe request may go out.
    opened_at            timestamptz,
    retry_at             timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
