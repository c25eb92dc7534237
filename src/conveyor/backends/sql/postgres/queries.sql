-- Named queries of the PostgreSQL engine, loaded by conveyor.backends.sqlfiles.
--
-- {from:T} is the predicate on the source states of transition T in conveyor.states,
-- {to:T} its target state. Parameters are psycopg's %(name)s. Every transition
-- appends a HistoryEntry to the jsonb "history" array in the same UPDATE; a float8
-- inside jsonb_build_object keeps every digit, so the entry's "at" reads back equal
-- to updated_at. Batches travel as one jsonb array of objects (jsonb_to_recordset):
-- one parameter and one statement, whatever the batch size. Queries that make work
-- ready send pg_notify(%(channel)s, queue) for the waiting workers (delivered at commit).

-- name: drop_lease
-- A fragment for every transition out of "running": the lease and its holder go.
worker_id = NULL,
lease_token = NULL,
lease_expires_at = NULL,

-- name: durable
-- A fragment: whether this transaction's commit waits for its WAL to reach disk
-- (%(durable)s: 'on' or 'off'), whatever the session's synchronous_commit (see the
-- commit option in postgres.py: by default worker-side writes do not wait).
set_config('synchronous_commit', %(durable)s, true)

-- name: make_durable
SELECT {include:durable};

-- name: task_columns
-- A fragment: the columns a new task is built from (see postgres_rows.insert_rows).
id text, name text, args jsonb, queue text, priority integer, state text, labels jsonb,
requires jsonb, run_at float8, depends_on jsonb, idempotency_key text, max_retries integer,
timeout float8, retry text, created_at float8, workflow_id text, workflow_key text,
has_dependents boolean, headers jsonb

-- name: insert_tasks
-- Every task of %(rows)s, then one notification per queue that gained ready or delayed work.
WITH added AS (
    INSERT INTO tasks (
        id, name, args, queue, priority, state, labels, requires, run_at, depends_on,
        idempotency_key, max_retries, timeout, retry, created_at, updated_at, history,
        workflow_id, workflow_key, has_dependents, headers
    )
    SELECT id, name, args, queue, priority, state, labels, requires, run_at, depends_on,
           idempotency_key, max_retries, timeout, retry, created_at, created_at,
           jsonb_build_array(jsonb_build_object('at', created_at, 'state', state,
               'transition', 'enqueue', 'worker_id', NULL, 'reason', NULL)),
           workflow_id, workflow_key, has_dependents, headers
    FROM jsonb_to_recordset(%(rows)s::jsonb) AS x({include:task_columns})
    RETURNING queue, state
)
SELECT count(pg_notify(%(channel)s, q.queue)), {include:durable}
FROM (SELECT DISTINCT queue FROM added WHERE NOT state {from:deps_succeeded}) AS q;

-- name: insert_one
-- One task, the one-by-one submit: copy_tasks' row (postgres_rows.copy_rows) as plain
-- parameters, so the server parses no JSON document for it; then a notification for
-- the queue named after it (NULL: the task waits on others) and the commit mode.
WITH added AS (
    INSERT INTO tasks (
        id, name, args, queue, priority, state, labels, requires, run_at, depends_on,
        idempotency_key, max_retries, timeout, retry, created_at, updated_at, history,
        workflow_id, workflow_key, has_dependents, headers
    ) VALUES (
        %s::text, %s::text, %s::jsonb, %s::text, %s::integer, %s::text, %s::jsonb, %s::jsonb,
        %s::float8, %s::jsonb, %s::text, %s::integer, %s::float8, %s::text, %s::float8, %s::float8,
        %s::jsonb, %s::text, %s::text, %s::boolean, %s::jsonb
    )
), woke AS (
    SELECT pg_notify(%s, w.queue) FROM (SELECT %s::text AS queue) AS w WHERE w.queue IS NOT NULL
)
SELECT (SELECT count(*) FROM woke), set_config('synchronous_commit', %s, true);

-- name: copy_tasks
-- Large batches: the rows of insert_tasks streamed by COPY (postgres_rows.copy_rows,
-- history and updated_at included), then copied_tasks, in one transaction.
COPY tasks (
    id, name, args, queue, priority, state, labels, requires, run_at, depends_on,
    idempotency_key, max_retries, timeout, retry, created_at, updated_at, history,
    workflow_id, workflow_key, has_dependents, headers
) FROM STDIN;

-- name: copied_tasks
-- After copy_tasks: one notification per queue in %(queues)s (those that gained ready
-- or delayed work), and whether the commit waits for the WAL flush.
SELECT count(pg_notify(%(channel)s, q)), {include:durable}
FROM (SELECT DISTINCT unnest(%(queues)s::text[]) AS q) AS s;

