-- Named queries of the SQLite engine, loaded by conveyor.backends.sqlfiles.
--
-- {from:T} is the predicate on the source states of transition T in
-- conveyor.states (e.g. "= 'pending'"), {to:T} its target state. Every transition
-- appends a HistoryEntry (at, state, transition, worker_id, reason) to the JSON
-- array in "history" within the same UPDATE. Its "at" comes in as the text of the
-- float (json(:at)): SQLite prints REALs with 15 digits, which would make the entry
-- differ from updated_at in the last microseconds. Leaving "running" clears the
-- lease and worker_id; entering a terminal state sets finished_at.

-- name: drop_lease
-- A fragment for every transition out of "running": the lease and its holder go.
worker_id = NULL,
lease_token = NULL,
lease_expires_at = NULL,

-- name: insert_task
-- Positional, one row of sqlite_rows.insert_row (which also writes the first history
-- entry, as JSON text built in Python: cheaper than json_object per row). Plain "?"
-- placeholders, so sqlite_ops.insert_tasks can repeat the VALUES row and insert many
-- tasks per statement (stepping one statement per row costs more than the insert).
INSERT INTO tasks (
    id, name, args, queue, priority, state, labels, requires, run_at, depends_on,
    idempotency_key, max_retries, timeout, retry, created_at, updated_at, history,
    workflow_id, workflow_key, headers
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: count_new
-- Positional, for executemany: queue, state, priority, how many a batch inserted
-- (0004_counts.sql: inserts are counted per batch, state changes by triggers).
INSERT INTO task_counts (queue, state, priority, n) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (queue, state, priority) DO UPDATE SET n = n + excluded.n;

-- name: insert_dep
INSERT OR IGNORE INTO task_deps (depends_on, task_id) VALUES (?, ?);

-- name: find_idempotent
-- :keys is a JSON array of [queue, key] pairs.
SELECT queue, idempotency_key, id, state FROM tasks
WHERE (queue, idempotency_key) IN (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:keys)
) AND idempotency_key IS NOT NULL;

-- name: existing_ids
SELECT id FROM tasks WHERE id IN (SELECT value FROM json_each(:ids));

-- name: count_unfinished
SELECT coalesce(sum(n), 0) FROM task_counts WHERE queue = :queue AND state {from:active};

-- name: promote_due
UPDATE tasks SET
    state = {to:due},
    updated_at = :now,
    history = json_insert(history, '$[#]', json_object('at', json(:at), 'state', {to:due},
        'transition', 'due', 'worker_id', NULL, 'reason', NULL))
WHERE rowid IN (
    SELECT rowid FROM tasks INDEXED BY tasks_due
    WHERE state {from:due} AND run_at <= :now
);

-- name: claim_set
-- A fragment: what a claim writes (also used by claim_ids).
state = {to:claim},
attempts = attempts + 1,
worker_id = :worker_id,
lease_token = lower(hex(randomblob(16))),  -- fresh per task and attempt
lease_expires_at = :expires,
started_at = :now,
updated_at = :now,
history = json_insert(history, '$[#]', json_object('at', json(:at), 'state', {to:claim},
    'transition', 'claim', 'worker_id', :worker_id, 'reason', NULL))

-- name: claim_update
-- A fragment, run under a "claim_queues(value)" CTE naming the queues to take from:
-- one ordered scan of the ready index per queue takes its first :limit rows, and
-- the outer ORDER BY sorts only those few, so a claim costs the same with a
-- million tasks waiting as with ten. :tags is a JSON array of the worker's tags.
UPDATE tasks SET {include:claim_set}
WHERE rowid IN (
    SELECT c.rowid FROM claim_queues AS q
    JOIN tasks AS c ON c.rowid IN (
        SELECT t.rowid FROM tasks AS t INDEXED BY tasks_ready
        WHERE t.state {from:claim} AND t.queue = q.value
          AND (t.requires = '[]' OR NOT EXISTS (
              SELECT 1 FROM json_each(t.requires) AS r
              WHERE r.value NOT IN (SELECT value FROM json_each(:tags))))
        ORDER BY t.priority DESC, t.run_at, t.id
        LIMIT :limit)
    ORDER BY c.priority DESC, c.run_at, c.id
    LIMIT :limit
)
RETURNING id, name, args, queue, priority, attempts, max_retries, timeout, retry,
          run_at, created_at, labels, lease_token, workflow_id, headers

