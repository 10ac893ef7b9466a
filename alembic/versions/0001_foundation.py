"""Foundation: roles, the pgsched schema, schedules, partitioned runs and events, workers, leases, tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Design: docs/adr/0005-event-log-and-partitions.md (events and partitions) and
docs/adr/0006-roles-and-append-only-events.md (roles, privileges, the append-only guard).
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute, execute_file

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Roles are cluster-wide: created if missing, never dropped by a downgrade (other databases in the
# cluster may use them). They are NOLOGIN groups; deployments grant them to login users.
ROLES = """
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pgsched_owner', 'pgsched_api', 'pgsched_worker', 'pgsched_operator']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;
"""

SCHEMA = """
CREATE SCHEMA pgsched AUTHORIZATION pgsched_owner;
SET LOCAL ROLE pgsched_owner;

-- jsonb_merge folds a stream's event data into its current state (replay, ADR 0005).
CREATE AGGREGATE pgsched.jsonb_merge(jsonb) (SFUNC = jsonb_concat, STYPE = jsonb, INITCOND = '{}');

-- Retry backoff in seconds after `attempt` failed: delay * factor^(attempt-1), spread by +-10 percent
-- (jitter in [0, 1)), never above cap. One definition for failures and rescues alike.
CREATE FUNCTION pgsched.backoff_seconds(delay float8, factor float8, cap float8, attempt integer,
                                        jitter float8)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN least(cap, delay * power(factor, greatest(attempt, 1) - 1) * (0.9 + 0.2 * jitter));

CREATE TABLE pgsched.schedule (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                    text NOT NULL CHECK (name <> ''),
    job_type                text NOT NULL CHECK (job_type IN ('http', 'command', 'sql', 'python', 'noop')),
    payload                 jsonb NOT NULL DEFAULT '{}',
    kind                    text NOT NULL CHECK (kind IN ('cron', 'interval', 'once')),
    cron                    text,
    interval_seconds        integer CHECK (interval_seconds > 0),
    run_at                  timestamptz,
    timezone                text NOT NULL DEFAULT 'UTC',
    starts_at               timestamptz,
    ends_at                 timestamptz,
    jitter_seconds          integer NOT NULL DEFAULT 0 CHECK (jitter_seconds >= 0),
    queue                   text NOT NULL DEFAULT 'default',
    priority                smallint NOT NULL DEFAULT 0,
    max_attempts            integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    retry_delay_seconds     double precision NOT NULL DEFAULT 10 CHECK (retry_delay_seconds >= 0),
    retry_factor            double precision NOT NULL DEFAULT 2 CHECK (retry_factor >= 1),
    retry_max_delay_seconds double precision NOT NULL DEFAULT 3600 CHECK (retry_max_delay_seconds >= 0),
    timeout_seconds         double precision NOT NULL DEFAULT 3600 CHECK (timeout_seconds > 0),
    overlap_policy          text NOT NULL DEFAULT 'allow' CHECK (overlap_policy IN ('allow', 'skip', 'queue')),
    missed_policy           text NOT NULL DEFAULT 'latest' CHECK (missed_policy IN ('skip', 'latest', 'all')),
    missed_cap              integer NOT NULL DEFAULT 100 CHECK (missed_cap >= 1),
    grace_seconds           integer NOT NULL DEFAULT 60 CHECK (grace_seconds >= 0),
    max_concurrency         integer CHECK (max_concurrency >= 1),
    enabled                 boolean NOT NULL DEFAULT true,
    paused_at               timestamptz,
    deleted_at              timestamptz,
    next_due_at             timestamptz,
    version                 integer NOT NULL DEFAULT 1,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    CONSTRAINT schedule_one_timing CHECK (
        (kind = 'cron' AND cron IS NOT NULL AND interval_seconds IS NULL AND run_at IS NULL)
     OR (kind = 'interval' AND interval_seconds IS NOT NULL AND cron IS NULL AND run_at IS NULL)
     OR (kind = 'once' AND run_at IS NOT NULL AND cron IS NULL AND interval_seconds IS NULL))
);
-- Names are unique among live schedules; a soft-deleted name can be reused.
CREATE UNIQUE INDEX schedule_name_live ON pgsched.schedule (name) WHERE deleted_at IS NULL;
-- The ticker's scan: live, enabled schedules by due time.
CREATE INDEX schedule_due ON pgsched.schedule (next_due_at)
    WHERE enabled AND deleted_at IS NULL AND next_due_at IS NOT NULL;

CREATE TABLE pgsched.worker (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL,
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    queues       text[] NOT NULL,
    slots        integer NOT NULL CHECK (slots >= 1),
    state        text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'stopping', 'stopped', 'gone')),
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    stopped_at   timestamptz
);
CREATE INDEX worker_active ON pgsched.worker (heartbeat_at) WHERE state IN ('active', 'stopping');

