-- Counts per (queue, state, priority), so stats, queue listings, max_length checks,
-- concurrency limits and /metrics read a few rows instead of counting a million. They
-- replace the (queue, state) index, which every insert and state change also had to
-- update. State changes and deletes keep them through triggers, in the statement that
-- changes the task; inserts add one grouped row per batch instead (the count_new
-- query, run by the same transaction as the insert), since a trigger per inserted row
-- costs more than the index did. Rows that fall to zero stay (their number is bounded
-- by queues x states x 11).

CREATE TABLE task_counts (
    queue    TEXT NOT NULL,
    state    TEXT NOT NULL,
    priority INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (queue, state, priority)
) WITHOUT ROWID;

INSERT INTO task_counts (queue, state, priority, n)
SELECT queue, state, priority, count(*) FROM tasks GROUP BY queue, state, priority;

CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
    UPDATE task_counts SET n = n - 1
    WHERE queue = old.queue AND state = old.state AND priority = old.priority;
END;

CREATE TRIGGER task_counts_update AFTER UPDATE OF state, queue, priority ON tasks
WHEN old.state IS NOT new.state OR old.queue IS NOT new.queue OR old.priority IS NOT new.priority
BEGIN
    UPDATE task_counts SET n = n - 1
    WHERE queue = old.queue AND state = old.state AND priority = old.priority;
    INSERT INTO task_counts (queue, state, priority, n) VALUES (new.queue, new.state, new.priority, 1)
    ON CONFLICT (queue, state, priority) DO UPDATE SET n = n + 1;
END;

DROP INDEX tasks_queue_state;

-- The dead-letter queue, newest first, without walking every stored task.
CREATE INDEX tasks_dead ON tasks (id) WHERE state = 'failed';
