-- Developers signed in through the organization's identity provider (device flow).
-- Written by ledger/signins.py only.

-- The key pairs meterd signs access tokens with (ES256). Only the public halves leave the
-- catalog (in the policy snapshot); the newest key signs.
CREATE TABLE IF NOT EXISTS signing_keys (
    kid VARCHAR PRIMARY KEY,
    private_jwk VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL
);

-- Who a developer is at the identity provider: its subject is stable where emails change.
CREATE TABLE IF NOT EXISTS identities (
    issuer VARCHAR NOT NULL,
    subject VARCHAR NOT NULL,
    developer_id VARCHAR NOT NULL,
    email VARCHAR NOT NULL,
    groups JSON,
    first_seen TIMESTAMP NOT NULL,
    last_seen TIMESTAMP NOT NULL,
    PRIMARY KEY (issuer, subject)
);

-- One row per device sign-in. `id` is the `sid` claim of its access tokens. Only the SHA-256
-- of the current refresh token is kept (the ones rotated away are remembered in Redis, to
-- notice a replayed one: dashboard/oauth.py).
-- `idp_refresh` is the provider's refresh token, used at each refresh to ask the provider
-- whether the developer may still sign in (it is of no use without the client secret).
CREATE TABLE IF NOT EXISTS signins (
    id VARCHAR PRIMARY KEY,
    developer_id VARCHAR NOT NULL,
    issuer VARCHAR NOT NULL,
    subject VARCHAR NOT NULL,
    email VARCHAR NOT NULL,
    refresh_hash VARCHAR NOT NULL,
    idp_refresh VARCHAR,
    surface VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    refreshed_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    access_expires_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP,
    revoked_reason VARCHAR
);

-- Catalogs from before the rotated refresh tokens moved to Redis kept the one before here.
ALTER TABLE signins DROP COLUMN IF EXISTS previous_hash;
