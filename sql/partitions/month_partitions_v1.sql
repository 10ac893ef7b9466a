-- Monthly RANGE partitions for pgsched.run (due_at) and pgsched.event (occurred_at).
-- Released: never edit this file; add month_partitions_v2.sql instead (sql/partitions/README.md).

-- The partitions of `parent`, one row per month, oldest first. Bounds are read from the catalog,
-- so partitions created by hand with other names are listed too.
CREATE FUNCTION pgsched.month_partitions_v1(parent regclass)
RETURNS TABLE (partition regclass, month_start timestamptz, month_end timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pgsched
AS $$
    SELECT c.oid::regclass,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent
      AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    ORDER BY 2
$$;

-- Create the partition of `parent` holding `month` (any day in it), if it does not exist yet.
-- Months are calendar months in UTC. Event partitions get the TRUNCATE guard, because a TRUNCATE
-- of a partition does not fire the statement trigger of its parent (row triggers are cloned).
CREATE FUNCTION pgsched.create_month_partition_v1(parent regclass, month date)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    lo timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
    hi timestamptz := (date_trunc('month', month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    tbl text := (SELECT relname FROM pg_class WHERE oid = parent);
    name text := tbl || to_char(lo AT TIME ZONE 'UTC', '"_y"YYYY"m"MM');
BEGIN
    IF EXISTS (SELECT 1 FROM pgsched.month_partitions_v1(parent) p WHERE p.month_start = lo) THEN
        RETURN name;
    END IF;
    EXECUTE format('CREATE TABLE pgsched.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                   name, parent, lo, hi);
    IF parent = 'pgsched.event'::regclass THEN
        EXECUTE format('CREATE TRIGGER event_no_truncate BEFORE TRUNCATE ON pgsched.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION pgsched.event_is_append_only()', name);
    END IF;
    RETURN name;
END
$$;

-- Detach and drop every partition of `parent` that ends on or before `before`; return their names.
-- Callers decide what may go (retention, unfinished runs); this function only does it safely:
-- the caller's lock_timeout applies, and DETACH first keeps the parent's lock short.
CREATE FUNCTION pgsched.drop_month_partitions_before_v1(parent regclass, before date)
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    victim text;
BEGIN
    FOR victim IN SELECT p.partition::text FROM pgsched.month_partitions_v1(parent) p
                  WHERE p.month_end <= (before::timestamp AT TIME ZONE 'UTC')
    LOOP
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, victim);
        EXECUTE format('DROP TABLE %s', victim);
        RETURN NEXT victim;
    END LOOP;
END
$$;
