//! Hostile input to the admin API and console (docs/admin-api.md, "Hostile
//! input"): each malformed, oversized, cross-site or misplaced-credential
//! request gets its stable error code (JSON under /api, an HTML page under
//! /console) and changes nothing; the token never shows up in logs,
//! errors, cookies or /metrics.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::ops_api::{free_addr, AdminProc, TOKEN};
use crate::ops_commands::enqueue_rows;

/// One request: method, path (under the base URL, sent as is), headers,
/// body.
struct Req<'a> {
    method: Method,
    path: String,
    headers: Vec<(&'a str, String)>,
    body: Option<Vec<u8>>,
}

fn req(method: Method, path: impl Into<String>) -> Req<'static> {
    Req {
        method,
        path: path.into(),
        headers: Vec::new(),
        body: None,
    }
}

impl<'a> Req<'a> {
    fn header(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    fn json(self, body: impl Into<Vec<u8>>) -> Self {
        let mut r = self.header("content-type", "application/json");
        r.body = Some(body.into());
        r
    }
    fn bearer(self) -> Self {
        self.header("authorization", format!("Bearer {TOKEN}"))
    }
}

/// Sends `r`; returns (status, content type, body text).
async fn send(client: &Client, base: &str, r: Req<'_>) -> (u16, String, String) {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let mut b = client
        .request(r.method, format!("{base}{}", r.path))
        .headers(headers);
    if let Some(body) = r.body {
        b = b.body(body);
    }
    let resp = b.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

/// Asserts a JSON error with `code` and `status`.
async fn expect_json(client: &Client, base: &str, r: Req<'_>, status: u16, code: &str) {
    let what = format!(
        "{} {}",
        r.method,
        r.path.chars().take(80).collect::<String>()
    );
    let (got, ct, body) = send(client, base, r).await;
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|_| panic!("{what}: not JSON ({got} {ct}): {body}"));
    assert_eq!(
        (got, v["error"]["code"].as_str()),
        (status, Some(code)),
        "{what}: {body}"
    );
    assert!(ct.starts_with("application/json"), "{what}: {ct}");
}

/// Asserts an HTML error page with `status`.
async fn expect_page(client: &Client, base: &str, r: Req<'_>, status: u16) {
    let what = format!("{} {}", r.method, r.path);
    let (got, ct, body) = send(client, base, r).await;
    assert_eq!(got, status, "{what}: {body}");
    assert!(ct.starts_with("text/html"), "{what}: {ct} {body}");
    assert!(
        body.contains(&format!("<h1>{status}</h1>")),
        "{what}: {body}"
    );
}

async fn statuses(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT CAST(status AS CHAR) FROM notifications ORDER BY id")
        .fetch_all(db.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn admin_api_answers_hostile_requests_with_stable_codes() {
    let db = TestDb::new().await;
    let ids = enqueue_rows(&db, 2, "sms", |i| 7 + i, |_| json!({"t": "x"})).await;
    db.exec("UPDATE notifications SET send_at = '2030-01-01', due_at = '2030-01-01'")
        .await;
    let before = statuses(&db).await;
    let admin = AdminProc::start(&db).await;
    let base = admin.base.clone();
    let c = Client::new();
    let api = "/api/v1";
    let get = |p: &str| req(Method::GET, format!("{api}{p}")).bearer();
    let post = |p: &str| req(Method::POST, format!("{api}{p}")).bearer();

    // Path ids.
    for id in ["abc", "-1", "1.5", "18446744073709551616", "%FF", "1%00"] {
        expect_json(
            &c,
            &base,
            get(&format!("/notifications/{id}")),
            400,
            "invalid_id",
        )
        .await;
    }
    // Query strings: limits, cursors, numbers, encodings, unknown and
    // repeated parameters.
    for (q, code) in [
        ("limit=100000000", "invalid_selection"),
        ("limit=0", "invalid_selection"),
        ("limit=-1", "invalid_query"),
        ("limit=1e3", "invalid_query"),
        ("cursor=abc", "invalid_query"),
        ("cursor=-5", "invalid_query"),
        ("cursor=184467440737095516160", "invalid_query"),
        ("user_id=99999999999999999999", "invalid_query"),
        ("channel=%FF%FE", "invalid_selection"),
        ("status=sent%00", "invalid_selection"),
        ("since=99999999999999999999d", "invalid_selection"),
        ("order=sideways", "invalid_selection"),
        ("colour=red", "invalid_query"),
        ("limit=1&limit=2", "invalid_query"),
    ] {
        expect_json(&c, &base, get(&format!("/notifications?{q}")), 400, code).await;
    }
    // Bodies: not JSON, not UTF-8, too deep, wrong shapes, unknown
    // fields, bad numbers.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    for body in [
        &b"\xff\xfe{"[..],
        b"",
        b"\"x\"",
        b"{\"user_id\":1,\"channel\":\"l\xffg\"}",
        deep.as_bytes(),
    ] {
        expect_json(
            &c,
            &base,
            post("/notifications").json(body),
            400,
            "invalid_json",
        )
        .await;
    }
    for body in [
        json!({"ids": [ids[0]], "colour": "red"}),
        json!({"ids": [-1]}),
        json!({"ids": [1.5]}),
        json!({"ids": [1], "user_id": 1e20}),
        json!({"ids": [1], "limit": -1}),
        json!({"ids": [1], "dry_run": "yes"}),
        json!({"all": "yes"}),
        json!({}),
    ] {
        expect_json(
            &c,
            &base,
            post("/notifications/retry").json(body.to_string()),
            400,
            "invalid_selection",
        )
        .await;
    }
    for wait in [json!(-1), json!(1e9), json!("10"), json!(121)] {
        let body = json!({"ids": [ids[1]], "wait_s": wait}).to_string();
        expect_json(
            &c,
            &base,
            post("/notifications/cancel").json(body),
            400,
            "invalid_selection",
        )
        .await;
    }
    let (status, _, body) = send(
        &c,
        &base,
        post("/notifications").json(r#"{"user_id":1,"channel":"sms","payload":{},"colour":1}"#),
    )
    .await;
    assert_eq!(status, 422, "an unknown field rejects the item: {body}");
    assert!(body.contains("unknown field \\\"colour\\\""), "{body}");
    // 100,000 items or ids: refused whole, nothing inserted.
    let items = format!("[{}]", vec!["{}"; 100_000].join(","));
    expect_json(
        &c,
        &base,
        post("/notifications").json(items),
        400,
        "too_many_items",
    )
    .await;
    let many: Vec<u64> = (1..=100_000).collect();
    let body = json!({"ids": many}).to_string();
    expect_json(
        &c,
        &base,
        post("/notifications/cancel").json(body),
        400,
        "invalid_selection",
    )
    .await;
    // Cross-site shapes: not JSON, foreign Origin or Referer.
    let cancel = json!({"ids": [ids[1]]}).to_string();
    let mut plain = post("/notifications/cancel").header("content-type", "text/plain");
    plain.body = Some(cancel.clone().into_bytes());
    expect_json(&c, &base, plain, 415, "unsupported_media_type").await;
    for (h, v) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("referer", "http://evil.example/x"),
    ] {
        let r = post("/notifications/cancel")
            .json(cancel.clone())
            .header(h, v);
        expect_json(&c, &base, r, 403, "cross_origin").await;
    }
    // Methods a route does not take.
    expect_json(
        &c,
        &base,
        req(Method::DELETE, format!("{api}/notifications")).bearer(),
        405,
        "method_not_allowed",
    )
    .await;
    expect_json(
        &c,
        &base,
        req(Method::PUT, format!("{api}/counts")).bearer(),
        405,
        "method_not_allowed",
    )
    .await;
    // A token in the URL is refused, even beside a valid header.
    for q in [
        format!("token={TOKEN}"),
        "access_token=x".to_owned(),
        format!("q={TOKEN}"),
        "API_KEY=x".to_owned(),
    ] {
        expect_json(
            &c,
            &base,
            get(&format!("/counts?{q}")),
            400,
            "token_in_query",
        )
        .await;
        let unauthenticated = req(Method::GET, format!("{api}/counts?{q}"));
        expect_json(&c, &base, unauthenticated, 400, "token_in_query").await;
    }

    // The console: error pages, not plain text, for the same mistakes.
    let no_redirect = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = no_redirect
        .post(format!("{base}/console/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = |m: Method, p: &str| req(m, p).header("cookie", session.clone());
    for p in [
        "/console/notifications/abc",
        "/console/notifications/99999999999999999999",
        "/console/notifications?cursor=-1",
        "/console/notifications?user_id=x",
        "/console/search?by=zzz&q=1",
        "/console/search?q=1&q=2",
    ] {
        expect_page(&no_redirect, &base, page(Method::GET, p), 400).await;
    }
    expect_page(
        &no_redirect,
        &base,
        page(Method::POST, "/console/notifications/abc/retry"),
        400,
    )
    .await;
    expect_page(&no_redirect, &base, page(Method::DELETE, "/console"), 405).await;
    expect_page(&no_redirect, &base, page(Method::GET, "/console/nope"), 404).await;
    expect_page(
        &no_redirect,
        &base,
        req(Method::GET, format!("/console?token={TOKEN}")),
        400,
    )
    .await;

    assert_eq!(statuses(&db).await, before, "no request changed a row");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM notifications").await,
        2,
        "nothing enqueued"
    );
}

/// Without a token (loopback only): a page on another site can neither
/// reach the API through DNS rebinding (its Host is refused) nor with a
/// "simple" cross-site POST.
#[tokio::test]
async fn tokenless_admin_refuses_foreign_hosts_and_cross_site_posts() {
    let db = TestDb::new().await;
    let ids = enqueue_rows(&db, 1, "sms", |_| 7, |_| json!({})).await;
    db.exec("UPDATE notifications SET send_at = '2030-01-01', due_at = '2030-01-01'")
        .await;
    let admin = AdminProc::start_with(&db, None).await;
    let base = admin.base.clone();
    let port = base.rsplit(':').next().unwrap().to_owned();
    let c = Client::new();
    let cancel = json!({"ids": [ids[0]]}).to_string();
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_owned(),
        format!("10.1.2.3:{port}"),
    ] {
        let r = req(Method::GET, "/api/v1/counts").header("host", host.clone());
        expect_json(&c, &base, r, 421, "wrong_host").await;
        let r = req(Method::POST, "/api/v1/notifications/cancel")
            .json(cancel.clone())
            .header("host", host.clone());
        expect_json(&c, &base, r, 421, "wrong_host").await;
        let r = req(Method::GET, "/console").header("host", host);
        expect_page(&c, &base, r, 421).await;
    }
    // What a form or `fetch(…, {mode: "no-cors"})` on another site sends
    // (a browser adds its Origin), and the same without an Origin.
    for (origin, status, code) in [
        (Some("http://evil.example"), 403, "cross_origin"),
        (None, 415, "unsupported_media_type"),
    ] {
        let mut plain =
            req(Method::POST, "/api/v1/notifications/cancel").header("content-type", "text/plain");
        if let Some(o) = origin {
            plain = plain.header("origin", o);
        }
        plain.body = Some(cancel.clone().into_bytes());
        expect_json(&c, &base, plain, status, code).await;
    }
    assert_eq!(db.count_status("pending").await, 1, "nothing cancelled");
    // Loopback names are served.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, _, _) = send(
            &c,
            &base,
            req(Method::GET, "/api/v1/counts").header("host", host),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, _, body) = send(
        &c,
        &base,
        req(Method::POST, "/api/v1/notifications/cancel").json(cancel),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(db.count_status("cancelled").await, 1);
}

/// A response's headers and body, as text to search.
async fn record(r: reqwest::Response) -> String {
    let head = format!("{:?}", r.headers());
    format!("{head}\n{}\n", r.text().await.unwrap())
}

/// The token, right or nearly right, given in every wrong place and the
/// right one, shows up in no log line (at trace level), no response (body
/// or header) and not in /metrics.
#[tokio::test]
async fn admin_token_never_in_logs_errors_or_metrics() {
    require_redis().await;
    let db = TestDb::new().await;
    let (admin_addr, http_addr) = (free_addr(), free_addr());
    let w = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &[
            ("HERALD_ADMIN_ADDR", admin_addr.clone()),
            ("HERALD_ADMIN_TOKEN", TOKEN.to_owned()),
            ("HERALD_HTTP_ADDR", http_addr.clone()),
            (
                "HERALD_LOG",
                "debug,herald=trace,axum=trace,hyper=trace".to_owned(),
            ),
        ],
    );
    let base = format!("http://{admin_addr}");
    let c = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    wait_until("the admin API to answer", Duration::from_secs(20), || {
        let c = c.clone();
        let url = format!("{base}/api/v1/counts");
        async move { c.get(url).send().await.is_ok() }
    })
    .await;
    let near = format!("{TOKEN}x");
    let mut seen = String::new();
    for url in [
        format!("{base}/api/v1/counts?token={TOKEN}"),
        format!("{base}/api/v1/counts?q={TOKEN}"),
        format!("{base}/console?access_token={TOKEN}"),
        format!("{base}/api/v1/nope/{TOKEN}"),
        format!("{base}/console/notifications/{TOKEN}"),
    ] {
        seen += &record(c.get(url).bearer_auth(&near).send().await.unwrap()).await;
    }
    for auth in [near.clone(), format!("Basic {TOKEN}"), TOKEN.to_owned()] {
        let r = c
            .get(format!("{base}/api/v1/counts"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        seen += &record(r).await;
    }
    for token in [near.as_str(), TOKEN] {
        let r = c
            .post(format!("{base}/console/login"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        seen += &record(r).await;
    }
    seen += &reqwest::get(format!("http://{http_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        seen.contains("token_in_query") && seen.contains("unauthorized"),
        "{seen}"
    );
    assert!(
        !seen.contains(TOKEN),
        "a response carries the token: {seen}"
    );
    let logs = w.logs();
    assert!(logs.contains("admin API"), "the worker logged: {logs}");
    assert!(!logs.contains(TOKEN), "the logs carry the token");
}
