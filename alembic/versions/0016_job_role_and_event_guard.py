"""A login role for sql jobs, a guard on appended events, and the built-in schedule by function.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04

Design: docs/adr/0021-job-role-and-event-guard.md.

1. `pgsched_job`: the LOGIN role `sql` jobs connect as (workers/jobs/sql.py). It is a member of
   no pgsched role and has no privilege on the schema pgsched, so a job's statement can neither
   read pgsched's tables nor write its history, and RESET ROLE leads nowhere. Cluster-wide like
   the roles of 0001: created if missing, never dropped by a downgrade. Without a password it
   can log in only where pg_hba.conf trusts it; operators set one (ADR 0021).

2. `pgsched.event_guard_v1`: an AFTER INSERT statement trigger on pgsched.event that lets the
   application roles append only the events their own transitions produce: per role, a list of
   (stream, type) in pgsched.event_grant; each run, schedule and worker event must describe its
   subject row as this very transaction left it (the row's xmin is this transaction's, and the
   row says what the event says: a run's state; a schedule's or worker's whole row contains the
   event's data; runs are the hot path, and verify compares the rest); evidence events (a fenced completion, a missed occurrence, a
   backfill) change no row, carry no data and must name a row that exists. The owner (maintenance,
   migrations, SECURITY DEFINER functions) and superusers pass untouched. One statement-level
   trigger per INSERT, over its transition table, so a batch of completions costs one call.
   Each grant also names the data keys its event may carry (the columns its statement sets)
   and, for runs, the states it may produce; beneath it, the roles' UPDATE on runs (and the
   worker's on schedules) is narrowed to the columns their statements set. A snapshot event
   restates the fold of its stream's events, never the table's row (trigger
   snapshot_restates_fold), so maintenance's SECURITY DEFINER functions cannot turn a rewritten
   row into history; the worker may no longer call maintain_v1.

3. `pgsched.install_builtin_maintenance_v1`: installs or brings up to date the built-in
   maintenance schedule as the owner, so a ticker connecting as a member of pgsched_worker (no
   INSERT on schedule) starts on a freshly migrated database. It accepts only that schedule, only
   as the python job app.maintenance:run_builtin, and puts back its job, queue and timing (the
   minute of its hourly cron and a pause stay). The stored built-in schedule, a `sql` job until
   now, becomes that python job here (pgsched_job may not call maintain_v2, and should not).
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

APP_ROLES = ("pgsched_owner", "pgsched_api", "pgsched_worker", "pgsched_operator")

JOB_ROLE = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgsched_job') THEN
        CREATE ROLE pgsched_job LOGIN NOINHERIT;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles
               WHERE rolname = 'pgsched_job' AND (rolsuper OR rolcreaterole OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role pgsched_job exists with SUPERUSER, CREATEROLE or BYPASSRLS; '
                        'sql jobs must not run as such a role (ADR 0021)';
    END IF;
END
$$;
-- Whatever an earlier hand may have granted: no way from the job role into pgsched's roles.
REVOKE pgsched_owner, pgsched_api, pgsched_worker, pgsched_operator FROM pgsched_job;
REVOKE ALL ON SCHEMA pgsched FROM pgsched_job;
REVOKE ALL ON ALL TABLES IN SCHEMA pgsched FROM pgsched_job;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgsched FROM pgsched_job;
"""

