//! Issue 14: no secret of a URL-bearing setting (nor the webhook secret)
//! appears in help, logs, HTTP answers or errors. One test walks every
//! such setting through all of them, with real credentials that work (a
//! MariaDB user and a Redis ACL user with passwords) so the worker runs and
//! logs at debug level, and with wrong ones so every command fails.

use std::time::Duration;

use crate::helpers::{
    admin_statement_blocking, herald, key_prefix, mysql_server, text, unique, wait_until, TestDb,
    WorkerProc,
};
use crate::redis_procs::{free_port, RedisProc};

/// A MariaDB user with a password, dropped again at the end (also on panic).
struct DbUser {
    name: String,
}

impl DbUser {
    async fn create(db: &TestDb, password: &str) -> DbUser {
        let name = unique("hu");
        db.exec(&format!(
            "CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'"
        ))
        .await;
        db.exec(&format!("GRANT ALL ON `{}`.* TO '{name}'@'%'", db.db.name))
            .await;
        DbUser { name }
    }
}

impl Drop for DbUser {
    fn drop(&mut self) {
        admin_statement_blocking(format!("DROP USER IF EXISTS '{}'@'%'", self.name));
    }
}

#[tokio::test]
async fn no_secret_of_any_url_setting_appears_in_help_logs_http_or_errors() {
    let db = TestDb::new().await;
    let user = DbUser::create(&db, "DbPw7x").await;
    let redis = RedisProc::start_with(&[
        "--user", "default", "off", "--user", "herald", "on", ">RdPw7x", "~*", "&*", "+@all",
    ]);
    let closed = free_port();
    let server = mysql_server().trim_start_matches("mysql://root@");
    // (variable, working value, failing value, the secrets in them)
    let settings: Vec<(&str, String, String, Vec<&str>)> = vec![
        (
            "HERALD_DATABASE_URL",
            format!("mysql://{}:DbPw7x@{server}/{}", user.name, db.db.name),
            format!("mysql://{}:DbPw7xWrong@{server}/{}", user.name, db.db.name),
            vec!["DbPw7x"],
        ),
        (
            "HERALD_REDIS_URLS",
            format!("redis://herald:RdPw7x@127.0.0.1:{}", redis.port),
            format!("redis://herald:RdPw7xWrong@127.0.0.1:{}", redis.port),
            vec!["RdPw7x"],
        ),
        (
            "HERALD_WEBHOOK_URL",
            format!("http://hook:WhPw7x@127.0.0.1:{closed}/in?token=WhTok7x"),
            "http://hook:WhPw7x@exa mple/in?token=WhTok7x".to_owned(),
            vec!["WhPw7x", "WhTok7x"],
        ),
        (
            "HERALD_CHANNELS",
            format!("sms=webhook:http://u:ChPw7x@127.0.0.1:{closed}/sms?token=ChTok7x"),
            "sms=webhook:http://u:ChPw7x@exa mple/sms?token=ChTok7x".to_owned(),
            vec!["ChPw7x", "ChTok7x"],
        ),
        (
            "HERALD_WEBHOOK_SECRET",
            "whsec_U2VjcjN0U2VjcjN0U2VjcjN0".to_owned(),
            "whsec_!!U2VjcjN0!!".to_owned(),
            vec!["U2VjcjN0"],
        ),
    ];
    let all_secrets: Vec<&str> = settings.iter().flat_map(|s| s.3.clone()).collect();
    let assert_clean = |what: &str, shown: &str| {
        for secret in &all_secrets {
            assert!(!shown.contains(secret), "{what} shows {secret:?}:\n{shown}");
        }
    };

    // Help, with every setting in the environment.
    for args in [
        &["--help"][..],
        &["worker", "--help"],
        &["status", "--help"],
    ] {
        let mut cmd = herald(None);
        for (env, good, _, _) in &settings {
            cmd.env(env, good);
        }
        let out = cmd.args(args).output().unwrap();
        assert!(out.status.success());
        assert_clean(&format!("{args:?}"), &text(&out.stdout));
    }

    // Logs and HTTP answers of a worker that uses every setting, at debug
    // level, while deliveries fail (the receivers' port is closed).
    db.exec(
        "INSERT INTO notifications (user_id, channel, payload, send_at, due_at) VALUES \
         (1, 'webhook', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)), \
         (2, 'sms', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut envs: Vec<(&str, String)> = settings
        .iter()
        .filter(|s| s.0 != "HERALD_DATABASE_URL")
        .map(|s| (s.0, s.1.clone()))
        .collect();
    envs.push(("HERALD_LOG", "debug".into()));
    envs.push(("HERALD_HTTP_ADDR", addr.clone()));
    let w = WorkerProc::spawn_on(&settings[0].1, &key_prefix(), &envs);
    wait_until("both rows attempted", Duration::from_secs(20), || async {
        db.scalar("SELECT COUNT(*) FROM notifications WHERE attempts > 0 AND status = 'pending'")
            .await
            == 2
    })
    .await;
    let mut http = String::new();
    for path in ["/readyz", "/metrics", "/livez"] {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        http.push_str(&r.text().await.unwrap());
    }
    assert!(http.contains("herald_retried_total"), "{http}");
    assert_clean("HTTP answers", &http);
    let errors = db
        .scalar("SELECT COUNT(*) FROM notifications WHERE last_error LIKE '%refused%'")
        .await;
    assert_eq!(errors, 2, "the deliveries failed on the closed port");
    let last_errors: Vec<String> = sqlx::query_scalar("SELECT last_error FROM notifications")
        .fetch_all(db.store.pool())
        .await
        .unwrap();
    assert_clean("last_error", &last_errors.join("\n"));
    w.signal("TERM");
    let logs = w.logs();
    assert!(
        logs.contains("worker starting") && logs.contains("DEBUG"),
        "{logs}"
    );
    assert_clean("worker logs", &logs);

    // Errors: each setting in turn with a value that fails.
    for (env, good, bad, _) in &settings {
        for value in [good, bad] {
            let mut cmd = herald(None);
            for (other, v, _, _) in &settings {
                cmd.env(other, v);
            }
            // `cleanup` uses the database and Redis; the worker's own
            // settings are validated (and refused) by `worker` before it
            // connects to anything.
            let command = match (*env, value == bad) {
                ("HERALD_DATABASE_URL" | "HERALD_REDIS_URLS", _) | (_, false) => "cleanup",
                _ => "worker",
            };
            let out = cmd
                .env(env, value)
                .env("HERALD_HTTP_ADDR", "")
                .env("HERALD_LOG", "debug")
                .arg(command)
                .output()
                .unwrap();
            let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
            if value == bad {
                assert!(!out.status.success(), "{env}={value}: {shown}");
            }
            assert_clean(&format!("{env} {value}"), &shown);
        }
    }
}
