-- Conveyor's PostgreSQL schema, version 1. Runs inside the URL's schema (created by
-- migrate(), which sets search_path), so no name here is schema-qualified.
--
-- Times are double precision epoch seconds (as in every engine); JSON is jsonb,
-- except "retry", kept as the exact text the engine caches parsed policies by.
-- States are spelled literally (migrations are history); they match conveyor.states.

CREATE TABLE tasks (
    id               text PRIMARY KEY,             -- UUIDv7: time-sortable, so FIFO
    name             text NOT NULL,
    args             jsonb NOT NULL DEFAULT '{}',
    queue            text NOT NULL,
    priority         integer NOT NULL,
    state            text NOT NULL,
    labels           jsonb NOT NULL DEFAULT '[]',
    requires         jsonb NOT NULL DEFAULT '[]',  -- '[]' is the common, fast case
    run_at           double precision NOT NULL,
    depends_on       jsonb NOT NULL DEFAULT '[]',
    idempotency_key  text,
    max_retries      integer NOT NULL,
    timeout          double precision,
    retry            text NOT NULL,                -- RetryPolicy as JSON text
    attempts         integer NOT NULL DEFAULT 0,
    result           jsonb,
    error            jsonb,                        -- TaskError
    failure_reason   text,
    worker_id        text,
    lease_token      text,
    lease_expires_at double precision,
    created_at       double precision NOT NULL,
    started_at       double precision,
    finished_at      double precision,
    updated_at       double precision NOT NULL,
    history          jsonb NOT NULL DEFAULT '[]',  -- HistoryEntry objects, appended
    workflow_id      text,
    workflow_key     text,
    -- Set (under the row's lock) when another task depends on this one: its outcome
    -- must then settle the dependents, which only the transactional path does.
    has_dependents   boolean NOT NULL DEFAULT false
);

-- A queue table churns: every transition writes a new row version. Vacuum early so
-- dead entries do not pile up in the claim index.
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05
);

-- Claims: one ordered scan per queue, touching only ready rows, so the cost of a
-- claim does not grow with the backlog. A claim from every queue finds the queues
-- by skipping through this index (one seek per queue): no second index to update.
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_at, id)
    WHERE state = 'pending';
-- Promotion of scheduled and retrying tasks whose time has come, and next_due.
CREATE INDEX tasks_due ON tasks (queue, run_at)
    WHERE state IN ('retrying','scheduled');
CREATE INDEX tasks_due_all ON tasks (run_at)
    WHERE state IN ('retrying','scheduled');
-- The reaper, and running counts for concurrency limits (running tasks are few).
CREATE INDEX tasks_leases ON tasks (lease_expires_at)
    WHERE state = 'running';
-- max_length counts a queue's unfinished tasks through the indexes above (ready,
-- due, running) and this one; no (queue, state) index, which the planner might
-- prefer for a claim on a fresh table and then sort a whole backlog.
CREATE INDEX tasks_waiting ON tasks (queue)
    WHERE state = 'waiting';
-- Throughput: tasks finished in the last minute.
CREATE INDEX tasks_finished ON tasks (finished_at)
    WHERE finished_at IS NOT NULL;
-- One task per idempotency key and queue.
CREATE UNIQUE INDEX tasks_idempotency ON tasks (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Workflows: a workflow's nodes.
CREATE INDEX tasks_workflow ON tasks (workflow_id, id)
    WHERE workflow_id IS NOT NULL;

-- Dependency edges (the DAG), so a finished task finds its dependents by index.
CREATE TABLE task_deps (
    depends_on text NOT NULL,
    task_id    text NOT NULL,
    PRIMARY KEY (depends_on, task_id)
);
CREATE INDEX task_deps_by_task ON task_deps (task_id);

CREATE TABLE workers (
    id                text PRIMARY KEY,
    host              text NOT NULL,
    pid               integer NOT NULL,
    queues            jsonb NOT NULL DEFAULT '[]',
    tags              jsonb NOT NULL DEFAULT '[]',
    concurrency       integer NOT NULL,
    pool              text NOT NULL,
    version           text NOT NULL,
    state             text NOT NULL,
    active            integer NOT NULL DEFAULT 0,
    processed         integer NOT NULL DEFAULT 0,
    started_at        double precision NOT NULL,
    last_heartbeat_at double precision NOT NULL
);

-- Flow control (conveyor.features.flow): one row per controlled queue or task name,
-- holding its settings and live state (token bucket, breaker). A claim that finds
-- rows here locks them (FOR UPDATE), so limits hold cluster-wide.
CREATE TABLE flow_controls (
    kind              text NOT NULL,               -- 'queue' or 'task'
    name              text NOT NULL,
    paused            boolean NOT NULL DEFAULT false,
    rate_limit        text,
    concurrency       integer,
    breaker_threshold integer,
    breaker_cooldown  double precision NOT NULL DEFAULT 30,
    tokens            double precision,            -- NULL: a full bucket
    refilled_at       double precision NOT NULL DEFAULT 0,
    failures          integer NOT NULL DEFAULT 0,
    breaker           text NOT NULL DEFAULT 'closed',
    opened_until      double precision,
    PRIMARY KEY (kind, name)
);
