-- Ticker: due schedules become runs. Several tickers may run at once: SKIP LOCKED gives each
-- schedule to one of them per batch, and the run's unique occurrence key makes any overlap a
-- no-op (reliability guide F14). A killed ticker's transaction rolls back whole.

-- name: db_now
-- The instant this transaction decides with (ADR 0003).
SELECT coalesce(%(now)s::timestamptz, now()) AS now;

-- name: lock_due_schedules
-- Live, enabled schedules due by `horizon`, locked for this transaction; others skip them.
-- Only the columns planning needs (app.ticker.plan): decoding whole rows cost a third of the
-- client time in bench/ticker.py.
SELECT id, kind, cron, timezone, interval_seconds, run_at, starts_at, ends_at, created_at,
       next_due_at, jitter_seconds, missed_policy, missed_cap, grace_seconds
FROM pgsched.schedule
WHERE enabled AND deleted_at IS NULL AND next_due_at <= %(horizon)s::timestamptz
ORDER BY next_due_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: advance_schedules
-- Move each schedule's next due time past what this tick handled (NULL: nothing more to do).
WITH input AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(next_due_ats)s::timestamptz[]) AS i(id, next_due_at)
), s AS (
    UPDATE pgsched.schedule s
    SET next_due_at = i.next_due_at
    FROM input i
    WHERE s.id = i.id
    RETURNING s.id, s.next_due_at
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)
    SELECT coalesce(%(now)s::timestamptz, now()), 'schedule', s.id, 'schedule.advanced', %(actor)s,
           jsonb_build_object('next_due_at', s.next_due_at)
    FROM s
)
SELECT count(*) AS advanced FROM s;

-- name: record_missed
-- One event per occurrence that will not run, with why: an operator can query what did not run.
INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
SELECT coalesce(%(now)s::timestamptz, now()), 'schedule', i.schedule_id, 'schedule.occurrence_missed',
       %(actor)s, '{}'::jsonb, jsonb_build_object('due_at', i.due_at, 'reason', i.reason)
FROM unnest(%(schedule_ids)s::bigint[], %(due_ats)s::timestamptz[], %(reasons)s::text[])
     AS i(schedule_id, due_at, reason);

-- name: notify_runs
-- Wake workers: one NOTIFY per batch, never per row (reliability guide F8).
SELECT pg_notify('pgsched_runs', '');

-- name: insert_due_runs
-- Materialise a tick's occurrences under each schedule's overlap policy, in one statement:
--   allow: every occurrence becomes a run;
--   skip:  only when the schedule has no waiting or running run, and then only its earliest
--          occurrence of this batch (the later ones would overlap it);
--   queue: only when the schedule has no waiting run (at most one buffered behind a running
--          one), again the earliest of this batch.
-- Each occurrence refused for overlap is recorded as schedule.occurrence_missed, reason
-- 'overlap'. The schedules are locked by this transaction (lock_due_schedules), so no other
-- ticker adds runs to them meanwhile; a run finishing meanwhile can only make us conservative.
WITH input AS (
    SELECT *
    FROM unnest(%(schedule_ids)s::bigint[], %(due_ats)s::timestamptz[],
                %(available_ats)s::timestamptz[], %(origins)s::text[])
         AS i(schedule_id, due_at, available_at, origin)
), ranked AS (
    SELECT i.*, s.overlap_policy, s.queue, s.priority, s.max_attempts,
           row_number() OVER (PARTITION BY i.schedule_id ORDER BY i.due_at) AS nth,
           -- CASE evaluates lazily: 'allow' schedules, the common case, skip both lookups.
           CASE WHEN s.overlap_policy = 'allow' THEN false
                ELSE EXISTS (SELECT 1 FROM pgsched.run r
                             WHERE r.schedule_id = i.schedule_id AND r.state = 'waiting')
           END AS has_waiting,
           CASE WHEN s.overlap_policy = 'allow' THEN false
                ELSE EXISTS (SELECT 1 FROM pgsched.run r
                             WHERE r.schedule_id = i.schedule_id
                               AND r.state IN ('waiting', 'running'))
           END AS has_active
    FROM input i
    JOIN pgsched.schedule s ON s.id = i.schedule_id
), decided AS (
    SELECT ranked.*,
           CASE overlap_policy
               WHEN 'allow' THEN true
               WHEN 'skip' THEN NOT has_active AND nth = 1
               ELSE NOT has_waiting AND nth = 1
           END AS admitted
    FROM ranked
), r AS (
    INSERT INTO pgsched.run (schedule_id, due_at, adhoc, origin, state, queue, priority,
                             available_at, max_attempts, trace_context, created_at)
    SELECT d.schedule_id, d.due_at, false, d.origin, 'waiting', d.queue, d.priority,
           d.available_at, d.max_attempts, %(trace_context)s::jsonb,
           coalesce(%(now)s::timestamptz, now())
    FROM decided d
    WHERE d.admitted
    ON CONFLICT (schedule_id, due_at, adhoc) DO NOTHING
    RETURNING *
), created AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id, 'run.created', %(actor)s,
           to_jsonb(r), r.trace_context ->> 'trace_id'
    FROM r
), refused AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
    SELECT coalesce(%(now)s::timestamptz, now()), 'schedule', d.schedule_id,
           'schedule.occurrence_missed', %(actor)s, '{}'::jsonb,
           jsonb_build_object('due_at', d.due_at, 'reason', 'overlap')
    FROM decided d
    WHERE NOT d.admitted
    RETURNING 1
)
SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM r) AS run_ids,
       (SELECT count(*) FROM decided WHERE admitted) AS admitted,
       (SELECT count(*) FROM refused) AS refused;
