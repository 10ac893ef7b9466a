-- Schedule dependencies (docs/adr/0033-schedule-dependencies.md): the graph a definition change
-- is checked against, and the runs that wait for their upstreams. A waiting run is `blocked`
-- (no claim takes it: claims take `waiting` runs); each decision about it is one event in the
-- statement that makes it (run.blocked, run.unblocked, run.skipped), so replay folds it exactly.

-- name: lock_dependency_graph
-- One writer of dependencies at a time, until this transaction ends: two concurrent changes
-- (a -> b here, b -> a there) would each find no cycle in the graph the other has not committed.
SELECT pg_advisory_xact_lock(hashtext('pgsched.schedule.depends_on')::bigint);

-- name: upstream_candidates
-- The live schedules a `depends_on` list names, by id or by name.
SELECT id, name, kind
FROM pgsched.schedule
WHERE deleted_at IS NULL
  AND (id = ANY(%(ids)s::bigint[]) OR name = ANY(%(names)s::text[]));

-- name: dependency_graph
-- Every live schedule that depends on others, with its upstreams (the edges of the graph).
SELECT id, name, depends_on
FROM pgsched.schedule
WHERE deleted_at IS NULL AND cardinality(depends_on) > 0;

-- name: dependents_of
-- The live schedules that depend on schedule `id`, by name.
SELECT id, name
FROM pgsched.schedule
WHERE deleted_at IS NULL AND depends_on @> ARRAY[%(id)s::bigint]
ORDER BY name, id;

-- name: new_dependent_runs
-- Runs the ticker just made (`run_ids`, still waiting) of schedules with upstreams
-- (`schedule_ids`): per run and upstream, in the order `depends_on` lists them, both
-- schedules' timing, for app.ticker to list the upstream occurrences of the run's period.
SELECT r.id, r.due_at,
       s.kind, s.cron, s.timezone, s.interval_seconds, s.run_at, s.starts_at, s.ends_at,
       s.created_at, coalesce(s.dependency_timeout_seconds, %(default_timeout)s::integer)
           AS dependency_timeout_seconds,
       u.id AS upstream_id, u.kind AS upstream_kind, u.cron AS upstream_cron,
       u.timezone AS upstream_timezone, u.interval_seconds AS upstream_interval_seconds,
       u.run_at AS upstream_run_at, u.starts_at AS upstream_starts_at,
       u.ends_at AS upstream_ends_at, u.created_at AS upstream_created_at
FROM pgsched.run r
JOIN pgsched.schedule s ON s.id = r.schedule_id
CROSS JOIN LATERAL unnest(s.depends_on) WITH ORDINALITY AS o(upstream_id, nth)
JOIN pgsched.schedule u ON u.id = o.upstream_id
WHERE r.schedule_id = ANY(%(schedule_ids)s::bigint[]) AND r.id = ANY(%(run_ids)s::bigint[])
  AND r.state = 'waiting' AND u.kind <> 'job'
ORDER BY r.id, o.nth;

-- name: block_runs
-- Hold new runs until their upstreams' runs succeed: state `blocked`, with the upstream
-- occurrences they wait for and until when (a JSON array of {id, due_at, waits_for,
-- wait_until}); run.blocked carries the three columns.
WITH input AS (
    SELECT *
    FROM jsonb_to_recordset(%(runs)s::jsonb)
         AS i(id bigint, due_at timestamptz, waits_for jsonb, wait_until timestamptz)
), r AS (
    UPDATE pgsched.run r
    SET state = 'blocked', waits_for = i.waits_for, wait_until = i.wait_until
    FROM input i
    WHERE r.id = i.id AND r.due_at = i.due_at AND r.state = 'waiting'
    RETURNING r.*
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id, 'run.blocked', %(actor)s,
           jsonb_build_object('state', r.state, 'waits_for', r.waits_for,
                              'wait_until', r.wait_until),
           r.trace_context ->> 'trace_id'
    FROM r
    ORDER BY r.id
)
SELECT r.id FROM r;