-- name: claim_ids
-- The flow-controlled claim (sqlite_flow.py): lease the tasks in :ids (a JSON
-- array) that are still pending; same RETURNING columns as claim_update.
UPDATE tasks SET {include:claim_set}
WHERE id IN (SELECT value FROM json_each(:ids)) AND state {from:claim}
RETURNING id, name, args, queue, priority, attempts, max_retries, timeout, retry,
          run_at, created_at, labels, lease_token, workflow_id, headers

-- name: claim_queues
-- The queues in :queues, a JSON array.
WITH claim_queues(value) AS (SELECT value FROM json_each(:queues))
{include:claim_update};

-- name: claim_all
-- Every queue with ready work, found by skipping through the ready index one
-- queue at a time (a loose index scan: one seek per queue).
WITH RECURSIVE claim_queues(value) AS (
    SELECT (SELECT min(queue) FROM tasks INDEXED BY tasks_ready WHERE state {from:claim})
    UNION ALL
    SELECT (SELECT min(queue) FROM tasks INDEXED BY tasks_ready
            WHERE state {from:claim} AND queue > claim_queues.value)
    FROM claim_queues WHERE value IS NOT NULL
)
{include:claim_update};

-- name: next_due_queues
SELECT run_at FROM tasks INDEXED BY tasks_due
WHERE state {from:due} AND queue IN (SELECT value FROM json_each(:queues))
ORDER BY run_at LIMIT 1;

-- name: next_due_all
SELECT run_at FROM tasks INDEXED BY tasks_due
WHERE state {from:due}
ORDER BY run_at LIMIT 1;

-- name: lease_holders
-- Current state and lease of the tasks in :ids (a JSON array), to fence a batch.
SELECT id, state, lease_token FROM tasks
WHERE id IN (SELECT value FROM json_each(:ids));

-- name: finish_complete
-- Positional, for executemany: see sqlite_rows.outcome_row (?5 is the time, ?6 its text).
UPDATE tasks SET
    state = {to:complete},
    result = ?3,
    error = NULL,
    finished_at = ?5,
    updated_at = ?5,
    {include:drop_lease}
    history = json_insert(history, '$[#]', json_object('at', json(?6), 'state', {to:complete},
        'transition', 'complete', 'worker_id', coalesce(?7, worker_id), 'reason', NULL))
WHERE id = ?1 AND lease_token = ?2 AND state {from:complete};

-- name: finish_retry
UPDATE tasks SET
    state = {to:retry},
    run_at = ?3,
    error = ?4,
    updated_at = ?5,
    {include:drop_lease}
    history = json_insert(history, '$[#]', json_object('at', json(?6), 'state', {to:retry},
        'transition', 'retry', 'worker_id', coalesce(?7, worker_id),
        'reason', json_extract(?4, '$.type') || ': ' || json_extract(?4, '$.message')))
WHERE id = ?1 AND lease_token = ?2 AND state {from:retry};

-- name: finish_fail
UPDATE tasks SET
    state = {to:fail},
    failure_reason = ?3,
    error = ?4,
    finished_at = ?5,
    updated_at = ?5,
    {include:drop_lease}
    history = json_insert(history, '$[#]', json_object('at', json(?6), 'state', {to:fail},
        'transition', 'fail', 'worker_id', coalesce(?7, worker_id), 'reason', ?3))
WHERE id = ?1 AND lease_token = ?2 AND state {from:fail};

-- name: deps_succeeded
-- Waiting dependents of :ids (a JSON array) whose every dependency succeeded.
UPDATE tasks SET
    state = {to:deps_succeeded},
    updated_at = :now,
    history = json_insert(history, '$[#]', json_object('at', json(:at), 'state', {to:deps_succeeded},
        'transition', 'deps_succeeded', 'worker_id', NULL, 'reason', NULL))
WHERE id IN (
    SELECT task_id FROM task_deps WHERE depends_on IN (SELECT value FROM json_each(:ids))
) AND state {from:deps_succeeded} AND NOT EXISTS (
    SELECT 1 FROM task_deps AS d LEFT JOIN tasks AS p ON p.id = d.depends_on
    WHERE d.task_id = tasks.id AND (p.state IS NULL OR p.state != {to:complete})
)
RETURNING id;

