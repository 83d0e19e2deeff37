-- Per-model caps: a cap of one scope and period on the spend of some models only (a family such
-- as 'opus', or model ids and globs). `models_key` is the list in its stored order, joined by
-- commas: one cap per scope, period and model set. Written by ledger/model_caps.py.
CREATE TABLE IF NOT EXISTS model_budgets (
    id VARCHAR PRIMARY KEY,
    scope VARCHAR NOT NULL,
    scope_id VARCHAR NOT NULL,
    period VARCHAR NOT NULL,
    models VARCHAR[] NOT NULL,
    models_key VARCHAR NOT NULL,
    amount_micros BIGINT NOT NULL,
    mode VARCHAR NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (scope, scope_id, period, models_key)
);
