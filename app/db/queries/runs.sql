-- Runs: the run state machine (docs/adr/0004-run-state-machine.md). Every transition is one
-- statement that updates the row and appends its event; the event's data is the set of columns
-- changed. Completions are fenced by (attempt, lease_token) so a zombie cannot overwrite a newer
-- attempt (ADR 0004).

-- name: insert_runs
-- Materialise runs for (schedule_id, due_at, available_at) triples; an occurrence that exists
-- already is skipped by the unique key, never an error, so a retried or
-- concurrent materialisation cannot create a run twice. Ad-hoc runs (`adhoc`) are not
-- occurrences: their `occurrence` is NULL, so they never conflict (migration 0019).
WITH input AS (
    SELECT *
    FROM unnest(%(schedule_ids)s::bigint[], %(due_ats)s::timestamptz[],
                %(available_ats)s::timestamptz[]) AS i(schedule_id, due_at, available_at)
), r AS (
    INSERT INTO pgsched.run (schedule_id, due_at, adhoc, origin, state, queue, priority,
                             available_at, max_attempts, idempotency_key, trace_context, created_at)
    SELECT i.schedule_id, i.due_at, %(adhoc)s, %(origin)s, 'waiting', s.queue, s.priority,
           i.available_at, s.max_attempts, %(idempotency_key)s, %(trace_context)s::jsonb,
           coalesce(%(now)s::timestamptz, now())
    FROM input i
    JOIN pgsched.schedule s ON s.id = i.schedule_id
    ON CONFLICT (schedule_id, due_at, occurrence) DO NOTHING
    RETURNING *
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id, 'run.created', %(actor)s,
           to_jsonb(r), %(meta)s::jsonb, r.trace_context ->> 'trace_id'
    FROM r
)
SELECT * FROM r;

-- name: lock_limits
-- First half of a claim: lock the limited schedules (max_concurrency, or overlap 'queue' = one
-- at a time) that have claimable runs, and the limited queues (pgsched.queue.max_running) this
-- worker serves; one claimer per limited schedule or queue at a time, the others skip it (and
-- the ticker skips such a schedule for one tick). The second half, claim_runs, must be a separate
-- statement: under READ COMMITTED its new snapshot then sees the runs that the previous holder
-- of a lock started, so the slot counts are exact (ADR 0004).
WITH schedules AS (
    SELECT s.id
    FROM pgsched.schedule s
    WHERE s.deleted_at IS NULL AND (s.max_concurrency IS NOT NULL OR s.overlap_policy = 'queue')
      AND EXISTS (SELECT 1 FROM pgsched.run w
                  WHERE w.schedule_id = s.id AND w.state = 'waiting'
                    AND w.queue = ANY(%(queues)s::text[])
                    AND w.available_at <= coalesce(%(now)s::timestamptz, now()))
    FOR NO KEY UPDATE OF s SKIP LOCKED
), queues AS (
    SELECT q.name
    FROM pgsched.queue q
    WHERE q.name = ANY(%(queues)s::text[]) AND q.max_running IS NOT NULL
    FOR NO KEY UPDATE OF q SKIP LOCKED
)
SELECT (SELECT coalesce(array_agg(id), '{}') FROM schedules) AS schedule_ids,
       (SELECT coalesce(array_agg(name), '{}') FROM queues) AS queue_names;

