-- Claude Code's OpenTelemetry, one row per metric data point, log event or span, stamped with
-- the developer and team the proxy authenticated (proxy/telemetry.py, ledger/telemetry.py).
-- (stream_id, seq) is the record's place in the Redis stream: a rollup rerun skips what it has.
CREATE TABLE IF NOT EXISTS telemetry (
    stream_id VARCHAR NOT NULL,
    seq INTEGER NOT NULL,
    received TIMESTAMP NOT NULL,    -- when the proxy took it (the stream id's time, UTC)
    ts TIMESTAMP NOT NULL,          -- the record's own time (UTC)
    developer_id VARCHAR NOT NULL,
    team_id VARCHAR NOT NULL,
    signal VARCHAR NOT NULL,        -- metric | log | span
    name VARCHAR NOT NULL,          -- e.g. claude_code.lines_of_code.count, claude_code.api_request
    value DOUBLE,                   -- a data point's value; a span's duration in ms
    cumulative BOOLEAN NOT NULL DEFAULT false,  -- a cumulative sum (else delta or gauge)
    session_id VARCHAR NOT NULL DEFAULT '',
    request_id VARCHAR NOT NULL DEFAULT '',     -- api_request: the provider's request id
    cost_micros BIGINT,                         -- api_request: Claude Code's cost_usd_micros
    attrs JSON                                  -- the rest: type, decision, tool_name, model, ...
);
