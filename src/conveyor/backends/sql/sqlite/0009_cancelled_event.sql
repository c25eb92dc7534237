-- The task.cancelled outbox event: the task reached cancelled. The trigger is made
-- again with one more insert, before workflow.finished (a cancel that finishes a
-- workflow records both, in that order).
DROP TRIGGER outbox_record;

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

    INSERT INTO outbox (event, task_id, workflow_id, queue, name, state, attempt, at, next_at, result, error)
    SELECT 'task.cancelled', new.id, new.workflow_id, new.queue, new.name, new.state, new.attempts,
           new.updated_at, new.updated_at, new.result, new.error
    WHERE new.state = 'cancelled'
      AND EXISTS (SELECT 1 FROM outbox_subscriptions WHERE event = 'task.cancelled');

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
