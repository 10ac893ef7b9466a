-- API tokens (ADR 0014): only the SHA-256 of a token is stored, never the token. Creating and
-- revoking one append an event on the 'system' stream in the same statement, with the name, role
-- and display prefix in meta and nothing derived from the secret. `last_used_at` is coordination,
-- not history (like a heartbeat, ADR 0005): it is not an event.

-- name: create_token
-- Insert a token (by its hash) and append token.created.
WITH t AS (
    INSERT INTO pgsched.api_token (name, role, token_sha256, prefix, created_at, expires_at)
    VALUES (%(name)s, %(role)s, %(token_sha256)s::bytea, %(prefix)s,
            coalesce(%(now)s::timestamptz, now()), %(expires_at)s::timestamptz)
    RETURNING id, name, role, prefix, created_at, expires_at, revoked_at, last_used_at
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
    SELECT coalesce(%(now)s::timestamptz, now()), 'system', t.id, 'token.created', %(actor)s,
           '{}'::jsonb,
           %(meta)s::jsonb || jsonb_build_object('token', t.name, 'role', t.role,
                                                'prefix', t.prefix, 'expires_at', t.expires_at)
    FROM t
)
SELECT * FROM t;

-- name: revoke_token
-- Revoke a live token by name and append token.revoked; no row back when there is none.
WITH t AS (
    UPDATE pgsched.api_token
    SET revoked_at = coalesce(%(now)s::timestamptz, now())
    WHERE name = %(name)s AND revoked_at IS NULL
    RETURNING id, name, role, prefix, created_at, expires_at, revoked_at, last_used_at
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
    SELECT coalesce(%(now)s::timestamptz, now()), 'system', t.id, 'token.revoked', %(actor)s,
           '{}'::jsonb,
           %(meta)s::jsonb || jsonb_build_object('token', t.name, 'role', t.role,
                                                'prefix', t.prefix)
    FROM t
)
SELECT * FROM t;

-- name: list_tokens
-- Every token's metadata, without its hash.
SELECT id, name, role, prefix, created_at, expires_at, revoked_at, last_used_at,
       revoked_at IS NULL AND (expires_at IS NULL OR expires_at > coalesce(%(now)s::timestamptz, now()))
           AS active
FROM pgsched.api_token
ORDER BY name;

-- name: authenticate_token
-- The live token with this hash, if any; records the use at most once a minute so that a busy
-- client does not turn every request into a write.
WITH t AS (
    SELECT id, name, role, prefix, token_sha256, last_used_at
    FROM pgsched.api_token
    WHERE token_sha256 = %(token_sha256)s::bytea
      AND revoked_at IS NULL
      AND (expires_at IS NULL OR expires_at > coalesce(%(now)s::timestamptz, now()))
), used AS (
    UPDATE pgsched.api_token a
    SET last_used_at = coalesce(%(now)s::timestamptz, now())
    FROM t
    WHERE a.id = t.id
      AND (t.last_used_at IS NULL
           OR t.last_used_at < coalesce(%(now)s::timestamptz, now()) - interval '1 minute')
)
SELECT id, name, role, prefix, token_sha256 FROM t;

-- name: token_is_live
-- Whether a token (by id) is still neither revoked nor expired: long-lived streams re-check.
SELECT EXISTS (
    SELECT 1 FROM pgsched.api_token
    WHERE id = %(id)s::bigint AND revoked_at IS NULL
      AND (expires_at IS NULL OR expires_at > coalesce(%(now)s::timestamptz, now()))
) AS live;
