-- A task's headers (conveyor.tracing): the submit's trace context and request id, as
-- a JSON object; NULL when empty, the common case, so most rows pay nothing for it.
ALTER TABLE tasks ADD COLUMN headers TEXT;
