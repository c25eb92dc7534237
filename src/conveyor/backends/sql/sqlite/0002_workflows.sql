-- Workflows (DAGs submitted at once, conveyor.workflows): each node is a task that
-- carries its workflow's id and its node key. A workflow's state is derived from its
-- nodes, so no workflows table is needed; the index finds a workflow's nodes.

ALTER TABLE tasks ADD COLUMN workflow_id TEXT;
ALTER TABLE tasks ADD COLUMN workflow_key TEXT;
CREATE INDEX tasks_workflow ON tasks (workflow_id, id)
    WHERE workflow_id IS NOT NULL;
