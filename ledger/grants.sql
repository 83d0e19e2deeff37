-- Grants: a one-off top-up or temporary raise of a cap, added to it until it expires. `period`
-- NULL raises every cap of the scope (daily, weekly and monthly alike). Rows are kept after
-- expiry or revocation: they are the record of what was granted. Written by ledger/grants.py.
CREATE TABLE IF NOT EXISTS grants (
    id VARCHAR PRIMARY KEY,
    scope VARCHAR NOT NULL,
    scope_id VARCHAR NOT NULL,
    period VARCHAR,
    amount_micros BIGINT NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    reason VARCHAR NOT NULL,
    created_by VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP
);
