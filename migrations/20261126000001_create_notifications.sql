-- The notifications table is a contract: other services INSERT rows here
-- directly. Every column is documented in README.md ("The table contract").
-- Works on MariaDB 10.6+ and MySQL 8.0+.
CREATE TABLE IF NOT EXISTS notifications (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    user_id      BIGINT UNSIGNED NOT NULL,
    channel      VARCHAR(64)     NOT NULL,
    region       VARCHAR(32)     NOT NULL DEFAULT 'default',
    -- JSON: MySQL validates natively, MariaDB adds CHECK (JSON_VALID(payload)).
    payload      JSON            NOT NULL,
    -- Binary collation: keys differing only in case are different keys.
    dedupe_key   VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    send_at      DATETIME(6)     NOT NULL,
    -- When the row is next eligible: send_at at first, moved forward by
    -- retries, and set to lease_until while a worker holds the claim so one
    -- index serves both "pending and due" and "sending with an expired lease".
    due_at       DATETIME(6)     NOT NULL,
    expires_at   DATETIME(6)     NULL,
    status       ENUM('pending','sending','sent','failed','expired','cancelled') NOT NULL DEFAULT 'pending',
    attempts     INT UNSIGNED    NOT NULL DEFAULT 0,
    claim_token  BINARY(16)      NULL,
    claimed_by   VARCHAR(128)    NULL,
    lease_until  DATETIME(6)     NULL,
    last_error   VARCHAR(1024)   NULL,
    finished_at  DATETIME(6)     NULL,
    created_at   DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at   DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_notifications_dedupe (dedupe_key),
    -- Covering index of the candidate query: region, status, due time, id
    -- (then user_id so per-user locking needs no row lookup).
    KEY ix_notifications_due (region, status, due_at, id, user_id),
    -- Cleanup: finished rows, oldest first. Deliberately without status:
    -- finished_at only changes once (at the final write), so claiming a row
    -- never touches this index.
    KEY ix_notifications_finished (finished_at),
    -- Per-user lookups in schedule order. send_at, not due_at: due_at moves
    -- on every claim and retry, and each move would rewrite this index too.
    KEY ix_notifications_user (user_id, send_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;