-- name: lock_keys
-- Serializes submits that share an idempotency key or a bounded queue (transaction-scoped).
SELECT count(pg_advisory_xact_lock(k))
FROM (SELECT DISTINCT hashtextextended(key, 7) AS k FROM unnest(%(keys)s::text[]) AS key ORDER BY 1) AS s;

-- name: find_idempotent
SELECT t.queue, t.idempotency_key, t.id, t.state
FROM unnest(%(queues)s::text[], %(keys)s::text[]) AS k(queue, key)
JOIN tasks AS t ON t.queue = k.queue AND t.idempotency_key = k.key;

-- name: mark_parents
-- Parents of new tasks: flag them (under their row lock, in id order, so an outcome
-- being written for one waits for this submit, and this submit reads its result).
UPDATE tasks SET has_dependents = true
WHERE id IN (SELECT id FROM tasks WHERE id = ANY(%(ids)s::text[]) ORDER BY id FOR NO KEY UPDATE)
RETURNING id;

-- name: count_unfinished
-- The queue's ready, delayed, running and waiting tasks (every unfinished state), each
-- by its own partial index and bounded by %(cap)s (max_length + 1), so a full queue
-- costs no more.
SELECT (SELECT count(*) FROM (SELECT 1 FROM tasks WHERE queue = %(queue)s AND state {from:claim}
                              LIMIT %(cap)s) AS a)
     + (SELECT count(*) FROM (SELECT 1 FROM tasks WHERE queue = %(queue)s AND state {from:due}
                              LIMIT %(cap)s) AS b)
     + (SELECT count(*) FROM (SELECT 1 FROM tasks WHERE queue = %(queue)s AND state = {to:claim}
                              LIMIT %(cap)s) AS c)
     + (SELECT count(*) FROM (SELECT 1 FROM tasks WHERE queue = %(queue)s AND state {from:deps_succeeded}
                              LIMIT %(cap)s) AS d);

-- name: insert_deps
INSERT INTO task_deps (depends_on, task_id)
SELECT * FROM unnest(%(parents)s::text[], %(children)s::text[])
ON CONFLICT DO NOTHING;

-- name: deps_check_new
-- New waiting tasks in %(ids)s whose dependencies already finished: (id, verdict),
-- verdict 'failed' if one can never succeed, 'ready' if all succeeded.
SELECT task_id, verdict FROM (
    SELECT d.task_id,
           CASE WHEN bool_or(p.state {from:terminal} AND p.state <> {to:complete}) THEN 'failed'
                WHEN bool_and(p.state = {to:complete}) THEN 'ready'
           END AS verdict
    FROM task_deps AS d JOIN tasks AS p ON p.id = d.depends_on
    WHERE d.task_id = ANY(%(ids)s::text[])
    GROUP BY d.task_id
) AS s WHERE verdict IS NOT NULL;

-- name: mark_ready
UPDATE tasks SET
    state = {to:deps_succeeded},
    updated_at = %(now)s,
    history = history || jsonb_build_array(jsonb_build_object('at', %(now)s::float8,
        'state', {to:deps_succeeded}, 'transition', 'deps_succeeded', 'worker_id', NULL, 'reason', NULL))
WHERE id = ANY(%(ids)s::text[]) AND state {from:deps_succeeded}
RETURNING id, queue;

-- name: dependency_lost
-- A fragment: the reason a waiting task can never run, naming the dependency.
(SELECT 'dependency ' || p.id || ' ' || p.state
 FROM task_deps AS d JOIN tasks AS p ON p.id = d.depends_on
 WHERE d.task_id = tasks.id AND p.state {from:terminal} AND p.state <> {to:complete}
 ORDER BY p.id LIMIT 1)

-- name: mark_dependency_failed
UPDATE tasks SET
    state = {to:dependency_failed},
    failure_reason = 'dependency_failed',
    finished_at = %(now)s,
    updated_at = %(now)s,
    history = history || jsonb_build_array(jsonb_build_object('at', %(now)s::float8,
        'state', {to:dependency_failed}, 'transition', 'dependency_failed', 'worker_id', NULL,
        'reason', {include:dependency_lost}))
WHERE id = ANY(%(ids)s::text[]) AND state {from:dependency_failed}
RETURNING id;

-- name: lock_dependents
-- The waiting dependents of %(ids)s, locked in id order before they are settled: two
-- parents finishing at once then settle a shared child one after the other, and the
-- second sees the first's outcome (its next statement takes a fresh snapshot).
SELECT id FROM tasks
WHERE id IN (SELECT task_id FROM task_deps WHERE depends_on = ANY(%(ids)s::text[]))
  AND state {from:deps_succeeded}
ORDER BY id
FOR NO KEY UPDATE;

