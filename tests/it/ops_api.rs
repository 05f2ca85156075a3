//! The admin API and console against a real database, a real worker
//! process serving them, and real HTTP.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::ops_commands::enqueue_rows;

pub(crate) const TOKEN: &str = "test-token-0123456789abcdef";

pub(crate) fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A worker serving the admin API (with `TOKEN`) on a free port; returns
/// it and the base URL.
async fn admin_worker(db: &TestDb, extra: &[(&str, String)]) -> (WorkerProc, String) {
    let addr = free_addr();
    let mut env = vec![
        ("HERALD_ADMIN_ADDR", addr.clone()),
        ("HERALD_ADMIN_TOKEN", TOKEN.to_owned()),
        ("HERALD_ADMIN_MAX_BODY_BYTES", "65536".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    let w = WorkerProc::spawn(db, &key_prefix(), &env);
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    wait_until("the admin API to answer", Duration::from_secs(20), || {
        let c = client.clone();
        let url = format!("{base}/api/v1/counts");
        async move { c.get(url).send().await.is_ok() }
    })
    .await;
    (w, base)
}

async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {status} {text}")),
    )
}

/// Asserts that a request is refused with `status` and the JSON error
/// `code` (the stable part of the error shape).
async fn expect_error(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &str,
) {
    let (got, answer) = call(method, url, token, body).await;
    assert_eq!(
        (got, answer["error"]["code"].as_str()),
        (status, Some(code)),
        "{url}: {answer}"
    );
}

