//! The transports against a real HTTP receiver (axum on 127.0.0.1:0) and real files.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{TimeZone, Utc};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use herald::secret::SecretString;
use herald::transport::{
    decode_secret, parse_channels, verify_signature, ChannelKind, ChannelSpec, Delivery,
    FileTransport, LogTransport, RetryCause, SendOutcome, Transport, TransportConfigError,
    TransportSettings, Transports,
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Not plain ASCII and not compactly formatted: proves the payload is embedded verbatim.
const PAYLOAD: &str = r#"{"title": "Grüße",  "n": [1, 2.50]}"#;

// ---------------------------------------------------------------- receiver

#[derive(Debug)]
struct Recorded {
    path: String,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
}

struct Shared {
    tx: mpsc::UnboundedSender<Recorded>,
    /// Bytes the endless-body routes have handed to hyper so far.
    streamed: AtomicU64,
}

struct Receiver {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Recorded>,
    shared: Arc<Shared>,
}

impl Receiver {
    async fn start() -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            tx,
            streamed: AtomicU64::new(0),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Receiver { addr, rx, shared }
    }

    fn url(&self, path: &str) -> url::Url {
        url::Url::parse(&format!("http://{}{path}", self.addr)).unwrap()
    }

    /// Everything recorded so far (the send under test has already returned,
    /// so its request, and any redirect follow-up, is already in the channel).
    fn drain(&mut self) -> Vec<Recorded> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }
}

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let _ = shared.tx.send(Recorded {
        path: path.clone(),
        peer,
        headers,
        body,
    });
    let endless = |status: StatusCode| {
        let shared = shared.clone();
        let stream = futures::stream::repeat_with(move || {
            shared
                .streamed
                .fetch_add(CHUNK.len() as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from_static(&CHUNK))
        });
        (status, Body::from_stream(stream)).into_response()
    };
    match path.as_str() {
        "/ok" => (StatusCode::OK, "ok").into_response(),
        "/unavailable" => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "7")],
            "down for\nmaintenance",
        )
            .into_response(),
        "/unavailable-until" => {
            let at = (Utc::now() + chrono::Duration::seconds(30))
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string();
            (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", at)]).into_response()
        }
        "/throttled" => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
        "/request-timeout" => StatusCode::REQUEST_TIMEOUT.into_response(),
        "/bad" => (StatusCode::BAD_REQUEST, "missing field `to`").into_response(),
        "/gone" => StatusCode::GONE.into_response(),
        "/moved" => (StatusCode::FOUND, [("location", "/ok")]).into_response(),
        "/hang" => std::future::pending().await,
        "/huge-error" => endless(StatusCode::SERVICE_UNAVAILABLE),
        "/huge-ok" => endless(StatusCode::OK),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

// ---------------------------------------------------------------- helpers

fn payload() -> Box<RawValue> {
    RawValue::from_string(PAYLOAD.to_owned()).unwrap()
}

fn delivery<'a>(payload: &'a RawValue, key: &'a str, attempt: u32) -> Delivery<'a> {
    Delivery {
        id: 42,
        user_id: 7,
        channel: "sms",
        payload,
        send_at: Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap(),
        attempt,
        idempotency_key: key,
    }
}

/// A registry with one webhook channel per receiver route.
fn webhooks(rcv: &Receiver, secret: Option<&str>, send_timeout: Duration) -> Transports {
    let routes = [
        "ok",
        "unavailable",
        "unavailable-until",
        "throttled",
        "request-timeout",
        "bad",
        "gone",
        "moved",
        "hang",
        "huge-error",
        "huge-ok",
    ];
    let channels = routes
        .iter()
        .map(|r| format!("{r}=webhook:{}", rcv.url(&format!("/{r}"))))
        .collect::<Vec<_>>()
        .join(",");
    Transports::from_settings(&TransportSettings {
        webhook_secret: secret.map(|s| SecretString::new(s.into())),
        send_timeout,
        channels: parse_channels(&channels).unwrap(),
        ..TransportSettings::default()
    })
    .unwrap()
}

async fn send(t: &Transports, channel: &str) -> SendOutcome {
    let p = payload();
    t.for_channel(channel)
        .unwrap()
        .send(&delivery(&p, "order-42", 1))
        .await
}

fn header<'a>(r: &'a Recorded, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

// ---------------------------------------------------------------- webhook

#[tokio::test]
async fn webhook_2xx_is_sent_signed_with_the_specified_body_and_headers() {
    let mut rcv = Receiver::start().await;
    let t = webhooks(&rcv, Some(SECRET), Duration::from_secs(5));
    assert!(!t.has_unsigned_webhooks());
    let key = decode_secret(&SecretString::new(SECRET.into())).unwrap();
    let p = payload();
    let wh = t.for_channel("ok").unwrap();
    assert_eq!(wh.kind(), "webhook");

    for attempt in [1, 2] {
        let before = Utc::now().timestamp();
        let out = wh.send(&delivery(&p, "order-42", attempt)).await;
        assert_eq!(out, SendOutcome::Sent);
        let got = rcv.drain();
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(r.path, "/ok");
        assert_eq!(header(r, "content-type"), "application/json");
        // Stable over attempts: the receiver's dedupe key.
        assert_eq!(header(r, "webhook-id"), "order-42");
        let ts = header(r, "webhook-timestamp");
        let ts_n: i64 = ts.parse().unwrap();
        assert!((before - 1..=Utc::now().timestamp() + 1).contains(&ts_n));
        let sig = header(r, "webhook-signature");
        assert!(sig.starts_with("v1,"), "{sig}");
        assert!(verify_signature(&key, "order-42", ts, &r.body, sig));
        assert!(!verify_signature(
            b"wrong key",
            "order-42",
            ts,
            &r.body,
            sig
        ));
        assert!(!verify_signature(&key, "order-43", ts, &r.body, sig));

        let text = std::str::from_utf8(&r.body).unwrap();
        assert!(
            text.contains(PAYLOAD),
            "payload not embedded verbatim: {text}"
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let expected = serde_json::json!({
            "id": 42, "user_id": 7, "channel": "sms",
            "payload": serde_json::from_str::<serde_json::Value>(PAYLOAD).unwrap(),
            "send_at": "2030-01-02T03:04:05Z", "attempt": attempt,
        });
        assert_eq!(v, expected);
    }
}

#[tokio::test]
async fn webhook_without_secret_sends_no_signature() {
    let mut rcv = Receiver::start().await;
    let t = webhooks(&rcv, None, Duration::from_secs(5));
    assert!(t.has_unsigned_webhooks());
    assert_eq!(send(&t, "ok").await, SendOutcome::Sent);
    let got = rcv.drain();
    assert_eq!(got.len(), 1);
    assert!(got[0].headers.get("webhook-signature").is_none());
    assert_eq!(header(&got[0], "webhook-id"), "order-42");
}

#[tokio::test]
async fn webhook_classifies_statuses_and_honours_retry_after() {
    let mut rcv = Receiver::start().await;
    let t = webhooks(&rcv, Some(SECRET), Duration::from_secs(5));

    assert_eq!(
        send(&t, "unavailable").await,
        SendOutcome::Transient {
            reason: "HTTP 503: down for maintenance".into(),
            retry_after: Some(Duration::from_secs(7)),
            cause: RetryCause::Error,
        }
    );
    match send(&t, "unavailable-until").await {
        SendOutcome::Transient {
            reason,
            retry_after: Some(after),
            ..
        } => {
            assert_eq!(reason, "HTTP 503 Service Unavailable");
            assert!(
                (Duration::from_secs(25)..=Duration::from_secs(31)).contains(&after),
                "{after:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        send(&t, "throttled").await,
        SendOutcome::Transient {
            reason: "HTTP 429: slow down".into(),
            retry_after: None,
            cause: RetryCause::Throttled,
        }
    );
    assert!(matches!(
        send(&t, "request-timeout").await,
        SendOutcome::Transient {
            cause: RetryCause::Timeout,
            ..
        }
    ));
    assert_eq!(
        send(&t, "bad").await,
        SendOutcome::Permanent {
            reason: "HTTP 400: missing field `to`".into()
        }
    );
    assert_eq!(
        send(&t, "gone").await,
        SendOutcome::Permanent {
            reason: "HTTP 410 Gone".into()
        }
    );
    let before = rcv.drain();
    assert_eq!(before.len(), 6);

    // A redirect is permanent and is not followed: /ok never sees a request.
    assert_eq!(
        send(&t, "moved").await,
        SendOutcome::Permanent {
            reason: "HTTP 302: redirect not followed".into()
        }
    );
    let paths: Vec<String> = rcv.drain().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/moved"]);
}

#[tokio::test]
async fn webhook_timeout_is_transient_and_bounded() {
    let mut rcv = Receiver::start().await;
    let t = webhooks(&rcv, None, Duration::from_millis(300));
    let started = Instant::now();
    let out = send(&t, "hang").await;
    let took = started.elapsed();
    assert_eq!(out, SendOutcome::timeout("timeout after 300ms"));
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(rcv.drain().len(), 1, "the request did reach the receiver");
}

#[tokio::test]
async fn webhook_connection_refused_is_transient() {
    // A port that was just free: bind, note it, close it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let t = Transports::from_settings(&TransportSettings {
        webhook_url: Some(url::Url::parse(&format!("http://{addr}/hook")).unwrap()),
        send_timeout: Duration::from_secs(5),
        ..TransportSettings::default()
    })
    .unwrap();
    match send(&t, "webhook").await {
        SendOutcome::Transient {
            reason,
            retry_after: None,
            cause: RetryCause::Error,
        } => {
            assert!(reason.starts_with("connect: "), "{reason}");
            assert!(reason.to_lowercase().contains("refused"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn webhook_does_not_read_an_endless_response_body() {
    let mut rcv = Receiver::start().await;
    // The bodies never end, so returning before the timeout proves the cap.
    let t = webhooks(&rcv, None, Duration::from_secs(20));
    let started = Instant::now();
    match send(&t, "huge-error").await {
        SendOutcome::Transient { reason, .. } => {
            assert!(reason.starts_with("HTTP 503: xxxx"), "{reason}");
            assert!(
                reason.chars().count() <= "HTTP 503: ".len() + 201,
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(send(&t, "huge-ok").await, SendOutcome::Sent);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(rcv.drain().len(), 2);
    // What the server managed to push is the client's cap plus socket
    // buffers, nowhere near what an uncapped read would have pulled.
    let streamed = rcv.shared.streamed.load(Ordering::Relaxed);
    assert!(streamed < 64 * 1024 * 1024, "{streamed} bytes streamed");
}

#[tokio::test]
async fn webhook_reuses_pooled_connections() {
    let mut rcv = Receiver::start().await;
    let t = webhooks(&rcv, Some(SECRET), Duration::from_secs(5));
    for _ in 0..20 {
        assert_eq!(send(&t, "ok").await, SendOutcome::Sent);
    }
    let peers: HashSet<SocketAddr> = rcv.drain().into_iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 1, "sequential sends opened {peers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_handles_many_concurrent_sends() {
    let mut rcv = Receiver::start().await;
    let t = webhooks(&rcv, Some(SECRET), Duration::from_secs(10));
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move {
                let p = payload();
                let key = format!("k{i}");
                let d = Delivery {
                    id: i,
                    ..delivery(&p, &key, 1)
                };
                t.for_channel("ok").unwrap().send(&d).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), SendOutcome::Sent);
    }
    let ids: HashSet<String> = rcv
        .drain()
        .iter()
        .map(|r| header(r, "webhook-id").to_owned())
        .collect();
    assert_eq!(ids.len(), 200);
}

// ---------------------------------------------------------------- log & file

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn log_transport_writes_one_json_line_per_delivery() {
    let buf = SharedBuf::default();
    let t = LogTransport::to_writer(buf.clone());
    assert_eq!(t.kind(), "log");
    let p = payload();
    assert_eq!(
        t.send(&delivery(&p, "order-42", 3)).await,
        SendOutcome::Sent
    );
    assert_eq!(
        t.send(&delivery(&p, "order-42", 4)).await,
        SendOutcome::Sent
    );
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["id"], 42);
    assert_eq!(v["user_id"], 7);
    assert_eq!(v["channel"], "sms");
    assert_eq!(v["attempt"], 3);
    assert_eq!(v["idempotency_key"], "order-42");
    assert_eq!(v["send_at"], "2030-01-02T03:04:05Z");
    assert_eq!(v["payload"]["title"], "Grüße");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_transport_appends_whole_lines_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    // Two separately opened descriptors behave like two processes: each has
    // its own file offset, so only O_APPEND keeps their lines apart.
    let a: Arc<FileTransport> = Arc::new(FileTransport::open(&path, Duration::ZERO).unwrap());
    let b: Arc<FileTransport> = Arc::new(FileTransport::open(&path, Duration::ZERO).unwrap());
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let t = if task % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                // Payloads of varying size so misplaced writes would show.
                let p = RawValue::from_string(format!(
                    r#"{{"pad":"{}"}}"#,
                    "y".repeat((task as usize) * 300)
                ))
                .unwrap();
                for i in 0..1000u64 {
                    let id = task * 1000 + i;
                    let key = id.to_string();
                    let d = Delivery {
                        id,
                        user_id: task,
                        ..delivery(&p, &key, 1)
                    };
                    assert_eq!(t.send(&d).await, SendOutcome::Sent);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    let mut ids = HashSet::new();
    let now_us = Utc::now().timestamp_micros() as u64;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("malformed line ({e}): {line:.80}"));
        let id = v["id"].as_u64().unwrap();
        assert_eq!(v["key"], id.to_string());
        assert_eq!(v["user_id"], id / 1000);
        assert_eq!(v["attempt"], 1);
        let at = v["at_us"].as_u64().unwrap();
        assert!(at <= now_us && at > now_us - 600_000_000, "{at}");
        assert!(ids.insert(id), "duplicate id {id}");
    }
    assert_eq!(ids.len(), 8000);
    assert_eq!(text.lines().count(), 8000);
}

#[tokio::test]
async fn file_transport_waits_the_simulated_latency() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.jsonl");
    let t = FileTransport::open(&path, Duration::from_millis(100)).unwrap();
    let p = payload();
    let started = Instant::now();
    assert_eq!(t.send(&delivery(&p, "k", 1)).await, SendOutcome::Sent);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
}

// ---------------------------------------------------------------- configuration

#[test]
fn herald_channels_parses_good_entries() {
    let got = parse_channels(
        " sms=webhook:https://sms.internal/hook, audit=file:/var/log/herald-audit.jsonl,dev=log,,\
         alerts=webhook , raw=file",
    )
    .unwrap();
    let want = vec![
        ChannelSpec {
            name: "sms".into(),
            kind: ChannelKind::Webhook {
                url: Some(url::Url::parse("https://sms.internal/hook").unwrap()),
            },
        },
        ChannelSpec {
            name: "audit".into(),
            kind: ChannelKind::File {
                path: Some("/var/log/herald-audit.jsonl".into()),
            },
        },
        ChannelSpec {
            name: "dev".into(),
            kind: ChannelKind::Log,
        },
        ChannelSpec {
            name: "alerts".into(),
            kind: ChannelKind::Webhook { url: None },
        },
        ChannelSpec {
            name: "raw".into(),
            kind: ChannelKind::File { path: None },
        },
    ];
    assert_eq!(got, want);
    assert!(parse_channels("").unwrap().is_empty());
}

#[test]
fn herald_channels_errors_name_the_entry() {
    let e = parse_channels("sms=webhook:https://sms.internal/hook,sms=carrier-pigeon").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"HERALD_CHANNELS: entry 2 "sms=carrier-pigeon": unknown transport "carrier-pigeon" (expected webhook, log, file)"#
    );
    let cases = [
        ("dev", "entry 1 \"dev\": expected name=kind"),
        ("=log", "entry 1 \"=log\": the channel name is empty"),
        (
            "dev=log,a b=log",
            "entry 2 \"a b=log\": channel name contains ' '",
        ),
        ("dev=log:x", "the log transport takes no argument"),
        ("x=webhook:ftp://h/x", "URL scheme must be http or https"),
        (
            "x=webhook:not a url",
            "entry 1 \"x=webhook:not a url\": not a valid URL",
        ),
        ("x=file:", "the file path is empty"),
        (
            "a=log,b=log,a=webhook",
            "entry 3 \"a=webhook\": channel \"a\" is defined twice",
        ),
    ];
    for (input, expected) in cases {
        let msg = parse_channels(input).unwrap_err().to_string();
        assert!(msg.starts_with("HERALD_CHANNELS: "), "{input}: {msg}");
        assert!(msg.contains(expected), "{input}: {msg}");
    }
    // A URL that fails to parse may still carry a password.
    let msg = parse_channels("x=webhook:https://user:hunter2@/x")
        .unwrap_err()
        .to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.contains("https://***@/x"), "{msg}");
}

#[test]
fn registry_defaults_and_unknown_channels() {
    let t = Transports::from_settings(&TransportSettings::default()).unwrap();
    assert_eq!(t.channel_names(), ["log"]);
    assert!(t.for_channel("webhook").is_none());
    assert_eq!(
        t.missing_reason("webhook"),
        "channel \"webhook\" is not configured: HERALD_WEBHOOK_URL is unset"
    );
    assert!(t
        .resolve("file")
        .unwrap_err()
        .contains("HERALD_FILE_PATH is unset"));
    assert_eq!(
        t.resolve("pager").unwrap_err(),
        "unknown channel \"pager\" (configured: log)"
    );
    assert!(!t.has_unsigned_webhooks());
}

#[test]
fn registry_from_settings_with_channels() {
    let dir = tempfile::tempdir().unwrap();
    let file_path = dir.path().join("herald.jsonl");
    let audit_path = dir.path().join("audit.jsonl");
    let s = TransportSettings {
        webhook_url: Some(url::Url::parse("https://hooks.example/in").unwrap()),
        webhook_secret: Some(SecretString::new(SECRET.into())),
        file_path: Some(file_path.clone()),
        channels: parse_channels(&format!(
            "sms=webhook:http://127.0.0.1:9/sms,alerts=webhook,audit=file:{},webhook=log",
            audit_path.display()
        ))
        .unwrap(),
        ..TransportSettings::default()
    };
    assert!(!format!("{s:?}").contains("MfKQ9r8"), "secret in Debug");
    let t = Transports::from_settings(&s).unwrap();
    assert_eq!(
        t.describe(),
        [
            ("alerts", "webhook"),
            ("audit", "file"),
            ("file", "file"),
            ("log", "log"),
            ("sms", "webhook"),
            // Overridden by HERALD_CHANNELS.
            ("webhook", "log"),
        ]
    );
    assert!(audit_path.exists() && file_path.exists());
    assert!(!format!("{t:?}").contains("MfKQ9r8"), "secret in Debug");
}

#[test]
fn registry_rejects_unusable_configuration() {
    let err = |s: TransportSettings| Transports::from_settings(&s).unwrap_err();

    let e = err(TransportSettings {
        channels: parse_channels("sms=webhook").unwrap(),
        ..TransportSettings::default()
    });
    assert_eq!(
        e.to_string(),
        "channel \"sms\": HERALD_CHANNELS gives no webhook argument and HERALD_WEBHOOK_URL is unset"
    );

    let e = err(TransportSettings {
        channels: parse_channels("audit=file").unwrap(),
        ..TransportSettings::default()
    });
    assert!(e.to_string().contains("HERALD_FILE_PATH is unset"), "{e}");

    let e = err(TransportSettings {
        webhook_secret: Some(SecretString::new("whsec_not*base64!".into())),
        ..TransportSettings::default()
    });
    assert!(matches!(e, TransportConfigError::Secret(_)));
    let msg = e.to_string();
    assert!(msg.starts_with("HERALD_WEBHOOK_SECRET: "), "{msg}");
    assert!(!msg.contains("not*base64"), "{msg}");

    let e = err(TransportSettings {
        webhook_url: Some(url::Url::parse("ftp://files.example/x").unwrap()),
        ..TransportSettings::default()
    });
    assert!(e.to_string().starts_with("HERALD_WEBHOOK_URL: "), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let e = err(TransportSettings {
        file_path: Some(dir.path().join("missing-dir").join("x.jsonl")),
        ..TransportSettings::default()
    });
    assert!(matches!(e, TransportConfigError::File { .. }), "{e}");
    assert!(
        e.to_string().starts_with("channel \"file\": cannot open "),
        "{e}"
    );
}