-- name: deps_succeeded
-- Waiting dependents of %(ids)s whose every dependency succeeded.
UPDATE tasks SET
    state = {to:deps_succeeded},
    updated_at = %(now)s,
    history = history || jsonb_build_array(jsonb_build_object('at', %(now)s::float8,
        'state', {to:deps_succeeded}, 'transition', 'deps_succeeded', 'worker_id', NULL, 'reason', NULL))
WHERE id IN (SELECT task_id FROM task_deps WHERE depends_on = ANY(%(ids)s::text[]))
  AND state {from:deps_succeeded}
  AND NOT EXISTS (
      SELECT 1 FROM task_deps AS d LEFT JOIN tasks AS p ON p.id = d.depends_on
      WHERE d.task_id = tasks.id AND (p.state IS NULL OR p.state <> {to:complete}))
RETURNING id, queue;

-- name: deps_failed
-- Waiting dependents of %(ids)s that can never run; the caller repeats it down the graph.
UPDATE tasks SET
    state = {to:dependency_failed},
    failure_reason = 'dependency_failed',
    finished_at = %(now)s,
    updated_at = %(now)s,
    history = history || jsonb_build_array(jsonb_build_object('at', %(now)s::float8,
        'state', {to:dependency_failed}, 'transition', 'dependency_failed', 'worker_id', NULL,
        'reason', {include:dependency_lost}))
WHERE id IN (SELECT task_id FROM task_deps WHERE depends_on = ANY(%(ids)s::text[]))
  AND state {from:dependency_failed}
RETURNING id;

-- name: notify_queues
SELECT count(pg_notify(%(channel)s, q)) FROM (SELECT DISTINCT unnest(%(queues)s::text[]) AS q) AS s;

-- name: due_entry
-- A fragment: the history entry of transition "due" at %(now)s.
jsonb_build_object('at', %(now)s::float8, 'state', {to:due}, 'transition', 'due',
    'worker_id', NULL, 'reason', NULL)

-- name: claim_entry
-- A fragment: the history entry of transition "claim".
jsonb_build_object('at', %(now)s::float8, 'state', {to:claim}, 'transition', 'claim',
    'worker_id', %(worker_id)s::text, 'reason', NULL)

-- name: claim_set
-- A fragment: what a claim writes to tasks AS t. A delayed task that fell due is
-- promoted and claimed in the same write: both transitions go into its history.
state = {to:claim},
attempts = t.attempts + 1,
worker_id = %(worker_id)s,
lease_token = gen_random_uuid()::text,  -- fresh per task and attempt
lease_expires_at = %(expires)s,
started_at = %(now)s,
updated_at = %(now)s,
history = t.history || CASE WHEN t.state {from:claim} THEN jsonb_build_array({include:claim_entry})
                            ELSE jsonb_build_array({include:due_entry}, {include:claim_entry}) END

-- name: claim_returning
-- A fragment: the columns a claim hands back (postgres_rows.claimed_from_row).
RETURNING t.id, t.name, t.args, t.queue, t.priority, t.attempts, t.max_retries, t.timeout,
          t.retry, t.run_at, t.created_at, t.labels, t.lease_token, t.workflow_id, t.headers

-- name: worker_can_run
-- A fragment: the task's required tags are a subset of the worker's (%(tags)s, a jsonb array).
(t.requires = '[]'::jsonb OR t.requires <@ %(tags)s::jsonb)

