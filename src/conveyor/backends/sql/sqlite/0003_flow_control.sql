-- Flow control (conveyor.features.flow): one row per controlled queue or task name,
-- holding its settings and its live state (token bucket, circuit breaker). Claims
-- and outcomes read and update these rows in their own transaction.

CREATE TABLE flow_controls (
    kind              TEXT NOT NULL,               -- 'queue' or 'task'
    name              TEXT NOT NULL,
    paused            INTEGER NOT NULL DEFAULT 0,
    rate_limit        TEXT,                        -- '100/s', '5/m', ...
    concurrency       INTEGER,                     -- running tasks at most, cluster-wide
    breaker_threshold INTEGER,                     -- consecutive failures that open it
    breaker_cooldown  REAL NOT NULL DEFAULT 30,
    tokens            REAL,                        -- NULL: a full bucket
    refilled_at       REAL NOT NULL DEFAULT 0,
    failures          INTEGER NOT NULL DEFAULT 0,  -- consecutive, for the breaker
    breaker           TEXT NOT NULL DEFAULT 'closed',
    opened_until      REAL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;

-- Concurrency limits and half-open breakers count running tasks per task name.
CREATE INDEX tasks_running_name ON tasks (name) WHERE state = 'running';
