-- Which models each team may call: the organization's default (scope 'org', scope_id '') and a
-- list per team (scope 'team') that replaces it. No row at all: any model. Written by
-- ledger/models_allowed.py.
CREATE TABLE IF NOT EXISTS allowed_models (
    scope VARCHAR NOT NULL,
    scope_id VARCHAR NOT NULL,
    models VARCHAR[] NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (scope, scope_id)
);