#[tokio::test]
async fn admin_api_enqueues_lists_retries_cancels_and_guards_itself() {
    require_redis().await;
    let db = TestDb::new().await;
    // No channel is configured for "nowhere", so the worker fails its rows
    // at once: failed rows to retry through the API.
    let (_w, base) = admin_worker(&db, &[]).await;
    let api = format!("{base}/api/v1");
    use reqwest::Method;

    // Authentication: none, wrong, right.
    expect_error(
        Method::GET,
        &format!("{api}/counts"),
        None,
        None,
        401,
        "unauthorized",
    )
    .await;
    expect_error(
        Method::GET,
        &format!("{api}/counts"),
        Some("wrong-token-0123456789"),
        None,
        401,
        "unauthorized",
    )
    .await;
    let (status, body) = call(Method::GET, &format!("{api}/counts"), Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["counts"]["pending"].is_u64(), "{body}");

    // Oversized body: 413 with the JSON error shape, before any parsing.
    let big = vec![b' '; 70_000];
    expect_error(
        Method::POST,
        &format!("{api}/notifications"),
        Some(TOKEN),
        Some(big),
        413,
        "body_too_large",
    )
    .await;
    expect_error(
        Method::POST,
        &format!("{api}/notifications"),
        Some(TOKEN),
        Some(b"{nope".to_vec()),
        400,
        "invalid_json",
    )
    .await;

    // A batch of good and bad items: good ones in, bad ones answered by
    // index with `herald enqueue`'s messages; a repeat is a duplicate.
    let batch = json!([
        {"user_id": 1, "channel": "nowhere", "payload": {"n": 1}, "dedupe_key": "api-1"},
        {"user_id": -5, "channel": "nowhere", "payload": {}},
        {"user_id": 2, "channel": "nowhere", "payload": [1]},
        {"user_id": 3, "channel": "nowhere", "payload": {"n": 3}, "sendat": "2030-01-01T00:00:00Z"},
        {"user_id": 4, "channel": "nowhere", "payload": {"n": 4}, "send_at": "2099-01-01T00:00:00Z"},
    ]);
    let (status, body) = call(
        Method::POST,
        &format!("{api}/notifications"),
        Some(TOKEN),
        Some(batch.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["inserted"].as_u64(), body["rejected"].as_u64()),
        (Some(1), Some(4)),
        "{body}"
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "inserted");
    let first_id = results[0]["id"].as_u64().expect("id of a keyed row");
    assert!(
        results[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("user_id: "),
        "{body}"
    );
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .starts_with("payload: "),
        "{body}"
    );
    assert!(
        results[3]["error"].as_str().unwrap().contains("sendat"),
        "{body}"
    );
    assert!(
        results[4]["error"]
            .as_str()
            .unwrap()
            .starts_with("send_at: "),
        "{body}"
    );
    let one =
        json!({"user_id": 1, "channel": "nowhere", "payload": {"n": 1}, "dedupe_key": "api-1"});
    let (status, body) = call(
        Method::POST,
        &format!("{api}/notifications"),
        Some(TOKEN),
        Some(one.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "duplicate");
    assert_eq!(body["results"][0]["id"], first_id);
    let single = json!({"user_id": 9, "channel": "nowhere", "payload": {"n": 9}});
    let (status, body) = call(
        Method::POST,
        &format!("{api}/notifications"),
        Some(TOKEN),
        Some(single.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let single_id = body["results"][0]["id"].as_u64().expect("id of a lone row");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM notifications").await, 2);

    // The worker fails both (no such channel); the API shows why.
    wait_until("both rows failed", Duration::from_secs(20), || async {
        db.count_status("failed").await == 2
    })
    .await;
    let (status, body) = call(
        Method::GET,
        &format!("{api}/notifications/{single_id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "failed");
    assert!(
        body["last_error"].as_str().unwrap().contains("nowhere"),
        "{body}"
    );
    assert!(body["attempt_history"].is_array());
    expect_error(
        Method::GET,
        &format!("{api}/notifications/424242"),
        Some(TOKEN),
        None,
        404,
        "not_found",
    )
    .await;

    // List with cursor paging.
    let (_, page1) = call(
        Method::GET,
        &format!("{api}/notifications?status=failed&limit=1"),
        Some(TOKEN),
        None,
    )
    .await;
    let cursor = page1["next_cursor"].as_u64().expect("second page");
    let (_, page2) = call(
        Method::GET,
        &format!("{api}/notifications?status=failed&limit=1&cursor={cursor}"),
        Some(TOKEN),
        None,
    )
    .await;
    let seen: HashSet<u64> = [&page1, &page2]
        .iter()
        .map(|p| p["rows"][0]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, HashSet::from([first_id, single_id]));
    expect_error(
        Method::GET,
        &format!("{api}/notifications?status=done"),
        Some(TOKEN),
        None,
        400,
        "invalid_selection",
    )
    .await;
    let (status, _) = call(
        Method::GET,
        &format!("{api}/notifications?bogus=1"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 400);

    // Retry and cancel: an empty selection is refused; dry run changes
    // nothing; a retried row fails again (still no channel), so cancel a
    // far-future one instead.
    expect_error(
        Method::POST,
        &format!("{api}/notifications/retry"),
        Some(TOKEN),
        Some(b"{}".to_vec()),
        400,
        "invalid_selection",
    )
    .await;
    let sel = json!({"status": "failed", "channel": "nowhere", "dry_run": true});
    let (status, body) = call(
        Method::POST,
        &format!("{api}/notifications/retry"),
        Some(TOKEN),
        Some(sel.to_string().into_bytes()),
    )
    .await;
    assert_eq!((status, body["changed"].as_u64()), (200, Some(2)), "{body}");
    assert_eq!(db.count_status("failed").await, 2);
    let sel = json!({"ids": [single_id]});
    let (status, body) = call(
        Method::POST,
        &format!("{api}/notifications/retry"),
        Some(TOKEN),
        Some(sel.to_string().into_bytes()),
    )
    .await;
    assert_eq!(
        (status, body["rows"][0]["outcome"].as_str()),
        (200, Some("retried")),
        "{body}"
    );
    wait_until(
        "the retried row failed again",
        Duration::from_secs(20),
        || async { db.count_status("failed").await == 2 },
    )
    .await;
    let later = json!({"user_id": 77, "channel": "nowhere", "payload": {}, "send_at": "2030-01-01T00:00:00Z"});
    call(
        Method::POST,
        &format!("{api}/notifications"),
        Some(TOKEN),
        Some(later.to_string().into_bytes()),
    )
    .await;
    let sel = json!({"user_id": 77});
    let (status, body) = call(
        Method::POST,
        &format!("{api}/notifications/cancel"),
        Some(TOKEN),
        Some(sel.to_string().into_bytes()),
    )
    .await;
    assert_eq!((status, body["changed"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(db.count_status("cancelled").await, 1);

    // Unknown routes answer the JSON error too.
    expect_error(
        Method::GET,
        &format!("{api}/nope"),
        Some(TOKEN),
        None,
        404,
        "not_found",
    )
    .await;
}

/// `herald admin` (no worker) on a free port with `TOKEN`; killed on drop.
pub(crate) struct AdminProc {
    child: std::process::Child,
    pub(crate) base: String,
}

impl AdminProc {
    pub(crate) async fn start(db: &TestDb) -> AdminProc {
        Self::start_with(db, Some(TOKEN)).await
    }

    /// With `token`, or without one (loopback only).
    pub(crate) async fn start_with(db: &TestDb, token: Option<&str>) -> AdminProc {
        let addr = free_addr();
        let mut cmd = herald(Some(db));
        cmd.args(["admin", "--admin-addr", &addr]);
        match token {
            Some(t) => cmd.env("HERALD_ADMIN_TOKEN", t),
            None => cmd.env_remove("HERALD_ADMIN_TOKEN"),
        };
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://{addr}");
        let url = format!("{base}/api/v1/counts");
        wait_until("herald admin to answer", Duration::from_secs(20), || {
            let url = url.clone();
            async move { reqwest::get(url).await.is_ok() }
        })
        .await;
        AdminProc { child, base }
    }
}

impl Drop for AdminProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn admin_refuses_a_network_address_without_a_token() {
    let out = herald(None)
        .args(["admin", "--admin-addr", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("HERALD_ADMIN_TOKEN") && err.contains("not a loopback"),
        "{err}"
    );
    let out = herald(None)
        .args([
            "admin",
            "--admin-addr",
            "127.0.0.1:0",
            "--admin-token",
            "short",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !text(&out.stderr).contains("short"),
        "the token is never echoed"
    );
}

#[test]
fn openapi_describes_every_route() {
    let raw =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&raw).expect("docs/openapi.yaml parses");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (method, path) in herald::admin::api::ROUTES {
        let op = &doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "docs/openapi.yaml lacks {method} {path}");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
}

/// The console: the dashboard renders, a payload with markup shows as
/// text, a POST without the CSRF token is refused, and the retry button's
/// form retries the row.
#[tokio::test]
async fn console_escapes_database_text_and_guards_its_forms() {
    require_redis().await;
    let db = TestDb::new().await;
    let ids = enqueue_rows(
        &db,
        1,
        "nowhere",
        |_| 5,
        |_| json!({"text": "<script>alert(1)</script>"}),
    )
    .await;
    let id = ids[0];
    db.exec(&format!(
        "UPDATE notifications SET send_at = '2030-01-01', due_at = '2030-01-01', status = 'failed', \
         last_error = '<img src=x onerror=alert(2)>', finished_at = UTC_TIMESTAMP(6) WHERE id = {id}"
    ))
    .await;
    // `herald admin` alone: no worker touches the row meanwhile.
    let admin = AdminProc::start(&db).await;
    let base = admin.base.clone();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Not logged in: to the login page; a wrong token is refused.
    let r = client.get(format!("{base}/console")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let r = client
        .post(format!("{base}/console/login"))
        .form(&[("token", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{base}/console/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();

    let dash = client
        .get(format!("{base}/console"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(dash.status(), 200);
    let html = dash.text().await.unwrap();
    assert!(
        html.contains("Latest failures") && html.contains("<svg"),
        "dashboard"
    );
    assert!(
        !html.contains("<img src=x"),
        "last_error escaped on the dashboard"
    );
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));

    let page = client
        .get(format!("{base}/console/notifications/{id}"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>alert(1)</script>"),
        "payload escaped"
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF field")
        .to_owned();

    // Without the token, with a wrong one, or from another origin: refused.
    let retry_url = format!("{base}/console/notifications/{id}/retry");
    for (form_token, origin) in [
        ("", None),
        ("00", None),
        (csrf.as_str(), Some("http://evil.example")),
    ] {
        let mut req = client
            .post(&retry_url)
            .header("cookie", &session)
            .form(&[("csrf", form_token)]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        assert_eq!(req.send().await.unwrap().status(), 403);
    }
    assert_eq!(db.count_status("failed").await, 1);
    let r = client
        .post(&retry_url)
        .header("cookie", &session)
        .header("origin", base.clone())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        db.count_status("pending").await,
        1,
        "retried from the console"
    );
}
