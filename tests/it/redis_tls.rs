//! `HERALD_REDIS_CA_FILE` against a real TLS `redis-server` whose
//! certificate is signed by a private CA made with `openssl` for the test:
//! the usual set-up inside a company, which no setting reached before.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{herald, key_prefix, text, wait_until, TestDb, WorkerProc};
use crate::redis_procs::free_port;

/// A CA and a server certificate for 127.0.0.1 / localhost signed by it.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            text(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Herald test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// `redis-server` serving TLS only, killed on drop.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    fn start(dir: &Path) -> TlsRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .current_dir(dir)
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", "srv.pem", "--tls-key-file", "srv.key"])
            .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "TLS redis-server did not start (built without TLS?)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { port, child }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn readyz(addr: &str) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
    Some((r.status().as_u16(), r.text().await.ok()?))
}

#[tokio::test]
async fn a_private_ca_file_lets_workers_lock_on_a_tls_redis() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let redis = TlsRedis::start(dir.path());
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let ca = dir.path().join("ca.pem").display().to_string();
    let db = TestDb::new().await;
    db.exec(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) \
         VALUES (1, 'log', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .await;

    // Without the CA the certificate is refused, and /readyz says so.
    let addr = format!("127.0.0.1:{}", free_port());
    let w = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &[
            ("HERALD_REDIS_URLS", url.clone()),
            ("HERALD_HTTP_ADDR", addr.clone()),
        ],
    );
    let mut last = String::new();
    let started = Instant::now();
    while !last.to_lowercase().contains("certificate") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/readyz never named the certificate: {last}\n{}",
            w.logs()
        );
        if let Some((status, body)) = readyz(&addr).await {
            assert_eq!(status, 503, "{body}");
            last = body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(db.count_status("sent").await, 0);
    drop(w);

    // With it, the row goes out.
    let _w = WorkerProc::spawn(
        &db,
        &key_prefix(),
        &[
            ("HERALD_REDIS_URLS", url.clone()),
            ("HERALD_REDIS_CA_FILE", ca.clone()),
        ],
    );
    wait_until(
        "the row sent over TLS locks",
        Duration::from_secs(20),
        || async { db.count_status("sent").await == 1 },
    )
    .await;

    // A CA file that is missing or not PEM is a settings error.
    for (path, expected) in [
        ("/nonexistent/ca.pem".to_owned(), "cannot read"),
        (
            dir.path().join("ext.cnf").display().to_string(),
            "no PEM certificate",
        ),
    ] {
        let out = herald(Some(&db))
            .env("HERALD_REDIS_CA_FILE", &path)
            .arg("status")
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("HERALD_REDIS_CA_FILE") && err.contains(expected),
            "{err}"
        );
    }
}