-- name: dependency_lost
-- A fragment: the reason a waiting task can never run, naming the dependency.
(SELECT 'dependency ' || p.id || ' ' || p.state
 FROM task_deps AS d JOIN tasks AS p ON p.id = d.depends_on
 WHERE d.task_id = tasks.id AND p.state {from:terminal} AND p.state != {to:complete}
 LIMIT 1)

-- name: deps_failed
-- Waiting dependents of :ids that can never run; the caller repeats it down the graph.
UPDATE tasks SET
    state = {to:dependency_failed},
    failure_reason = 'dependency_failed',
    finished_at = :now,
    updated_at = :now,
    history = json_insert(history, '$[#]', json_object('at', json(:at), 'state', {to:dependency_failed},
        'transition', 'dependency_failed', 'worker_id', NULL, 'reason', {include:dependency_lost}))
WHERE id IN (
    SELECT task_id FROM task_deps WHERE depends_on IN (SELECT value FROM json_each(:ids))
) AND state {from:dependency_failed}
RETURNING id;

-- name: deps_check_new
-- New waiting tasks in :ids whose dependencies already finished: [id, verdict] rows,
-- verdict 'failed' if one can never succeed, 'ready' if all succeeded.
SELECT d.task_id,
       CASE WHEN sum(p.state {from:terminal} AND p.state != {to:complete}) > 0 THEN 'failed'
            WHEN sum(p.state IS NULL OR p.state != {to:complete}) = 0 THEN 'ready'
       END AS verdict
FROM task_deps AS d LEFT JOIN tasks AS p ON p.id = d.depends_on
WHERE d.task_id IN (SELECT value FROM json_each(:ids))
GROUP BY d.task_id
HAVING verdict IS NOT NULL;

-- name: mark_ready
UPDATE tasks SET
    state = {to:deps_succeeded},
    updated_at = :now,
    history = json_insert(history, '$[#]', json_object('at', json(:at), 'state', {to:deps_succeeded},
        'transition', 'deps_succeeded', 'worker_id', NULL, 'reason', NULL))
WHERE id IN (SELECT value FROM json_each(:ids)) AND state {from:deps_succeeded}
RETURNING id;

-- name: mark_dependency_failed
UPDATE tasks SET
    state = {to:dependency_failed},
    failure_reason = 'dependency_failed',
    finished_at = :now,
    updated_at = :now,
    history = json_insert(history, '$[#]', json_object('at', json(:at), 'state', {to:dependency_failed},
        'transition', 'dependency_failed', 'worker_id', NULL, 'reason', {include:dependency_lost}))
WHERE id IN (SELECT value FROM json_each(:ids)) AND state {from:dependency_failed}
RETURNING id;

-- name: release
-- Positional, for executemany: id, token, refund (0 or 1), now, worker_id, reason, at.
UPDATE tasks SET
    state = {to:release},
    attempts = max(attempts - ?3, 0),
    {include:drop_lease}
    updated_at = ?4,
    history = json_insert(history, '$[#]', json_object('at', json(?7), 'state', {to:release},
        'transition', 'release', 'worker_id', ?5, 'reason', ?6))
WHERE id = ?1 AND lease_token = ?2 AND state {from:release};

-- name: reap_expired
-- A lapsed lease counts as an attempt: back to pending, or failed when none are left.
UPDATE tasks SET
    state = CASE WHEN attempts > max_retries THEN {to:lease_expired_final}
                 ELSE {to:lease_expired} END,
    failure_reason = CASE WHEN attempts > max_retries THEN 'retries_exhausted'
                          ELSE failure_reason END,
    error = CASE WHEN attempts > max_retries THEN json_object('type', 'LeaseExpired',
                     'message', 'lease of worker ' || coalesce(worker_id, '?')
                                || ' expired on attempt ' || attempts,
                     'traceback', NULL, 'retryable', json('true'))
                 ELSE error END,
    finished_at = CASE WHEN attempts > max_retries THEN :now ELSE finished_at END,
    {include:drop_lease}
    updated_at = :now,
    history = json_insert(history, '$[#]', json_object('at', json(:at),
        'state', CASE WHEN attempts > max_retries THEN {to:lease_expired_final}
                      ELSE {to:lease_expired} END,
        'transition', CASE WHEN attempts > max_retries THEN 'lease_expired_final'
                           ELSE 'lease_expired' END,
        'worker_id', worker_id, 'reason', 'lease expired'))
