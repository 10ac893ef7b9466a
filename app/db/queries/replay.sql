-- Replay: fold each stream's event data in id order (pgsched.jsonb_merge) and compare it with, or
-- write it over, the projection tables. ADR 0005 explains why this rebuilds them exactly.

-- name: diff_schedules
-- Schedules whose row differs from the fold of their events (either side may be missing).
WITH expected AS (
    SELECT e.stream_id AS id,
           to_jsonb(jsonb_populate_record(NULL::pgsched.schedule,
                                          pgsched.jsonb_merge(e.data ORDER BY e.id))) AS state
    FROM pgsched.event e
    WHERE e.stream = 'schedule'
    GROUP BY e.stream_id
), actual AS (
    SELECT s.id, to_jsonb(s) AS state FROM pgsched.schedule s
)
SELECT coalesce(x.id, a.id) AS id, x.state AS expected, a.state AS actual
FROM expected x
FULL JOIN actual a ON a.id = x.id
WHERE x.state IS DISTINCT FROM a.state
ORDER BY 1;

-- name: diff_runs
-- Runs whose row differs from the fold of their events. A running run's lease expiry moves with
-- every heartbeat and is not history, so it is left out of the comparison. Runs whose month was
-- retired are not expected (their events outlive them by design). `occurrence` is generated
-- from `adhoc` (migration 0019), which is compared; runs created before it have no such key.
WITH expected AS (
    SELECT e.stream_id AS id,
           to_jsonb(jsonb_populate_record(NULL::pgsched.run,
                                          pgsched.jsonb_merge(e.data ORDER BY e.id)))
           - 'occurrence' AS state
    FROM pgsched.event e
    WHERE e.stream = 'run'
    GROUP BY e.stream_id
), actual AS (
    SELECT r.id, to_jsonb(r) - 'occurrence' AS state FROM pgsched.run r
), retained AS (
    SELECT min(month_start) AS since FROM pgsched.month_partitions_v1('pgsched.run')
)
SELECT coalesce(x.id, a.id) AS id, x.state AS expected, a.state AS actual
FROM expected x
FULL JOIN actual a ON a.id = x.id
CROSS JOIN retained
WHERE (x.id IS NULL OR (x.state ->> 'due_at')::timestamptz >= retained.since)
  AND CASE WHEN x.state ->> 'state' = 'running' THEN x.state - 'lease_expires_at' ELSE x.state END
      IS DISTINCT FROM
      CASE WHEN a.state ->> 'state' = 'running' THEN a.state - 'lease_expires_at' ELSE a.state END
ORDER BY 1;

-- name: clear_projections
-- Rebuild starts from nothing. Identity sequences keep counting, so new ids never reuse old ones.
TRUNCATE pgsched.run, pgsched.schedule;

-- name: rebuild_schedules
-- Write every schedule as the fold of its events.
INSERT INTO pgsched.schedule OVERRIDING SYSTEM VALUE
SELECT (jsonb_populate_record(NULL::pgsched.schedule, f.state)).*
FROM (SELECT pgsched.jsonb_merge(e.data ORDER BY e.id) AS state
      FROM pgsched.event e
      WHERE e.stream = 'schedule'
      GROUP BY e.stream_id) f;

-- name: rebuild_runs
-- Write every run whose month is still retained as the fold of its events. Every column but
-- the generated `occurrence` (PostgreSQL computes it; a value for it is refused), by name.
INSERT INTO pgsched.run
    (id, schedule_id, due_at, adhoc, origin, state, queue, priority, available_at, attempt,
     max_attempts, lease_token, lease_expires_at, worker_id, started_at, finished_at, outcome,
     cancel_requested, idempotency_key, trace_context, created_at, payload, timeout_seconds,
     waits_for, wait_until)
OVERRIDING SYSTEM VALUE
SELECT p.id, p.schedule_id, p.due_at, p.adhoc, p.origin, p.state, p.queue, p.priority,
       p.available_at, p.attempt, p.max_attempts, p.lease_token, p.lease_expires_at, p.worker_id,
       p.started_at, p.finished_at, p.outcome, p.cancel_requested, p.idempotency_key,
       p.trace_context, p.created_at, p.payload, p.timeout_seconds, p.waits_for, p.wait_until
FROM (SELECT pgsched.jsonb_merge(e.data ORDER BY e.id) AS state
      FROM pgsched.event e
      WHERE e.stream = 'run'
      GROUP BY e.stream_id) f
CROSS JOIN LATERAL jsonb_populate_record(NULL::pgsched.run, f.state) p
WHERE (f.state ->> 'due_at')::timestamptz
      >= (SELECT min(month_start) FROM pgsched.month_partitions_v1('pgsched.run'));

-- name: can_read_tokens
-- Whether this session may read pgsched.api_token (the operator role may not: token hashes).
SELECT has_table_privilege('pgsched.api_token', 'SELECT') AS ok;

-- name: diff_token_events
-- Token events are not folded into a projection, so they are checked against the token table
-- (ADR 0021): each token.created and token.revoked event must name a token whose row says the
-- same (its name, created or revoked at the event's instant), once; and a token revoked while
-- that month's events are still kept must have its token.revoked event. A forged event, which
-- changes no token, fails the first check; a revocation without its event, the second.
WITH token_events AS (
    SELECT e.id, e.type, e.stream_id, e.occurred_at, e.meta ->> 'token' AS name,
           count(*) OVER (PARTITION BY e.stream_id, e.type) AS copies
    FROM pgsched.event e
    WHERE e.stream = 'system' AND e.type IN ('token.created', 'token.revoked')
)
SELECT coalesce(x.stream_id, 0) AS id, x.type || ' event ' || x.id AS column,
       jsonb_build_object('token', x.name, 'at', x.occurred_at) AS expected,
       CASE WHEN t.id IS NOT NULL THEN jsonb_build_object(
           'token', t.name,
           'at', CASE x.type WHEN 'token.created' THEN t.created_at ELSE t.revoked_at END,
           'events', x.copies) END AS actual
FROM token_events x
LEFT JOIN pgsched.api_token t ON t.id = x.stream_id
WHERE t.id IS NULL OR x.copies > 1 OR t.name IS DISTINCT FROM x.name
   OR x.occurred_at IS DISTINCT FROM
      CASE x.type WHEN 'token.created' THEN t.created_at ELSE t.revoked_at END
UNION ALL
SELECT t.id, 'token.revoked event', NULL, jsonb_build_object('token', t.name, 'at', t.revoked_at)
FROM pgsched.api_token t
WHERE t.revoked_at >= (SELECT min(month_start) FROM pgsched.month_partitions_v1('pgsched.event'))
  AND NOT EXISTS (SELECT 1 FROM token_events x
                  WHERE x.stream_id = t.id AND x.type = 'token.revoked')
ORDER BY 1, 2;