-- name: claim_runs
-- Claim up to `limit` claimable runs of the given queues for one worker. Each MATERIALIZED CTE
-- is a fence that keeps LIMIT from being re-evaluated per row (without it the planner may
-- inline the subquery and lock more rows than LIMIT); ordering is best effort under SKIP
-- LOCKED, which passes over rows other claimers hold. The job definition comes from the schedule at
-- claim time, except what the run overrides (its own payload or timeout, ADR 0027).
-- Runs of limited schedules or queues take part only if this transaction locked them
-- (lock_limits) and only up to their free slots; rows locked but not chosen stay locked until
-- this short transaction ends.
WITH schedule_slots AS MATERIALIZED (
    SELECT s.id, coalesce(s.max_concurrency, 1)
                 - (SELECT count(*) FROM pgsched.run x
                    WHERE x.schedule_id = s.id AND x.state = 'running') AS slots
    FROM pgsched.schedule s
    WHERE s.id = ANY(%(schedule_ids)s::bigint[])
), queue_slots AS MATERIALIZED (
    SELECT q.name, q.max_running
                   - (SELECT count(*) FROM pgsched.run x
                      WHERE x.queue = q.name AND x.state = 'running') AS slots
    FROM pgsched.queue q
    WHERE q.name = ANY(%(queue_names)s::text[])
), limited_schedules AS MATERIALIZED (
    -- Runs of limited schedules in unlimited queues.
    SELECT w.*
    FROM schedule_slots f
    CROSS JOIN LATERAL (
        SELECT r.id, r.due_at, r.schedule_id, r.priority, r.available_at
        FROM pgsched.run r
        WHERE r.schedule_id = f.id AND r.state = 'waiting'
          AND r.queue = ANY(%(queues)s::text[])
          AND r.available_at <= coalesce(%(now)s::timestamptz, now())
          AND NOT EXISTS (SELECT 1 FROM pgsched.queue q
                          WHERE q.name = r.queue AND q.max_running IS NOT NULL)
        ORDER BY r.priority, r.available_at, r.id
        LIMIT greatest(f.slots, 0)
        FOR UPDATE OF r SKIP LOCKED
    ) w
), limited_queues AS MATERIALIZED (
    -- Runs in limited queues, of unlimited schedules or of limited ones this claim holds.
    SELECT w.*
    FROM queue_slots f
    CROSS JOIN LATERAL (
        SELECT r.id, r.due_at, r.schedule_id, r.priority, r.available_at
        FROM pgsched.run r
        JOIN pgsched.schedule s ON s.id = r.schedule_id
        WHERE r.queue = f.name AND r.state = 'waiting'
          AND r.available_at <= coalesce(%(now)s::timestamptz, now())
          AND ((s.max_concurrency IS NULL AND s.overlap_policy <> 'queue')
               OR s.id = ANY(%(schedule_ids)s::bigint[]))
        ORDER BY r.priority, r.available_at, r.id
        LIMIT greatest(f.slots, 0)
        FOR UPDATE OF r SKIP LOCKED
    ) w
), open AS MATERIALIZED (
    -- Everything without a limit: the common, fast path. One scalar equality per queue inside
    -- a LATERAL, so the partial index serves the ORDER BY and the scan stops after LIMIT rows;
    -- `queue = ANY(array)` made PostgreSQL 15 scan and sort the whole backlog (bench/PEERS.md).
    SELECT w.*
    FROM unnest(%(queues)s::text[]) AS qn(name)
    CROSS JOIN LATERAL (
        SELECT r.id, r.due_at, r.schedule_id, r.priority, r.available_at
        FROM pgsched.run r
        JOIN pgsched.schedule s ON s.id = r.schedule_id
        WHERE r.state = 'waiting'
          AND r.queue = qn.name
          AND r.available_at <= coalesce(%(now)s::timestamptz, now())
          AND s.max_concurrency IS NULL AND s.overlap_policy <> 'queue'
        ORDER BY r.priority, r.available_at, r.id
        LIMIT %(limit)s
        FOR UPDATE OF r SKIP LOCKED
    ) w
    -- Limited queues are claimed above, under their lock; decided once per queue, not per run.
    WHERE NOT EXISTS (SELECT 1 FROM pgsched.queue q
                      WHERE q.name = qn.name AND q.max_running IS NOT NULL)
), ranked AS (
    -- A run limited by both its queue and its schedule must fit the schedule's slots too.
    SELECT c.*, row_number() OVER (PARTITION BY c.schedule_id
                                   ORDER BY c.priority, c.available_at, c.id) AS nth
    FROM (SELECT * FROM limited_schedules
          UNION ALL SELECT * FROM limited_queues
          UNION ALL SELECT * FROM open) c
), due AS MATERIALIZED (
    SELECT ranked.id, ranked.due_at
    FROM ranked
    LEFT JOIN schedule_slots f ON f.id = ranked.schedule_id
    WHERE f.id IS NULL OR ranked.nth <= f.slots
    ORDER BY ranked.priority, ranked.available_at, ranked.id
    LIMIT %(limit)s
), claimed AS (
    UPDATE pgsched.run r
    SET state = 'running',
        attempt = r.attempt + 1,
        lease_token = gen_random_uuid(),
        lease_expires_at = coalesce(%(now)s::timestamptz, now())
                           + make_interval(secs => %(lease_seconds)s),
        worker_id = %(worker_id)s,
        started_at = coalesce(%(now)s::timestamptz, now())
    FROM due
    WHERE r.id = due.id AND r.due_at = due.due_at
    -- Every column but the run's own payload and timeout (and the derived occurrence): the
    -- result carries the job's, the run's override or else the schedule's (ADR 0027).
    RETURNING r.id, r.schedule_id, r.due_at, r.adhoc, r.origin, r.state, r.queue, r.priority,
              r.available_at, r.attempt, r.max_attempts, r.lease_token, r.lease_expires_at,
              r.worker_id, r.started_at, r.finished_at, r.outcome, r.cancel_requested,
              r.idempotency_key, r.trace_context, r.created_at,
              r.payload AS run_payload, r.timeout_seconds AS run_timeout_seconds
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', c.id, 'run.claimed', %(actor)s,
           jsonb_build_object('state', c.state, 'attempt', c.attempt,
                              'lease_token', c.lease_token, 'lease_expires_at', c.lease_expires_at,
                              'worker_id', c.worker_id, 'started_at', c.started_at),
           c.trace_context ->> 'trace_id'
    FROM claimed c
)
SELECT c.*, s.name AS schedule_name, s.job_type,
       coalesce(c.run_payload, s.payload) AS payload,
       coalesce(c.run_timeout_seconds, s.timeout_seconds) AS timeout_seconds,
       s.version AS schedule_version
