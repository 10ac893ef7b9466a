-- Enqueue: runs with arguments of their own, made from a job definition (a schedule of kind
-- `job`, or any schedule) in the caller's transaction (ADR 0027). No statement here locks the
-- definition: concurrent enqueues to one definition never wait for each other (the run's
-- foreign key takes FOR KEY SHARE on the schedule row, which only a schedule's change or
-- delete, FOR UPDATE, conflicts with).

-- name: job_definition
-- The live definition runs are enqueued to, by name or by id (plain read, no lock): what the
-- service validates an enqueue's payload against and which version it validated.
SELECT id, name, job_type, kind, payload, queue, priority, max_attempts, timeout_seconds, version
FROM pgsched.schedule
WHERE deleted_at IS NULL
  AND (name = %(name)s::text OR id = %(id)s::bigint);

-- name: enqueue_runs
-- Enqueue a batch of runs to one definition in one statement: the definition read unlocked,
-- only at the version the caller validated against (`fresh` false and nothing written
-- otherwise: it changed or was deleted since); each item's idempotency key taken first
-- (trigger_key, per definition; a key held by a concurrent transaction waits for it, as any
-- unique insert does), runs inserted for the items without a key or with a key that was new;
-- one run.created per run carrying the row it made (ADR 0005) less the columns an enqueued
-- run always has NULL (replay reads a missing key as NULL; ADR 0034); one NOTIFY when any run
-- was made (delivered at commit, so never for runs rolled back). Items are one JSON array,
-- each item's absent keys NULL: `payload` is the caller's override, merged over the
-- definition's with `||` (top-level keys), NULL when none (the run then follows the
-- definition, ADR 0004); every other NULL takes the definition's. One row per run made, in
-- item order, or one row with NULL run columns when none was: `fresh` says whether the
-- definition was current. Only what the caller cannot know is returned (the id, the instant,
-- the key that made it): the service builds the rest of the row from what it sent (ADR 0034).
WITH def AS MATERIALIZED (
    SELECT s.id, s.payload, s.queue, s.priority, s.max_attempts
    FROM pgsched.schedule s
    WHERE s.id = %(schedule_id)s::bigint AND s.deleted_at IS NULL
      AND s.version = %(version)s::integer
), input AS (
    SELECT *
    FROM jsonb_to_recordset(%(items)s::jsonb)
         AS i(n integer, payload jsonb, queue text, priority smallint, run_at timestamptz,
              max_attempts integer, timeout_seconds float8, key text)
), taken AS (
    INSERT INTO pgsched.trigger_key (schedule_id, key, created_at)
    SELECT d.id, i.key, coalesce(%(now)s::timestamptz, now())
    FROM input i CROSS JOIN def d
    WHERE i.key IS NOT NULL
    ON CONFLICT (schedule_id, key) DO NOTHING
    RETURNING key
), r AS (
    INSERT INTO pgsched.run (schedule_id, due_at, adhoc, origin, state, queue, priority,
                             available_at, max_attempts, idempotency_key, trace_context,
                             created_at, payload, timeout_seconds)
    SELECT d.id, coalesce(i.run_at, %(now)s::timestamptz, now()), true, 'enqueue', 'waiting',
           coalesce(i.queue, d.queue), coalesce(i.priority, d.priority),
           coalesce(i.run_at, %(now)s::timestamptz, now()),
           coalesce(i.max_attempts, d.max_attempts), i.key, %(trace_context)s::jsonb,
           coalesce(%(now)s::timestamptz, now()),
           CASE WHEN i.payload IS NOT NULL THEN d.payload || i.payload END, i.timeout_seconds
    FROM input i CROSS JOIN def d
    WHERE i.key IS NULL OR i.key IN (SELECT key FROM taken)
    ORDER BY i.n
    RETURNING *
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id, 'run.created', %(actor)s,
           to_jsonb(r) - ARRAY['lease_token', 'lease_expires_at', 'worker_id', 'started_at',
                               'finished_at', 'outcome', 'occurrence', 'waits_for',
                               'wait_until'],
           %(meta)s::jsonb, r.trace_context ->> 'trace_id'
    FROM r
    ORDER BY r.id
), wake AS (
    SELECT pg_notify('pgsched_runs', '') FROM (SELECT 1 FROM r LIMIT 1) made
)
SELECT EXISTS (SELECT 1 FROM def) AS fresh, (SELECT count(*) FROM wake) AS woke,
       r.id, r.due_at, r.created_at, r.idempotency_key
FROM (SELECT 1) one
LEFT JOIN r ON true
ORDER BY r.id;

-- name: runs_by_key
-- The runs earlier enqueues (or triggers) made under these idempotency keys of a definition
-- (index run_by_key, every retained month). Asked only when enqueue_runs found a key taken.
SELECT r.*
FROM pgsched.run r
WHERE r.schedule_id = %(schedule_id)s::bigint AND r.idempotency_key = ANY(%(keys)s::text[]);
