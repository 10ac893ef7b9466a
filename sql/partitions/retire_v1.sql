-- Retiring one partition at a time, so a client can archive its rows before it is dropped
-- (app/maintenance.py, docs/adr/0018-archive-before-drop-and-history-cost.md).
-- Released: never edit this file; add retire_v2.sql instead (sql/partitions/README.md).
--
-- The client: detach_for_archive_v1 (short: the parent locked, unfinished runs counted, DETACH),
-- COPY the detached table out, write and fsync the file, drop_detached_v1 with where the rows
-- went. If the file cannot be written, reattach_v1 puts the month back, unchanged. A table left
-- detached by a crash in between is found by detached_partitions_v1 and finished next time.

-- A partition's name, schema-qualified whatever the search_path (regclass::text is not).
CREATE FUNCTION pgsched.partition_name_v1(part regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgsched
AS $$
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = part
$$;

-- Partitions of runs and events wholly past their retention at `at`, runs first, oldest first.
CREATE FUNCTION pgsched.retirable_partitions_v1(
    run_retention interval,
    event_retention interval,
    at timestamptz DEFAULT NULL
)
RETURNS TABLE (table_name text, partition_name text, month_start timestamptz,
               month_end timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgsched
AS $$
    SELECT x.table_name, x.partition_name, x.month_start, x.month_end
    FROM (
        SELECT 1 AS k, 'pgsched.run' AS table_name,
               pgsched.partition_name_v1(p.partition) AS partition_name, p.month_start, p.month_end
        FROM pgsched.month_partitions_v1('pgsched.run') p
        WHERE p.month_end <= coalesce(at, now()) - run_retention
        UNION ALL
        SELECT 2, 'pgsched.event', pgsched.partition_name_v1(p.partition), p.month_start,
               p.month_end
        FROM pgsched.month_partitions_v1('pgsched.event') p
        WHERE p.month_end <= coalesce(at, now()) - event_retention
    ) x
    ORDER BY x.k, x.month_start
$$;

-- Month tables of pgsched that are not attached (detached for an archive that did not finish),
-- with the parent and bounds their names say (run_yYYYYmMM, event_yYYYYmMM).
CREATE FUNCTION pgsched.detached_partitions_v1()
RETURNS TABLE (table_name text, partition_name text, month_start timestamptz,
               month_end timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgsched
AS $$
    SELECT 'pgsched.' || m[1], format('%I.%I', 'pgsched', c.relname),
           make_timestamptz(m[2]::integer, m[3]::integer, 1, 0, 0, 0, 'UTC'),
           make_timestamptz(m[2]::integer, m[3]::integer, 1, 0, 0, 0, 'UTC') + interval '1 month'
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL regexp_match(c.relname, '^(run|event)_y([0-9]{4})m([0-9]{2})$') AS m
    WHERE n.nspname = 'pgsched' AND c.relkind = 'r' AND NOT c.relispartition AND m IS NOT NULL
    ORDER BY m[1] DESC, 3
$$;

-- Before event months go: a snapshot event of every schedule, and of every run older than the
-- event retention, so the events that remain still fold into every row (as maintain_v1 does).
CREATE FUNCTION pgsched.snapshot_for_event_retirement_v1(event_retention interval,
                                                         at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    t_now timestamptz := coalesce(at, now());
    schedules bigint;
    runs bigint;
BEGIN
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)
    SELECT t_now, 'schedule', s.id, 'schedule.snapshot', 'maintenance', to_jsonb(s)
    FROM pgsched.schedule s;
    GET DIAGNOSTICS schedules = ROW_COUNT;
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)
    SELECT t_now, 'run', r.id, 'run.snapshot', 'maintenance', to_jsonb(r)
    FROM pgsched.run r
    WHERE r.created_at < t_now - event_retention;
    GET DIAGNOSTICS runs = ROW_COUNT;
    RETURN schedules + runs;
END
$$;

-- Take a month out of its parent for archiving: the parent is locked first (the order every
-- statement on it takes), so nothing writes the month while its unfinished runs are counted; a
-- month holding one is kept (partition.kept). Otherwise DETACH; the detached table may be read
-- by the worker role (which runs the built-in maintenance) and nothing else changes it.
CREATE FUNCTION pgsched.detach_for_archive_v1(part regclass, at timestamptz DEFAULT NULL)
RETURNS TABLE (action text, table_name text, partition_name text, detail jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    t_now timestamptz := coalesce(at, now());
    parent regclass;
    unfinished bigint := 0;
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    SELECT i.inhparent INTO parent FROM pg_inherits i WHERE i.inhrelid = part;
    IF parent IS NULL OR parent NOT IN ('pgsched.run'::regclass, 'pgsched.event'::regclass) THEN
        RAISE EXCEPTION '% is not a partition of pgsched.run or pgsched.event', part
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    table_name := pgsched.partition_name_v1(parent);
    partition_name := pgsched.partition_name_v1(part);
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', parent);
    IF parent = 'pgsched.run'::regclass THEN
        EXECUTE format('SELECT count(*) FROM %s WHERE state IN (''waiting'', ''running'')', part)
            INTO unfinished;
    END IF;
    IF unfinished > 0 THEN
        detail := jsonb_build_object('unfinished_runs', unfinished);
        action := 'kept';
    ELSE
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, part);
        EXECUTE format('GRANT SELECT ON %s TO pgsched_worker', part);
        detail := jsonb_build_object('for', 'archive');
        action := 'detached';
    END IF;
    INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta)
    VALUES (t_now, 'system', 'partition.' || action, 'maintenance',
            jsonb_build_object('table', table_name, 'partition', partition_name) || detail);
    RETURN NEXT;
END
$$;

-- The month table `part` names, if it is a detached pgsched month (anything else is refused,
-- so the functions below touch nothing else), with its parent's name and bounds.
CREATE FUNCTION pgsched.detached_month_v1(part regclass)
RETURNS TABLE (table_name text, partition_name text, month_start timestamptz,
               month_end timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgsched
AS $$
BEGIN
    RETURN QUERY SELECT d.* FROM pgsched.detached_partitions_v1() d
                 WHERE d.partition_name = pgsched.partition_name_v1(part);
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not a detached month of pgsched.run or pgsched.event', part
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- Drop a detached month whose rows were archived, recording partition.retired with `detail`
-- (the archive: path, rows, bytes, sha256). Refused if the archive's row count is not the
-- table's.
CREATE FUNCTION pgsched.drop_detached_v1(part regclass, at timestamptz DEFAULT NULL,
                                         detail jsonb DEFAULT '{}')
RETURNS TABLE (action text, table_name text, partition_name text, detail_out jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    t_now timestamptz := coalesce(at, now());
    month record;
    row_count bigint;
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    SELECT * INTO month FROM pgsched.detached_month_v1(part);
    EXECUTE format('SELECT count(*) FROM %s', part) INTO row_count;
    IF (detail -> 'archive' ->> 'rows')::bigint IS DISTINCT FROM row_count THEN
        RAISE EXCEPTION 'the archive of % holds % rows, the table %',
            part, coalesce(detail -> 'archive' ->> 'rows', 'no'), row_count
            USING ERRCODE = 'data_exception';
    END IF;
    EXECUTE format('DROP TABLE %s', part);
    table_name := month.table_name;
    partition_name := month.partition_name;
    detail_out := jsonb_build_object('until', month.month_end) || detail;
    INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta)
    VALUES (t_now, 'system', 'partition.retired', 'maintenance',
            jsonb_build_object('table', table_name, 'partition', partition_name) || detail_out);
    action := 'retired';
    RETURN NEXT;
END
$$;

-- Put a detached month back where it was (its archive could not be written): ATTACH with the
-- bounds its name says, and take back the worker's read grant, as before detach_for_archive_v1.
CREATE FUNCTION pgsched.reattach_v1(part regclass, at timestamptz DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    t_now timestamptz := coalesce(at, now());
    month record;
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    SELECT * INTO month FROM pgsched.detached_month_v1(part);
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)',
                   month.table_name, part, month.month_start, month.month_end);
    EXECUTE format('REVOKE SELECT ON %s FROM pgsched_worker', part);
    INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta)
    VALUES (t_now, 'system', 'partition.reattached', 'maintenance',
            jsonb_build_object('table', month.table_name, 'partition', month.partition_name));
END
$$;
