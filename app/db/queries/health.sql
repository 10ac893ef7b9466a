-- Schedule health (docs/adr/0032-schedule-health-and-circuit-breaker.md): each schedule's
-- health is judged from its runs by its own thresholds (schedule.health_policy); a change of
-- health or of its reason is written to the row with a schedule.health_changed event, and the
-- circuit breaker (schedule.pause_after_failures) pauses the schedule with schedule.paused, in
-- the same statement. The columns are a projection of those events (`pgsched verify`).

-- name: evaluate_health
-- Judge the live schedules `ids` (NULL: every live schedule) at `now`, and record what changed.
-- Outcomes are finished runs: succeeded, dead, or skipped (its upstreams never succeeded in
-- time, ADR 0033: the job did not do its work, so a skip counts as a failure); a run that
-- failed and then succeeded on a retry is a success; cancelled runs are an operator's act, not
-- an outcome. Newest occurrence first (due_at, id), read through the partial indexes
-- run_outcome_by_schedule and run_success_by_schedule (migration 0021). Per schedule:
--   failures: dead or skipped runs newer than its newest succeeded run (at most what a
--             threshold needs);
--   window:   its newest `window_runs` outcomes, and how many of them failed;
--   overdue:  enabled and its next due time, or any waiting run of it (the oldest's
--             available_at), more than `overdue_seconds` in the past (NULL: never overdue).
-- unhealthy: failures >= consecutive_failures (reason consecutive_failures), else overdue
-- (reason overdue); degraded: dead / outcomes in the window >= failure_rate (failure_rate);
-- else healthy. The breaker trips when the schedule is enabled, pause_after_failures is set,
-- failures >= it, and the newest of those failures finished after the schedule last changed
-- (updated_at: a resume or an edit re-arms it for the next failure, never for the old ones).
-- Only rows that change are locked, in id order, SKIP LOCKED: a schedule an API call or a
-- ticker holds right now is judged at the next evaluation (the periodic sweep), never waited
-- for, so evaluations cannot deadlock with each other or with the ticker.
-- The judgement comes from the statement's snapshot, but the lock reads the row as it is now
-- (a transaction that committed meanwhile, such as another evaluation or a resume, is seen):
-- a row whose inputs changed since (updated_at, enabled, next due time, thresholds) is left
-- for the next evaluation, one whose health already is the judged one is not touched again,
-- and the old health and reason of the event are the current row's. So a concurrent
-- evaluation never writes a second event or a second pause, and a stale judgement never
-- re-pauses a schedule that was just resumed.
-- The failure rate is compared in numeric: 7 dead of 25 is exactly 0.28 (float8 is not).
WITH clock AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), candidate AS (
    SELECT s.id, s.health, s.health_reason, s.enabled, s.next_due_at, s.updated_at,
           s.pause_after_failures, s.health_policy,
           (s.health_policy ->> 'consecutive_failures')::integer AS max_failures,
           (s.health_policy ->> 'failure_rate')::numeric AS max_rate,
           (s.health_policy ->> 'window_runs')::integer AS window_runs,
           (s.health_policy ->> 'overdue_seconds')::float8 AS overdue_seconds
    FROM pgsched.schedule s
    WHERE s.deleted_at IS NULL
      AND (%(ids)s::bigint[] IS NULL OR s.id = ANY(%(ids)s::bigint[]))
), figures AS (
    SELECT c.*, clock.now, w.outcomes, w.dead, streak.failures, streak.last_failed_at,
           c.overdue_seconds IS NOT NULL
           AND least(CASE WHEN c.enabled THEN c.next_due_at END,
                     (SELECT min(r.available_at) FROM pgsched.run r
                      WHERE r.schedule_id = c.id AND r.state = 'waiting'))
               < clock.now - make_interval(secs => c.overdue_seconds) AS overdue
    FROM candidate c
    CROSS JOIN clock
    CROSS JOIN LATERAL (
        SELECT count(*) AS outcomes, count(*) FILTER (WHERE x.state <> 'succeeded') AS dead
        FROM (SELECT r.state FROM pgsched.run r
              WHERE r.schedule_id = c.id AND r.state IN ('succeeded', 'dead', 'skipped')
              ORDER BY r.due_at DESC, r.id DESC
              LIMIT c.window_runs) x
    ) w
    CROSS JOIN LATERAL (
        SELECT count(*) AS failures, max(f.finished_at) AS last_failed_at
        FROM (SELECT r.finished_at FROM pgsched.run r
              LEFT JOIN LATERAL (
                  SELECT o.due_at, o.id FROM pgsched.run o
                  WHERE o.schedule_id = c.id AND o.state = 'succeeded'
                  ORDER BY o.due_at DESC, o.id DESC
                  LIMIT 1) ok ON true
              WHERE r.schedule_id = c.id AND r.state IN ('succeeded', 'dead', 'skipped')
                AND r.state <> 'succeeded'
                AND (ok.id IS NULL OR (r.due_at, r.id) > (ok.due_at, ok.id))
              ORDER BY r.due_at DESC, r.id DESC
              LIMIT greatest(c.max_failures, coalesce(c.pause_after_failures, 0))) f
    ) streak
), judged AS (
    SELECT f.*,
           CASE WHEN f.failures >= f.max_failures OR f.overdue THEN 'unhealthy'
                WHEN f.outcomes > 0 AND f.dead >= f.max_rate * f.outcomes THEN 'degraded'
                ELSE 'healthy' END AS new_health,
           CASE WHEN f.failures >= f.max_failures THEN 'consecutive_failures'
                WHEN f.overdue THEN 'overdue'
                WHEN f.outcomes > 0 AND f.dead >= f.max_rate * f.outcomes THEN 'failure_rate'
                END AS new_reason,
           coalesce(f.enabled AND f.failures >= f.pause_after_failures
                    AND f.last_failed_at > f.updated_at, false) AS trip
    FROM figures f
), locked AS (
    -- s is the row as it is when locked (see above), j what the snapshot said.
    SELECT s.id, s.health AS old_health, s.health_reason AS old_reason
    FROM pgsched.schedule s
    JOIN judged j ON j.id = s.id
    WHERE (j.trip OR s.health IS DISTINCT FROM j.new_health
           OR s.health_reason IS DISTINCT FROM j.new_reason)
      AND s.deleted_at IS NULL
      AND s.updated_at = j.updated_at AND s.enabled = j.enabled
      AND s.next_due_at IS NOT DISTINCT FROM j.next_due_at
      AND s.health_policy = j.health_policy
      AND s.pause_after_failures IS NOT DISTINCT FROM j.pause_after_failures
    ORDER BY s.id
    FOR NO KEY UPDATE OF s SKIP LOCKED
), changed AS (
    UPDATE pgsched.schedule s
    SET health = j.new_health,
        health_reason = j.new_reason,
        health_since = CASE WHEN j.new_health <> l.old_health THEN j.now ELSE s.health_since END,
        enabled = CASE WHEN j.trip THEN false ELSE s.enabled END,
        paused_at = CASE WHEN j.trip THEN j.now ELSE s.paused_at END,
        version = s.version + CASE WHEN j.trip THEN 1 ELSE 0 END,
        updated_at = CASE WHEN j.trip THEN j.now ELSE s.updated_at END
    FROM judged j, locked l
    WHERE s.id = j.id AND l.id = j.id
    RETURNING s.id, s.name, s.health, s.health_reason, s.health_since, s.health_policy,
              s.enabled, s.paused_at, s.version, s.updated_at, s.pause_after_failures,
              l.old_health, l.old_reason, j.trip, j.failures,
              j.outcomes, j.dead, j.now
), health_event AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
    SELECT c.now, 'schedule', c.id, 'schedule.health_changed', %(actor)s,
           jsonb_build_object('health', c.health, 'health_reason', c.health_reason,
                              'health_since', c.health_since),
           jsonb_build_object('from', c.old_health, 'to', c.health,
                              'from_reason', c.old_reason, 'reason', c.health_reason,
                              'consecutive_failures', c.failures,
                              'window_outcomes', c.outcomes, 'window_dead', c.dead,
                              'policy', c.health_policy)
    FROM changed c
    WHERE c.health <> c.old_health OR c.health_reason IS DISTINCT FROM c.old_reason
    ORDER BY c.id
), pause_event AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
    SELECT c.now, 'schedule', c.id, 'schedule.paused', %(actor)s,
           jsonb_build_object('enabled', c.enabled, 'paused_at', c.paused_at,
                              'version', c.version, 'updated_at', c.updated_at),
           jsonb_build_object('reason', 'circuit_breaker',
                              'consecutive_failures', c.failures,
                              'pause_after_failures', c.pause_after_failures)
    FROM changed c
    WHERE c.trip
    ORDER BY c.id
)
SELECT c.id, c.name, c.old_health, c.health, c.old_reason, c.health_reason, c.trip AS paused,
       c.failures
FROM changed c
ORDER BY c.id;

-- name: live_schedule_ids
-- Every live schedule's id, in order: the sweep judges them a chunk at a time (ADR 0032).
SELECT id FROM pgsched.schedule WHERE deleted_at IS NULL ORDER BY id;

-- name: lead_health_sweep
-- Whether this session leads the periodic sweep (ADR 0032): every `pgsched run` and `pgsched
-- ticker` process has a sweep loop, but one sweep of every schedule is enough. The leader holds
-- a session-level advisory lock on its own connection for as long as that lives; the others'
-- try fails and they skip their pass, and one of them takes over at its next pass once the
-- leader's session ends. A session that already holds it does not take it again (session locks
-- stack). The key is a constant of pgsched's own, below 2^32, hence classid 0 in pg_locks.
SELECT CASE
    WHEN EXISTS (SELECT 1 FROM pg_locks l
                 WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.granted
                   AND l.classid = 0 AND l.objid = 1885754199 AND l.objsubid = 1) THEN true
    ELSE pg_try_advisory_lock(1885754199) END AS lead;
