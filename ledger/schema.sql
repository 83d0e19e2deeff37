-- The catalog: who may call and under which caps and limits. Source of truth for the Redis mirror.
CREATE SEQUENCE IF NOT EXISTS audit_seq;

CREATE TABLE IF NOT EXISTS teams (
    id VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL UNIQUE,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS developers (
    id VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    email VARCHAR NOT NULL UNIQUE,
    team_id VARCHAR NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMP NOT NULL
);

-- Only the SHA-256 of a key is kept; `display` is its first and last characters.
CREATE TABLE IF NOT EXISTS api_keys (
    id VARCHAR PRIMARY KEY,
    developer_id VARCHAR NOT NULL,
    hash VARCHAR NOT NULL UNIQUE,
    display VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP,
    revoked_at TIMESTAMP
);

-- scope: developer | team | team_member (per-member default of a team) | org (scope_id '').
CREATE TABLE IF NOT EXISTS budgets (
    id VARCHAR PRIMARY KEY,
    scope VARCHAR NOT NULL,
    scope_id VARCHAR NOT NULL,
    period VARCHAR NOT NULL,
    amount_micros BIGINT NOT NULL,
    mode VARCHAR NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (scope, scope_id, period)
);

-- 0 means no limit.
CREATE TABLE IF NOT EXISTS rate_limits (
    scope VARCHAR NOT NULL,
    scope_id VARCHAR NOT NULL,
    rpm BIGINT NOT NULL,
    itpm BIGINT NOT NULL,
    otpm BIGINT NOT NULL,
    concurrency BIGINT NOT NULL,
    PRIMARY KEY (scope, scope_id)
);

CREATE TABLE IF NOT EXISTS admin_audit (
    id BIGINT PRIMARY KEY,
    "at" TIMESTAMP NOT NULL,
    actor VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    target VARCHAR NOT NULL,
    before JSON,
    after JSON
);
