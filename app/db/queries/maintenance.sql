-- Maintenance: partitions ahead and retention, all inside pgsched.maintain_v2 (ADR 0005,
-- sql/partitions/maintain_v2.sql). The built-in schedule runs the same function, from the python
-- job app.maintenance:run_builtin (ADR 0021).

-- name: maintain
-- One maintenance pass; returns a row per partition created, kept or retired.
SELECT action, table_name, partition_name, detail
FROM pgsched.maintain_v2(%(months_ahead)s, make_interval(days => %(run_days)s),
                         make_interval(days => %(event_days)s), %(now)s::timestamptz);

-- name: install_builtin_maintenance
-- Install or bring up to date the built-in maintenance schedule, as the owner (migration 0016).
SELECT * FROM pgsched.install_builtin_maintenance_v1(%(fields)s::jsonb, %(now)s::timestamptz);

-- Archiving maintenance (PGSCHED_ARCHIVE_DIR, ADR 0018) retires one partition per transaction
-- with the functions of sql/partitions/retire_v1.sql; the months ahead still come from
-- maintain_v2, given retention so long that it retires nothing itself.

-- name: maintain_ahead
-- Only the months ahead: maintain_v2 with retention too long to retire anything.
SELECT action, table_name, partition_name, detail
FROM pgsched.maintain_v2(%(months_ahead)s, interval '1000 years', interval '1000 years',
                         %(now)s::timestamptz);

-- name: retirable_partitions
-- Run and event months wholly past retention, runs first, oldest first, with their bounds.
SELECT table_name, partition_name, month_start, month_end
FROM pgsched.retirable_partitions_v1(make_interval(days => %(run_days)s),
                                     make_interval(days => %(event_days)s), %(now)s::timestamptz);

-- name: detached_partitions
-- Month tables left detached by an archive that did not finish (a crash in between).
SELECT table_name, partition_name, month_start, month_end
FROM pgsched.detached_partitions_v1();

-- name: snapshot_for_event_retirement
-- Snapshot events of every schedule and old run before event months go; returns how many.
SELECT pgsched.snapshot_for_event_retirement_v1(make_interval(days => %(event_days)s),
                                                %(now)s::timestamptz) AS snapshots;

-- name: detach_for_archive
-- Detach a month to archive it, or keep it when a run in it is unfinished; one row back.
SELECT action, table_name, partition_name, detail
FROM pgsched.detach_for_archive_v1(%(partition)s::regclass, %(now)s::timestamptz);

-- name: archive_columns
-- The columns of a detached month an archive holds: every column but generated ones (the run's
-- `occurrence`, migration 0019), which COPY FROM could not load back and PostgreSQL recomputes.
SELECT array_agg(attname::text ORDER BY attnum) AS columns
FROM pg_attribute
WHERE attrelid = %(partition)s::regclass AND attnum > 0 AND NOT attisdropped
  AND attgenerated = '';

-- name: archive_rows
-- A detached month's rows in key order, as CSV with a header line (what COPY FROM (FORMAT csv,
-- HEADER) loads back). The table and its columns (archive_columns) are identifiers composed
-- with psycopg.sql.Identifier.
COPY (SELECT {columns} FROM {table} ORDER BY id) TO STDOUT (FORMAT csv, HEADER);

-- name: drop_detached
-- Drop an archived detached month, recording partition.retired with the archive.
SELECT action, table_name, partition_name, detail_out AS detail
FROM pgsched.drop_detached_v1(%(partition)s::regclass, %(now)s::timestamptz, %(detail)s::jsonb);

-- name: reattach
-- Put a detached month back into its parent (its archive failed).
SELECT pgsched.reattach_v1(%(partition)s::regclass, %(now)s::timestamptz);

-- name: record_system_event
-- An event about pgsched itself (stream 'system'), such as a failed archive.
INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta)
VALUES (coalesce(%(now)s::timestamptz, now()), 'system', %(type)s, %(actor)s, %(meta)s::jsonb)
RETURNING id;

-- name: run_history
-- The oldest month of runs the database holds (NULL: no run partition at all), and whether
-- older run months were retired (a partition.retired event of pgsched.run is still kept).
SELECT (SELECT min(month_start) FROM pgsched.month_partitions_v1('pgsched.run')) AS first_month,
       EXISTS (SELECT 1 FROM pgsched.event
               WHERE stream = 'system' AND stream_id IS NULL AND type = 'partition.retired'
                 AND meta ->> 'table' = 'pgsched.run') AS retired;
