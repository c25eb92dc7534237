-- Conveyor's SQLite schema, version 1.
--
-- One row per task; times are REAL epoch seconds; JSON fields are TEXT. States are
-- spelled literally here (migrations are history); they match conveyor.states, and
-- the claim queries name their index with INDEXED BY, so a mismatch fails loudly.

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY NOT NULL,   -- UUIDv7: time-sortable, so FIFO
    name             TEXT NOT NULL,
    args             TEXT NOT NULL DEFAULT '{}',
    queue            TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    state            TEXT NOT NULL,
    labels           TEXT NOT NULL DEFAULT '[]',
    requires         TEXT NOT NULL DEFAULT '[]',  -- '[]' is the common, fast case
    run_at           REAL NOT NULL,
    depends_on       TEXT NOT NULL DEFAULT '[]',
    idempotency_key  TEXT,
    max_retries      INTEGER NOT NULL,
    timeout          REAL,
    retry            TEXT NOT NULL,               -- RetryPolicy as JSON
    attempts         INTEGER NOT NULL DEFAULT 0,
    result           TEXT,
    error            TEXT,                        -- TaskError as JSON
    failure_reason   TEXT,
    worker_id        TEXT,
    lease_token      TEXT,
    lease_expires_at REAL,
    created_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    updated_at       REAL NOT NULL,
    history          TEXT NOT NULL DEFAULT '[]'   -- HistoryEntry objects, appended
);

-- Claims: one index scan per queue in claim order, touching only ready rows, so the
-- cost of a claim does not grow with the backlog. A claim from every queue skips
-- through it queue by queue, so no second index has to be kept up to date.
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_at, id)
    WHERE state = 'pending';
-- Promotion of scheduled and retrying tasks whose time has come (transition "due").
CREATE INDEX tasks_due ON tasks (run_at)
    WHERE state IN ('retrying','scheduled');
-- The reaper: running tasks whose lease lapsed.
CREATE INDEX tasks_leases ON tasks (lease_expires_at)
    WHERE state = 'running';
-- Queue depth (max_length, queue listings, stats) as covering index scans.
CREATE INDEX tasks_queue_state ON tasks (queue, state);
-- Throughput: tasks finished in the last minute.
CREATE INDEX tasks_finished ON tasks (finished_at)
    WHERE finished_at IS NOT NULL;
-- One task per idempotency key and queue.
CREATE UNIQUE INDEX tasks_idempotency ON tasks (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Dependency edges (the DAG), so a finished task finds its dependents by index.
CREATE TABLE task_deps (
    depends_on TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    PRIMARY KEY (depends_on, task_id)
) WITHOUT ROWID;
CREATE INDEX task_deps_by_task ON task_deps (task_id);

CREATE TABLE workers (
    id                TEXT PRIMARY KEY NOT NULL,
    host              TEXT NOT NULL,
    pid               INTEGER NOT NULL,
    queues            TEXT NOT NULL DEFAULT '[]',
    tags              TEXT NOT NULL DEFAULT '[]',
    concurrency       INTEGER NOT NULL,
    pool              TEXT NOT NULL,
    version           TEXT NOT NULL,
    state             TEXT NOT NULL,
    active            INTEGER NOT NULL DEFAULT 0,
    processed         INTEGER NOT NULL DEFAULT 0,
    started_at        REAL NOT NULL,
    last_heartbeat_at REAL NOT NULL
);