GUARD = r"""
SET LOCAL ROLE pgsched_owner;

-- Which application role may append which events. A new transition that appends a new event
-- type adds its row here in the migration that introduces it.
CREATE TABLE pgsched.event_grant (
    role   name NOT NULL CHECK (role IN ('pgsched_api', 'pgsched_worker')),
    stream text NOT NULL CHECK (stream IN ('schedule', 'run', 'worker', 'system')),
    type   text NOT NULL,
    -- transition: the subject row was written by this transaction and says what the event
    -- says (a run: its state; a schedule or worker: the whole row contains the event's data);
    -- evidence: the subject row exists, the event carries no data (the fold cannot change);
    -- note: a system event with no subject row (data must be empty too).
    kind   text NOT NULL CHECK (kind IN ('transition', 'evidence', 'note')),
    -- The keys the event's data may carry: exactly the columns its statement sets (see
    -- app/db/queries/*.sql). NULL: any column (a created or registered row carries all of
    -- them; the API's schedule.updated any it may change). A key outside the list is a claim
    -- about a column this transition does not set (an outcome on run.cancel_requested).
    keys   text[],
    -- For runs, the states the transition leaves a run in (NULL: not a run transition).
    states text[] CHECK (states IS NULL OR stream = 'run'),
    PRIMARY KEY (role, stream, type)
);
COMMENT ON TABLE pgsched.event_grant IS
    'events each application role may append (pgsched.event_guard_v1, ADR 0021)';
INSERT INTO pgsched.event_grant (role, stream, type, kind, keys, states) VALUES
    -- the API: schedule definitions and operator actions on runs
    ('pgsched_api', 'schedule', 'schedule.created', 'transition', NULL, NULL),
    ('pgsched_api', 'schedule', 'schedule.updated', 'transition', NULL, NULL),
    ('pgsched_api', 'schedule', 'schedule.paused', 'transition',
     '{enabled,paused_at,version,updated_at}', NULL),
    ('pgsched_api', 'schedule', 'schedule.resumed', 'transition',
     '{enabled,paused_at,version,updated_at}', NULL),
    ('pgsched_api', 'schedule', 'schedule.deleted', 'transition',
     '{deleted_at,enabled,version,updated_at}', NULL),
    ('pgsched_api', 'schedule', 'schedule.backfilled', 'evidence', '{}', NULL),
    ('pgsched_api', 'run', 'run.created', 'transition', NULL, '{waiting}'),
    ('pgsched_api', 'run', 'run.retried', 'transition',
     '{state,available_at,max_attempts,finished_at,cancel_requested}', '{waiting}'),
    ('pgsched_api', 'run', 'run.cancelled', 'transition',
     '{state,finished_at,cancel_requested}', '{cancelled}'),
    ('pgsched_api', 'run', 'run.cancel_requested', 'transition',
     '{state,finished_at,cancel_requested}', '{running}'),
    ('pgsched_api', 'system', 'queue.updated', 'transition', '{}', NULL),
    -- the ticker, the workers and the rescuer
    ('pgsched_worker', 'run', 'run.created', 'transition', NULL, '{waiting}'),
    ('pgsched_worker', 'run', 'run.claimed', 'transition',
     '{state,attempt,lease_token,lease_expires_at,worker_id,started_at}', '{running}'),
    ('pgsched_worker', 'run', 'run.succeeded', 'transition',
     '{state,finished_at,lease_expires_at,outcome}', '{succeeded}'),
    ('pgsched_worker', 'run', 'run.retry_scheduled', 'transition',
     '{state,available_at,finished_at,lease_expires_at,outcome}', '{waiting}'),
    ('pgsched_worker', 'run', 'run.dead', 'transition',
     '{state,available_at,finished_at,lease_expires_at,outcome}', '{dead}'),
    ('pgsched_worker', 'run', 'run.cancelled', 'transition',
     '{state,finished_at,lease_expires_at,outcome}', '{cancelled}'),
    ('pgsched_worker', 'run', 'run.released', 'transition',
     '{state,attempt,available_at,lease_expires_at}', '{waiting}'),
    ('pgsched_worker', 'run', 'run.rescued', 'transition',
     '{state,available_at,finished_at,lease_expires_at,outcome}', '{waiting}'),
    ('pgsched_worker', 'run', 'run.completion_fenced', 'evidence', '{}', NULL),
    ('pgsched_worker', 'schedule', 'schedule.advanced', 'transition', '{next_due_at}', NULL),
    ('pgsched_worker', 'schedule', 'schedule.occurrence_missed', 'evidence', '{}', NULL),
    ('pgsched_worker', 'worker', 'worker.registered', 'transition', NULL, NULL),
    ('pgsched_worker', 'worker', 'worker.active', 'transition', '{state,stopped_at}', NULL),
    ('pgsched_worker', 'worker', 'worker.stopping', 'transition', '{state,stopped_at}', NULL),
    ('pgsched_worker', 'worker', 'worker.stopped', 'transition', '{state,stopped_at}', NULL),
    ('pgsched_worker', 'worker', 'worker.gone', 'transition', '{state}', NULL),
    ('pgsched_worker', 'system', 'partition.archive_failed', 'note', '{}', NULL);
GRANT SELECT ON pgsched.event_grant TO pgsched_api, pgsched_worker, pgsched_operator;

-- Whether a row version was written by this transaction or one of its subtransactions. The
-- common case, no savepoint, is one comparison (inlined into the guard's query). Otherwise the
-- xid is widened to an xid8 above our own top-level xid (a subtransaction's always is) and
-- asked about: a row version this snapshot sees whose writer is still in progress can only be
-- our own; one beyond the next xid is an old row of an earlier epoch.
CREATE FUNCTION pgsched.written_in_subtransaction_v1(x xid) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog
AS $$
DECLARE
    top bigint := pg_current_xact_id()::text::bigint;
    candidate bigint := top - top % 4294967296 + x::text::bigint;
BEGIN
    IF candidate <= top THEN
        candidate := candidate + 4294967296;
    END IF;
    RETURN pg_xact_status(candidate::text::xid8) = 'in progress';
EXCEPTION WHEN invalid_parameter_value THEN  -- "transaction ID ... is in the future"
    RETURN false;
END
$$;
CREATE FUNCTION pgsched.written_here_v1(x xid) RETURNS boolean
LANGUAGE sql STABLE
RETURN x::text::bigint = pg_current_xact_id()::text::bigint % 4294967296
    OR pgsched.written_in_subtransaction_v1(x);

CREATE FUNCTION pgsched.event_guard_v1() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    granted jsonb;
    bad record;
BEGIN
    -- Not an application role: the owner (migrations, maintenance and every SECURITY DEFINER
    -- function) and superusers, who could drop this trigger anyway.
    IF current_setting('is_superuser') = 'on'
       OR pg_has_role(current_user, 'pgsched_owner', 'USAGE') THEN
        RETURN NULL;
    END IF;
    -- A statement that appended nothing (an idle worker's claim) has nothing to check.
    PERFORM FROM appended LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- What this role may append, once per statement: "stream/type" -> {kind, keys, states}.
    -- A type granted to two of its roles takes the union of the two (a transition if either
    -- grants it so; any key or state either allows).
    SELECT jsonb_object_agg(x.stream || '/' || x.type, jsonb_build_object(
               'kind', x.kind, 'keys', x.keys, 'states', x.states))
    INTO granted
    FROM (SELECT g.stream, g.type,
                 CASE WHEN bool_or(g.kind = 'transition') THEN 'transition'
                      ELSE min(g.kind) END AS kind,
                 CASE WHEN bool_or(g.keys IS NULL) THEN NULL
                      ELSE coalesce(array_agg(DISTINCT k) FILTER (WHERE k IS NOT NULL), '{}')
                      END AS keys,
                 CASE WHEN bool_or(g.states IS NULL) THEN NULL
                      ELSE array_agg(DISTINCT st) FILTER (WHERE st IS NOT NULL) END AS states
          FROM pgsched.event_grant g
          LEFT JOIN LATERAL unnest(g.keys) k ON true
          LEFT JOIN LATERAL unnest(g.states) st ON true
          WHERE pg_has_role(current_user, g.role, 'USAGE')
          GROUP BY g.stream, g.type) x;
    granted := coalesce(granted, '{}');
    -- The first event that is not granted, or does not match what its statement did to its
    -- subject row.
    SELECT a.stream, a.type, a.stream_id,
           CASE WHEN k.kind IS NULL THEN 'not an event this role appends'
                WHEN NOT k.keys_ok THEN 'carries a column its transition does not set'
                WHEN NOT k.state_ok THEN 'names a state its transition does not produce'
                ELSE 'does not match a change of its row' END AS why
    INTO bad
    FROM appended a
    CROSS JOIN LATERAL (SELECT granted -> (a.stream || '/' || a.type) AS g) gr
    CROSS JOIN LATERAL (
        SELECT gr.g ->> 'kind' AS kind,
               -- every key of the data among the granted ones (a JSON array's strings)
               coalesce(gr.g -> 'keys' = 'null'
                        OR (gr.g -> 'keys') ?& ARRAY(SELECT jsonb_object_keys(a.data)),
                        false) AS keys_ok,
               coalesce(gr.g -> 'states' = 'null' OR (gr.g -> 'states') ? (a.data ->> 'state'),
                        false) AS state_ok) k
    WHERE k.kind IS NULL OR NOT k.keys_ok OR NOT k.state_ok OR NOT CASE
        WHEN k.kind = 'note' THEN a.stream_id IS NULL AND a.data = '{}'
        WHEN k.kind = 'evidence' THEN a.data = '{}' AND CASE a.stream
            WHEN 'run' THEN EXISTS (SELECT 1 FROM pgsched.run r WHERE r.id = a.stream_id)
            WHEN 'schedule' THEN EXISTS (SELECT 1 FROM pgsched.schedule s
                                         WHERE s.id = a.stream_id)
            ELSE false END
        ELSE CASE a.stream
            -- Runs are the hot path (claims, batched completions): the state the event
            -- names, not the whole row; verify compares the rest (ADR 0021).
            WHEN 'run' THEN EXISTS (
                SELECT 1 FROM pgsched.run r
                WHERE r.id = a.stream_id AND pgsched.written_here_v1(r.xmin)
                  AND r.state = a.data ->> 'state')
            WHEN 'schedule' THEN EXISTS (
                SELECT 1 FROM pgsched.schedule s
                WHERE s.id = a.stream_id AND pgsched.written_here_v1(s.xmin)
                  AND to_jsonb(s) @> a.data)
            WHEN 'worker' THEN EXISTS (
                SELECT 1 FROM pgsched.worker w
                WHERE w.id = a.stream_id AND pgsched.written_here_v1(w.xmin)
                  AND to_jsonb(w) @> a.data)
            WHEN 'system' THEN a.stream_id IS NULL AND a.data = '{}' AND EXISTS (
                SELECT 1 FROM pgsched.queue q
                WHERE a.type = 'queue.updated' AND q.name = a.meta ->> 'queue'
                  AND pgsched.written_here_v1(q.xmin))
            ELSE false END
        END
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% may not append % (stream %, id %): %',
                        current_user, bad.type, bad.stream, bad.stream_id, bad.why
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'application roles append only the events of their own transitions '
                         '(pgsched.event_grant, ADR 0021)';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER event_guard AFTER INSERT ON pgsched.event
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.event_guard_v1();

-- A snapshot (run.snapshot, schedule.snapshot: maintenance, before event months retire) restates
-- what the log already says, never what the table says: its data is the fold of the stream's
-- events so far, whoever appends it and whatever the caller of the SECURITY DEFINER function
-- that appends it chose as retention. Written from the table, a snapshot would turn any drift of
-- a row (a worker role's UPDATE of a run to succeeded) into history, and verify would stop
-- seeing it (ADR 0021). A row with no events has nothing to restate: no snapshot, and verify
-- goes on reporting it. Only snapshots call this (the trigger's WHEN), so the hot path pays a
-- comparison per row.
CREATE FUNCTION pgsched.snapshot_restates_fold_v1() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    folded jsonb;
BEGIN
    SELECT pgsched.jsonb_merge(e.data ORDER BY e.id) INTO folded
    FROM pgsched.event e
    WHERE e.stream = NEW.stream AND e.stream_id = NEW.stream_id;
    IF folded IS NULL OR folded = '{}' THEN
        RETURN NULL;
    END IF;
    NEW.data := CASE NEW.stream
        WHEN 'run' THEN to_jsonb(jsonb_populate_record(NULL::pgsched.run, folded))
        ELSE to_jsonb(jsonb_populate_record(NULL::pgsched.schedule, folded)) END;
    RETURN NEW;
END
$$;
CREATE TRIGGER snapshot_restates_fold BEFORE INSERT ON pgsched.event
    FOR EACH ROW
    WHEN (NEW.type IN ('run.snapshot', 'schedule.snapshot'))
    EXECUTE FUNCTION pgsched.snapshot_restates_fold_v1();
RESET ROLE;
"""