WHERE rowid IN (
    SELECT rowid FROM tasks INDEXED BY tasks_leases
    WHERE state {from:lease_expired} AND lease_expires_at < :now
    ORDER BY lease_expires_at
    LIMIT :limit
)
RETURNING id, state;

-- name: cancel
UPDATE tasks SET
    state = {to:cancel},
    finished_at = :now,
    updated_at = :now,
    {include:drop_lease}
    history = json_insert(history, '$[#]', json_object('at', json(:at), 'state', {to:cancel},
        'transition', 'cancel', 'worker_id', NULL, 'reason', :reason))
WHERE id = :id AND state {from:cancel}
RETURNING *;

-- name: get_task
SELECT * FROM tasks WHERE id = :id;

-- name: task_state
SELECT state FROM tasks WHERE id = :id;

-- name: extend_lease
-- Positional, for executemany: expires, id, token.
UPDATE tasks SET lease_expires_at = ?1
WHERE id = ?2 AND lease_token = ?3 AND state = {to:claim};

-- name: worker_upsert
INSERT INTO workers (
    id, host, pid, queues, tags, concurrency, pool, version, state, active, processed,
    started_at, last_heartbeat_at
) VALUES (
    :id, :host, :pid, :queues, :tags, :concurrency, :pool, :version, :state, :active,
    :processed, :started_at, :last_heartbeat_at
)
ON CONFLICT (id) DO UPDATE SET
    host = excluded.host, pid = excluded.pid, queues = excluded.queues, tags = excluded.tags,
    concurrency = excluded.concurrency, pool = excluded.pool, version = excluded.version,
    state = excluded.state, active = excluded.active, processed = excluded.processed,
    started_at = excluded.started_at, last_heartbeat_at = excluded.last_heartbeat_at;

-- name: worker_touch
UPDATE workers SET state = :state, active = :active, processed = :processed,
    last_heartbeat_at = :now
WHERE id = :id;

-- name: worker_offline
UPDATE workers SET state = 'offline', active = 0 WHERE id = :id;

-- name: worker_list
SELECT * FROM workers ORDER BY id;

-- name: task_filter
-- A fragment, included by listings, replay and purge: NULL matches everything.
(:queue IS NULL OR queue = :queue)
AND (:name IS NULL OR name = :name)
AND (:label IS NULL OR EXISTS (SELECT 1 FROM json_each(labels) WHERE value = :label))

-- name: list_tasks
-- Newest first, by a range scan on the primary key: char(1114111) sorts after every
-- id, so a missing cursor keeps the range.
SELECT * FROM tasks
WHERE id < coalesce(:cursor, char(1114111))
  AND (:state IS NULL OR state = :state)
  AND {include:task_filter}
ORDER BY id DESC
LIMIT :limit;

-- name: list_dead
-- The dead-letter queue (state = failed), newest first, through its partial index.
SELECT * FROM tasks INDEXED BY tasks_dead
WHERE state {from:replay}
  AND id < coalesce(:cursor, char(1114111))
  AND {include:task_filter}
ORDER BY id DESC
LIMIT :limit;

-- name: list_tasks_by_ids
SELECT * FROM tasks
WHERE id IN (SELECT value FROM json_each(:ids))
  AND id < coalesce(:cursor, char(1114111))
  AND (:state IS NULL OR state = :state)
  AND {include:task_filter}
ORDER BY id DESC
LIMIT :limit;

-- name: replay_set
-- A fragment: failed tasks go back to pending with attempts reset; history is kept.
state = {to:replay},
attempts = 0,
run_at = :now,
result = NULL,
error = NULL,
failure_reason = NULL,
started_at = NULL,
finished_at = NULL,
{include:drop_lease}
updated_at = :now,
history = json_insert(history, '$[#]', json_object('at', json(:at), 'state', {to:replay},
    'transition', 'replay', 'worker_id', NULL, 'reason', 'replayed'))

-- name: replay
-- Only failed tasks: a state in the filter is ignored (forced to failed).
UPDATE tasks SET {include:replay_set}
WHERE state {from:replay} AND {include:task_filter};

