-- A cancel request for a row being sent (`herald cancel`, the admin API,
-- the console): the row cannot be changed under another worker's claim,
-- so the request is a flag the worker honours. A row whose send had not
-- started (handed back, or a transient failure) ends `cancelled` at its
-- finish instead of `pending`; a send already on the wire ends with its
-- real outcome. Set at once on rows cancelled directly, as a record of
-- when.
--
-- Nullable, at the end, ALGORITHM=INSTANT (MariaDB 10.3+, MySQL 8.0.12+):
-- a metadata change only, no row is rewritten. A server without INSTANT
-- fails the statement instead of copying the table.
ALTER TABLE notifications
    ADD COLUMN cancel_requested_at DATETIME(6) NULL,
    ALGORITHM=INSTANT;