-- name: claim_body
-- A fragment, after a "claim_queues(name)" CTE naming the queues to take from (and
-- "due_queues", the same or every queue): the whole plain claim in one statement.
--
-- {limit} is the batch size as a literal (postgres_ops.shaped_sql): with a parameter
-- there, PostgreSQL's cached generic plan would sort a whole queue, so it plans each
-- call afresh (half the cost of a claim); with a literal, each batch size gets one
-- cached plan that walks the index and stops.
--
-- due: delayed tasks whose time has come (every queue), locked. ready: per queue,
-- the first {limit} pending rows of the tasks_ready index (skipping rows another
-- claim holds), plus the due rows of those queues; picked: the best {limit}. The
-- picked rows are leased (due ones promoted and leased in one write), the other due
-- rows promoted to pending. Nothing is picked when flow controls exist: the caller
-- then runs the controlled claim (postgres_flow.py) on the promoted rows. The last
-- row (id NULL) carries when the next delayed task falls due and whether flow
-- controls exist, so a claim is one round trip whatever it finds.
due AS MATERIALIZED (
    SELECT id, queue, priority, run_at, requires FROM tasks
    WHERE state {from:due} AND run_at <= %(now)s
    ORDER BY run_at LIMIT 10000
    FOR UPDATE SKIP LOCKED
), ready AS MATERIALIZED (
    SELECT c.id, c.priority, c.run_at FROM claim_queues AS q
    CROSS JOIN LATERAL (
        SELECT t.id, t.priority, t.run_at FROM tasks AS t
        WHERE t.state {from:claim} AND t.queue = q.name AND {include:worker_can_run}
        ORDER BY t.priority DESC, t.run_at, t.id
        LIMIT {limit}
        FOR UPDATE SKIP LOCKED
    ) AS c
    UNION ALL
    SELECT t.id, t.priority, t.run_at FROM due AS t
    WHERE t.queue IN (SELECT name FROM due_queues) AND {include:worker_can_run}
), picked AS MATERIALIZED (
    SELECT id FROM ready
    WHERE NOT EXISTS (SELECT 1 FROM flow_controls)
    ORDER BY priority DESC, run_at, id
    LIMIT {limit}
), promoted AS (
    UPDATE tasks AS t SET
        state = {to:due},
        updated_at = %(now)s,
        history = t.history || jsonb_build_array({include:due_entry})
    FROM due
    WHERE t.id = due.id AND t.id NOT IN (SELECT id FROM picked)
    RETURNING t.id
), claimed AS (
    UPDATE tasks AS t SET {include:claim_set}
    FROM picked WHERE t.id = picked.id
    {include:claim_returning}
)
SELECT *, NULL::float8, NULL::boolean FROM claimed
UNION ALL
SELECT NULL::text, NULL::text, NULL::jsonb, NULL::text, NULL::integer, NULL::integer, NULL::integer,
       NULL::float8, NULL::text, NULL::float8, NULL::float8, NULL::jsonb, NULL::text, NULL::text, NULL::jsonb,
       (SELECT min(x.run_at) FROM claim_queues AS q
        CROSS JOIN LATERAL (
            SELECT run_at FROM tasks WHERE state {from:due} AND queue = q.name AND run_at > %(now)s
            ORDER BY run_at LIMIT 1) AS x),
       EXISTS (SELECT 1 FROM flow_controls)

-- name: claim_queues
-- The plain claim from the queues {queues} lists: a VALUES row per queue, one parameter
-- each, not an array, so that one cached plan serves every claim (postgres_ops.shaped_sql).
WITH claim_queues(name) AS (VALUES {queues}),
due_queues(name) AS (SELECT name FROM claim_queues),
{include:claim_body};

-- name: ready_queues_cte
-- A fragment: every queue with ready work, found by a loose index scan of tasks_ready.
ready_queues(name) AS (
    (SELECT queue FROM tasks WHERE state {from:claim} ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT queue FROM tasks WHERE state {from:claim} AND queue > r.name ORDER BY queue LIMIT 1)
    FROM ready_queues AS r WHERE r.name IS NOT NULL
)

-- name: claim_all
-- The plain claim from every queue (a worker started without --queues). Its next-due
-- time looks at every queue with delayed work (another loose index scan).
WITH RECURSIVE {include:ready_queues_cte},
delayed_queues(name) AS (
    (SELECT queue FROM tasks WHERE state {from:due} ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT queue FROM tasks WHERE state {from:due} AND queue > d.name ORDER BY queue LIMIT 1)
    FROM delayed_queues AS d WHERE d.name IS NOT NULL
),
claim_queues(name) AS (
    SELECT name FROM ready_queues WHERE name IS NOT NULL
    UNION SELECT name FROM delayed_queues WHERE name IS NOT NULL
),
due_queues(name) AS (SELECT DISTINCT queue FROM due),
{include:claim_body};

-- name: claim_ids
-- The flow-controlled claim: lease the tasks in %(ids)s that are still pending.
UPDATE tasks AS t SET {include:claim_set}
WHERE t.id = ANY(%(ids)s::text[]) AND t.state {from:claim}
{include:claim_returning};

-- name: outcome_columns
-- A fragment: one outcome (postgres_rows.outcome_rows).
id text, token text, kind text, result jsonb, error jsonb, run_at float8, reason text,
at float8, worker_id text

-- name: outcome_state
-- A fragment: the state an outcome of kind v.kind leads to.
CASE v.kind WHEN 'complete' THEN {to:complete} WHEN 'retry' THEN {to:retry} ELSE {to:fail} END