# Column-level UPDATE instead of table-wide (0001 granted the whole table): each role may change
# only the columns its own statements set (app/db/queries/runs.sql, ticker.sql, api_writes.sql),
# so a forged change of any other column (a run's payload-free columns such as schedule_id or
# due_at, a schedule's payload by the worker role) is refused before the event guard sees it.
# The API keeps table-wide UPDATE on schedules: its update_schedule sets every column a client
# may change. SELECT ... FOR UPDATE needs UPDATE on one column, which each role keeps.
RUN_COLUMNS = {
    "pgsched_worker": "state, attempt, lease_token, lease_expires_at, worker_id, started_at,"
    " available_at, finished_at, outcome",
    "pgsched_api": "state, available_at, max_attempts, finished_at, cancel_requested",
}
COLUMN_GRANTS = f"""
SET LOCAL ROLE pgsched_owner;
REVOKE UPDATE ON pgsched.run FROM pgsched_worker, pgsched_api;
GRANT UPDATE ({RUN_COLUMNS["pgsched_worker"]}) ON pgsched.run TO pgsched_worker;
GRANT UPDATE ({RUN_COLUMNS["pgsched_api"]}) ON pgsched.run TO pgsched_api;
REVOKE UPDATE ON pgsched.schedule FROM pgsched_worker;
GRANT UPDATE (next_due_at) ON pgsched.schedule TO pgsched_worker;
-- No code of this release calls maintain_v1 (the built-in schedule is the python job, which
-- calls maintain_v2): one SECURITY DEFINER function with caller-chosen retention fewer.
REVOKE EXECUTE ON FUNCTION pgsched.maintain_v1(integer, interval, interval, timestamptz)
    FROM pgsched_worker;
RESET ROLE;
"""
COLUMN_GRANTS_DOWN = f"""
SET LOCAL ROLE pgsched_owner;
REVOKE UPDATE ({RUN_COLUMNS["pgsched_worker"]}) ON pgsched.run FROM pgsched_worker;
REVOKE UPDATE ({RUN_COLUMNS["pgsched_api"]}) ON pgsched.run FROM pgsched_api;
REVOKE UPDATE (next_due_at) ON pgsched.schedule FROM pgsched_worker;
GRANT UPDATE ON pgsched.run TO pgsched_worker, pgsched_api;
GRANT UPDATE ON pgsched.schedule TO pgsched_worker;
GRANT EXECUTE ON FUNCTION pgsched.maintain_v1(integer, interval, interval, timestamptz)
    TO pgsched_worker;
RESET ROLE;
"""

