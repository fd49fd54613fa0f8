-- The one table the worker shares with the backend. Applied by `Store::open` at every start
-- (`include_str!` in src/store/sqlite/schema.rs), so it only ever creates what is missing.
--
-- The backend (SQLAlchemy) may have created this table first, with extra columns or other
-- declared types (VARCHAR, DATETIME); the worker needs only the columns below, and a unique key
-- on request_id, and checks for both at start instead of altering a table it does not own.
CREATE TABLE IF NOT EXISTS provision_requests (
  request_id     TEXT PRIMARY KEY,
  user_id        TEXT NOT NULL,
  gpu_count      INTEGER NOT NULL,
  duration_hours INTEGER NOT NULL,
  -- pending -> provisioning -> completed | failed; completed and failed are final.
  status         TEXT NOT NULL DEFAULT 'pending',
  -- Secret (holds a token): never log it.
  kubeconfig     TEXT,
  error_message  TEXT,
  -- UTC 'YYYY-MM-DD HH:MM:SS.ffffff', as SQLAlchemy writes DateTime; fixed width, so text order
  -- is time order.
  created_at     TEXT NOT NULL,
  updated_at     TEXT NOT NULL
);