-- name: outcome_update
-- A fragment: write the outcomes of v to tasks AS t while their lease holds. The
-- planner cannot see how many rows jsonb_to_recordset yields; t.id = ANY(%(ids)s)
-- makes it find the tasks by primary key instead of hashing a scan of the table
-- (release and heartbeat do the same).
UPDATE tasks AS t SET
    state = {include:outcome_state},
    result = CASE WHEN v.kind = 'complete' THEN v.result ELSE t.result END,
    error = CASE WHEN v.kind = 'complete' THEN NULL ELSE v.error END,
    run_at = CASE WHEN v.kind = 'retry' THEN v.run_at ELSE t.run_at END,
    failure_reason = CASE WHEN v.kind = 'fail' THEN v.reason ELSE t.failure_reason END,
    finished_at = CASE WHEN v.kind = 'retry' THEN t.finished_at ELSE v.at END,
    updated_at = v.at,
    {include:drop_lease}
    history = t.history || jsonb_build_array(jsonb_build_object('at', v.at,
        'state', {include:outcome_state}, 'transition', v.kind,
        'worker_id', coalesce(v.worker_id, t.worker_id),
        'reason', CASE v.kind WHEN 'retry' THEN (v.error ->> 'type') || ': ' || (v.error ->> 'message')
                              WHEN 'fail' THEN v.reason END))
FROM jsonb_to_recordset(%(rows)s::jsonb) AS v({include:outcome_columns})
WHERE t.id = ANY(%(ids)s::text[]) AND t.id = v.id AND t.lease_token = v.token
  AND CASE v.kind WHEN 'complete' THEN t.state {from:complete}
                  WHEN 'retry' THEN t.state {from:retry}
                  ELSE t.state {from:fail} END

-- name: finish_fast
-- One statement for the common case: outcomes of tasks nobody depends on and whose
-- name has no breaker. The rest come back unwritten for finish_slow's transaction.
WITH done AS (
    {include:outcome_update}
      AND NOT t.has_dependents
      AND NOT EXISTS (SELECT 1 FROM flow_controls AS f
                      WHERE f.kind = 'task' AND f.name = t.name AND f.breaker_threshold IS NOT NULL)
    RETURNING t.id, v.token, t.state, t.queue
), woke AS (
    SELECT pg_notify(%(channel)s, q.queue) FROM (SELECT DISTINCT queue FROM done WHERE state = {to:retry}) AS q
)
SELECT d.id, d.token, (SELECT count(*) FROM woke) FROM done AS d;

-- name: finish_slow
{include:outcome_update}
RETURNING t.id, t.state, t.name, t.has_dependents, t.queue, v.token;

-- name: release
UPDATE tasks AS t SET
    state = {to:release},
    attempts = greatest(t.attempts - v.refund, 0),
    {include:drop_lease}
    updated_at = %(now)s,
    history = t.history || jsonb_build_array(jsonb_build_object('at', %(now)s::float8,
        'state', {to:release}, 'transition', 'release', 'worker_id', %(worker_id)s::text,
        'reason', %(reason)s::text))
FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(id text, token text, refund integer)
WHERE t.id = ANY(%(ids)s::text[]) AND t.id = v.id AND t.lease_token = v.token AND t.state {from:release}
RETURNING t.queue;

