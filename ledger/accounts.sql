-- Who may use the dashboard and the admin API. Written by dashboard/accounts.py only.

-- Local dashboard accounts. `password_hash` is an argon2id PHC string; the password itself is
-- never stored. role: admin (everything) | finance (reads everything, changes nothing).
CREATE TABLE IF NOT EXISTS dashboard_users (
    name VARCHAR PRIMARY KEY,
    role VARCHAR NOT NULL,
    password_hash VARCHAR NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMP NOT NULL,
    password_changed_at TIMESTAMP NOT NULL
);

-- Keys for automation against the admin JSON API. Only the SHA-256 of a key is kept (keys are
-- 256-bit random tokens); `display` is its first and last characters.
-- role: rw (acts as an admin) | ro (reads, like finance).
CREATE TABLE IF NOT EXISTS admin_api_keys (
    id VARCHAR PRIMARY KEY,
    hash VARCHAR NOT NULL UNIQUE,
    role VARCHAR NOT NULL,
    label VARCHAR NOT NULL,
    display VARCHAR NOT NULL,
    created_by VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP
);

-- Signed-in dashboard sessions. The session cookie names a row here; signing out deletes the
-- row, and disabling an account or changing its password deletes all of its rows, so a copied
-- cookie stops working at once on every process that serves this file (re-enabling the
-- account does not bring them back). Rows older than the longest session are pruned.
-- kind: user (an account; subject = its name) | developer (subject = developer id, key_id =
-- the gateway key signed in with) | sso (signed in through the identity provider; subject =
-- the email, and the role, team and developer the group rules gave at that sign-in).
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    subject VARCHAR NOT NULL,
    key_id VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    role VARCHAR NOT NULL DEFAULT '',
    team_id VARCHAR NOT NULL DEFAULT '',
    developer_id VARCHAR NOT NULL DEFAULT ''
);
-- Files made before single sign-on lack the last three columns.
ALTER TABLE dashboard_sessions ADD COLUMN IF NOT EXISTS role VARCHAR DEFAULT '';
ALTER TABLE dashboard_sessions ADD COLUMN IF NOT EXISTS team_id VARCHAR DEFAULT '';
ALTER TABLE dashboard_sessions ADD COLUMN IF NOT EXISTS developer_id VARCHAR DEFAULT '';