FROM claimed c
JOIN pgsched.schedule s ON s.id = c.schedule_id
ORDER BY c.priority, c.available_at, c.id;

-- name: claim_open_runs
-- The claim when no limit is in play (ADR 0019): claim_runs' `open` path alone. It takes only
-- runs of unlimited schedules in unlimited queues, so it never needs lock_limits, and its plan
-- is a third of claim_runs' (measured: planning 0.9-1.3 ms instead of 2.5-3.4 ms, the largest
-- fixed cost of a claim). Its UPDATE, event and result are claim_runs' own: change them together
-- (tests/db/test_claim.py compares the two).
WITH due AS MATERIALIZED (
    SELECT w.id, w.due_at
    FROM unnest(%(queues)s::text[]) AS qn(name)
    CROSS JOIN LATERAL (
        SELECT r.id, r.due_at, r.priority, r.available_at
        FROM pgsched.run r
        JOIN pgsched.schedule s ON s.id = r.schedule_id
        WHERE r.state = 'waiting'
          AND r.queue = qn.name
          AND r.available_at <= coalesce(%(now)s::timestamptz, now())
          AND s.max_concurrency IS NULL AND s.overlap_policy <> 'queue'
        ORDER BY r.priority, r.available_at, r.id
        LIMIT %(limit)s
        FOR UPDATE OF r SKIP LOCKED
    ) w
    WHERE NOT EXISTS (SELECT 1 FROM pgsched.queue q
                      WHERE q.name = qn.name AND q.max_running IS NOT NULL)
    ORDER BY w.priority, w.available_at, w.id
    LIMIT %(limit)s
), claimed AS (
    UPDATE pgsched.run r
    SET state = 'running',
        attempt = r.attempt + 1,
        lease_token = gen_random_uuid(),
        lease_expires_at = coalesce(%(now)s::timestamptz, now())
                           + make_interval(secs => %(lease_seconds)s),
        worker_id = %(worker_id)s,
        started_at = coalesce(%(now)s::timestamptz, now())
    FROM due
    WHERE r.id = due.id AND r.due_at = due.due_at
    -- Every column but the run's own payload and timeout (and the derived occurrence): the
    -- result carries the job's, the run's override or else the schedule's (ADR 0027).
    RETURNING r.id, r.schedule_id, r.due_at, r.adhoc, r.origin, r.state, r.queue, r.priority,
              r.available_at, r.attempt, r.max_attempts, r.lease_token, r.lease_expires_at,
              r.worker_id, r.started_at, r.finished_at, r.outcome, r.cancel_requested,
              r.idempotency_key, r.trace_context, r.created_at,
              r.payload AS run_payload, r.timeout_seconds AS run_timeout_seconds
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', c.id, 'run.claimed', %(actor)s,
           jsonb_build_object('state', c.state, 'attempt', c.attempt,
                              'lease_token', c.lease_token, 'lease_expires_at', c.lease_expires_at,
                              'worker_id', c.worker_id, 'started_at', c.started_at),
           c.trace_context ->> 'trace_id'
    FROM claimed c
)
SELECT c.*, s.name AS schedule_name, s.job_type,
       coalesce(c.run_payload, s.payload) AS payload,
       coalesce(c.run_timeout_seconds, s.timeout_seconds) AS timeout_seconds,
       s.version AS schedule_version
FROM claimed c
JOIN pgsched.schedule s ON s.id = c.schedule_id
ORDER BY c.priority, c.available_at, c.id;