-- name: replay_by_ids
UPDATE tasks SET {include:replay_set}
WHERE id IN (SELECT value FROM json_each(:ids))
  AND state {from:replay} AND {include:task_filter};

-- name: purge
-- Dead letters only, like replay.
DELETE FROM tasks
WHERE state = {to:fail} AND {include:task_filter}
RETURNING id;

-- name: purge_by_ids
DELETE FROM tasks
WHERE id IN (SELECT value FROM json_each(:ids))
  AND state = {to:fail} AND {include:task_filter}
RETURNING id;

-- name: purge_deps
DELETE FROM task_deps WHERE task_id IN (SELECT value FROM json_each(:ids));

-- name: queue_counts
-- From the trigger-kept task_counts (0004_counts.sql): a few rows however many tasks.
SELECT queue, state, sum(n) FROM task_counts WHERE n > 0 GROUP BY queue, state;

-- name: queue_ready_priorities
SELECT queue, priority, n FROM task_counts WHERE state {from:claim} AND n > 0;

-- name: finished_since
SELECT count(*) FROM tasks INDEXED BY tasks_finished WHERE finished_at >= :since;

-- name: data_version
PRAGMA data_version;

-- name: workflow_tasks
-- Every node of one workflow, by the tasks_workflow index.
SELECT * FROM tasks WHERE workflow_id = :workflow_id ORDER BY id;

-- name: flow_all
-- Flow controls (0003_flow_control.sql); a handful of rows, read by every claim.
SELECT kind, name, paused, rate_limit, concurrency, breaker_threshold, breaker_cooldown,
       tokens, refilled_at, failures, breaker, opened_until
FROM flow_controls ORDER BY kind, name;

-- name: flow_claim
-- flow_all plus the running tasks of each key a claim must count (concurrency
-- limits, breakers not closed), by index, in the claim's transaction.
SELECT kind, name, paused, rate_limit, concurrency, breaker_threshold, breaker_cooldown,
       tokens, refilled_at, failures, breaker, opened_until,
       CASE WHEN concurrency IS NULL AND breaker = 'closed' THEN 0
            WHEN kind = 'queue' THEN (SELECT coalesce(sum(n), 0) FROM task_counts
                                      WHERE queue = f.name AND state = {to:claim})
            ELSE (SELECT count(*) FROM tasks INDEXED BY tasks_running_name
                  WHERE name = f.name AND state = {to:claim})
       END
FROM flow_controls AS f;

-- name: flow_get
SELECT kind, name, paused, rate_limit, concurrency, breaker_threshold, breaker_cooldown,
       tokens, refilled_at, failures, breaker, opened_until
FROM flow_controls WHERE kind = :kind AND name = :name;

-- name: flow_breakers
-- Task names with a breaker: only these make an outcome touch flow_controls.
SELECT kind, name, paused, rate_limit, concurrency, breaker_threshold, breaker_cooldown,
       tokens, refilled_at, failures, breaker, opened_until
FROM flow_controls WHERE kind = 'task' AND breaker_threshold IS NOT NULL;

-- name: flow_upsert
INSERT OR REPLACE INTO flow_controls (
    kind, name, paused, rate_limit, concurrency, breaker_threshold, breaker_cooldown,
    tokens, refilled_at, failures, breaker, opened_until
) VALUES (
    :kind, :name, :paused, :rate_limit, :concurrency, :breaker_threshold, :breaker_cooldown,
    :tokens, :refilled_at, :failures, :breaker, :opened_until
);

-- name: flow_delete
DELETE FROM flow_controls WHERE kind = :kind AND name = :name;

-- name: flow_save_state
-- Positional, for executemany: tokens, refilled_at, failures, breaker, opened_until, kind, name.
UPDATE flow_controls SET tokens = ?1, refilled_at = ?2, failures = ?3, breaker = ?4, opened_until = ?5
WHERE kind = ?6 AND name = ?7;

-- name: ready_queues
-- Every queue with ready work (the loose index scan of claim_all).
WITH RECURSIVE claim_queues(value) AS (
    SELECT (SELECT min(queue) FROM tasks INDEXED BY tasks_ready WHERE state {from:claim})
    UNION ALL
    SELECT (SELECT min(queue) FROM tasks INDEXED BY tasks_ready
            WHERE state {from:claim} AND queue > claim_queues.value)
    FROM claim_queues WHERE value IS NOT NULL
)
SELECT value FROM claim_queues WHERE value IS NOT NULL;

