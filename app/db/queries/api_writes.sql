-- Writes only the REST API makes (ADR 0014), in the store's pattern: one statement changes the
-- row and appends its event, whose data holds exactly the columns the transition set.

-- name: retry_run
-- An operator sends a dead or cancelled run back to waiting (ADR 0004: dead --> waiting). It
-- gets the schedule's max_attempts more attempts from where it stopped, may start now (or at
-- its due time when it never started and that is still ahead: a run for later stays for later,
-- ADR 0004), and is no longer marked for cancellation; the last outcome stays as evidence until the next attempt
-- replaces it. The previous values go in meta.old for the audit trail.
WITH old AS (
    SELECT r.id, r.due_at, r.state, r.available_at, r.max_attempts, r.finished_at,
           r.cancel_requested
    FROM pgsched.run r
    WHERE r.id = %(id)s::bigint AND r.state IN ('dead', 'cancelled')
    FOR UPDATE
), r AS (
    UPDATE pgsched.run r
    SET state = 'waiting',
        available_at = CASE WHEN r.attempt = 0
                            THEN greatest(coalesce(%(now)s::timestamptz, now()), r.due_at)
                            ELSE coalesce(%(now)s::timestamptz, now()) END,
        max_attempts = r.attempt + s.max_attempts,
        finished_at = NULL,
        cancel_requested = false
    FROM old, pgsched.schedule s
    WHERE r.id = old.id AND r.due_at = old.due_at AND s.id = r.schedule_id
    RETURNING r.*, s.name AS schedule_name  -- the name for the run log's `schedule`
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id, 'run.retried', %(actor)s,
           jsonb_build_object('state', r.state, 'available_at', r.available_at,
                              'max_attempts', r.max_attempts, 'finished_at', r.finished_at,
                              'cancel_requested', r.cancel_requested),
           %(meta)s::jsonb || jsonb_build_object('old', jsonb_build_object(
               'state', old.state, 'available_at', old.available_at,
               'max_attempts', old.max_attempts, 'finished_at', old.finished_at,
               'cancel_requested', old.cancel_requested)),
           r.trace_context ->> 'trace_id'
    FROM r, old
)
SELECT * FROM r;
