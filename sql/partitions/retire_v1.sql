-- Retiring one partition at a time, so a client can archive its rows before it is dropped
-- (app/maintenance.py, docs/adr/0018-archive-before-drop-and-history-cost.md).
-- Released: never edit this file; add retire_v2.sql instead (sql/partitions/README.md).
--
-- The client's transaction: hold_partition_v1 (SHARE lock: reads go on, writes wait), COPY the
-- rows out through the parent, write and fsync the file, retire_partition_v1 with where they went.
-- Any failure rolls the whole transaction back: the partition stays attached and unchanged.

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

-- Partitions of runs and events wholly past their retention at `at`, runs first, oldest first,
-- with the bounds that select their rows through the parent table.
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

-- The parent (pgsched.run or pgsched.event) of `part`; anything else is refused, so the
-- SECURITY DEFINER functions below can touch nothing but these partitions.
CREATE FUNCTION pgsched.partition_parent_v1(part regclass)
RETURNS regclass
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    parent regclass;
BEGIN
    SELECT i.inhparent INTO parent FROM pg_inherits i WHERE i.inhrelid = part;
    IF parent IS NULL OR parent NOT IN ('pgsched.run'::regclass, 'pgsched.event'::regclass) THEN
        RAISE EXCEPTION '% is not a partition of pgsched.run or pgsched.event', part
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN parent;
END
$$;

-- Hold `part` still until the caller's transaction ends (SHARE: reads go on, writes wait) and
-- count its rows, and for runs those not finished yet. No xid is taken, so a long archive does
-- not hold back the event feed (ADR 0005).
CREATE FUNCTION pgsched.hold_partition_v1(part regclass)
RETURNS TABLE (row_count bigint, unfinished bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    parent regclass := pgsched.partition_parent_v1(part);
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    EXECUTE format('LOCK TABLE %s IN SHARE MODE', part);
    IF parent = 'pgsched.run'::regclass THEN
        EXECUTE format('SELECT count(*), count(*) FILTER (WHERE state IN (''waiting'', ''running''))'
                       ' FROM %s', part) INTO row_count, unfinished;
    ELSE
        EXECUTE format('SELECT count(*), 0 FROM %s', part) INTO row_count, unfinished;
    END IF;
    RETURN NEXT;
END
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

-- Detach and drop `part`, recording partition.retired whose meta carries `detail` (the archive:
-- path, rows, bytes, sha256). A run month with an unfinished run is kept (partition.kept). With
-- an archive, its row count must equal the partition's, or nothing is dropped.
CREATE FUNCTION pgsched.retire_partition_v1(part regclass, at timestamptz DEFAULT NULL,
                                            detail jsonb DEFAULT '{}')
RETURNS TABLE (action text, table_name text, partition_name text, detail_out jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    t_now timestamptz := coalesce(at, now());
    parent regclass := pgsched.partition_parent_v1(part);
    held record;
    bounds record;
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    table_name := 'pgsched.' || (SELECT relname FROM pg_class WHERE oid = parent);
    partition_name := pgsched.partition_name_v1(part);
    SELECT * INTO bounds FROM pgsched.month_partitions_v1(parent) p WHERE p.partition = part;
    SELECT * INTO held FROM pgsched.hold_partition_v1(part);
    IF held.unfinished > 0 THEN
        detail_out := jsonb_build_object('unfinished_runs', held.unfinished);
        INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta)
        VALUES (t_now, 'system', 'partition.kept', 'maintenance',
                jsonb_build_object('table', table_name, 'partition', partition_name)
                || detail_out);
        action := 'kept';
        RETURN NEXT;
        RETURN;
    END IF;
    IF detail ? 'archive' AND (detail -> 'archive' ->> 'rows')::bigint <> held.row_count THEN
        RAISE EXCEPTION 'the archive of % holds % rows, the partition %',
            part, detail -> 'archive' ->> 'rows', held.row_count
            USING ERRCODE = 'data_exception';
    END IF;
    EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, part);
    EXECUTE format('DROP TABLE %s', part);
    detail_out := jsonb_build_object('until', bounds.month_end) || detail;
    INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta)
    VALUES (t_now, 'system', 'partition.retired', 'maintenance',
            jsonb_build_object('table', table_name, 'partition', partition_name) || detail_out);
    action := 'retired';
    RETURN NEXT;
END
$$;
