-- Ticker: due schedules become runs. Several tickers may run at once: SKIP LOCKED gives each
-- schedule to one of them per batch, and the run's unique occurrence key makes any overlap a
-- no-op, so two tickers never create the same run twice. A killed ticker's transaction rolls back whole.

-- name: db_now
-- The instant this transaction decides with (ADR 0003).
SELECT coalesce(%(now)s::timestamptz, now()) AS now;

-- name: lock_due_groups
-- Live, enabled schedules due by `horizon`, locked for this transaction (others skip them), and
-- grouped by everything app.ticker.plan reads except the id: schedules in one group plan alike,
-- so the client plans each group once and never decodes or re-sends per-schedule timestamps
-- (the per-schedule round trip through Python was most of a tick's cost: bench/README.md).
-- A jittered schedule's plan depends on its id, so it forms a group of its own; an interval's
-- grid depends on its anchor (starts_at, else created_at), so created_at groups intervals only.
-- `id` is one member, for plan(); `ids` are all of them.
WITH due AS (
    SELECT id, kind, cron, timezone, interval_seconds, run_at, starts_at, ends_at, created_at,
           next_due_at, jitter_seconds, missed_policy, missed_cap, grace_seconds, depends_on
    FROM pgsched.schedule
    WHERE enabled AND deleted_at IS NULL AND next_due_at <= %(horizon)s::timestamptz
    ORDER BY next_due_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
SELECT min(id) AS id, array_agg(id ORDER BY id) AS ids,
       -- Members whose runs wait for upstreams (ADR 0033): app.ticker holds their new runs.
       coalesce(array_agg(id ORDER BY id) FILTER (WHERE cardinality(depends_on) > 0), '{}')
           AS dependent_ids,
       kind, cron, timezone, interval_seconds, run_at, starts_at, ends_at,
       CASE WHEN kind = 'interval' THEN created_at END AS created_at,
       next_due_at, jitter_seconds, missed_policy, missed_cap, grace_seconds
FROM due
GROUP BY kind, cron, timezone, interval_seconds, run_at, starts_at, ends_at,
         CASE WHEN kind = 'interval' THEN created_at END,
         next_due_at, jitter_seconds, missed_policy, missed_cap, grace_seconds,
         CASE WHEN jitter_seconds > 0 THEN id END;

-- name: notify_runs
-- Wake workers: one NOTIFY per batch, never per row: NOTIFY serialises committing
-- transactions on a global lock, and workers need one wake-up, not one per run.
SELECT pg_notify('pgsched_runs', '');

-- name: materialise_batch
-- One batch of a tick in one statement. Input, from app.ticker: the locked schedules (`ids`) and
-- the plan group each belongs to (`groups`, 1-based); per group its next due time
-- (`next_due_ats`, NULL: nothing more to do); and the group's planned runs and missed
-- occurrences, which every member of the group shares. The statement:
-- 1. inserts the runs under each schedule's overlap policy:
--      allow: every occurrence becomes a run;
--      skip:  only when the schedule has no waiting, blocked or running run, and then only its
--             earliest occurrence of this batch (the later ones would overlap it);
--      queue: only when the schedule has no waiting or blocked run (at most one buffered behind
--             a running one), again the earliest of this batch;
--    (a blocked run, ADR 0033, is a waiting one held for its upstreams: counting it keeps a
--    downstream from piling up blocked runs that would all be released at once);
--    with ON CONFLICT DO NOTHING on the occurrence key, and a run.created event per new run;
-- 2. records each occurrence that will not run as schedule.occurrence_missed with its reason
--    (the missed policy's, or 'overlap' for those the overlap policy refused): an operator can
--    query what did not run and why;
-- 3. advances each schedule's next due time, with its schedule.advanced event.
-- The schedules are locked by this transaction (lock_due_groups), so no other ticker adds runs
-- to them meanwhile; a run finishing meanwhile can only make the overlap test conservative.
WITH member AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(groups)s::integer[]) AS m(schedule_id, g)
), planned AS (
    -- nth: the occurrence's rank within its group's runs, which is its rank within each
    -- member's runs too (numbering the few planned rows, not the thousands of member rows).
    SELECT p.*, row_number() OVER (PARTITION BY p.g ORDER BY p.due_at) AS nth
    FROM unnest(%(run_groups)s::integer[], %(due_ats)s::timestamptz[],
                %(available_ats)s::timestamptz[], %(origins)s::text[])
         AS p(g, due_at, available_at, origin)
), ranked AS (
    SELECT m.schedule_id, p.due_at, p.available_at, p.origin, p.nth,
           s.overlap_policy, s.queue, s.priority, s.max_attempts,
           -- CASE evaluates lazily: 'allow' schedules, the common case, skip both lookups.
           CASE WHEN s.overlap_policy = 'allow' THEN false
                ELSE EXISTS (SELECT 1 FROM pgsched.run r
                             WHERE r.schedule_id = m.schedule_id
                               AND r.state IN ('waiting', 'blocked'))
           END AS has_waiting,
           CASE WHEN s.overlap_policy = 'allow' THEN false
                ELSE EXISTS (SELECT 1 FROM pgsched.run r
                             WHERE r.schedule_id = m.schedule_id
                               AND r.state IN ('waiting', 'blocked', 'running'))
           END AS has_active
    FROM member m
    JOIN planned p USING (g)
    JOIN pgsched.schedule s ON s.id = m.schedule_id
), decided AS (
    SELECT ranked.*,
           CASE overlap_policy
               WHEN 'allow' THEN true
               WHEN 'skip' THEN NOT has_active AND nth = 1
               ELSE NOT has_waiting AND nth = 1
           END AS admitted
    FROM ranked
), r AS (
    INSERT INTO pgsched.run (schedule_id, due_at, adhoc, origin, state, queue, priority,
                             available_at, max_attempts, trace_context, created_at)
    SELECT d.schedule_id, d.due_at, false, d.origin, 'waiting', d.queue, d.priority,
           d.available_at, d.max_attempts, %(trace_context)s::jsonb,
           coalesce(%(now)s::timestamptz, now())
    FROM decided d
    WHERE d.admitted
    ON CONFLICT (schedule_id, due_at, occurrence) DO NOTHING
    RETURNING *
), created AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id, 'run.created', %(actor)s,
           to_jsonb(r), r.trace_context ->> 'trace_id'
    FROM r
    RETURNING 1
), missed AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
    SELECT coalesce(%(now)s::timestamptz, now()), 'schedule', x.schedule_id,
           'schedule.occurrence_missed', %(actor)s, '{}'::jsonb,
           jsonb_build_object('due_at', x.due_at, 'reason', x.reason)
    FROM (SELECT m.schedule_id, p.due_at, p.reason
          FROM member m
          JOIN unnest(%(missed_groups)s::integer[], %(missed_due_ats)s::timestamptz[],
                      %(missed_reasons)s::text[]) AS p(g, due_at, reason) USING (g)
          UNION ALL
          SELECT d.schedule_id, d.due_at, 'overlap' FROM decided d WHERE NOT d.admitted
          ORDER BY schedule_id, due_at) x
    RETURNING meta ->> 'reason' AS reason
), advanced AS (
    UPDATE pgsched.schedule s
    SET next_due_at = n.next_due_at
    FROM member m
    JOIN unnest(%(next_due_ats)s::timestamptz[]) WITH ORDINALITY AS n(next_due_at, g) USING (g)
    WHERE s.id = m.schedule_id
    RETURNING s.id, s.next_due_at
), advanced_events AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)
    SELECT coalesce(%(now)s::timestamptz, now()), 'schedule', a.id, 'schedule.advanced', %(actor)s,
           jsonb_build_object('next_due_at', a.next_due_at)
    FROM advanced a
    RETURNING 1
)
-- Reading the CTEs in this order runs them in this order, so the event log tells the batch as
-- it happened: runs created, occurrences missed, schedules advanced.
SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM r) AS run_ids,
       (SELECT count(*) FROM created) AS created,
       (SELECT count(*) FROM decided WHERE admitted) AS admitted,
       (SELECT count(*) FROM missed WHERE reason = 'overlap') AS refused,
       (SELECT count(*) FROM missed WHERE reason <> 'overlap') AS missed,
       (SELECT count(*) FROM advanced_events) AS advanced;