-- name: reap_expired
-- A lapsed lease counts as an attempt: back to pending, or failed when none are left.
-- (MATERIALIZED: the locked, limited selection runs once, never rescanned per row.)
WITH lapsed AS MATERIALIZED (
    SELECT id, lease_expires_at FROM tasks
    WHERE state {from:lease_expired} AND lease_expires_at < %(now)s
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t SET
    state = CASE WHEN t.attempts > t.max_retries THEN {to:lease_expired_final}
                 ELSE {to:lease_expired} END,
    failure_reason = CASE WHEN t.attempts > t.max_retries THEN 'retries_exhausted'
                          ELSE t.failure_reason END,
    error = CASE WHEN t.attempts > t.max_retries THEN jsonb_build_object('type', 'LeaseExpired',
                     'message', 'lease of worker ' || coalesce(t.worker_id, '?')
                                || ' expired on attempt ' || t.attempts,
                     'traceback', NULL, 'retryable', true)
                 ELSE t.error END,
    finished_at = CASE WHEN t.attempts > t.max_retries THEN %(now)s ELSE t.finished_at END,
    {include:drop_lease}
    updated_at = %(now)s,
    history = t.history || jsonb_build_array(jsonb_build_object('at', %(now)s::float8,
        'state', CASE WHEN t.attempts > t.max_retries THEN {to:lease_expired_final}
                      ELSE {to:lease_expired} END,
        'transition', CASE WHEN t.attempts > t.max_retries THEN 'lease_expired_final'
                           ELSE 'lease_expired' END,
        'worker_id', t.worker_id, 'reason', 'lease expired'))
FROM lapsed AS s
WHERE t.id = s.id AND t.state {from:lease_expired} AND t.lease_expires_at < %(now)s
RETURNING t.id, t.state, t.queue, s.lease_expires_at;

-- name: cancel
UPDATE tasks SET
    state = {to:cancel},
    finished_at = %(now)s,
    updated_at = %(now)s,
    {include:drop_lease}
    history = history || jsonb_build_array(jsonb_build_object('at', %(now)s::float8,
        'state', {to:cancel}, 'transition', 'cancel', 'worker_id', NULL, 'reason', %(reason)s::text))
WHERE id = %(id)s AND state {from:cancel}
RETURNING *;

-- name: get_task
SELECT * FROM tasks WHERE id = %(id)s;

-- name: task_state
SELECT state FROM tasks WHERE id = %(id)s;

-- name: heartbeat
-- Touch the registry row and extend the leases still held; returns the (id, token) pairs extended.
WITH touched AS (
    UPDATE workers SET state = %(state)s, active = %(active)s, processed = %(processed)s,
        last_heartbeat_at = %(now)s
    WHERE id = %(worker_id)s
    RETURNING 1
), extended AS (
    UPDATE tasks AS t SET lease_expires_at = %(expires)s
    FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(id text, token text)
    WHERE t.id = ANY(%(ids)s::text[]) AND t.id = v.id AND t.lease_token = v.token AND t.state = {to:claim}
    RETURNING t.id, v.token
)
SELECT id, token FROM extended;

-- name: worker_upsert
INSERT INTO workers (
    id, host, pid, queues, tags, concurrency, pool, version, state, active, processed,
    started_at, last_heartbeat_at
) VALUES (
    %(id)s, %(host)s, %(pid)s, %(queues)s::jsonb, %(tags)s::jsonb, %(concurrency)s, %(pool)s, %(version)s,
    %(state)s, %(active)s, %(processed)s, %(started_at)s, %(last_heartbeat_at)s
)
ON CONFLICT (id) DO UPDATE SET
    host = excluded.host, pid = excluded.pid, queues = excluded.queues, tags = excluded.tags,
    concurrency = excluded.concurrency, pool = excluded.pool, version = excluded.version,
    state = excluded.state, active = excluded.active, processed = excluded.processed,
    started_at = excluded.started_at, last_heartbeat_at = excluded.last_heartbeat_at;

-- name: worker_offline
UPDATE workers SET state = 'offline', active = 0 WHERE id = %(id)s;

-- name: worker_list
SELECT * FROM workers ORDER BY id;

-- name: task_filter
-- A fragment, included by listings, replay and purge: NULL matches everything.
(%(queue)s::text IS NULL OR queue = %(queue)s::text)
AND (%(name)s::text IS NULL OR name = %(name)s::text)
AND (%(label)s::text IS NULL OR labels @> jsonb_build_array(%(label)s::text))
AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))

-- name: list_tasks
-- Newest first, by a backward range scan on the primary key.
SELECT * FROM tasks
WHERE (%(cursor)s::text IS NULL OR id < %(cursor)s::text)
  AND (%(state)s::text IS NULL OR state = %(state)s::text)
  AND {include:task_filter}
ORDER BY id DESC
LIMIT %(limit)s;

-- name: replay
-- Only failed tasks: a state in the filter is ignored (forced to failed).
UPDATE tasks SET
    state = {to:replay},
    attempts = 0,
    run_at = %(now)s,
    result = NULL,
    error = NULL,
    failure_reason = NULL,
    started_at = NULL,
    finished_at = NULL,
    {include:drop_lease}
    updated_at = %(now)s,
    history = history || jsonb_build_array(jsonb_build_object('at', %(now)s::float8,
        'state', {to:replay}, 'transition', 'replay', 'worker_id', NULL, 'reason', 'replayed'))
WHERE state {from:replay} AND {include:task_filter}
RETURNING queue;

-- name: purge
-- Dead letters only, like replay; their DAG edges go with them.
WITH gone AS (
    DELETE FROM tasks WHERE state = {to:fail} AND {include:task_filter}
    RETURNING id
), edges AS (
    DELETE FROM task_deps WHERE task_id IN (SELECT id FROM gone)
)
SELECT count(*) FROM gone;

-- name: queue_counts
-- From the counts the triggers of migration 0004 keep (a few rows, whatever the backlog).
SELECT queue, state, sum(n)::bigint FROM task_counts GROUP BY queue, state HAVING sum(n) <> 0;

-- name: queue_ready_priorities
SELECT queue, priority, sum(n)::bigint FROM task_counts WHERE state {from:claim}
GROUP BY queue, priority HAVING sum(n) <> 0;

-- name: finished_since
SELECT count(*) FROM tasks WHERE finished_at >= %(since)s;

-- name: workflow_tasks
SELECT * FROM tasks WHERE workflow_id = %(workflow_id)s ORDER BY id;

-- name: flow_columns
-- A fragment: a control row as postgres_flow.control_from_row reads it.
kind, name, paused, rate_limit, concurrency, breaker_threshold, breaker_cooldown,
tokens, refilled_at, failures, breaker, opened_until

-- name: flow_all
SELECT {include:flow_columns} FROM flow_controls ORDER BY kind, name;

