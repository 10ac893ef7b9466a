-- Reads for the REST API (ADR 0014): lists with keyset pagination, the event feed, the worker
-- registry, health and stats. Nothing here writes. Lists never COUNT(*) the partitioned tables;
-- each page is one index range from its cursor.

-- name: page_schedules
-- Live schedules after a keyset cursor (by id), with optional filters.
SELECT *
FROM pgsched.schedule
WHERE deleted_at IS NULL
  AND id > %(after_id)s::bigint
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s::text)
  AND (%(enabled)s::boolean IS NULL OR enabled = %(enabled)s::boolean)
  AND (%(name)s::text IS NULL OR name = %(name)s::text)
  AND (%(health)s::text IS NULL OR health = %(health)s::text)
  AND (%(owner)s::text IS NULL OR owner = %(owner)s::text)
  AND (%(managed_by)s::text IS NULL OR managed_by = %(managed_by)s::text)
  -- Labels by containment (GIN index schedule_labels); keys given without a value by presence.
  AND (%(labels)s::jsonb IS NULL OR labels @> %(labels)s::jsonb)
  AND (%(label_keys)s::text[] IS NULL OR labels ?& %(label_keys)s::text[])
ORDER BY id
LIMIT %(limit)s;

-- name: page_runs
-- Runs newest occurrence first, after a keyset cursor (due_at, id), with optional filters. The
-- bounds on due_at let PostgreSQL skip whole monthly partitions.
SELECT r.id, r.schedule_id, s.name AS schedule_name, r.due_at, r.adhoc, r.origin, r.state,
       r.queue, r.priority, r.available_at, r.attempt, r.max_attempts, r.lease_expires_at,
       r.worker_id, r.started_at, r.finished_at, r.outcome, r.cancel_requested,
       r.idempotency_key, r.created_at, r.payload, r.timeout_seconds, r.waits_for, r.wait_until
FROM pgsched.run r
LEFT JOIN pgsched.schedule s ON s.id = r.schedule_id
WHERE (%(states)s::text[] IS NULL OR r.state = ANY(%(states)s::text[]))
  AND (%(schedule_id)s::bigint IS NULL OR r.schedule_id = %(schedule_id)s::bigint)
  AND (%(queue)s::text IS NULL OR r.queue = %(queue)s::text)
  AND (%(since)s::timestamptz IS NULL OR r.due_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR r.due_at < %(until)s::timestamptz)
  AND (%(before_due_at)s::timestamptz IS NULL
       OR (r.due_at, r.id) < (%(before_due_at)s::timestamptz, %(before_id)s::bigint))
ORDER BY r.due_at DESC, r.id DESC
LIMIT %(limit)s;

-- name: run_detail
-- One run with its schedule's name and its own payload and timeout (NULL: the schedule's, ADR
-- 0027); the lease token stays inside the database.
SELECT r.id, r.schedule_id, s.name AS schedule_name, r.due_at, r.adhoc, r.origin, r.state,
       r.queue, r.priority, r.available_at, r.attempt, r.max_attempts, r.lease_expires_at,
       r.worker_id, r.started_at, r.finished_at, r.outcome, r.cancel_requested,
       r.idempotency_key, r.created_at, r.payload, r.timeout_seconds, r.waits_for, r.wait_until
FROM pgsched.run r
LEFT JOIN pgsched.schedule s ON s.id = r.schedule_id
WHERE r.id = %(id)s::bigint;

-- name: stream_events
-- One stream's events in change order (per-stream id order, ADR 0005), after an event id.
SELECT id, tx_id::text::bigint AS tx_id, occurred_at, stream, stream_id, type, actor, data, meta,
       trace_id
FROM pgsched.event
WHERE stream = %(stream)s::text AND stream_id = %(stream_id)s::bigint AND id > %(after_id)s::bigint
ORDER BY id
LIMIT %(limit)s;

-- name: latest_stream_events
-- One stream's newest events but those of the given types, newest first (the stream's index
-- read backwards): what `pgsched schedules show` lists, however long the history.
SELECT id, occurred_at, type, actor, meta
FROM pgsched.event
WHERE stream = %(stream)s::text AND stream_id = %(stream_id)s::bigint
  AND type <> ALL (%(skip)s::text[])
ORDER BY id DESC
LIMIT %(limit)s;

-- name: event_feed
-- The global feed in commit order (ADR 0005): only events of transactions older than every
-- transaction still running, so an event that commits late can never land behind a cursor a
-- reader already passed. Ordered and resumed by (tx_id, id).
SELECT id, tx_id::text::bigint AS tx_id, occurred_at, stream, stream_id, type, actor, data, meta,
       trace_id
FROM pgsched.event
WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
  AND (tx_id, id) > (%(after_tx)s::text::xid8, %(after_id)s::bigint)
ORDER BY tx_id, id
LIMIT %(limit)s;

-- name: feed_now
-- Where the global feed stands now, as a position (tx_id, 0): event_feed shows only events of
-- transactions older than the snapshot's xmin, so those are all behind it, and every event of
-- that transaction or a later one (still running, or yet to start) is ahead.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS tx_id;

-- name: page_workers
-- The worker registry, newest first, after a keyset cursor; `healthy` = active or draining with
-- a heartbeat within `stale_seconds` by the database clock.
SELECT w.*,
       w.state IN ('active', 'stopping')
         AND w.heartbeat_at >= coalesce(%(now)s::timestamptz, now())
                               - make_interval(secs => %(stale_seconds)s::float8) AS healthy,
       (SELECT count(*) FROM pgsched.run r
        WHERE r.state = 'running' AND r.worker_id = w.id) AS running
