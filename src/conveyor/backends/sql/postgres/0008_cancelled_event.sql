-- The task.cancelled outbox event: the task reached cancelled. The trigger already
-- fires on moves into cancelled (for workflow.finished); only the function changes.
CREATE OR REPLACE FUNCTION outbox_record() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    subs text[];
BEGIN
    SELECT array_agg(event) INTO subs FROM outbox_subscriptions;
    IF subs IS NULL THEN
        RETURN NULL;
    END IF;
    IF NEW.state = 'succeeded' AND 'task.succeeded' = ANY (subs) THEN
        INSERT INTO outbox (event, task_id, workflow_id, queue, name, state, attempt, at, next_at, result, error)
        VALUES ('task.succeeded', NEW.id, NEW.workflow_id, NEW.queue, NEW.name, NEW.state, NEW.attempts,
                NEW.updated_at, NEW.updated_at, NEW.result::text, NEW.error::text);
    END IF;
    IF OLD.state = 'running' AND NEW.state IN ('retrying', 'failed') AND 'task.failed' = ANY (subs) THEN
        INSERT INTO outbox (event, task_id, workflow_id, queue, name, state, attempt, at, next_at, result, error)
        VALUES ('task.failed', NEW.id, NEW.workflow_id, NEW.queue, NEW.name, NEW.state, NEW.attempts,
                NEW.updated_at, NEW.updated_at, NEW.result::text, NEW.error::text);
    END IF;
    IF NEW.state = 'failed' AND 'task.dead_lettered' = ANY (subs) THEN
        INSERT INTO outbox (event, task_id, workflow_id, queue, name, state, attempt, at, next_at, result, error)
        VALUES ('task.dead_lettered', NEW.id, NEW.workflow_id, NEW.queue, NEW.name, NEW.state, NEW.attempts,
                NEW.updated_at, NEW.updated_at, NEW.result::text, NEW.error::text);
    END IF;
    IF NEW.state = 'cancelled' AND 'task.cancelled' = ANY (subs) THEN
        INSERT INTO outbox (event, task_id, workflow_id, queue, name, state, attempt, at, next_at, result, error)
        VALUES ('task.cancelled', NEW.id, NEW.workflow_id, NEW.queue, NEW.name, NEW.state, NEW.attempts,
                NEW.updated_at, NEW.updated_at, NEW.result::text, NEW.error::text);
    END IF;
    IF NEW.workflow_id IS NOT NULL AND NEW.state IN ('succeeded', 'failed', 'cancelled')
       AND 'workflow.finished' = ANY (subs)
       AND NOT EXISTS (SELECT 1 FROM tasks
                       WHERE workflow_id = NEW.workflow_id
                         AND state NOT IN ('succeeded', 'failed', 'cancelled')) THEN
        INSERT INTO outbox (event, task_id, workflow_id, queue, name, state, attempt, at, next_at, result, error)
        VALUES ('workflow.finished', NEW.id, NEW.workflow_id, NEW.queue, NEW.name, NEW.state, NEW.attempts,
                NEW.updated_at, NEW.updated_at, NEW.result::text, NEW.error::text)
        ON CONFLICT (workflow_id) WHERE event = 'workflow.finished' DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;