-- name: flow_lock
-- Serializes flow-controlled claims cluster-wide for the rest of the transaction.
SELECT count(*) FROM (SELECT 1 FROM flow_controls ORDER BY kind, name FOR UPDATE) AS s;

-- name: flow_claim
-- The controls and the running tasks of each key a claim must count (concurrency
-- limits, breakers not closed). Read after flow_lock, so the counts include every
-- claim that committed before this one got the lock. Running tasks are few (the
-- workers' capacity), so counting them by the leases index stays cheap.
SELECT {include:flow_columns},
       CASE WHEN concurrency IS NULL AND breaker = 'closed' THEN 0
            WHEN kind = 'queue' THEN (SELECT count(*) FROM tasks
                                      WHERE state = {to:claim} AND queue = f.name)
            ELSE (SELECT count(*) FROM tasks WHERE state = {to:claim} AND name = f.name)
       END
FROM flow_controls AS f;

-- name: flow_get
SELECT {include:flow_columns} FROM flow_controls WHERE kind = %(kind)s AND name = %(name)s FOR UPDATE;

-- name: flow_breakers
-- Breakers of the task names in %(names)s, locked for the outcome's transaction.
SELECT {include:flow_columns} FROM flow_controls
WHERE kind = 'task' AND breaker_threshold IS NOT NULL AND name = ANY(%(names)s::text[])
ORDER BY name
FOR UPDATE;

-- name: flow_upsert
INSERT INTO flow_controls (
    kind, name, paused, rate_limit, concurrency, breaker_threshold, breaker_cooldown,
    tokens, refilled_at, failures, breaker, opened_until
) VALUES (
    %(kind)s, %(name)s, %(paused)s, %(rate_limit)s, %(concurrency)s, %(breaker_threshold)s,
    %(breaker_cooldown)s, %(tokens)s, %(refilled_at)s, %(failures)s, %(breaker)s, %(opened_until)s
)
ON CONFLICT (kind, name) DO UPDATE SET
    paused = excluded.paused, rate_limit = excluded.rate_limit, concurrency = excluded.concurrency,
    breaker_threshold = excluded.breaker_threshold, breaker_cooldown = excluded.breaker_cooldown,
    tokens = excluded.tokens, refilled_at = excluded.refilled_at, failures = excluded.failures,
    breaker = excluded.breaker, opened_until = excluded.opened_until;

-- name: flow_delete
DELETE FROM flow_controls WHERE kind = %(kind)s AND name = %(name)s;

-- name: flow_save_state
UPDATE flow_controls AS f SET tokens = v.tokens, refilled_at = v.refilled_at, failures = v.failures,
    breaker = v.breaker, opened_until = v.opened_until
FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(kind text, name text, tokens float8, refilled_at float8,
    failures integer, breaker text, opened_until float8)
WHERE f.kind = v.kind AND f.name = v.name;

-- name: ready_queues
-- Every queue with ready work (one index seek per queue).
WITH RECURSIVE {include:ready_queues_cte}
SELECT name FROM ready_queues WHERE name IS NOT NULL;

-- name: flow_ready_filter
-- A fragment: the ready rows of queue q.name a flow-controlled claim may consider
-- (worker tags as in the plain claim; names in %(blocked)s are held by their limits).
t.state {from:claim} AND t.queue = q.name AND {include:worker_can_run}
AND NOT (t.name = ANY(%(blocked)s::text[]))

-- name: flow_candidates
-- Ready tasks for the flow-controlled claim: the first %(limit)s of each queue, by index.
SELECT c.id, c.name, c.queue, c.priority, c.run_at
FROM unnest(%(queues)s::text[]) AS q(name)
CROSS JOIN LATERAL (
    SELECT t.id, t.name, t.queue, t.priority, t.run_at FROM tasks AS t
    WHERE {include:flow_ready_filter}
    ORDER BY t.priority DESC, t.run_at, t.id
    LIMIT %(limit)s
) AS c;

-- name: flow_candidates_aged
-- The same with priority aging on: the first %(limit)s of each priority level, since a
-- level's oldest tasks are its most aged (one index seek per queue and level).
SELECT c.id, c.name, c.queue, c.priority, c.run_at
FROM unnest(%(queues)s::text[]) AS q(name)
CROSS JOIN unnest(%(levels)s::integer[]) AS l(level)
CROSS JOIN LATERAL (
    SELECT t.id, t.name, t.queue, t.priority, t.run_at FROM tasks AS t
    WHERE {include:flow_ready_filter} AND t.priority = l.level
    ORDER BY t.priority DESC, t.run_at, t.id
    LIMIT %(limit)s
) AS c;

-- name: task_ahead
-- Pending tasks of the queue before (priority, run_at, id) in claim order.
SELECT count(*) FROM tasks
WHERE state {from:claim} AND queue = %(queue)s
  AND (priority > %(priority)s
       OR (priority = %(priority)s AND (run_at < %(run_at)s OR (run_at = %(run_at)s AND id < %(id)s))));

-- name: wait_queues
-- What task_wait needs: when the next delayed task of the queues {queues} lists falls
-- due (see postgres_ops.shaped_sql), and whether ready work is there for a plain
-- claim (no flow controls) to take.
WITH wait_queues(name) AS (VALUES {queues})
SELECT (SELECT min(x.run_at) FROM wait_queues AS q
        CROSS JOIN LATERAL (
            SELECT run_at FROM tasks WHERE state {from:due} AND queue = q.name
            ORDER BY run_at LIMIT 1) AS x),
       EXISTS (SELECT 1 FROM wait_queues AS q
               WHERE EXISTS (SELECT 1 FROM tasks WHERE state {from:claim} AND queue = q.name))
       AND NOT EXISTS (SELECT 1 FROM flow_controls);

-- name: wait_all
SELECT (SELECT run_at FROM tasks WHERE state {from:due} ORDER BY run_at LIMIT 1),
       EXISTS (SELECT 1 FROM tasks WHERE state {from:claim})
       AND NOT EXISTS (SELECT 1 FROM flow_controls);

-- name: restore_tasks
-- task_restore: exported tasks exactly as they were (postgres_rows.restore_rows), with
-- no lease token; a stored id or idempotency key skips the task (ON CONFLICT with no
-- target covers both). An INSERT: counted by 0004's trigger, never seen by the outbox's.
INSERT INTO tasks (
    id, name, args, queue, priority, state, labels, requires, run_at, depends_on,
    idempotency_key, max_retries, timeout, retry, attempts, result, error, failure_reason,
    worker_id, lease_expires_at, created_at, started_at, finished_at, updated_at, history,
    workflow_id, workflow_key, headers
)
SELECT id, name, args, queue, priority, state, labels, requires, run_at, depends_on,
       idempotency_key, max_retries, timeout, retry, attempts, result, error, failure_reason,
       worker_id, lease_expires_at, created_at, started_at, finished_at, updated_at, history,
       workflow_id, workflow_key, headers
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(
    id text, name text, args jsonb, queue text, priority integer, state text, labels jsonb,
    requires jsonb, run_at float8, depends_on jsonb, idempotency_key text, max_retries integer,
    timeout float8, retry text, attempts integer, result jsonb, error jsonb, failure_reason text,
    worker_id text, lease_expires_at float8, created_at float8, started_at float8,
    finished_at float8, updated_at float8, history jsonb, workflow_id text, workflow_key text,
    headers jsonb)
ON CONFLICT DO NOTHING
RETURNING id, queue, state;

-- name: restore_links
-- Link the restored waiting tasks in %(ids)s to their stored, unfinished parents and
-- flag those, as a submit does. The parents are locked first, in id order (as
-- mark_parents): a parent whose outcome was being written is read as it committed,
-- so no child is linked to a parent that has just finished.
WITH parents AS MATERIALIZED (
    SELECT id FROM tasks
    WHERE id IN (SELECT jsonb_array_elements_text(depends_on) FROM tasks WHERE id = ANY(%(ids)s::text[]))
      AND NOT state {from:terminal}
    ORDER BY id
    FOR NO KEY UPDATE
), links AS (
    INSERT INTO task_deps (depends_on, task_id)
    SELECT DISTINCT p.id, c.id
    FROM tasks AS c CROSS JOIN LATERAL jsonb_array_elements_text(c.depends_on) AS d(parent)
    JOIN parents AS p ON p.id = d.parent
    WHERE c.id = ANY(%(ids)s::text[])
    ON CONFLICT DO NOTHING
)
UPDATE tasks SET has_dependents = true
WHERE id IN (SELECT id FROM parents) AND NOT has_dependents;

-- name: metrics_add
-- MetricStore: every delta in one statement, keys in order (two workers adding the same
-- keys lock them in the same order, so they cannot deadlock).
INSERT INTO metric_totals AS m (key, value)
SELECT * FROM unnest(%(keys)s::text[], %(values)s::float8[])
ON CONFLICT (key) DO UPDATE SET value = m.value + excluded.value;

-- name: metrics_read
SELECT key, value FROM metric_totals;

-- name: bound_set
INSERT INTO queue_bounds (queue, max_length) VALUES (%s, %s)
ON CONFLICT (queue) DO UPDATE SET max_length = excluded.max_length;

-- name: bound_drop
DELETE FROM queue_bounds WHERE queue = %s;

-- name: bounds
SELECT queue, max_length FROM queue_bounds;
