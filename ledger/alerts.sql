-- Where alerts go (ledger/alerts.py). `url` is an apprise URL and a secret (it carries tokens
-- and passwords): stored, never shown back in full, never logged. scope 'org' (scope_id '')
-- hears every event; scope 'team' hears its own team's. `events` lists the kinds it wants.
CREATE TABLE IF NOT EXISTS alert_destinations (
    id VARCHAR PRIMARY KEY,
    scope VARCHAR NOT NULL,
    scope_id VARCHAR NOT NULL,
    label VARCHAR NOT NULL,
    url VARCHAR NOT NULL,
    events JSON NOT NULL,
    created_at TIMESTAMP NOT NULL
);

-- Every delivery attempt's outcome: sent, or failed and why.
CREATE SEQUENCE IF NOT EXISTS alert_log_seq;
CREATE TABLE IF NOT EXISTS alert_log (
    id BIGINT PRIMARY KEY,
    "at" TIMESTAMP NOT NULL,
    event VARCHAR NOT NULL,
    dedupe VARCHAR NOT NULL,
    destination_id VARCHAR NOT NULL,
    title VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    attempts INTEGER NOT NULL,
    why VARCHAR NOT NULL
);

-- A cap's own soft thresholds (percent), in place of the org's MTD_THRESHOLDS for that cap.
CREATE TABLE IF NOT EXISTS alert_thresholds (
    budget_id VARCHAR PRIMARY KEY,
    thresholds JSON NOT NULL
);
