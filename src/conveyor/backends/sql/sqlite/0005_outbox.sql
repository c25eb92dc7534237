-- The notification outbox (conveyor.notify): triggers record an event in the very
-- statement that changes a task's state, so an event exists if and only if its
-- transition committed, whichever operation or process made it. A trigger does
-- nothing unless its event is in outbox_subscriptions (written by outbox_subscribe),
-- so the outbox costs one lookup in an empty table per finished attempt when it is off
-- (claims and other moves into non-final states do not run it at all).
-- Ids increase, so due events are delivered oldest first; the partial unique index
-- keeps one undelivered workflow.finished per workflow (INSERT OR IGNORE).

CREATE TABLE outbox_subscriptions (event TEXT PRIMARY KEY) WITHOUT ROWID;

CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event       TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    workflow_id TEXT,
    queue       TEXT NOT NULL,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          REAL NOT NULL,
    next_at     REAL NOT NULL,             -- due for (re)delivery (moved only by a retry)
    leased_until REAL NOT NULL DEFAULT 0,  -- a claim's lease: not indexed, so claims touch no index
    deliveries  INTEGER NOT NULL DEFAULT 0,
    done        TEXT NOT NULL DEFAULT '[]', -- targets that already have it (JSON array)
    result      TEXT,                       -- the task's, copied: delivery never reads tasks
    error       TEXT
);
CREATE INDEX outbox_due ON outbox (next_at, id);
CREATE UNIQUE INDEX outbox_workflow_once ON outbox (workflow_id) WHERE event = 'workflow.finished';

-- One trigger, so the events of one transition are recorded in a fixed order.
CREATE TRIGGER outbox_record AFTER UPDATE OF state ON tasks
WHEN new.state IN ('succeeded', 'retrying', 'failed', 'cancelled') AND old.state IS NOT new.state
 AND EXISTS (SELECT 1 FROM outbox_subscriptions)
BEGIN
    INSERT INTO outbox (event, task_id, workflow_id, queue, name, state, attempt, at, next_at, result, error)
    SELECT 'task.succeeded', new.id, new.workflow_id, new.queue, new.name, new.state, new.attempts,
           new.updated_at, new.updated_at, new.result, new.error
    WHERE new.state = 'succeeded'
      AND EXISTS (SELECT 1 FROM outbox_subscriptions WHERE event = 'task.succeeded');

    INSERT INTO outbox (event, task_id, workflow_id, queue, name, state, attempt, at, next_at, result, error)
    SELECT 'task.failed', new.id, new.workflow_id, new.queue, new.name, new.state, new.attempts,
           new.updated_at, new.updated_at, new.result, new.error
    WHERE old.state = 'running' AND new.state IN ('retrying', 'failed')
      AND EXISTS (SELECT 1 FROM outbox_subscriptions WHERE event = 'task.failed');

    INSERT INTO outbox (event, task_id, workflow_id, queue, name, state, attempt, at, next_at, result, error)
    SELECT 'task.dead_lettered', new.id, new.workflow_id, new.queue, new.name, new.state, new.attempts,
           new.updated_at, new.updated_at, new.result, new.error
    WHERE new.state = 'failed'
      AND EXISTS (SELECT 1 FROM outbox_subscriptions WHERE event = 'task.dead_lettered');

    INSERT OR IGNORE INTO outbox (event, task_id, workflow_id, queue, name, state, attempt, at, next_at, result, error)
    SELECT 'workflow.finished', new.id, new.workflow_id, new.queue, new.name, new.state, new.attempts,
           new.updated_at, new.updated_at, new.result, new.error
    WHERE new.workflow_id IS NOT NULL
      AND new.state IN ('succeeded', 'failed', 'cancelled')
      AND old.state NOT IN ('succeeded', 'failed', 'cancelled')
      AND EXISTS (SELECT 1 FROM outbox_subscriptions WHERE event = 'workflow.finished')
      AND NOT EXISTS (
          SELECT 1 FROM tasks
          WHERE workflow_id = new.workflow_id AND state NOT IN ('succeeded', 'failed', 'cancelled')
      );
END;
