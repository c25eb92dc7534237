-- Metric totals (MetricStore, conveyor.tally): each worker adds the attempt figures it
-- counted about once a second, and GET /metrics reads them all. One row per series
-- part (a histogram bucket, a sum, a counter); the key is opaque to the engine.
CREATE TABLE metric_totals (key TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID;
