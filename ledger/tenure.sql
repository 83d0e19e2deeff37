-- Who belonged to which team when, and what was archived. Runs after schema.sql (file order).
--
-- A developer's team is a history, not a column: each row is one stay in one team from
-- `valid_from` (a day on the organization's calendar, its `timezone`) to the day before
-- `valid_to` (NULL: still there). Requests are attributed to the team of the row that covers
-- their start's day (ledger.periods.day_sql), so spend before a move stays with the old team (ledger/lifecycle.py, and the rollup for requests that were in flight).
CREATE TABLE IF NOT EXISTS memberships (
    developer_id VARCHAR NOT NULL,
    team_id VARCHAR NOT NULL,
    valid_from DATE NOT NULL,
    valid_to DATE,
    PRIMARY KEY (developer_id, valid_from)
);
-- Developers from before memberships: one stay, from the day they were created.
INSERT INTO memberships
SELECT d.id, d.team_id, d.created_at::DATE, NULL FROM developers d
WHERE NOT EXISTS (SELECT 1 FROM memberships m WHERE m.developer_id = d.id);

-- Deleting a developer or team with history archives it: hidden from the lists, kept for the
-- reports, which name it by id.
ALTER TABLE developers ADD COLUMN IF NOT EXISTS archived_at TIMESTAMP;
ALTER TABLE teams ADD COLUMN IF NOT EXISTS archived_at TIMESTAMP;
-- A key's label (what it is for: "laptop", "CI") and who revoked it (an actor as audited).
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS label VARCHAR DEFAULT '';
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS revoked_by VARCHAR DEFAULT '';