-- name: renew_leases
-- Heartbeat: extend the leases this worker still holds; a token missing from the result means
-- the run was taken away (rescued, cancelled) and the job should stop. Renewals are not events:
-- a lease is coordination, not history (ADR 0005).
UPDATE pgsched.run
SET lease_expires_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s)
WHERE state = 'running' AND lease_token = ANY(%(lease_tokens)s::uuid[])
RETURNING id, lease_token, cancel_requested;

-- name: complete_attempts
-- Record the results of a batch of attempts in one statement (a worker buffers what its jobs
-- report while the previous batch commits: one transaction and WAL flush per batch, ADR 0019).
-- Each result counts only if its attempt still holds the lease (attempt and lease token). Per
-- `status`: succeeded and cancelled end the run; failed goes back to waiting after the backoff,
-- or to dead (the dead-letter state) once the attempts are spent or `final` says a retry cannot
-- help (bad payload, refused target, missing secret).
-- A result that no longer holds its lease changes nothing and is kept as a
-- run.completion_fenced event (ADR 0004). A result already recorded (the same
-- attempt, token and outcome: a retry after the connection broke during COMMIT) is returned as
-- `applied` and written again nowhere, so a retried report can neither double-count nor be
-- mistaken for a zombie's.
-- The batch arrives as one JSON array (one parameter, serialised in one call by the client,
-- rather than eight arrays adapted element by element). Only the columns a reporter reads come
-- back: the run's id and where the result left it, and its schedule with that schedule's
-- health, so the caller re-judges only the schedules a result can change (ADR 0032).
WITH input AS (
    SELECT *
    FROM jsonb_to_recordset(%(reports)s::jsonb)
         AS i(id bigint, due_at timestamptz, attempt int, lease_token uuid, status text,
              outcome jsonb, jitter float8, final boolean)
    WHERE i.status IN ('succeeded', 'cancelled', 'failed')
), r AS (
    UPDATE pgsched.run r
    SET state = CASE WHEN i.status <> 'failed' THEN i.status
                     WHEN r.attempt >= r.max_attempts OR i.final THEN 'dead'
                     ELSE 'waiting' END,
        available_at = CASE WHEN i.status <> 'failed' OR r.attempt >= r.max_attempts OR i.final
                            THEN r.available_at
                            ELSE coalesce(%(now)s::timestamptz, now()) + make_interval(secs =>
                                 pgsched.backoff_seconds(s.retry_delay_seconds, s.retry_factor,
                                     s.retry_max_delay_seconds, r.attempt, i.jitter)) END,
        finished_at = CASE WHEN i.status <> 'failed' OR r.attempt >= r.max_attempts OR i.final
                           THEN coalesce(%(now)s::timestamptz, now()) END,
        lease_expires_at = NULL,
        outcome = i.outcome
    FROM input i, pgsched.schedule s
    WHERE r.id = i.id AND r.due_at = i.due_at AND s.id = r.schedule_id
      AND r.state = 'running' AND r.attempt = i.attempt AND r.lease_token = i.lease_token
    RETURNING r.*, s.health AS schedule_health
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id,
           CASE r.state WHEN 'waiting' THEN 'run.retry_scheduled' ELSE 'run.' || r.state END,
           %(actor)s,
           CASE WHEN r.state IN ('succeeded', 'cancelled')
                THEN jsonb_build_object('state', r.state, 'finished_at', r.finished_at,
                                        'lease_expires_at', NULL, 'outcome', r.outcome)
                ELSE jsonb_build_object('state', r.state, 'available_at', r.available_at,
                                        'finished_at', r.finished_at, 'lease_expires_at', NULL,
                                        'outcome', r.outcome) END,
           r.trace_context ->> 'trace_id'
    FROM r
    ORDER BY r.id
), applied AS (
    -- This statement's snapshot predates its own UPDATE: only earlier statements' work is here.
    SELECT x.*
    FROM input i
    JOIN pgsched.run x ON x.id = i.id AND x.due_at = i.due_at
    WHERE x.state <> 'running' AND x.attempt = i.attempt AND x.lease_token = i.lease_token
      AND x.outcome = i.outcome
), fenced AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', i.id, 'run.completion_fenced', %(actor)s,
           '{}'::jsonb,
           jsonb_build_object('transition', 'complete', 'status', i.status,
                              'attempt', i.attempt, 'lease_token', i.lease_token)
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM r WHERE r.id = i.id)
      AND NOT EXISTS (SELECT 1 FROM applied a WHERE a.id = i.id)
    ORDER BY i.id
)
SELECT r.id, r.state, r.attempt, r.available_at, r.finished_at, r.schedule_id,
       r.schedule_health