-- Runs: one row per occurrence (or ad-hoc trigger), partitioned by the occurrence's nominal instant,
-- which never changes, so a row never moves between partitions (ADR 0005).
CREATE TABLE pgsched.run (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    schedule_id      bigint NOT NULL REFERENCES pgsched.schedule (id),
    due_at           timestamptz NOT NULL,
    adhoc            boolean NOT NULL DEFAULT false,
    origin           text NOT NULL CHECK (origin IN ('schedule', 'catchup', 'backfill', 'trigger')),
    state            text NOT NULL CHECK (state IN ('waiting', 'running', 'succeeded', 'dead', 'cancelled')),
    queue            text NOT NULL,
    priority         smallint NOT NULL,
    available_at     timestamptz NOT NULL,
    attempt          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    lease_token      uuid,
    lease_expires_at timestamptz,
    worker_id        bigint,
    started_at       timestamptz,
    finished_at      timestamptz,
    outcome          jsonb,
    cancel_requested boolean NOT NULL DEFAULT false,
    idempotency_key  text,
    trace_context    jsonb,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (id, due_at),
    -- An occurrence exists once: the ticker, catch-up and backfill insert ON CONFLICT DO NOTHING.
    -- Ad-hoc triggers are not occurrences, so they never collide with one at the same instant.
    CONSTRAINT run_occurrence UNIQUE (schedule_id, due_at, adhoc)
) PARTITION BY RANGE (due_at);
-- The claim's index: exactly its WHERE and ORDER BY, so the planner
-- walks it in order and stops at LIMIT instead of sorting every waiting run.
CREATE INDEX run_claimable ON pgsched.run (queue, priority, available_at, id) WHERE state = 'waiting';
CREATE INDEX run_lease ON pgsched.run (lease_expires_at) WHERE state = 'running';
CREATE INDEX run_active_by_schedule ON pgsched.run (schedule_id) WHERE state IN ('waiting', 'running');
CREATE INDEX run_by_schedule ON pgsched.run (schedule_id, due_at DESC);

-- Events: the truth. Append-only, ordered globally by id, tagged with the writing transaction so
-- a reader can follow commit order without skipping late committers (ADR 0005).
CREATE TABLE pgsched.event (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    occurred_at timestamptz NOT NULL,
    tx_id       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stream      text NOT NULL CHECK (stream IN ('schedule', 'run', 'worker', 'system')),
    stream_id   bigint,
    type        text NOT NULL,
    actor       text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}',
    meta        jsonb NOT NULL DEFAULT '{}',
    trace_id    text,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX event_stream ON pgsched.event (stream, stream_id, id);
CREATE INDEX event_feed ON pgsched.event (tx_id, id);

CREATE FUNCTION pgsched.event_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'pgsched.event is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'retire whole partitions with the maintenance job instead';
END
$$;
CREATE TRIGGER event_no_update_delete BEFORE UPDATE OR DELETE ON pgsched.event
    FOR EACH ROW EXECUTE FUNCTION pgsched.event_is_append_only();
CREATE TRIGGER event_no_truncate BEFORE TRUNCATE ON pgsched.event
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.event_is_append_only();

-- A named lease per singleton duty (ticker leader, maintenance), held until expires_at.
-- Never used: tickers need no leader (ADR 0011) and maintenance became a built-in schedule.
CREATE TABLE pgsched.leader (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    term       bigint NOT NULL DEFAULT 1,
    expires_at timestamptz NOT NULL
);

-- API tokens: only the SHA-256 of the token is stored; `prefix` is what a person recognises.
CREATE TABLE pgsched.api_token (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name <> ''),
    role         text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    prefix       text NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
"""

PARTITIONS = """
SELECT pgsched.create_month_partition_v1(t, ((now() AT TIME ZONE 'UTC') + make_interval(months => m))::date)
FROM unnest(ARRAY['pgsched.run'::regclass, 'pgsched.event'::regclass]) AS t,
     generate_series(0, 3) AS m;

-- How far ahead each partitioned table is covered. months_ahead < 2 is the alarm (ADR 0005):
-- an insert beyond the last partition fails, so this must never reach 0.
CREATE VIEW pgsched.partition_horizon AS
SELECT t.parent::text AS table_name,
       max(p.month_end) AS covered_until,
       count(*) FILTER (WHERE p.month_start > now()) AS months_ahead,
       count(*) FILTER (WHERE p.month_start > now()) < 2 AS alarm
FROM unnest(ARRAY['pgsched.run'::regclass, 'pgsched.event'::regclass]) AS t(parent)
LEFT JOIN LATERAL pgsched.month_partitions_v1(t.parent) p ON true
GROUP BY t.parent;
"""

# Least privilege (ADR 0006). No application role may change or remove an event: they get INSERT
# and SELECT on the parent only, nothing on partitions, and the triggers above stop even the owner.
GRANTS = """
GRANT USAGE ON SCHEMA pgsched TO pgsched_api, pgsched_worker, pgsched_operator;
GRANT SELECT ON ALL TABLES IN SCHEMA pgsched TO pgsched_api, pgsched_worker, pgsched_operator;
-- Token hashes are for the API's authentication only.
REVOKE SELECT ON pgsched.api_token FROM pgsched_worker, pgsched_operator;
GRANT INSERT ON pgsched.event TO pgsched_api, pgsched_worker;
GRANT INSERT, UPDATE ON pgsched.schedule, pgsched.run TO pgsched_api;
GRANT UPDATE (last_used_at) ON pgsched.api_token TO pgsched_api;
GRANT UPDATE ON pgsched.schedule, pgsched.run, pgsched.worker, pgsched.leader TO pgsched_worker;
GRANT INSERT ON pgsched.run, pgsched.worker, pgsched.leader TO pgsched_worker;
GRANT DELETE ON pgsched.leader TO pgsched_worker;
GRANT EXECUTE ON FUNCTION pgsched.month_partitions_v1(regclass)
    TO pgsched_api, pgsched_worker, pgsched_operator;
REVOKE ALL ON FUNCTION pgsched.create_month_partition_v1(regclass, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgsched.drop_month_partitions_before_v1(regclass, date) FROM PUBLIC;
RESET ROLE;
"""


def upgrade() -> None:
    execute(ROLES)
    execute(SCHEMA)
    execute_file(
        "partitions/month_partitions_v1.sql",
        "5f1b1425e90842589a1179a6812a0c70268e067d5f47f2759393bc3281365030",
    )
    execute(PARTITIONS)
    execute(GRANTS)


def downgrade() -> None:
    execute("DROP SCHEMA pgsched CASCADE")
