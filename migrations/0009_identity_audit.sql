-- Who uses the admin server, and what they did (src/admin/session.rs, src/store/audit.rs,
-- src/store/tokens.rs). Version 10: 0008 and 0009 are taken by work beside this one.

-- A support person signed in to the page, through the company's identity provider or
-- the break-glass token. The browser holds a random value; only its SHA-256 is kept, so
-- a copy of this table signs nobody in. Signing out deletes the row.
CREATE TABLE dispatcher.admin_sessions (
    id_hash    bytea       PRIMARY KEY,
    -- Who, in the record's words: the provider's user name (or e-mail), or
    -- `break-glass:<name>`; and the provider's stable subject id.
    actor      text        NOT NULL,
    subject    text,
    role       text        NOT NULL CHECK (role IN ('viewer', 'support', 'operator')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX admin_sessions_expiry ON dispatcher.admin_sessions (expires_at);

-- A sign-in on its way through the identity provider: the OAuth `state` (hashed), the
-- ID token's nonce and the PKCE verifier. Taken (deleted) by the callback, so a `state`
-- works once.
CREATE TABLE dispatcher.sign_in_requests (
    state_hash    bytea       PRIMARY KEY,
    nonce         text        NOT NULL,
    pkce_verifier text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Personal API tokens for scripts (`dispatcher tokens create`): shown once, kept as the
-- SHA-256 of the token (256 random bits, so no salt or slow hash is needed).
CREATE TABLE dispatcher.api_tokens (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL,
    role         text        NOT NULL CHECK (role IN ('viewer', 'support', 'operator')),
    token_hash   bytea       NOT NULL UNIQUE,
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    revoked_by   text,
    last_used_at timestamptz
);

-- A name picks one live token (to revoke it by name); a revoked one frees its name.
CREATE UNIQUE INDEX api_tokens_live_name ON dispatcher.api_tokens (name)
    WHERE revoked_at IS NULL;

-- The audit trail: every sign-in and refusal, every read that shows partners' answers or
-- a body, every action. Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE to
-- everyone, the owner included (only dispatcher.prune_audit_log deletes, rows older than
-- `[retention] audit_days`), and `dispatcher db grants` gives the daemon's role SELECT
-- and INSERT only. The time and the database role are set here, not by the writer.
CREATE TABLE dispatcher.audit_log (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    -- Who: the provider's user name, `token:<name>`, `break-glass:<name>`, `cli:<user>`.
    actor      text        NOT NULL,
    -- The provider's subject id, or the API token's id.
    subject    text,
    role       text        CHECK (role IN ('viewer', 'support', 'operator')),
    via        text        NOT NULL CHECK (via IN ('page', 'api', 'cli')),
    action     text        NOT NULL,
    -- What was touched: a delivery id, a token's name, a list's filters.
    target     text,
    outcome    text        NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    -- Why it was refused or failed, in words; never a secret.
    reason     text,
    -- The PostgreSQL role that wrote the row (current_user): a CLI's $USER is the
    -- caller's say-so, this is not.
    db_role    text        NOT NULL DEFAULT current_user
);

CREATE INDEX audit_log_at ON dispatcher.audit_log (at);
CREATE INDEX audit_log_actor ON dispatcher.audit_log (actor, at);
CREATE INDEX audit_log_target ON dispatcher.audit_log (target, at);

CREATE FUNCTION dispatcher.audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.at := now();
        NEW.db_role := current_user;
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' AND current_setting('dispatcher.pruning_audit_log', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'dispatcher.audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_stamped
    BEFORE INSERT ON dispatcher.audit_log
    FOR EACH ROW EXECUTE FUNCTION dispatcher.audit_log_append_only();
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON dispatcher.audit_log
    FOR EACH ROW EXECUTE FUNCTION dispatcher.audit_log_append_only();
CREATE TRIGGER audit_log_not_truncated
    BEFORE TRUNCATE ON dispatcher.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION dispatcher.audit_log_append_only();

-- Retention of the trail: deletes up to `batch` rows older than `keep_days` (never fewer
-- than 365 days, whatever the caller asks). Runs with its owner's rights, so the
-- daemon's role prunes without DELETE on the table; the setting it holds while it deletes
-- is what the trigger lets through (set in the body: PostgreSQL lets only a superuser
-- attach a custom setting to a function).
CREATE FUNCTION dispatcher.prune_audit_log(keep_days integer, batch integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    deleted bigint;
BEGIN
    PERFORM set_config('dispatcher.pruning_audit_log', 'on', true);
    WITH gone AS (
        DELETE FROM dispatcher.audit_log
        WHERE id IN (
            SELECT id FROM dispatcher.audit_log
            WHERE at < now() - make_interval(days => greatest(keep_days, 365))
            ORDER BY at
            LIMIT batch)
        RETURNING 1)
    SELECT count(*) INTO deleted FROM gone;
    PERFORM set_config('dispatcher.pruning_audit_log', 'off', true);
    RETURN deleted;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.prune_audit_log(integer, integer) FROM PUBLIC;