-- name: settle_blocked
-- Up to `limit` blocked runs, each decided:
--   every upstream occurrence it waits for has a succeeded run -> `waiting` (run.unblocked),
--   claimable from its own available_at on;
--   otherwise, at or after its wait_until -> `skipped` (run.skipped), the outcome naming the
--   first upstream occurrence in its list that had not succeeded and that run's state ("no
--   run": the ticker never made one, e.g. a missed occurrence or a paused upstream);
--   otherwise it stays blocked, untouched.
-- This runs at every tick of every ticker while most blocked runs stay blocked, so the
-- decision takes no lock (a row lock writes WAL) and reads little: a run is a candidate only
-- when its wait is over or the LAST upstream occurrence it lists succeeded (one index probe;
-- the latest occurrence is the one still to come), and only candidates have their whole list
-- read. Only the runs decided are locked (SKIP LOCKED: tickers share them), and a lock
-- re-reads the row, so a run cancelled meanwhile (no longer `blocked`) is left alone.
-- An upstream run is an occurrence (not an ad-hoc trigger or enqueue): `occurrence` is true.
WITH blocked AS MATERIALIZED (
    SELECT r.id, r.due_at, r.waits_for, r.wait_until
    FROM pgsched.run r
    WHERE r.state = 'blocked'
      AND (r.wait_until <= coalesce(%(now)s::timestamptz, now())
           OR NOT EXISTS (
               -- An empty list reads as one NULL row here: a candidate, released at once.
               SELECT 1
               FROM jsonb_to_record(r.waits_for -> -1)
                    AS l(schedule_id bigint, due_at timestamptz)
               WHERE l.schedule_id IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM pgsched.run u
                                 WHERE u.schedule_id = l.schedule_id AND u.due_at = l.due_at
                                   AND u.occurrence AND u.state = 'succeeded')))
    ORDER BY r.wait_until, r.id
    LIMIT %(limit)s
), unmet AS (
    -- Per candidate, the first upstream occurrence without a succeeded run.
    SELECT DISTINCT ON (b.id) b.id, w.schedule_id AS upstream_id, w.due_at AS upstream_due_at,
           u.id AS upstream_run_id, u.state AS upstream_state
    FROM blocked b
    CROSS JOIN LATERAL ROWS FROM (
        jsonb_to_recordset(b.waits_for) AS (schedule_id bigint, due_at timestamptz)
    ) WITH ORDINALITY AS w(schedule_id, due_at, nth)
    LEFT JOIN pgsched.run u
           ON u.schedule_id = w.schedule_id AND u.due_at = w.due_at AND u.occurrence
    WHERE u.state IS DISTINCT FROM 'succeeded'
    ORDER BY b.id, w.nth
), decided AS (
    SELECT b.id, b.due_at, n.id IS NULL AS ready, n.upstream_id, n.upstream_due_at,
           n.upstream_run_id, n.upstream_state, us.name AS upstream_name
    FROM blocked b
    LEFT JOIN unmet n ON n.id = b.id
    LEFT JOIN pgsched.schedule us ON us.id = n.upstream_id
    WHERE n.id IS NULL OR b.wait_until <= coalesce(%(now)s::timestamptz, now())
), locked AS MATERIALIZED (
    SELECT r.id, r.due_at
    FROM pgsched.run r
    JOIN decided d ON d.id = r.id AND d.due_at = r.due_at
    WHERE r.state = 'blocked'
    FOR UPDATE OF r SKIP LOCKED
), r AS (
    UPDATE pgsched.run r
    SET state = CASE WHEN d.ready THEN 'waiting' ELSE 'skipped' END,
        finished_at = CASE WHEN d.ready THEN r.finished_at
                           ELSE coalesce(%(now)s::timestamptz, now()) END,
        outcome = CASE WHEN d.ready THEN r.outcome ELSE jsonb_build_object(
            'status', 'skipped',
            'error', format('waited until %%s for upstream %%s: its occurrence due %%s %%s',
                            to_char(r.wait_until AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                            coalesce(quote_literal(d.upstream_name),
                                     'schedule ' || d.upstream_id),
                            to_char(d.upstream_due_at AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                            CASE WHEN d.upstream_run_id IS NULL THEN 'has no run'
                                 ELSE format('has run %%s, %%s', d.upstream_run_id,
                                             d.upstream_state) END),
            'upstream', jsonb_build_object(
                'schedule_id', d.upstream_id, 'name', d.upstream_name,
                'due_at', d.upstream_due_at, 'run_id', d.upstream_run_id,
                'state', d.upstream_state)) END
    FROM decided d
    JOIN locked l ON l.id = d.id AND l.due_at = d.due_at
    WHERE r.id = d.id AND r.due_at = d.due_at AND r.state = 'blocked'
    RETURNING r.*
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id,
           CASE r.state WHEN 'waiting' THEN 'run.unblocked' ELSE 'run.skipped' END, %(actor)s,
           CASE r.state WHEN 'waiting' THEN jsonb_build_object('state', r.state)
                ELSE jsonb_build_object('state', r.state, 'finished_at', r.finished_at,
                                        'outcome', r.outcome) END,
           r.trace_context ->> 'trace_id'
    FROM r
    ORDER BY r.id
)
SELECT coalesce(array_agg(r.id ORDER BY r.id) FILTER (WHERE r.state = 'waiting'), '{}')
           AS released,
       coalesce(array_agg(r.id ORDER BY r.id) FILTER (WHERE r.state = 'skipped'), '{}')
           AS skipped,
       (SELECT count(*) FROM blocked) AS examined
FROM r;