-- name: flow_ready_filter
-- A fragment: the ready rows of queue q.value a flow-controlled claim may consider
-- (worker tags as in claim_update; names in :blocked are held by their limits).
t.state {from:claim} AND t.queue = q.value
AND (t.requires = '[]' OR NOT EXISTS (
    SELECT 1 FROM json_each(t.requires) AS r
    WHERE r.value NOT IN (SELECT value FROM json_each(:tags))))
AND t.name NOT IN (SELECT value FROM json_each(:blocked))

-- name: flow_candidates
-- Ready tasks for the flow-controlled claim (sqlite_flow.py): the first :limit of
-- each queue in :queues (a JSON array), by index seeks, so the cost stays flat.
SELECT c.id, c.name, c.queue, c.priority, c.run_at
FROM json_each(:queues) AS q
JOIN tasks AS c ON c.rowid IN (
    SELECT t.rowid FROM tasks AS t INDEXED BY tasks_ready
    WHERE {include:flow_ready_filter}
    ORDER BY t.priority DESC, t.run_at, t.id
    LIMIT :limit);

-- name: flow_candidates_aged
-- The same with priority aging on: the first :limit of each priority level in
-- :levels (a JSON array), since a level's oldest tasks are its most aged. The
-- equality on priority makes each level one index seek.
SELECT c.id, c.name, c.queue, c.priority, c.run_at
FROM json_each(:queues) AS q
JOIN json_each(:levels) AS l
JOIN tasks AS c ON c.rowid IN (
    SELECT t.rowid FROM tasks AS t INDEXED BY tasks_ready
    WHERE {include:flow_ready_filter} AND t.priority = l.value
    ORDER BY t.priority DESC, t.run_at, t.id
    LIMIT :limit);

-- name: task_ahead
-- Pending tasks of the queue before (:priority, :run_at, :id) in claim order.
SELECT count(*) FROM tasks INDEXED BY tasks_ready
WHERE state {from:claim} AND queue = :queue
  AND (priority > :priority
       OR (priority = :priority AND (run_at < :run_at OR (run_at = :run_at AND id < :id))));

-- name: task_names
SELECT id, name FROM tasks WHERE id IN (SELECT value FROM json_each(:ids));

-- name: outbox_unsubscribe_all
DELETE FROM outbox_subscriptions;

-- name: outbox_subscribe
INSERT INTO outbox_subscriptions (event) VALUES (?);

-- name: outbox_claim
-- Leased rows ahead in the index are skipped (as many as deliverers hold: a few batches).
UPDATE outbox SET leased_until = :until, deliveries = deliveries + 1
WHERE id IN (SELECT id FROM outbox WHERE next_at <= :now AND leased_until <= :now
             ORDER BY next_at, id LIMIT :limit)
RETURNING id, event, task_id, workflow_id, queue, name, state, attempt, at, deliveries, done, result, error;

-- name: outbox_drop
DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?));

-- name: outbox_retry
UPDATE outbox SET next_at = ?, leased_until = 0, done = ? WHERE id = ?;

-- name: outbox_size
SELECT count(*) FROM outbox;

-- name: metrics_add
INSERT INTO metric_totals (key, value) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET value = value + excluded.value;

-- name: metrics_read
SELECT key, value FROM metric_totals;

-- name: restore_task
-- task_restore: one exported task exactly as it was (sqlite_rows.restore_row); a
-- stored id or idempotency key makes it a no-op, and then nothing is returned.
INSERT OR IGNORE INTO tasks (
    id, name, args, queue, priority, state, labels, requires, run_at, depends_on,
    idempotency_key, max_retries, timeout, retry, attempts, result, error, failure_reason,
    worker_id, lease_token, lease_expires_at, created_at, started_at, finished_at, updated_at,
    history, workflow_id, workflow_key, headers
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)
RETURNING queue, state, priority;

-- name: bound_set
INSERT INTO queue_bounds (queue, max_length) VALUES (?, ?)
ON CONFLICT (queue) DO UPDATE SET max_length = excluded.max_length;

-- name: bound_drop
DELETE FROM queue_bounds WHERE queue = ?;

-- name: bounds
SELECT queue, max_length FROM queue_bounds;
