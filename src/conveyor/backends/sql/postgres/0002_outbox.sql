-- The notification outbox (conveyor.notify). A row trigger records each subscribed
-- event in the statement that changes a task's state, so an event exists if and only
-- if its transition committed, whichever operation or process made it. The trigger
-- itself exists only while something is subscribed: outbox_subscribe creates it and
-- drops it again when the set becomes empty, so with notifications off a state change
-- costs exactly what it did before. Events copy the task's state, attempt, result and
-- error, so delivery never reads tasks. The partial unique index keeps one undelivered
-- workflow.finished per workflow: two last nodes finished by one statement both see
-- the workflow done (row triggers fire after the statement), and ON CONFLICT keeps one.

CREATE TABLE outbox_subscriptions (event text PRIMARY KEY);

CREATE TABLE outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event       text NOT NULL,
    task_id     text NOT NULL,
    workflow_id text,
    queue       text NOT NULL,
    name        text NOT NULL,
    state       text NOT NULL,
    attempt     integer NOT NULL,
    at          double precision NOT NULL,
    next_at     double precision NOT NULL,  -- due for (re)delivery; a claim leases by moving it
    deliveries  integer NOT NULL DEFAULT 0,
    done        jsonb NOT NULL DEFAULT '[]', -- targets that already have it
    result      text,
    error       text
);
CREATE INDEX outbox_due ON outbox (next_at, id);
CREATE UNIQUE INDEX outbox_workflow_once ON outbox (workflow_id) WHERE event = 'workflow.finished';

CREATE FUNCTION outbox_record() RETURNS trigger LANGUAGE plpgsql AS $$
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
