-- Attempt history (what the receiver said on each attempt) and the outcome
-- of the successful attempt on the row itself.
--
-- Both statements are cheap on a large table: CREATE TABLE touches nothing
-- existing, and the new notifications columns are nullable, at the end, and
-- added with ALGORITHM=INSTANT (MariaDB 10.3+, MySQL 8.0.12+), a change to
-- the table's metadata only: no row is rewritten and writers are not blocked
-- beyond the brief metadata lock. Should a server not support INSTANT, the
-- statement fails instead of silently copying the table.
CREATE TABLE IF NOT EXISTS notification_attempts (
    id               BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    notification_id  BIGINT UNSIGNED NOT NULL,
    -- The row's attempt number (1 on the first try).
    attempt          INT UNSIGNED    NOT NULL,
    started_at       DATETIME(6)     NOT NULL,
    duration_ms      INT UNSIGNED    NOT NULL,
    -- sent | retried | failed
    outcome          VARCHAR(16)     NOT NULL,
    -- NULL when no HTTP answer came (timeout, connection error, non-HTTP
    -- transport).
    http_status      SMALLINT UNSIGNED NULL,
    error            VARCHAR(1024)   NULL,
    -- The first <= 1 KiB of the response body, as lossy UTF-8.
    response_body    VARCHAR(1024)   NULL,
    worker_id        VARCHAR(128)    NOT NULL,
    PRIMARY KEY (id),
    -- One notification's history in order; also what cleanup deletes by.
    KEY ix_attempts_notification (notification_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

ALTER TABLE notifications
    ADD COLUMN last_http_status SMALLINT UNSIGNED NULL,
    ADD COLUMN last_duration_ms INT UNSIGNED NULL,
    ALGORITHM=INSTANT;
