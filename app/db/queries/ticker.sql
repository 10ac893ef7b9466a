-- Ticker: due schedules become runs. Several tickers may run at once: SKIP LOCKED gives each
-- schedule to one of them per batch, and the run's unique occurrence key makes any overlap a
-- no-op (reliability guide F14). A killed ticker's transaction rolls back whole.

-- name: db_now
-- The instant this transaction decides with (ADR 0003).
SELECT coalesce(%(now)s::timestamptz, now()) AS now;

-- name: lock_due_schedules
-- Live, enabled schedules due by `horizon`, locked for this transaction; others skip them.
SELECT *
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
