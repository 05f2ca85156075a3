//! The console in a real headless browser (Debian's chromium driven over
//! the DevTools protocol, see `browser`): sign in with the token, pages
//! render with database text escaped, and the Retry and Cancel buttons,
//! clicked with the mouse, change the row in the database. Also the
//! generator of docs/console.png.

use serde_json::json;

use crate::browser::{chromium_available, Browser};
use crate::helpers::*;
use crate::ops_api::{AdminProc, TOKEN};
use crate::ops_commands::enqueue_rows;

/// Signs in on the login page the console redirects to, as a person does:
/// types the token and clicks "Sign in".
async fn sign_in(b: &mut Browser, base: &str) {
    b.goto(&format!("{base}/console")).await;
    assert_eq!(
        b.url().await,
        format!("{base}/console/login"),
        "not signed in: to the login page"
    );
    b.type_into("input[name=token]", TOKEN).await;
    b.click_and_wait("form[action='/console/login'] button")
        .await;
    assert_eq!(b.url().await, format!("{base}/console"), "signed in");
}

async fn row(db: &TestDb, id: u64) -> (String, i64) {
    let status = sqlx::query_scalar::<_, String>("SELECT status FROM notifications WHERE id = ?")
        .bind(id)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let attempts = db
        .scalar(&format!(
            "SELECT CAST(attempts AS SIGNED) FROM notifications WHERE id = {id}"
        ))
        .await;
    (status, attempts)
}

/// Sign in, open a failed row from the dashboard's failure list, click
/// Retry: the row is pending again with a fresh set of attempts. Open a
/// pending row, click Cancel: it is cancelled. Markup from the database
/// shows as text and never runs.
#[tokio::test]
async fn console_buttons_retry_and_cancel_in_a_real_browser() {
    if !chromium_available("console_buttons_retry_and_cancel_in_a_real_browser") {
        return;
    }
    let db = TestDb::new().await;
    let ids = enqueue_rows(
        &db,
        3,
        "sms",
        |i| 1000 + i,
        |_| json!({"text": "<script>document.title='pwned'</script>"}),
    )
    .await;
    let (failed, pending) = (ids[0], ids[1]);
    db.exec(&format!(
        "UPDATE notifications SET status = 'failed', attempts = 8, finished_at = UTC_TIMESTAMP(6), \
         last_error = 'HTTP 503 from https://sms.example/hook: <b>upstream busy</b>' WHERE id = {failed}"
    ))
    .await;
    // Not due for years: nothing but the button changes it (no worker runs).
    db.exec(&format!(
        "UPDATE notifications SET send_at = '2030-01-01', due_at = '2030-01-01' WHERE id > {failed}"
    ))
    .await;
    let admin = AdminProc::start(&db).await;
    let base = admin.base.clone();
    let mut b = Browser::launch(1280, 900).await;
    sign_in(&mut b, &base).await;

    // The dashboard: the chart is drawn, the failure's reason is text.
    let dash = b
        .eval(
            "({svg: !!document.querySelector('svg'), \
              bold: !!document.querySelector('td.err b'), \
              text: document.body.innerText})",
        )
        .await;
    assert_eq!(dash["svg"], json!(true), "the chart is there");
    assert_eq!(dash["bold"], json!(false), "last_error is not markup");
    assert!(
        dash["text"]
            .as_str()
            .unwrap()
            .contains("<b>upstream busy</b>"),
        "last_error shown as text: {dash}"
    );

    // From the failure list to the row's page, by clicking its id.
    b.click_and_wait(&format!("td a[href='/console/notifications/{failed}']"))
        .await;
    assert_eq!(
        b.url().await,
        format!("{base}/console/notifications/{failed}")
    );
    let title = b.eval("document.title").await;
    assert!(
        title.as_str().unwrap().starts_with("Notification"),
        "the payload's script did not run: {title}"
    );
    let payload = b
        .eval("document.getElementById('payload').textContent")
        .await;
    assert!(payload.as_str().unwrap().contains("<script>"), "{payload}");

    b.click_and_wait("#retry").await;
    assert!(
        b.url()
            .await
            .starts_with(&format!("{base}/console/notifications/{failed}?done=")),
        "back on the row's page"
    );
    let flash = b.eval("document.querySelector('.flash').textContent").await;
    assert!(flash.as_str().unwrap().starts_with("retry:"), "{flash}");
    assert_eq!(row(&db, failed).await, ("pending".to_owned(), 0));
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM notifications WHERE id = {failed} AND due_at <= UTC_TIMESTAMP(6)"
        ))
        .await,
        1,
        "due now"
    );

    b.goto(&format!("{base}/console/notifications/{pending}"))
        .await;
    b.click_and_wait("#cancel").await;
    let flash = b.eval("document.querySelector('.flash').textContent").await;
    assert!(flash.as_str().unwrap().starts_with("cancel:"), "{flash}");
    assert_eq!(row(&db, pending).await.0, "cancelled");
    assert_eq!(row(&db, ids[2]).await.0, "pending", "only the clicked row");
}

