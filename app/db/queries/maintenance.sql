-- Maintenance: partitions ahead and retention, all inside pgsched.maintain_v1 (ADR 0005,
-- sql/partitions/maintain_v1.sql). The built-in schedule runs the same function as a sql job.

-- name: maintain
-- One maintenance pass; returns a row per partition created, kept or retired.
SELECT action, table_name, partition_name, detail
FROM pgsched.maintain_v1(%(months_ahead)s, make_interval(days => %(run_days)s),
                         make_interval(days => %(event_days)s), %(now)s::timestamptz);

-- name: live_schedule_by_name
-- A live schedule by name (the built-in ones are found this way).
SELECT * FROM pgsched.schedule WHERE name = %(name)s AND deleted_at IS NULL;
