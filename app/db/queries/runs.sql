-- Runs: the run state machine (docs/adr/0004-run-state-machine.md). Every transition is one
-- statement that updates the row and appends its event; the event's data is the set of columns
-- changed. Completions are fenced by (attempt, lease_token) so a zombie cannot overwrite a newer
-- attempt (reliability guide F13).

-- name: insert_runs
-- Materialise runs for (schedule_id, due_at, available_at) triples; an occurrence that exists
-- already is skipped by the unique key, never an error (reliability guide F14).
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
    ON CONFLICT (schedule_id, due_at, adhoc) DO NOTHING
    RETURNING *
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id, 'run.created', %(actor)s,
           to_jsonb(r), %(meta)s::jsonb, r.trace_context ->> 'trace_id'
    FROM r
)
SELECT * FROM r;

-- name: lock_limited_schedules
-- First half of a claim: lock the schedules with a concurrency limit (max_concurrency, or
-- overlap 'queue' = one at a time) that have claimable runs, one claimer per schedule at a time;
-- the others skip them (and the ticker skips them for one tick). The second half, claim_runs,
-- must be a separate statement: under READ COMMITTED its new snapshot then sees the runs that
-- the previous holder of the lock started, so the slot count is exact.
SELECT s.id
FROM pgsched.schedule s
WHERE s.deleted_at IS NULL AND (s.max_concurrency IS NOT NULL OR s.overlap_policy = 'queue')
  AND EXISTS (SELECT 1 FROM pgsched.run w
              WHERE w.schedule_id = s.id AND w.state = 'waiting'
                AND w.queue = ANY(%(queues)s::text[])
                AND w.available_at <= coalesce(%(now)s::timestamptz, now()))
FOR NO KEY UPDATE OF s SKIP LOCKED;

-- name: claim_runs
-- Claim up to `limit` claimable runs of the given queues for one worker. Each MATERIALIZED CTE
-- is a fence that keeps LIMIT from being re-evaluated per row (reliability guide F3); ordering
-- is best effort under SKIP LOCKED (F4). The job definition comes from the schedule at claim time.
-- Limited schedules take part only if this transaction locked them (`limited_ids`, from
-- lock_limited_schedules) and only up to their free slots.
WITH free AS MATERIALIZED (
    SELECT s.id, coalesce(s.max_concurrency, 1)
                 - (SELECT count(*) FROM pgsched.run x
                    WHERE x.schedule_id = s.id AND x.state = 'running') AS slots
    FROM pgsched.schedule s
    WHERE s.id = ANY(%(limited_ids)s::bigint[])
), limited AS MATERIALIZED (
    SELECT w.id, w.due_at, w.priority, w.available_at
    FROM free
    CROSS JOIN LATERAL (
        SELECT r.id, r.due_at, r.priority, r.available_at
        FROM pgsched.run r
        WHERE r.schedule_id = free.id AND r.state = 'waiting'
          AND r.queue = ANY(%(queues)s::text[])
          AND r.available_at <= coalesce(%(now)s::timestamptz, now())
        ORDER BY r.priority, r.available_at, r.id
        LIMIT greatest(free.slots, 0)
        FOR UPDATE OF r SKIP LOCKED
    ) w
), open AS MATERIALIZED (
    SELECT r.id, r.due_at, r.priority, r.available_at
    FROM pgsched.run r
    JOIN pgsched.schedule s ON s.id = r.schedule_id
    WHERE r.state = 'waiting'
      AND r.queue = ANY(%(queues)s::text[])
      AND r.available_at <= coalesce(%(now)s::timestamptz, now())
      AND s.max_concurrency IS NULL AND s.overlap_policy <> 'queue'
    ORDER BY r.priority, r.available_at, r.id
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
), due AS MATERIALIZED (
    -- Rows locked above but not chosen here stay locked until this short transaction ends.
    SELECT id, due_at FROM (SELECT * FROM limited UNION ALL SELECT * FROM open) c
    ORDER BY priority, available_at, id
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
    RETURNING r.*
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', c.id, 'run.claimed', %(actor)s,
           jsonb_build_object('state', c.state, 'attempt', c.attempt,
                              'lease_token', c.lease_token, 'lease_expires_at', c.lease_expires_at,
                              'worker_id', c.worker_id, 'started_at', c.started_at),
           c.trace_context ->> 'trace_id'
    FROM claimed c
)
SELECT c.*, s.name AS schedule_name, s.job_type, s.payload, s.timeout_seconds, s.version AS schedule_version
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

