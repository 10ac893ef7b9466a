-- Telemetry: what the metrics sampler reads (otel/catalogue.py, source "sampler"). One round trip
-- every PGSCHED_METRICS_SAMPLE_SECONDS, through the partial indexes of waiting and running runs;
-- nothing here scans finished history.

-- name: telemetry_sample
-- Queue depth and oldest ready age per queue, schedules by state and by health, the most
-- overdue schedule, workers by state, partitions ahead and rows in any DEFAULT partition (an
-- alarm: pgsched creates none, ADR 0005).
WITH clock AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
)
SELECT clock.now,
       (SELECT coalesce(jsonb_agg(q ORDER BY q.queue), '[]'::jsonb)
        FROM (SELECT r.queue,
                     count(*) FILTER (WHERE r.state = 'waiting' AND r.available_at <= clock.now)
                         AS ready,
                     count(*) FILTER (WHERE r.state = 'waiting' AND r.available_at > clock.now)
                         AS scheduled,
                     count(*) FILTER (WHERE r.state = 'running') AS running,
                     coalesce(extract(epoch FROM clock.now - min(r.available_at)
                                      FILTER (WHERE r.state = 'waiting'
                                                AND r.available_at <= clock.now)), 0)::float8
                         AS oldest_ready_seconds
              FROM pgsched.run r
              WHERE r.state IN ('waiting', 'running')
              GROUP BY r.queue) q) AS queues,
       -- The operators' schedules: pgsched's built-ins (pgsched.maintenance) always exist.
       (SELECT count(*) FROM pgsched.schedule s
        WHERE s.deleted_at IS NULL AND s.enabled AND s.name NOT LIKE 'pgsched.%%')
           AS enabled_schedules,
       (SELECT count(*) FROM pgsched.schedule s
        WHERE s.deleted_at IS NULL AND NOT s.enabled AND s.name NOT LIKE 'pgsched.%%')
           AS paused_schedules,
       -- Schedules by health (ADR 0032): three series, whatever the number of schedules. The
       -- built-in ones count here: a failing pgsched.maintenance is a schedule to look at.
       (SELECT jsonb_build_object(
                   'healthy', count(*) FILTER (WHERE s.health = 'healthy'),
                   'degraded', count(*) FILTER (WHERE s.health = 'degraded'),
                   'unhealthy', count(*) FILTER (WHERE s.health = 'unhealthy'))
        FROM pgsched.schedule s
        WHERE s.deleted_at IS NULL) AS schedule_health,
       -- Paused schedules whose last pause or resume was the circuit breaker's pause (ADR
       -- 0032): only paused schedules are looked at, each by the event index, newest first.
       (SELECT count(*) FROM pgsched.schedule s
        WHERE s.deleted_at IS NULL AND NOT s.enabled
          AND (SELECT e.meta ->> 'reason' FROM pgsched.event e
               WHERE e.stream = 'schedule' AND e.stream_id = s.id
                 AND e.type IN ('schedule.paused', 'schedule.resumed')
               ORDER BY e.id DESC
               LIMIT 1) = 'circuit_breaker') AS paused_by_breaker,
       (SELECT coalesce(greatest(extract(epoch FROM clock.now - min(s.next_due_at)), 0), 0)::float8
        FROM pgsched.schedule s
        WHERE s.enabled AND s.deleted_at IS NULL) AS overdue_seconds,
       (SELECT count(*) FROM pgsched.worker w
        WHERE w.state IN ('active', 'stopping')
          AND w.heartbeat_at >= clock.now - make_interval(secs => %(stale_seconds)s::float8))
           AS live_workers,
       (SELECT count(*) FROM pgsched.worker w
        WHERE w.state IN ('active', 'stopping')
          AND w.heartbeat_at < clock.now - make_interval(secs => %(stale_seconds)s::float8))
           AS silent_workers,
       (SELECT coalesce(jsonb_object_agg(replace(h.table_name, 'pgsched.', ''), h.months_ahead),
                        '{}'::jsonb)
        FROM pgsched.partition_horizon h) AS months_ahead,
       (SELECT jsonb_object_agg(t.name, coalesce(d.rows, 0))
        FROM unnest(ARRAY['run', 'event']) AS t(name)
        LEFT JOIN LATERAL (
            SELECT sum(v.live_rows) AS rows
            FROM pgsched.partition_defaults v
            WHERE v.table_name = 'pgsched.' || t.name
        ) d ON true) AS default_rows
FROM clock;