FROM pgsched.worker w
WHERE (%(before_id)s::bigint IS NULL OR w.id < %(before_id)s::bigint)
  AND (%(states)s::text[] IS NULL OR w.state = ANY(%(states)s::text[]))
ORDER BY w.id DESC
LIMIT %(limit)s;

-- name: worker
-- One registered worker, as page_workers describes it.
SELECT w.*,
       w.state IN ('active', 'stopping')
         AND w.heartbeat_at >= coalesce(%(now)s::timestamptz, now())
                               - make_interval(secs => %(stale_seconds)s::float8) AS healthy,
       (SELECT count(*) FROM pgsched.run r
        WHERE r.state = 'running' AND r.worker_id = w.id) AS running
FROM pgsched.worker w
WHERE w.id = %(id)s::bigint;

-- name: health
-- Everything /health reports, in one round trip and through indexes only (the endpoint is
-- unauthenticated): how late the most overdue enabled schedule is, live workers, partition
-- horizon and rows in DEFAULT partitions, schedules by health and the worst one, and a few
-- counts.
WITH clock AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
)
SELECT clock.now,
       (SELECT extract(epoch FROM clock.now - min(s.next_due_at))::float8
        FROM pgsched.schedule s
        WHERE s.enabled AND s.deleted_at IS NULL AND s.next_due_at IS NOT NULL) AS overdue_seconds,
       (SELECT count(*) FROM pgsched.worker w
        WHERE w.state IN ('active', 'stopping')
          AND w.heartbeat_at >= clock.now - make_interval(secs => %(stale_seconds)s::float8))
           AS live_workers,
       (SELECT min(h.months_ahead) FROM pgsched.partition_horizon h) AS months_ahead,
       (SELECT coalesce(bool_or(h.alarm), true) FROM pgsched.partition_horizon h)
           AS partition_alarm,
       (SELECT string_agg(d.table_name || ' ' || d.live_rows, ', ' ORDER BY d.table_name)
        FROM pgsched.partition_defaults d WHERE d.live_rows > 0) AS default_partition_rows,
       (SELECT count(*) FROM pgsched.schedule s WHERE s.enabled AND s.deleted_at IS NULL)
           AS active_schedules,
       (SELECT count(*) FROM pgsched.run r WHERE r.state = 'waiting') AS pending_runs,
       (SELECT count(*) FROM pgsched.run r WHERE r.state = 'running') AS running_runs,
       (SELECT count(*) FROM pgsched.schedule s
        WHERE s.deleted_at IS NULL AND s.health = 'degraded') AS degraded_schedules,
       (SELECT count(*) FROM pgsched.schedule s
        WHERE s.deleted_at IS NULL AND s.health = 'unhealthy') AS unhealthy_schedules,
       -- The worst schedule (unhealthy before degraded, then by id), ADR 0032.
       (SELECT jsonb_build_object('health', s.health, 'reason', s.health_reason)
        FROM pgsched.schedule s
        WHERE s.deleted_at IS NULL AND s.health <> 'healthy'
        ORDER BY s.health = 'unhealthy' DESC, s.id
        LIMIT 1) AS worst_schedule
FROM clock;

-- name: stats
-- The /stats figures: schedule counts, and the runs that finished in the last `hours` hours.
-- A duration is the final attempt's (the job's own measure when it reported one).
WITH clock AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), finished AS (
    SELECT r.state,
           coalesce((r.outcome ->> 'duration_ms')::float8 / 1000,
                    extract(epoch FROM r.finished_at - r.started_at)::float8) AS duration
    FROM pgsched.run r, clock
    WHERE r.state IN ('succeeded', 'dead', 'cancelled')
      AND r.finished_at > clock.now - make_interval(hours => %(hours)s::integer)
      AND r.finished_at <= clock.now
)
SELECT clock.now,
       (SELECT count(*) FROM pgsched.schedule WHERE deleted_at IS NULL) AS total_schedules,
       (SELECT count(*) FROM pgsched.schedule WHERE deleted_at IS NULL AND enabled)
           AS enabled_schedules,
       (SELECT count(*) FROM pgsched.run WHERE state = 'running') AS running_runs,
       (SELECT count(*) FROM pgsched.run WHERE state = 'waiting') AS waiting_runs,
       (SELECT count(*) FROM finished) AS finished_runs,
       (SELECT count(*) FROM finished WHERE state = 'succeeded') AS succeeded_runs,
       (SELECT count(*) FROM finished WHERE state = 'dead') AS dead_runs,
       (SELECT count(*) FROM finished WHERE state = 'cancelled') AS cancelled_runs,
       (SELECT avg(duration) FROM finished WHERE state IN ('succeeded', 'dead')) AS avg_duration,
       (SELECT max(duration) FROM finished WHERE state IN ('succeeded', 'dead')) AS max_duration
FROM clock;

-- name: common_errors
-- The most frequent first lines of the errors of runs that went dead in the last `hours` hours.
SELECT left(split_part(coalesce(r.outcome ->> 'error', r.outcome ->> 'status', 'unknown'),
                       E'\n', 1), 120) AS error,
       count(*) AS count
FROM pgsched.run r
WHERE r.state = 'dead'
  AND r.finished_at > coalesce(%(now)s::timestamptz, now()) - make_interval(hours => %(hours)s::integer)
  AND r.finished_at <= coalesce(%(now)s::timestamptz, now())
GROUP BY 1
ORDER BY count(*) DESC, 1
LIMIT %(limit)s;

-- name: configure_api_session
-- Timestamps leave the API in UTC whatever the server's or role's TimeZone setting.
SELECT set_config('TimeZone', 'UTC', false);