-- name: finish_attempt
-- End a run with this attempt's result (`state` is succeeded or cancelled), only if the attempt
-- still holds the lease.
WITH r AS (
    UPDATE pgsched.run
    SET state = %(state)s,
        finished_at = coalesce(%(now)s::timestamptz, now()),
        lease_expires_at = NULL,
        outcome = %(outcome)s::jsonb
    WHERE id = %(id)s AND due_at = %(due_at)s
      AND state = 'running' AND attempt = %(attempt)s AND lease_token = %(lease_token)s::uuid
      AND %(state)s IN ('succeeded', 'cancelled')
    RETURNING *
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id, 'run.' || r.state, %(actor)s,
           jsonb_build_object('state', r.state, 'finished_at', r.finished_at,
                              'lease_expires_at', NULL, 'outcome', r.outcome),
           r.trace_context ->> 'trace_id'
    FROM r
)
SELECT * FROM r;

-- name: fail_run
-- Record a failed attempt, only if this attempt still holds the lease: back to waiting after the
-- backoff, or dead (the dead-letter state) once the attempts are spent.
WITH r AS (
    UPDATE pgsched.run r
    SET state = CASE WHEN r.attempt >= r.max_attempts THEN 'dead' ELSE 'waiting' END,
        available_at = CASE WHEN r.attempt >= r.max_attempts THEN r.available_at
                            ELSE coalesce(%(now)s::timestamptz, now()) + make_interval(secs =>
                                 pgsched.backoff_seconds(s.retry_delay_seconds, s.retry_factor,
                                     s.retry_max_delay_seconds, r.attempt, %(jitter)s)) END,
        finished_at = CASE WHEN r.attempt >= r.max_attempts
                           THEN coalesce(%(now)s::timestamptz, now()) END,
        lease_expires_at = NULL,
        outcome = %(outcome)s::jsonb
    FROM pgsched.schedule s
    WHERE s.id = r.schedule_id
      AND r.id = %(id)s AND r.due_at = %(due_at)s
      AND r.state = 'running' AND r.attempt = %(attempt)s AND r.lease_token = %(lease_token)s::uuid
    RETURNING r.*
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id,
           CASE r.state WHEN 'dead' THEN 'run.dead' ELSE 'run.retry_scheduled' END, %(actor)s,
           jsonb_build_object('state', r.state, 'available_at', r.available_at,
                              'finished_at', r.finished_at, 'lease_expires_at', NULL,
                              'outcome', r.outcome),
           r.trace_context ->> 'trace_id'
    FROM r
)
SELECT * FROM r;

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
-- the evidence (reliability guide F13).
INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
VALUES (coalesce(%(now)s::timestamptz, now()), 'run', %(id)s, 'run.completion_fenced', %(actor)s,
        '{}'::jsonb, %(meta)s::jsonb)
RETURNING id;

-- name: cancel_run
-- Cancel a run: a waiting run ends at once; a running one is asked to stop (the worker sees it at
-- its next heartbeat and reports the attempt cancelled).
WITH r AS (
    UPDATE pgsched.run
    SET state = CASE state WHEN 'waiting' THEN 'cancelled' ELSE state END,
        finished_at = CASE state WHEN 'waiting' THEN coalesce(%(now)s::timestamptz, now())
                                 ELSE finished_at END,
        cancel_requested = true
    WHERE id = %(id)s AND state IN ('waiting', 'running') AND NOT cancel_requested
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
    RETURNING r.*
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

-- name: get_run
-- One run by id.
SELECT * FROM pgsched.run WHERE id = %(id)s;
