-- A developer's request for more budget and what a team lead or admin decided. Written by
-- ledger/increases.py. An approval is the grant `grant_id` (ledger/grants.sql), which ends on its
-- own at `expires_at`.
CREATE TABLE IF NOT EXISTS increase_requests (
    id VARCHAR PRIMARY KEY,
    developer_id VARCHAR NOT NULL,
    team_id VARCHAR NOT NULL,
    period VARCHAR NOT NULL,
    amount_micros BIGINT NOT NULL,
    days INTEGER NOT NULL,
    reason VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    requested_at TIMESTAMP NOT NULL,
    decided_by VARCHAR,
    decided_at TIMESTAMP,
    decision_reason VARCHAR,
    granted_micros BIGINT,
    grant_id VARCHAR,
    expires_at TIMESTAMP
);
