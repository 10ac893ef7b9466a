-- Schedules: each statement changes the projection row and appends its event in one statement.
-- An event's `data` holds exactly the columns the transition set; folding a stream's data in id
-- order rebuilds the row (app/db/replay.py, ADR 0005).

-- name: create_schedule
-- Insert a schedule from a JSON object of its columns; append schedule.created with the row.
WITH s AS (
    INSERT INTO pgsched.schedule (
        name, job_type, payload, kind, cron, interval_seconds, run_at, timezone, starts_at, ends_at,
        jitter_seconds, queue, priority, max_attempts, retry_delay_seconds, retry_factor,
        retry_max_delay_seconds, timeout_seconds, overlap_policy, missed_policy, missed_cap,
        grace_seconds, max_concurrency, depends_on, dependency_timeout_seconds, enabled,
        paused_at, next_due_at, created_at, updated_at, health_policy, pause_after_failures,
        description, owner, labels, managed_by)
    SELECT d.name, d.job_type, d.payload, d.kind, d.cron, d.interval_seconds, d.run_at, d.timezone,
           d.starts_at, d.ends_at, d.jitter_seconds, d.queue, d.priority, d.max_attempts,
           d.retry_delay_seconds, d.retry_factor, d.retry_max_delay_seconds, d.timeout_seconds,
           d.overlap_policy, d.missed_policy, d.missed_cap, d.grace_seconds, d.max_concurrency,
           d.depends_on, d.dependency_timeout_seconds, d.enabled,
           CASE WHEN d.enabled THEN NULL ELSE coalesce(%(now)s::timestamptz, now()) END,
           d.next_due_at,
           coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now()),
           d.health_policy, d.pause_after_failures, d.description, d.owner, d.labels, d.managed_by
    -- `fields` carries every column; app.domain.schedule.complete fills the defaults (one place).
    FROM jsonb_populate_record(NULL::pgsched.schedule,
        %(fields)s::jsonb) d
    RETURNING *
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'schedule', s.id, 'schedule.created', %(actor)s,
           to_jsonb(s), %(meta)s::jsonb, %(trace_id)s
    FROM s
)
SELECT * FROM s;

-- name: update_schedule
-- Apply a JSON object of changed columns if the version still matches; append `type` with the
-- changes as data and the previous values under meta.old (the audit trail).
WITH old AS (
    SELECT * FROM pgsched.schedule
    WHERE id = %(id)s AND deleted_at IS NULL
      AND (%(expected_version)s::integer IS NULL OR version = %(expected_version)s::integer)
    FOR UPDATE
), s AS (
    UPDATE pgsched.schedule t
    SET (name, job_type, payload, kind, cron, interval_seconds, run_at, timezone, starts_at, ends_at,
         jitter_seconds, queue, priority, max_attempts, retry_delay_seconds, retry_factor,
         retry_max_delay_seconds, timeout_seconds, overlap_policy, missed_policy, missed_cap,
         grace_seconds, max_concurrency, depends_on, dependency_timeout_seconds, enabled,
         paused_at, deleted_at, next_due_at, health_policy, pause_after_failures,
         description, owner, labels, managed_by) =
        (SELECT n.name, n.job_type, n.payload, n.kind, n.cron, n.interval_seconds, n.run_at,
                n.timezone, n.starts_at, n.ends_at, n.jitter_seconds, n.queue, n.priority,
                n.max_attempts, n.retry_delay_seconds, n.retry_factor, n.retry_max_delay_seconds,
                n.timeout_seconds, n.overlap_policy, n.missed_policy, n.missed_cap,
                n.grace_seconds, n.max_concurrency, n.depends_on, n.dependency_timeout_seconds,
                n.enabled, n.paused_at, n.deleted_at, n.next_due_at, n.health_policy,
                n.pause_after_failures, n.description, n.owner, n.labels, n.managed_by
         FROM jsonb_populate_record(t, %(changes)s::jsonb) n),
        version = t.version + 1,
        updated_at = coalesce(%(now)s::timestamptz, now())
    FROM old
    WHERE t.id = old.id
    RETURNING t.*
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'schedule', s.id, %(type)s, %(actor)s,
           (SELECT jsonb_object_agg(k, to_jsonb(s) -> k)
            FROM jsonb_object_keys(%(changes)s::jsonb || '{"version": 0, "updated_at": 0}') k),
           %(meta)s::jsonb || jsonb_build_object('old',
               (SELECT jsonb_object_agg(k, to_jsonb(old) -> k)
                FROM jsonb_object_keys(%(changes)s::jsonb) k)),
           %(trace_id)s
    FROM s, old
)
SELECT * FROM s;

-- name: get_schedule
-- One live schedule by id.
SELECT * FROM pgsched.schedule WHERE id = %(id)s AND deleted_at IS NULL;

-- name: managed_schedules
-- The live schedules a `pgsched apply` manager declares (app.declare), by name.
SELECT * FROM pgsched.schedule
WHERE managed_by = %(manager)s::text AND deleted_at IS NULL
ORDER BY name;

-- name: live_schedule_id
-- The live schedule called `name` (names are unique among live schedules).
SELECT id FROM pgsched.schedule WHERE name = %(name)s::text AND deleted_at IS NULL;

-- name: lock_schedule
-- One live schedule by id, locked for a transition that reads it first.
SELECT * FROM pgsched.schedule WHERE id = %(id)s AND deleted_at IS NULL FOR UPDATE;

-- name: record_schedule_event
-- An operator action on a schedule that changes no column of it (e.g. a backfill): evidence only.
INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta, trace_id)
VALUES (coalesce(%(now)s::timestamptz, now()), 'schedule', %(id)s, %(type)s, %(actor)s, '{}'::jsonb,
        %(meta)s::jsonb, %(trace_id)s)
RETURNING id;

-- name: claim_trigger_key
-- Take an Idempotency-Key for a schedule; no row back means an earlier request holds it (a
-- concurrent one waits here until that request commits or rolls back).
INSERT INTO pgsched.trigger_key (schedule_id, key, created_at)
VALUES (%(schedule_id)s, %(key)s, coalesce(%(now)s::timestamptz, now()))
ON CONFLICT (schedule_id, key) DO NOTHING
RETURNING schedule_id;

-- name: set_trigger_key_run
-- Remember which run an Idempotency-Key created.
UPDATE pgsched.trigger_key SET run_id = %(run_id)s, run_due_at = %(run_due_at)s
WHERE schedule_id = %(schedule_id)s AND key = %(key)s;

-- name: trigger_key_run
-- The run an Idempotency-Key created earlier.
SELECT r.*
FROM pgsched.trigger_key k
JOIN pgsched.run r ON r.id = k.run_id AND r.due_at = k.run_due_at
WHERE k.schedule_id = %(schedule_id)s AND k.key = %(key)s;
