-- The one table the worker shares with the backend, on PostgreSQL: what SQLAlchemy creates
-- for the backend's model (String -> VARCHAR, Text -> TEXT, Integer -> INTEGER, DateTime ->
-- TIMESTAMP WITHOUT TIME ZONE, holding UTC). Run by the worker at start only when the table
-- is missing (`include_str!` in src/store/postgres/schema.rs; it takes an advisory lock, so
-- two workers starting together create it once), never to alter a table it found.
--
-- The backend's table may differ: extra columns, a surrogate key, a native ENUM for status,
-- UUID for request_id, TIMESTAMP WITH TIME ZONE. The worker needs the columns below and a
-- unique key on request_id alone, checks for both at start, and writes each column in the
-- type it has.
CREATE TABLE provision_requests (
  request_id     VARCHAR(128) PRIMARY KEY,
  user_id        VARCHAR(256) NOT NULL,
  gpu_count      INTEGER NOT NULL,
  duration_hours INTEGER NOT NULL,
  -- pending -> provisioning -> completed | failed; completed and failed are final.
  status         VARCHAR(32) NOT NULL DEFAULT 'pending',
  -- Secret (holds a token): never log it.
  kubeconfig     TEXT,
  error_message  TEXT,
  -- UTC, as SQLAlchemy's DateTime stores datetime.utcnow().
  created_at     TIMESTAMP WITHOUT TIME ZONE NOT NULL,
  updated_at     TIMESTAMP WITHOUT TIME ZONE NOT NULL
);
