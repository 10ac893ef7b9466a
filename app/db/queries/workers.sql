-- Worker registry: who is working, seen when. Heartbeats are coordination, not history (ADR 0005);
-- registration, stop and being declared gone are events on the worker's stream.

-- name: register_worker
-- A worker process announces itself.
WITH w AS (
    INSERT INTO pgsched.worker (name, host, pid, version, queues, slots, state, started_at,
                                heartbeat_at)
    VALUES (%(name)s, %(host)s, %(pid)s, %(version)s, %(queues)s::text[], %(slots)s, 'active',
            coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now()))
    RETURNING *
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)
    SELECT coalesce(%(now)s::timestamptz, now()), 'worker', w.id, 'worker.registered', w.name,
           to_jsonb(w)
    FROM w
)
SELECT * FROM w;

-- name: heartbeat_worker
-- The worker is alive; returns its state so a worker declared gone learns it.
UPDATE pgsched.worker
SET heartbeat_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s
RETURNING state;

-- name: set_worker_state
-- A worker stopping (draining) or stopped.
WITH w AS (
    UPDATE pgsched.worker
    SET state = %(state)s,
        stopped_at = CASE WHEN %(state)s = 'stopped' THEN coalesce(%(now)s::timestamptz, now()) END
    WHERE id = %(id)s
    RETURNING *
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)
    SELECT coalesce(%(now)s::timestamptz, now()), 'worker', w.id, 'worker.' || w.state, w.name,
           jsonb_build_object('state', w.state, 'stopped_at', w.stopped_at)
    FROM w
)
SELECT * FROM w;

-- name: mark_gone_workers
-- Workers silent for longer than `after_seconds` are gone (their runs' leases expire and the
-- rescuer takes them back; this only keeps the registry honest).
WITH w AS (
    UPDATE pgsched.worker
    SET state = 'gone'
    WHERE state IN ('active', 'stopping')
      AND heartbeat_at < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(after_seconds)s)
    RETURNING *
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
    SELECT coalesce(%(now)s::timestamptz, now()), 'worker', w.id, 'worker.gone', %(actor)s,
           jsonb_build_object('state', 'gone'), jsonb_build_object('last_heartbeat', w.heartbeat_at)
    FROM w
)
SELECT id FROM w;

-- name: seconds_until_next_run
-- How long until the next waiting run of these queues becomes claimable, by the database clock
-- (NULL: none waiting), so an idle worker sleeps exactly until then instead of polling.
-- Per queue, the first entry of the partial index run_next_available (migration 0013): the cost
-- does not grow with the backlog or the history. NULL when nothing waits (greatest() would turn
-- NULL into 0, and an idle worker would ask again at once, in a loop).
SELECT CASE WHEN min(n.available_at) IS NOT NULL
            THEN greatest(0, extract(epoch FROM min(n.available_at)
                                                - coalesce(%(now)s::timestamptz, now())))
       END::float8 AS seconds
FROM unnest(%(queues)s::text[]) AS q(name)
CROSS JOIN LATERAL (
    SELECT r.available_at
    FROM pgsched.run r
    WHERE r.state = 'waiting' AND r.queue = q.name
    ORDER BY r.available_at
    LIMIT 1
) n;

-- name: set_queue_limit
-- Set (or clear, with NULL) a queue's global concurrency limit; recorded as a system event.
WITH q AS (
    INSERT INTO pgsched.queue (name, max_running, updated_at)
    VALUES (%(name)s, %(max_running)s, coalesce(%(now)s::timestamptz, now()))
    ON CONFLICT (name) DO UPDATE SET max_running = EXCLUDED.max_running,
                                     updated_at = EXCLUDED.updated_at
    RETURNING *
), ev AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
    SELECT coalesce(%(now)s::timestamptz, now()), 'system', NULL, 'queue.updated', %(actor)s,
           '{}'::jsonb, jsonb_build_object('queue', q.name, 'max_running', q.max_running)
    FROM q
)
SELECT * FROM q;

-- name: configure_worker_session
-- A worker session's bounds: a session stuck inside a transaction is ended by the server (its
-- locks released, its claim rolled back), and no statement of ours may run for a minute.
SELECT set_config('idle_in_transaction_session_timeout', '30s', false),
       set_config('statement_timeout', '60s', false);

-- name: listen_for_runs
-- Wake-ups for idle workers: the channel notify_runs (ticker.sql) sends on.
LISTEN pgsched_runs;

-- name: unserved_queues
-- Which of `queues` no live worker serves (active or draining, with a heartbeat within
-- `stale_seconds` by the database clock): work put there waits until a worker for it starts.
SELECT q AS queue
FROM unnest(%(queues)s::text[]) AS q
WHERE NOT EXISTS (
    SELECT 1 FROM pgsched.worker w
    WHERE w.state IN ('active', 'stopping')
      AND q = ANY(w.queues)
      AND w.heartbeat_at >= coalesce(%(now)s::timestamptz, now())
                            - make_interval(secs => %(stale_seconds)s::float8)
)
ORDER BY q;
