-- Reads of the operator console (app/ui, ADR 0030) that the REST API does not need. Nothing here
-- writes: the console's actions go through app.services like the API's.

-- name: console_live_token
-- A live token by id, with its hash (the session cookie's MAC covers it) and the database's
-- clock in whole seconds (a session's age is measured by it, ADR 0003). Records the use at most
-- once a minute, as authenticate_token does for the API: a console session is a use of its token.
WITH t AS (
    SELECT id, name, role, prefix, token_sha256, last_used_at
    FROM pgsched.api_token
    WHERE id = %(id)s::bigint AND revoked_at IS NULL
      AND (expires_at IS NULL OR expires_at > coalesce(%(now)s::timestamptz, now()))
), used AS (
    UPDATE pgsched.api_token a
    SET last_used_at = coalesce(%(now)s::timestamptz, now())
    FROM t
    WHERE a.id = t.id
      AND (t.last_used_at IS NULL
           OR t.last_used_at < coalesce(%(now)s::timestamptz, now()) - interval '1 minute')
)
SELECT id, name, role, prefix, token_sha256,
       extract(epoch FROM coalesce(%(now)s::timestamptz, now()))::bigint AS now_epoch
FROM t;

-- name: console_feed_head
-- Where the settled event feed ends now: the live view starts there instead of replaying history.
SELECT coalesce((SELECT e.tx_id::text::bigint FROM pgsched.event e
                  WHERE e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
                  ORDER BY e.tx_id DESC, e.id DESC LIMIT 1), 0) AS tx_id,
       coalesce((SELECT e.id FROM pgsched.event e
                 WHERE e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
                 ORDER BY e.tx_id DESC, e.id DESC LIMIT 1), 0) AS id;

-- name: console_last_runs
-- The newest run (by due time) of each of these schedules.
SELECT s.id AS schedule_id, r.id, r.state, r.due_at, r.finished_at
FROM unnest(%(ids)s::bigint[]) AS s(id)
CROSS JOIN LATERAL (
    SELECT id, state, due_at, finished_at FROM pgsched.run
    WHERE schedule_id = s.id ORDER BY due_at DESC, id DESC LIMIT 1
) r;

-- name: console_schedule_events
-- A schedule's events of the given types, newest first, older than an event id (a page of the
-- occurrences that did not run and why, or of its own timeline: who created, edited, paused,
-- resumed, backfilled it).
SELECT id, occurred_at, type, actor, data, meta
FROM pgsched.event
WHERE stream = 'schedule' AND stream_id = %(id)s::bigint AND type = ANY(%(types)s::text[])
  AND id < %(before)s::bigint
ORDER BY id DESC
LIMIT %(limit)s;

-- name: console_lock_run
-- A run's state, its row locked until the transaction ends: a bulk action checks that the run
-- is still in the state its confirmation showed, and acts on it, under this lock.
SELECT id, state FROM pgsched.run WHERE id = %(id)s::bigint FOR UPDATE;

-- name: console_worker_names
-- The name and host of these workers (a run's or attempt's worker, shown by name).
SELECT id, name, host FROM pgsched.worker WHERE id = ANY(%(ids)s::bigint[]);

-- name: console_queues
-- Every queue with a concurrency limit set.
SELECT name, max_running, updated_at FROM pgsched.queue ORDER BY name;
