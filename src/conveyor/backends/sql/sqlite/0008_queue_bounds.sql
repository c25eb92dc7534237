-- Queue bounds set at run time (PATCH /queues/{name} {"max_length": N}). Submitters
-- read them, with their config's, and the enqueue enforces them as it does those.
CREATE TABLE queue_bounds (queue TEXT PRIMARY KEY, max_length INTEGER NOT NULL) WITHOUT ROWID;
