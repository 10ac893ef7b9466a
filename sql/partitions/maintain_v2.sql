-- Partition maintenance in one call: months ahead, retention by DETACH then DROP, each step an event.
-- Released: never edit this file; add maintain_v3.sql instead (sql/partitions/README.md).
--
-- v2 differs from v1 in one step: before counting a run month's unfinished runs it locks
-- pgsched.run (ACCESS EXCLUSIVE, under the same 5 s lock_timeout), the lock v1's DETACH took
-- anyway, only later. v1 counted first: a run written into that month by a transaction still
-- open at the count (a backfill of old occurrences) was invisible to it, and DETACH, waiting for
-- that transaction, then dropped the run with its month. Locking the parent first (never the
-- partition first) keeps the order claims take their locks in, so the two cannot deadlock.
--
-- SECURITY DEFINER, owned by pgsched_owner: the worker role may run it (it is the built-in
-- maintenance schedule's statement) without owning the tables. Every step is idempotent, so a
-- run killed half-way is simply run again.

CREATE FUNCTION pgsched.maintain_v2(
    months_ahead integer DEFAULT 3,
    run_retention interval DEFAULT '30 days',
    event_retention interval DEFAULT '90 days',
    at timestamptz DEFAULT NULL
)
RETURNS TABLE (action text, table_name text, partition_name text, detail jsonb)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    t_now timestamptz := coalesce(at, now());
    parent regclass;
    m integer;
    month date;
    made text;
    p record;
    unfinished bigint;
    snapshots bigint;
BEGIN
    -- DDL waits at most this long for a lock, then fails; the next run tries again.
    PERFORM set_config('lock_timeout', '5s', true);

    -- 1. Months ahead, for runs and events.
    FOREACH parent IN ARRAY ARRAY['pgsched.run'::regclass, 'pgsched.event'::regclass] LOOP
        FOR m IN 0 .. months_ahead LOOP
            month := (date_trunc('month', t_now AT TIME ZONE 'UTC') + make_interval(months => m))::date;
            CONTINUE WHEN EXISTS (
                SELECT 1 FROM pgsched.month_partitions_v1(parent) x
                WHERE x.month_start = month::timestamp AT TIME ZONE 'UTC');
            made := pgsched.create_month_partition_v1(parent, month);
            -- Names are reported schema-qualified whatever the search_path says.
            table_name := 'pgsched.' || (SELECT relname FROM pg_class WHERE oid = parent);
            INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta)
            VALUES (t_now, 'system', 'partition.created', 'maintenance',
                    jsonb_build_object('table', table_name, 'partition', made, 'month', month));
            action := 'created'; partition_name := made;
            detail := jsonb_build_object('month', month);
            RETURN NEXT;
        END LOOP;
    END LOOP;

    -- 2. Run months wholly past retention, unless a run in them is not finished yet.
    FOR p IN SELECT * FROM pgsched.month_partitions_v1('pgsched.run')
             WHERE month_end <= t_now - run_retention ORDER BY month_start LOOP
        -- No writer may be inside the month between this count and the DETACH below.
        LOCK TABLE pgsched.run IN ACCESS EXCLUSIVE MODE;
        EXECUTE format('SELECT count(*) FROM %s WHERE state IN (''waiting'', ''running'')',
                       p.partition) INTO unfinished;
        IF unfinished > 0 THEN
            INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta)
            VALUES (t_now, 'system', 'partition.kept', 'maintenance',
                    jsonb_build_object('table', 'pgsched.run', 'partition', p.partition::text,
                                       'unfinished_runs', unfinished));
            action := 'kept'; table_name := 'pgsched.run'; partition_name := p.partition::text;
            detail := jsonb_build_object('unfinished_runs', unfinished);
            RETURN NEXT;
            CONTINUE;
        END IF;
        partition_name := p.partition::text;
        EXECUTE format('ALTER TABLE pgsched.run DETACH PARTITION %s', p.partition);
        EXECUTE format('DROP TABLE %s', p.partition);
        INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta)
        VALUES (t_now, 'system', 'partition.retired', 'maintenance',
                jsonb_build_object('table', 'pgsched.run', 'partition', partition_name,
                                   'until', p.month_end));
        action := 'retired'; table_name := 'pgsched.run';
        detail := jsonb_build_object('until', p.month_end);
        RETURN NEXT;
    END LOOP;

    -- 3. Event months wholly past retention. First, so that folding the events that remain still
    --    rebuilds every schedule and every kept run, append a snapshot of each (ADR 0005): its
    --    data is the whole row, and it is newer than anything being dropped.
    IF EXISTS (SELECT 1 FROM pgsched.month_partitions_v1('pgsched.event')
               WHERE month_end <= t_now - event_retention) THEN
        INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)
        SELECT t_now, 'schedule', s.id, 'schedule.snapshot', 'maintenance', to_jsonb(s)
        FROM pgsched.schedule s;
        GET DIAGNOSTICS snapshots = ROW_COUNT;
        INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)
        SELECT t_now, 'run', r.id, 'run.snapshot', 'maintenance', to_jsonb(r)
        FROM pgsched.run r
        WHERE r.created_at < t_now - event_retention;
        FOR p IN SELECT * FROM pgsched.month_partitions_v1('pgsched.event')
                 WHERE month_end <= t_now - event_retention ORDER BY month_start LOOP
            partition_name := p.partition::text;
            EXECUTE format('ALTER TABLE pgsched.event DETACH PARTITION %s', p.partition);
            EXECUTE format('DROP TABLE %s', p.partition);
            INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta)
            VALUES (t_now, 'system', 'partition.retired', 'maintenance',
                    jsonb_build_object('table', 'pgsched.event', 'partition', partition_name,
                                       'until', p.month_end, 'snapshots', snapshots));
            action := 'retired'; table_name := 'pgsched.event';
            detail := jsonb_build_object('until', p.month_end, 'snapshots', snapshots);
            RETURN NEXT;
        END LOOP;
    END IF;
END
$$;