/// Rows that look like an hour of real traffic: deliveries in waves on
/// three channels, a handful of failures with their reasons, a due
/// backlog, scheduled, cancelled and expired rows.
async fn screenshot_fixture(db: &TestDb) {
    let n = 1600;
    let ids = enqueue_rows(
        db,
        n,
        "webhook",
        |i| 1000 + (i * 37) % 500,
        |i| json!({"text": format!("Your order #{} has shipped", 5000 + i)}),
    )
    .await;
    let (first, sent_end) = (ids[0], ids[1500]);
    // Finished `offset` seconds ago, spread so the per-minute rate rises
    // and falls in three waves (the offset's slope is 1 + 0.6 cos).
    db.exec(&format!(
        "UPDATE notifications SET channel = ELT(1 + id % 4, 'webhook', 'email', 'sms', 'webhook'), \
         status = 'sent', attempts = 1 + (id % 11 = 0), \
         finished_at = UTC_TIMESTAMP(6) - INTERVAL ROUND(3500 * ((id - {first}) / 1500 \
           + 0.6 * SIN(6 * PI() * (id - {first}) / 1500) / (6 * PI())) + id % 29) SECOND \
         WHERE id < {sent_end}"
    ))
    .await;
    let failed_end = sent_end + 12;
    db.exec(&format!(
        "UPDATE notifications SET channel = ELT(1 + id % 3, 'webhook', 'email', 'sms'), \
         status = 'failed', attempts = 8, \
         finished_at = UTC_TIMESTAMP(6) - INTERVAL (id - {sent_end}) * 97 SECOND, \
         last_error = ELT(1 + id % 5, \
           'HTTP 503 Service Unavailable from https://hooks.acme.example/notify (8 attempts)', \
           'timed out after 10 s waiting for https://hooks.acme.example/notify', \
           'HTTP 410 Gone: the endpoint was removed', \
           'connection refused: push.internal.example:8443', \
           'HTTP 400 Bad Request: {{\"error\":\"invalid recipient\"}}') \
         WHERE id >= {sent_end} AND id < {failed_end}"
    ))
    .await;
    db.exec(&format!(
        "UPDATE notifications SET channel = ELT(1 + id % 3, 'webhook', 'email', 'sms'), \
         send_at = UTC_TIMESTAMP(6) - INTERVAL (id % 50) SECOND, \
         due_at = UTC_TIMESTAMP(6) - INTERVAL (id % 50) SECOND \
         WHERE id >= {failed_end}"
    ))
    .await;
    db.exec(&format!(
        "UPDATE notifications SET send_at = UTC_TIMESTAMP(6) + INTERVAL (id % 120) MINUTE, \
         due_at = UTC_TIMESTAMP(6) + INTERVAL (id % 120) MINUTE WHERE id >= {failed_end} AND id % 3 = 0"
    ))
    .await;
    db.exec(&format!(
        "UPDATE notifications SET status = IF(id % 2 = 0, 'cancelled', 'expired'), \
         finished_at = UTC_TIMESTAMP(6) WHERE id >= {failed_end} AND id % 7 = 1"
    ))
    .await;
}

/// Writes docs/console.png: `cargo test --test it console_screenshot -- --ignored`.
#[tokio::test]
#[ignore = "writes docs/console.png; run by hand"]
async fn console_screenshot() {
    assert!(chromium_available("console_screenshot"));
    let db = TestDb::new().await;
    screenshot_fixture(&db).await;
    let admin = AdminProc::start(&db).await;
    let mut b = Browser::launch(1280, 900).await;
    sign_in(&mut b, &admin.base).await;
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console.png"));
    b.screenshot(path).await;
    assert!(std::fs::metadata(path).unwrap().len() > 10_000);
}
