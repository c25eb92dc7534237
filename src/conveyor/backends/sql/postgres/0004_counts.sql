-- Counts per (queue, state, priority), so stats, queue listings and /metrics read a
-- few rows instead of counting a million. Statement-level triggers keep them, from
-- transition tables: one grouped upsert per INSERT, COPY, UPDATE or DELETE statement,
-- however many tasks it touches, in the statement's own transaction.
--
-- Each count is split over 16 slots, one per connection (pg_backend_pid() % 16), and
-- readers add them up: workers claiming and finishing at once then update different
-- rows instead of queueing on one row lock per (queue, state, priority). Upserts go
-- in key order, so two statements that do share a slot cannot deadlock.

CREATE TABLE task_counts (
    queue    text NOT NULL,
    state    text NOT NULL,
    priority integer NOT NULL,
    slot     integer NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (queue, state, priority, slot)
);

INSERT INTO task_counts (queue, state, priority, slot, n)
SELECT queue, state, priority, 0, count(*) FROM tasks GROUP BY queue, state, priority;

CREATE FUNCTION task_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_counts AS c (queue, state, priority, slot, n)
    SELECT queue, state, priority, pg_backend_pid() % 16, count(*)
    FROM new_rows GROUP BY queue, state, priority ORDER BY queue, state, priority
    ON CONFLICT (queue, state, priority, slot) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION task_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_counts AS c (queue, state, priority, slot, n)
    SELECT q, s, p, pg_backend_pid() % 16, sum(d)
    FROM (
        SELECT o.queue, o.state, o.priority, -1
        FROM old_rows AS o JOIN new_rows AS x ON x.id = o.id
        WHERE (o.queue, o.state, o.priority) IS DISTINCT FROM (x.queue, x.state, x.priority)
        UNION ALL
        SELECT x.queue, x.state, x.priority, 1
        FROM old_rows AS o JOIN new_rows AS x ON x.id = o.id
        WHERE (o.queue, o.state, o.priority) IS DISTINCT FROM (x.queue, x.state, x.priority)
    ) AS moved (q, s, p, d)
    GROUP BY q, s, p HAVING sum(d) <> 0 ORDER BY q, s, p
    ON CONFLICT (queue, state, priority, slot) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION task_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_counts AS c (queue, state, priority, slot, n)
    SELECT queue, state, priority, pg_backend_pid() % 16, -count(*)
    FROM old_rows GROUP BY queue, state, priority ORDER BY queue, state, priority
    ON CONFLICT (queue, state, priority, slot) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_counts_inserted AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_inserted();
CREATE TRIGGER task_counts_updated AFTER UPDATE ON tasks REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_updated();
CREATE TRIGGER task_counts_deleted AFTER DELETE ON tasks REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_deleted();
