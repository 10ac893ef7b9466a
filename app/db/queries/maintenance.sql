-- Maintenance: partitions ahead of time (ADR 0005). Creating a month is DDL and needs the owner
-- role; the run command and `pgsched maintain` connect as a member of pgsched_owner.

-- name: missing_months
-- The months of runs and events, from the current one to `months` ahead, with no partition yet.
SELECT w.parent::text AS parent, w.month
FROM (SELECT t AS parent,
             (date_trunc('month', coalesce(%(now)s::timestamptz, now()) AT TIME ZONE 'UTC')
              + make_interval(months => m))::date AS month
      FROM unnest(ARRAY['pgsched.run'::regclass, 'pgsched.event'::regclass]) AS t,
           generate_series(0, %(months)s) AS m) w
WHERE NOT EXISTS (
    SELECT 1 FROM pgsched.month_partitions_v1(w.parent) p
    WHERE p.month_start = w.month::timestamp AT TIME ZONE 'UTC')
ORDER BY w.month, w.parent;

-- name: create_month_partition
-- Create one month's partition of a table (idempotent).
SELECT pgsched.create_month_partition_v1(%(parent)s::regclass, %(month)s::date) AS name;

-- name: record_system_event
-- Append an event about the system itself (maintenance, partitions).
INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
VALUES (coalesce(%(now)s::timestamptz, now()), 'system', NULL, %(type)s, %(actor)s, '{}'::jsonb,
        %(meta)s::jsonb)
RETURNING id;
