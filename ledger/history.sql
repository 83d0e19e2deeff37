-- Usage history: one row per request, plus the rollups the reports read.
--
-- Written only by the rollup job (ledger/rollup.py), which inserts a batch of requests and adds
-- the same batch to both rollups in one transaction. All times are UTC (naive TIMESTAMP/DATE).
--
-- No secondary indexes: DuckDB answers range and group-by queries from its per-row-group min/max
-- (zonemaps), and rows arrive in roughly `ts` order, so a time filter skips most of the table.
-- Dashboard reports read the rollups (thousands of rows, not millions); only the request log and
-- raw exports scan `requests`.

CREATE TABLE IF NOT EXISTS requests (
    id VARCHAR PRIMARY KEY,          -- the gateway's request id: settles exactly once
    ts TIMESTAMP NOT NULL,           -- when the request started: decides its budget periods
    developer_id VARCHAR NOT NULL,
    team_id VARCHAR NOT NULL,
    key_id VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    provider VARCHAR NOT NULL,
    status INTEGER NOT NULL,         -- HTTP status from the provider (or meterd's 502/504)
    stream BOOLEAN NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_write_5m BIGINT NOT NULL,
    cache_write_1h BIGINT NOT NULL,
    cache_read BIGINT NOT NULL,
    web_search BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    -- What the cache reads would have cost at the input rate minus what they cost, priced with
    -- the admin's price table when the request was rolled up (µ$).
    cache_saved_micros BIGINT NOT NULL,
    price_row VARCHAR NOT NULL,
    price_version VARCHAR NOT NULL,
    priced BOOLEAN NOT NULL,         -- false: an unknown model priced at the fallback row
    latency_ms INTEGER NOT NULL,
    ttfb_ms INTEGER NOT NULL,        -- -1 when no byte came back
    estimated BOOLEAN NOT NULL,      -- output estimated: the stream ended before its usage
    error_type VARCHAR NOT NULL,     -- '' when the request succeeded
    service_tier VARCHAR NOT NULL,
    speed VARCHAR NOT NULL,
    inference_geo VARCHAR NOT NULL,
    session_id VARCHAR NOT NULL,     -- Claude Code headers; '' when absent
    agent_id VARCHAR NOT NULL,
    parent_agent_id VARCHAR NOT NULL,
    request_class VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL
);
-- Columns added after the first release, so a ledger made by an older meterd gains them (the
-- rollup writes every column; DuckDB cannot add a NOT NULL column IF NOT EXISTS).
-- The project a request was for (the billing-group tag of its body), '' when none.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS project VARCHAR DEFAULT '';
-- The provider's request id (its `request-id` header), '' when none: what Claude Code's
-- telemetry names the request by.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS upstream_request_id VARCHAR DEFAULT '';
-- What refused a request the gateway turned away, '' for one it let through (ledger/settlement.py).
ALTER TABLE requests ADD COLUMN IF NOT EXISTS refusal VARCHAR DEFAULT '';

-- day × developer × team × model. Kept when raw rows are purged.
CREATE TABLE IF NOT EXISTS usage_daily (
    day DATE NOT NULL,
    developer_id VARCHAR NOT NULL,
    team_id VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    estimated BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_write_5m BIGINT NOT NULL,
    cache_write_1h BIGINT NOT NULL,
    cache_read BIGINT NOT NULL,
    web_search BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    cache_saved_micros BIGINT NOT NULL,
    PRIMARY KEY (day, developer_id, team_id, model)
);

-- day × Claude Code session (× its developer and team; session '' = requests without the
-- header), so cost per session stays fast at millions of requests and survives the purge of
-- raw rows. No model: a session's model mix is in `requests`.
CREATE TABLE IF NOT EXISTS usage_sessions (
    day DATE NOT NULL,
    session_id VARCHAR NOT NULL,
    developer_id VARCHAR NOT NULL,
    team_id VARCHAR NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    estimated BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_write_5m BIGINT NOT NULL,
    cache_write_1h BIGINT NOT NULL,
    cache_read BIGINT NOT NULL,
    web_search BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    cache_saved_micros BIGINT NOT NULL,
    PRIMARY KEY (day, session_id, developer_id, team_id)
);

-- day × project (× developer and team; project '' = requests without the billing-group
-- tag), for reports by project.
CREATE TABLE IF NOT EXISTS usage_projects (
    day DATE NOT NULL,
    project VARCHAR NOT NULL,
    developer_id VARCHAR NOT NULL,
    team_id VARCHAR NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    estimated BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_write_5m BIGINT NOT NULL,
    cache_write_1h BIGINT NOT NULL,
    cache_read BIGINT NOT NULL,
    web_search BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    cache_saved_micros BIGINT NOT NULL,
    PRIMARY KEY (day, project, developer_id, team_id)
);

-- A ledger from before projects: its requests named none, so they are the '' rows, taken
-- from usage_daily once (usage_projects is empty only then; a new ledger has no usage either).
INSERT INTO usage_projects
SELECT day, '' AS project, developer_id, team_id, sum(requests), sum(errors), sum(estimated),
       sum(input_tokens), sum(output_tokens), sum(cache_write_5m), sum(cache_write_1h),
       sum(cache_read), sum(web_search), sum(cost_micros), sum(cache_saved_micros)
FROM usage_daily
WHERE NOT EXISTS (SELECT 1 FROM usage_projects)
GROUP BY day, developer_id, team_id;

-- Per gateway key: requests, spend and the start of its last request, added by the rollup in
-- the batch's transaction (so the hot path writes nothing for it, and it survives the purge
-- of raw rows). Seeded once from `requests` for a ledger from before it.
CREATE TABLE IF NOT EXISTS key_usage (
    key_id VARCHAR PRIMARY KEY,
    requests BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    last_used_at TIMESTAMP NOT NULL
);
INSERT INTO key_usage
SELECT key_id, count(*), CAST(sum(cost_micros) AS BIGINT), max(ts) FROM requests
WHERE NOT EXISTS (SELECT 1 FROM key_usage)
GROUP BY key_id;

-- The highest `rolled_until` the rollup published (ledger.rollup) after a run that committed:
-- a Redis whose own is lower came back as an older copy of itself (ledger.rewind).
CREATE TABLE IF NOT EXISTS rollup_watermark (
    id INTEGER PRIMARY KEY,
    rolled_until BIGINT NOT NULL
);