BUILTIN = r"""
SET LOCAL ROLE pgsched_owner;

-- Installs (or brings up to date) the built-in maintenance schedule and returns it. `fields` is
-- the whole schedule as app.maintenance builds it; only the built-in one, only as the python
-- job app.maintenance:run_builtin, is accepted. An existing one gets back its job (job_type,
-- payload, timeout) and whatever could stop it (queue, timing but the minute of its hourly
-- cron), with schedule.updated; a missing one is created, with schedule.created.
CREATE FUNCTION pgsched.install_builtin_maintenance_v1(fields jsonb, at timestamptz DEFAULT NULL)
RETURNS SETOF pgsched.schedule
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgsched
AS $$
DECLARE
    t timestamptz := coalesce(at, now());
    prior pgsched.schedule;
    made pgsched.schedule;
    changes jsonb;
BEGIN
    IF fields ->> 'name' IS DISTINCT FROM 'pgsched.maintenance'
       OR fields ->> 'job_type' IS DISTINCT FROM 'python'
       OR fields #>> '{payload,target}' IS DISTINCT FROM 'app.maintenance:run_builtin'
       OR EXISTS (SELECT 1 FROM jsonb_object_keys(fields -> 'payload') k
                  WHERE k NOT IN ('target', 'kwargs'))
       OR EXISTS (SELECT 1 FROM jsonb_object_keys(coalesce(fields #> '{payload,kwargs}', '{}')) k
                  WHERE k NOT IN ('months_ahead', 'run_days', 'event_days', 'archive_dir')) THEN
        RAISE EXCEPTION 'only the built-in maintenance schedule, as its python job, is installed here'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR attempt IN 1 .. 2 LOOP
        SELECT * INTO prior FROM pgsched.schedule
        WHERE name = 'pgsched.maintenance' AND deleted_at IS NULL
        FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO pgsched.schedule (
            name, job_type, payload, kind, cron, interval_seconds, run_at, timezone, starts_at,
            ends_at, jitter_seconds, queue, priority, max_attempts, retry_delay_seconds,
            retry_factor, retry_max_delay_seconds, timeout_seconds, overlap_policy,
            missed_policy, missed_cap, grace_seconds, max_concurrency, enabled, paused_at,
            next_due_at, created_at, updated_at)
        SELECT d.name, d.job_type, d.payload, d.kind, d.cron, d.interval_seconds, d.run_at,
               d.timezone, d.starts_at, d.ends_at, d.jitter_seconds, d.queue, d.priority,
               d.max_attempts, d.retry_delay_seconds, d.retry_factor,
               d.retry_max_delay_seconds, d.timeout_seconds, d.overlap_policy, d.missed_policy,
               d.missed_cap, d.grace_seconds, d.max_concurrency, d.enabled,
               CASE WHEN d.enabled THEN NULL ELSE t END, d.next_due_at, t, t
        FROM jsonb_populate_record(NULL::pgsched.schedule, fields) d
        -- A concurrent installer got there first: take its row on the second pass.
        ON CONFLICT (name) WHERE deleted_at IS NULL DO NOTHING
        RETURNING * INTO made;
        IF made.id IS NOT NULL THEN
            INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)
            VALUES (t, 'schedule', made.id, 'schedule.created', 'pgsched', to_jsonb(made));
            RETURN NEXT made;
            RETURN;
        END IF;
    END LOOP;
    IF prior.id IS NULL THEN
        RAISE EXCEPTION 'the built-in maintenance schedule could not be installed';
    END IF;
    -- What must hold, put back whoever changed it (app.schedules.check_builtin_change): its job
    -- and timeout, and everything that could stop it quietly (another queue, a starts_at in
    -- 2099, an ends_at, another kind, timezone or jitter).
    SELECT jsonb_object_agg(k, fields -> k) INTO changes
    FROM unnest(ARRAY['job_type', 'payload', 'timeout_seconds', 'queue', 'kind',
                      'interval_seconds', 'run_at', 'starts_at', 'ends_at', 'timezone',
                      'jitter_seconds']) k
    WHERE fields ? k AND fields -> k IS DISTINCT FROM to_jsonb(prior) -> k;
    -- Its cron is the operator's while it fires some minute of every hour; otherwise, or when
    -- its timing was put back above, it is the default again, due when `fields` says.
    IF coalesce(prior.cron, '') !~ '^([0-9]|[1-5][0-9]) \* \* \* \*$'
       OR changes ?| ARRAY['kind', 'interval_seconds', 'run_at', 'starts_at', 'ends_at',
                           'timezone', 'jitter_seconds'] THEN
        changes := coalesce(changes, '{}')
                   || jsonb_build_object('cron', fields -> 'cron',
                                         'next_due_at', fields -> 'next_due_at');
    END IF;
    IF changes IS NULL THEN
        RETURN NEXT prior;
        RETURN;
    END IF;
    UPDATE pgsched.schedule s
    SET (job_type, payload, timeout_seconds, queue, kind, cron, interval_seconds, run_at,
         starts_at, ends_at, timezone, jitter_seconds, next_due_at) =
        (SELECT n.job_type, n.payload, n.timeout_seconds, n.queue, n.kind, n.cron,
                n.interval_seconds, n.run_at, n.starts_at, n.ends_at, n.timezone,
                n.jitter_seconds, n.next_due_at
         FROM jsonb_populate_record(prior, changes) n),
        version = s.version + 1,
        updated_at = t
    WHERE s.id = prior.id
    RETURNING * INTO made;
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
    SELECT t, 'schedule', made.id, 'schedule.updated', 'pgsched',
           (SELECT jsonb_object_agg(k, to_jsonb(made) -> k)
            FROM jsonb_object_keys(changes || '{"version": 0, "updated_at": 0}') k),
           jsonb_build_object('old', (SELECT jsonb_object_agg(k, to_jsonb(prior) -> k)
                                      FROM jsonb_object_keys(changes) k));
    RETURN NEXT made;
END
$$;
REVOKE ALL ON FUNCTION pgsched.install_builtin_maintenance_v1(jsonb, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgsched.install_builtin_maintenance_v1(jsonb, timestamptz)
    TO pgsched_worker;

-- The stored built-in schedule, a sql job calling maintain_v2 until now, becomes the python job
-- (same settings); one archiving already is that job and stays as it is.
SELECT pgsched.install_builtin_maintenance_v1(jsonb_build_object(
    'name', 'pgsched.maintenance',
    'job_type', 'python',
    'payload', jsonb_build_object(
        'target', 'app.maintenance:run_builtin',
        'kwargs', jsonb_build_object('months_ahead', (s.payload #>> '{params,0}')::int,
                                     'run_days', (s.payload #>> '{params,1}')::int,
                                     'event_days', (s.payload #>> '{params,2}')::int)),
    'timeout_seconds', s.timeout_seconds))
FROM pgsched.schedule s
WHERE s.name = 'pgsched.maintenance' AND s.deleted_at IS NULL AND s.job_type = 'sql';
RESET ROLE;
"""


def upgrade() -> None:
    execute(JOB_ROLE)
    execute(GUARD)
    execute(COLUMN_GRANTS)
    execute(BUILTIN)


def downgrade() -> None:
    execute(COLUMN_GRANTS_DOWN)
    execute("""
SET LOCAL ROLE pgsched_owner;
DROP FUNCTION pgsched.install_builtin_maintenance_v1(jsonb, timestamptz);
DROP TRIGGER snapshot_restates_fold ON pgsched.event;
DROP FUNCTION pgsched.snapshot_restates_fold_v1();
DROP TRIGGER event_guard ON pgsched.event;
DROP FUNCTION pgsched.event_guard_v1();
DROP FUNCTION pgsched.written_here_v1(xid);
DROP FUNCTION pgsched.written_in_subtransaction_v1(xid);
DROP TABLE pgsched.event_grant;
RESET ROLE;
""")