FROM r
UNION ALL
SELECT a.id, a.state, a.attempt, a.available_at, a.finished_at, a.schedule_id,
       NULL AS schedule_health
FROM applied a;

-- name: release_run
-- Graceful shutdown: give an unfinished attempt back without consuming it.
WITH r AS (
    UPDATE pgsched.run
    SET state = 'waiting',
        attempt = attempt - 1,
        available_at = coalesce(%(now)s::timestamptz, now()),
        lease_expires_at = NULL
    WHERE id = %(id)s AND due_at = %(due_at)s
      AND state = 'running' AND attempt = %(attempt)s AND lease_token = %(lease_token)s::uuid
    RETURNING *
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id, 'run.released', %(actor)s,
           jsonb_build_object('state', r.state, 'attempt', r.attempt,
                              'available_at', r.available_at, 'lease_expires_at', NULL),
           r.trace_context ->> 'trace_id'
    FROM r
)
SELECT * FROM r;

-- name: record_fenced
-- A completion arrived for an attempt that no longer holds the lease: change nothing, but keep
-- the evidence (ADR 0004).
INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
VALUES (coalesce(%(now)s::timestamptz, now()), 'run', %(id)s, 'run.completion_fenced', %(actor)s,
        '{}'::jsonb, %(meta)s::jsonb)
RETURNING id;

-- name: cancel_run
-- Cancel a run: a waiting run (or one blocked on its upstreams, ADR 0033) ends at once; a
-- running one is asked to stop (the worker sees it at its next heartbeat and reports the
-- attempt cancelled).
WITH r AS (
    UPDATE pgsched.run
    SET state = CASE WHEN state IN ('waiting', 'blocked') THEN 'cancelled' ELSE state END,
        finished_at = CASE WHEN state IN ('waiting', 'blocked')
                           THEN coalesce(%(now)s::timestamptz, now()) ELSE finished_at END,
        cancel_requested = true
    WHERE id = %(id)s AND state IN ('waiting', 'blocked', 'running') AND NOT cancel_requested
    RETURNING *
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id,
           CASE r.state WHEN 'cancelled' THEN 'run.cancelled' ELSE 'run.cancel_requested' END,
           %(actor)s,
           jsonb_build_object('state', r.state, 'finished_at', r.finished_at,
                              'cancel_requested', true),
           %(meta)s::jsonb, r.trace_context ->> 'trace_id'
    FROM r
)
SELECT * FROM r;

-- name: rescue_expired
-- Runs whose lease expired by the database clock: retry after the backoff, or dead when spent.
-- Safe on any number of processes at once: SKIP LOCKED and the state guard make it idempotent.
WITH expired AS MATERIALIZED (
    SELECT id, due_at
    FROM pgsched.run
    WHERE state = 'running' AND lease_expires_at < coalesce(%(now)s::timestamptz, now())
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), r AS (
    UPDATE pgsched.run r
    SET state = CASE WHEN r.attempt >= r.max_attempts THEN 'dead' ELSE 'waiting' END,
        available_at = CASE WHEN r.attempt >= r.max_attempts THEN r.available_at
                            ELSE coalesce(%(now)s::timestamptz, now()) + make_interval(secs =>
                                 pgsched.backoff_seconds(s.retry_delay_seconds, s.retry_factor,
                                     s.retry_max_delay_seconds, r.attempt, random())) END,
        finished_at = CASE WHEN r.attempt >= r.max_attempts
                           THEN coalesce(%(now)s::timestamptz, now()) END,
        lease_expires_at = NULL,
        outcome = jsonb_build_object('status', 'lease_expired',
                                     'error', 'the worker stopped heartbeating')
    FROM expired e, pgsched.schedule s
    WHERE r.id = e.id AND r.due_at = e.due_at AND s.id = r.schedule_id
    RETURNING r.*, s.name AS schedule_name  -- the name for the run log's `schedule`
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id,
           CASE r.state WHEN 'dead' THEN 'run.dead' ELSE 'run.rescued' END, %(actor)s,
           jsonb_build_object('state', r.state, 'available_at', r.available_at,
                              'finished_at', r.finished_at, 'lease_expires_at', NULL,
                              'outcome', r.outcome),
           r.trace_context ->> 'trace_id'
    FROM r
)
SELECT * FROM r;
