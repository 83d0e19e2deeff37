-- Claude Code managed settings served at GET /managed/settings: the organization's default
-- (scope 'org', scope_id '') and a policy per team (scope 'team'). Written by ledger/managed.py.
CREATE TABLE IF NOT EXISTS managed_settings (
    scope VARCHAR NOT NULL,
    scope_id VARCHAR NOT NULL,
    uuid VARCHAR NOT NULL,
    settings JSON NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (scope, scope_id)
);
