//! The deployment files (compose stack, Kubernetes manifests, Grafana
//! dashboard, Dockerfile) and the lock examples, checked as far as this
//! machine allows: no container engine or cluster here, so the files are
//! parsed and cross-checked, and what they run is run outside containers
//! (the receiver script, the worker with their settings, the healthcheck
//! command, the examples against real Redis masters).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald::lock::LockConfig;
use herald::secret::SecretUrl;
use serde::Deserialize as _;
use serde_norway::Value;

use crate::helpers::{herald, run_with_stdin, text, wait_until, TestDb, WorkerProc};
use crate::redis_procs::{free_port, Masters};

#[allow(dead_code)]
#[path = "../../examples/lock_exactly_once.rs"]
mod lock_exactly_once;
#[allow(dead_code)]
#[path = "../../examples/lock_health_check.rs"]
mod lock_health_check;
#[allow(dead_code)]
#[path = "../../examples/lock_once_per_window.rs"]
mod lock_once_per_window;
#[allow(dead_code)]
#[path = "../../examples/lock_recurring_field.rs"]
mod lock_recurring_field;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Every document of a YAML file, with `<<:` merge keys applied (compose
/// files use them; Docker applies them too).
fn yaml_docs(rel: &str) -> Vec<Value> {
    let src = read(rel);
    serde_norway::Deserializer::from_str(&src)
        .map(|doc| {
            let mut v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}"));
            v.apply_merge().unwrap_or_else(|e| panic!("{rel}: {e}"));
            v
        })
        .collect()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// `environment:` as a map, whichever of the two compose forms it uses.
fn env_map(v: &Value) -> BTreeMap<String, String> {
    match v {
        Value::Mapping(m) => m.iter().map(|(k, v)| (s(k), s(v))).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                let i = s(i);
                let (k, v) = i.split_once('=').expect("KEY=value");
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("environment: unexpected {other:?}"),
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {v:?}"))
        .iter()
        .map(s)
        .collect()
}

fn ms_of(duration: &str) -> u64 {
    humantime::parse_duration(duration)
        .unwrap_or_else(|e| panic!("{duration}: {e}"))
        .as_millis() as u64
}

fn port_of_addr(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

// ---------------------------------------------------------------- compose

struct Compose {
    services: BTreeMap<String, Value>,
}

impl Compose {
    fn load() -> Compose {
        let doc = yaml_docs("docker-compose.yml").remove(0);
        let services = doc["services"]
            .as_mapping()
            .expect("services")
            .iter()
            .map(|(k, v)| (s(k), v.clone()))
            .collect();
        Compose { services }
    }

    fn svc(&self, name: &str) -> &Value {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
    }

    fn env(&self, name: &str) -> BTreeMap<String, String> {
        env_map(&self.svc(name)["environment"])
    }
}

#[test]
fn compose_stack_is_consistent() {
    let c = Compose::load();
    for name in [
        "mysql", "redis-1", "redis-2", "redis-3", "receiver", "migrate", "worker",
    ] {
        c.svc(name);
    }

    // MySQL 8, and the URL the workers use matches its credentials.
    let mysql = c.svc("mysql");
    assert!(s(&mysql["image"]).starts_with("mysql:8"), "{mysql:?}");
    let m = c.env("mysql");
    let want = format!(
        "mysql://{}:{}@mysql:3306/{}",
        m["MYSQL_USER"], m["MYSQL_PASSWORD"], m["MYSQL_DATABASE"]
    );
    for svc in ["migrate", "worker"] {
        let env = c.env(svc);
        assert_eq!(env["HERALD_DATABASE_URL"], want, "{svc}");
        SecretUrl::parse(&env["HERALD_DATABASE_URL"]).unwrap();
    }

    // Three Redis masters, each a service of its own with a healthcheck.
    let worker_env = c.env("worker");
    assert_eq!(
        c.env("migrate")["HERALD_REDIS_URLS"],
        worker_env["HERALD_REDIS_URLS"]
    );
    let urls: Vec<String> = worker_env["HERALD_REDIS_URLS"]
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(urls.len(), 3, "{urls:?}");
    LockConfig::new(urls.iter().map(|u| u.parse().unwrap()).collect())
        .validate()
        .unwrap();
    let mut hosts = BTreeSet::new();
    for u in &urls {
        let host = url::Url::parse(u).unwrap().host_str().unwrap().to_owned();
        let redis = c.svc(&host);
        assert!(s(&redis["image"]).starts_with("redis:"), "{host}");
        assert!(strs(&redis["healthcheck"]["test"]).contains(&"redis-cli".to_owned()));
        hosts.insert(host);
    }
    assert_eq!(hosts.len(), 3);

    // The migration runs once, after MySQL is healthy; workers wait for it.
    let migrate = c.svc("migrate");
    assert_eq!(strs(&migrate["command"]), ["migrate"]);
    assert_eq!(s(&migrate["restart"]), "no");
    assert_eq!(
        s(&migrate["depends_on"]["mysql"]["condition"]),
        "service_healthy"
    );
    let worker = c.svc("worker");
    assert_eq!(strs(&worker["command"]), ["worker"]);
    let deps = &worker["depends_on"];
    assert_eq!(
        s(&deps["migrate"]["condition"]),
        "service_completed_successfully"
    );
    for h in &hosts {
        assert_eq!(s(&deps[h.as_str()]["condition"]), "service_healthy", "{h}");
    }
    assert_eq!(s(&worker["restart"]), "unless-stopped");
    assert!(worker["deploy"]["replicas"].as_u64().unwrap() >= 2);

    // Healthcheck: GET /readyz on the metrics port, with a tool the image has.
    let http_port = port_of_addr(&worker_env["HERALD_HTTP_ADDR"]);
    let test = strs(&worker["healthcheck"]["test"]);
    assert_eq!(test[0], "CMD");
    assert_eq!(test[1], "curl");
    let probe = test.last().unwrap();
    assert_eq!(probe, &format!("http://127.0.0.1:{http_port}/readyz"));
    let dockerfile = read("Dockerfile");
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        runtime
            .lines()
            .any(|l| l.contains("apt-get install") && l.contains(" curl")),
        "the runtime image must install curl for the healthcheck:\n{runtime}"
    );

    // SIGKILL only after the worker's own shutdown grace.
    let grace = worker_env["HERALD_SHUTDOWN_GRACE_MS"]
        .parse::<u64>()
        .unwrap();
    assert!(ms_of(&s(&worker["stop_grace_period"])) > grace);

    // Webhooks go to the receiver service, signed with the secret it checks.
    let hook = url::Url::parse(&worker_env["HERALD_WEBHOOK_URL"]).unwrap();
    assert_eq!(hook.host_str(), Some("receiver"));
    let r = c.env("receiver");
    assert_eq!(hook.port().map(|p| p.to_string()), Some(r["PORT"].clone()));
    assert_eq!(r["WEBHOOK_SECRET"], worker_env["HERALD_WEBHOOK_SECRET"]);
    let mount = strs(&c.svc("receiver")["volumes"])[0].clone();
    let source = mount.split(':').next().unwrap();
    assert!(repo(source).is_file(), "{source} is mounted but missing");

    // Published ports: loopback only, none of the standard ones, and the
    // worker publishes its metrics port.
    let mut published = Vec::new();
    for (name, svc) in &c.services {
        if let Some(ports) = svc.get("ports") {
            for p in strs(ports) {
                let parts: Vec<&str> = p.split(':').collect();
                assert_eq!(
                    parts.len(),
                    3,
                    "{name}: {p} should be 127.0.0.1:HOST:CONTAINER"
                );
                assert_eq!(parts[0], "127.0.0.1", "{name}: {p}");
                let first_host: u16 = parts[1].split('-').next().unwrap().parse().unwrap();
                assert!(
                    ![3306, 6379, 8080, 9090].contains(&first_host),
                    "{name}: host port {first_host} clashes with local servers"
                );
                published.push((name.clone(), parts[2].to_owned()));
            }
        }
    }
    assert!(published.contains(&("worker".into(), http_port.to_string())));
}

/// The receiver script, run with python3 as the compose service runs it.
struct ReceiverProc {
    child: Child,
    out: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl ReceiverProc {
    async fn start(secret: &str) -> ReceiverProc {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.log");
        let err = dir.path().join("err.log");
        let child = Command::new("python3")
            .arg("-u")
            .arg(repo("deploy/compose/receiver.py"))
            .env("WEBHOOK_SECRET", secret)
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("python3 must be installed (apt-get install python3)");
        let mut port = 0;
        wait_until("the receiver to listen", Duration::from_secs(10), || {
            let line = std::fs::read_to_string(&err).unwrap_or_default();
            if let Some(p) = line.trim().strip_prefix("receiver listening on port ") {
                port = p.parse().unwrap();
            }
            async move { port != 0 }
        })
        .await;
        ReceiverProc {
            child,
            out,
            port,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for ReceiverProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The compose worker's settings (with this machine's database, masters and
/// receiver address swapped in) deliver a signed webhook to the receiver
/// script; the compose healthcheck command passes against that worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_worker_settings_deliver_to_the_receiver_script() {
    let c = Compose::load();
    let compose_env = c.env("worker");
    let secret = compose_env["HERALD_WEBHOOK_SECRET"].clone();
    let receiver = ReceiverProc::start(&secret).await;

    // A forged signature is flagged, and the sink still answers 200.
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/hook", receiver.port))
        .header("webhook-id", "forged")
        .header("webhook-timestamp", "1")
        .header("webhook-signature", "v1,AAAA")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let db = TestDb::new().await;
    let masters = Masters::start(3);
    let http = format!("127.0.0.1:{}", free_port());
    let hook = url::Url::parse(&compose_env["HERALD_WEBHOOK_URL"]).unwrap();
    let mut envs: Vec<(&str, String)> = compose_env
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "HERALD_DATABASE_URL" | "HERALD_REDIS_URLS" | "HERALD_WEBHOOK_URL"
            )
        })
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    envs.push(("HERALD_REDIS_URLS", masters.urls().join(",")));
    envs.push((
        "HERALD_WEBHOOK_URL",
        format!("http://127.0.0.1:{}{}", receiver.port, hook.path()),
    ));
    envs.push(("HERALD_HTTP_ADDR", http.clone()));
    let worker = WorkerProc::spawn(&db, &crate::helpers::key_prefix(), &envs);

    // The healthcheck exactly as compose runs it, on this worker's port.
    let test = strs(&c.svc("worker")["healthcheck"]["test"]);
    let compose_port = port_of_addr(&compose_env["HERALD_HTTP_ADDR"]);
    let args: Vec<String> = test[2..]
        .iter()
        .map(|a| {
            a.replace(
                &format!(":{compose_port}/"),
                &format!(":{}/", port_of_addr(&http)),
            )
        })
        .collect();
    wait_until(
        "the compose healthcheck to pass",
        Duration::from_secs(20),
        || {
            let ok = Command::new(&test[1])
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            async move { ok }
        },
    )
    .await;

    let out = run_with_stdin(
        herald(Some(&db)).arg("enqueue"),
        r#"{"user_id":42,"channel":"webhook","payload":{"text":"hi from compose"},"dedupe_key":"compose-1"}"#,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(
        "the delivery at the receiver",
        Duration::from_secs(20),
        || {
            let n = receiver.lines().len();
            async move { n >= 2 }
        },
    )
    .await;
    let lines = receiver.lines();
    assert_eq!(lines[0]["webhook_id"], "forged");
    assert_eq!(lines[0]["signature"], "BAD");
    let hit = &lines[1];
    assert_eq!(hit["webhook_id"], "compose-1", "{hit}\n{}", worker.logs());
    assert_eq!(hit["signature"], "ok", "{hit}");
    assert_eq!(hit["path"], hook.path());
    let body: serde_json::Value = serde_json::from_str(hit["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["payload"]["text"], "hi from compose");
    wait_until("the row marked sent", Duration::from_secs(10), || async {
        db.count_status("sent").await == 1
    })
    .await;
}

/// The compose MySQL user owns only its database (as the mysql image sets it
/// up); `herald migrate` with such a user's URL must work, the step that
/// failed with "Access denied" before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_style_database_user_can_migrate() {
    let c = Compose::load();
    let m = c.env("mysql");
    let db = crate::helpers::DbName::new();
    let user = crate::helpers::unique("hu");
    let admin = herald::store::Store::connect(
        &SecretUrl::parse(&format!("{}/mysql", crate::helpers::mysql_server())).unwrap(),
        1,
    )
    .await
    .unwrap();
    let exec = |sql: String| {
        let pool = admin.pool().clone();
        async move {
            sqlx::query(&sql)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    };
    // What the image does with MYSQL_DATABASE / MYSQL_USER / MYSQL_PASSWORD.
    exec(format!("CREATE DATABASE `{}`", db.name)).await;
    for host in ["localhost", "127.0.0.1", "%"] {
        exec(format!(
            "CREATE USER '{user}'@'{host}' IDENTIFIED BY '{}'",
            m["MYSQL_PASSWORD"]
        ))
        .await;
        exec(format!(
            "GRANT ALL PRIVILEGES ON `{}`.* TO '{user}'@'{host}'",
            db.name
        ))
        .await;
    }
    let server = url::Url::parse(crate::helpers::mysql_server()).unwrap();
    let url = format!(
        "mysql://{user}:{}@{}:{}/{}",
        m["MYSQL_PASSWORD"],
        server.host_str().unwrap(),
        server.port().unwrap_or(3306),
        db.name
    );
    let command = strs(&c.svc("migrate")["command"]);
    let out = herald(None)
        .env("HERALD_DATABASE_URL", &url)
        .args(&command)
        .output()
        .unwrap();
    for host in ["localhost", "127.0.0.1", "%"] {
        exec(format!("DROP USER IF EXISTS '{user}'@'{host}'")).await;
    }
    admin.close().await;
    assert!(
        out.status.success(),
        "herald migrate as a database-scoped user failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

// ------------------------------------------------------------- kubernetes

struct Manifests {
    by_kind: HashMap<String, Vec<Value>>,
}

impl Manifests {
    fn load() -> Manifests {
        let kustomization = yaml_docs("deploy/kubernetes/kustomization.yaml").remove(0);
        let listed: BTreeSet<String> = strs(&kustomization["resources"]).into_iter().collect();
        let present: BTreeSet<String> = std::fs::read_dir(repo("deploy/kubernetes"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
            .collect();
        assert_eq!(listed, present, "kustomization.yaml resources vs files");
        let mut by_kind: HashMap<String, Vec<Value>> = HashMap::new();
        for file in &listed {
            for doc in yaml_docs(&format!("deploy/kubernetes/{file}")) {
                assert!(doc["apiVersion"].is_string(), "{file}: apiVersion");
                assert!(doc["metadata"]["name"].is_string(), "{file}: metadata.name");
                by_kind.entry(s(&doc["kind"])).or_default().push(doc);
            }
        }
        Manifests { by_kind }
    }

    fn one(&self, kind: &str) -> &Value {
        let docs = self
            .by_kind
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"));
        assert_eq!(docs.len(), 1, "{kind}");
        &docs[0]
    }

    fn data(&self, kind: &str, field: &str) -> BTreeMap<String, String> {
        env_map(&self.one(kind)[field])
    }
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    env_map(v)
}

fn is_subset(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
    !a.is_empty() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

fn assert_env_from(pod_spec: &Value, configmap: &str, secret: &str, what: &str) {
    let container = &pod_spec["containers"][0];
    let from = container["envFrom"].as_sequence().expect("envFrom");
    let names: Vec<(String, String)> = from
        .iter()
        .flat_map(|f| {
            ["configMapRef", "secretRef"]
                .into_iter()
                .filter_map(|k| f.get(k).map(|r| (k.to_owned(), s(&r["name"]))))
        })
        .collect();
    assert!(
        names.contains(&("configMapRef".into(), configmap.into()))
            && names.contains(&("secretRef".into(), secret.into())),
        "{what}: envFrom {names:?}"
    );
}

#[test]
fn kubernetes_manifests_are_consistent() {
    let k = Manifests::load();
    let config = k.data("ConfigMap", "data");
    let secret = k.data("Secret", "stringData");
    let cm_name = s(&k.one("ConfigMap")["metadata"]["name"]);
    let secret_name = s(&k.one("Secret")["metadata"]["name"]);

    // URLs with passwords only in the Secret.
    for (key, value) in &config {
        assert!(
            !key.contains("URL") && !key.contains("SECRET") && !value.contains('@'),
            "ConfigMap holds {key}; URLs and secrets belong in the Secret"
        );
    }
    let db = SecretUrl::parse(&secret["HERALD_DATABASE_URL"]).unwrap();
    assert!(
        db.url().password().is_some(),
        "database URL without password"
    );
    let masters: Vec<String> = secret["HERALD_REDIS_URLS"]
        .split(',')
        .map(str::to_owned)
        .collect();
    assert!(masters.len() >= 3 && masters.len() % 2 == 1, "{masters:?}");
    for m in &masters {
        assert!(url::Url::parse(m).unwrap().password().is_some(), "{m}");
    }
    LockConfig::new(masters.iter().map(|m| m.parse().unwrap()).collect())
        .validate()
        .unwrap();

    // The worker Deployment.
    let dep = k.one("Deployment");
    let pod = &dep["spec"]["template"];
    let pod_labels = labels(&pod["metadata"]["labels"]);
    assert!(is_subset(
        &labels(&dep["spec"]["selector"]["matchLabels"]),
        &pod_labels
    ));
    let spec = &pod["spec"];
    let c = &spec["containers"][0];
    assert_eq!(strs(&c["args"]), ["worker"]);
    assert_env_from(spec, &cm_name, &secret_name, "Deployment");
    let http_port = port_of_addr(&config["HERALD_HTTP_ADDR"]);
    let port = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| s(&p["name"]) == "metrics")
        .expect("a port named metrics");
    assert_eq!(port["containerPort"].as_u64(), Some(u64::from(http_port)));
    assert_eq!(s(&c["livenessProbe"]["httpGet"]["path"]), "/livez");
    assert_eq!(s(&c["readinessProbe"]["httpGet"]["path"]), "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(s(&c[probe]["httpGet"]["port"]), "metrics", "{probe}");
    }
    // The readiness timeout must leave room for HERALD_HEALTH_TIMEOUT_MS.
    let health_ms: u64 = config["HERALD_HEALTH_TIMEOUT_MS"].parse().unwrap();
    assert!(c["readinessProbe"]["timeoutSeconds"].as_u64().unwrap() * 1000 > health_ms);
    let grace_ms: u64 = config["HERALD_SHUTDOWN_GRACE_MS"].parse().unwrap();
    let termination = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination * 1000 > grace_ms,
        "terminationGracePeriodSeconds {termination} s must exceed HERALD_SHUTDOWN_GRACE_MS {grace_ms}"
    );

    // The migration Job.
    let job = k.one("Job");
    let jspec = &job["spec"]["template"]["spec"];
    assert_eq!(strs(&jspec["containers"][0]["args"]), ["migrate"]);
    assert!(["OnFailure", "Never"].contains(&s(&jspec["restartPolicy"]).as_str()));
    assert_env_from(jspec, &cm_name, &secret_name, "Job");
    assert!(
        !is_subset(
            &labels(&dep["spec"]["selector"]["matchLabels"]),
            &labels(&job["spec"]["template"]["metadata"]["labels"])
        ),
        "the Deployment's selector must not match the Job's pod"
    );

    // PodDisruptionBudget and metrics Service select the worker pods.
    let pdb = k.one("PodDisruptionBudget");
    assert!(is_subset(
        &labels(&pdb["spec"]["selector"]["matchLabels"]),
        &pod_labels
    ));
    assert!(
        pdb["spec"]["maxUnavailable"].as_u64().is_some() || pdb["spec"]["minAvailable"].is_string()
    );
    let svc = k.one("Service");
    assert!(is_subset(&labels(&svc["spec"]["selector"]), &pod_labels));
    let sp = &svc["spec"]["ports"][0];
    assert_eq!(sp["port"].as_u64(), Some(u64::from(http_port)));
    assert_eq!(s(&sp["targetPort"]), "metrics");
    // Metrics matter most while a pod is unready (Redis down): keep scraping it.
    assert_eq!(
        svc["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
}

/// The ConfigMap's settings are ones the worker accepts: a real worker
/// started with them (database and Redis swapped for this machine's) gets
/// ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_starts_a_ready_worker() {
    let k = Manifests::load();
    let config = k.data("ConfigMap", "data");
    let db = TestDb::new().await;
    crate::helpers::require_redis().await;
    let http = format!("127.0.0.1:{}", free_port());
    let mut envs: Vec<(&str, String)> = config
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    envs.push(("HERALD_HTTP_ADDR", http.clone()));
    envs.push(("HERALD_REDIS_URLS", crate::helpers::redis_url().into()));
    let worker = WorkerProc::spawn(&db, &crate::helpers::key_prefix(), &envs);
    let client = reqwest::Client::new();
    wait_until("/readyz 200", Duration::from_secs(20), || {
        let req = client.get(format!("http://{http}/readyz")).send();
        async move { matches!(req.await, Ok(r) if r.status().as_u16() == 200) }
    })
    .await;
    let livez = client
        .get(format!("http://{http}/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(livez.status().as_u16(), 200, "{}", worker.logs());
}

// ---------------------------------------------------------------- grafana

/// Sample names a scrape can contain, by family type, from the exposition
/// the worker serves (the same `Metrics` it renders at `/metrics`).
async fn exposed_samples() -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
    let locks = herald::lock::Redlock::new(LockConfig::new(vec!["redis://127.0.0.1:1"
        .parse()
        .unwrap()]))
    .await
    .unwrap();
    let metrics = herald::metrics::Metrics::with_redlock(&locks);
    metrics
        .cleanup_skipped
        .get_or_create(&herald::metrics::ReasonLabel {
            reason: "backlog".into(),
        })
        .inc();
    let rendered = metrics.render();
    let mut names = BTreeSet::new();
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in rendered.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap();
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for sfx in suffixes {
                names.insert(format!("{family}{sfx}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap().to_owned();
            let set = labels.entry(name).or_default();
            if let Some(inner) = line.split_once('{').and_then(|(_, r)| r.split_once('}')) {
                for pair in inner.0.split(',') {
                    set.insert(pair.split('=').next().unwrap().to_owned());
                }
            }
        }
    }
    (names, labels)
}

fn panel_exprs(dash: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap().to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((title.clone(), t["expr"].as_str().unwrap().to_owned()));
        }
    }
    out
}

#[tokio::test]
async fn grafana_dashboard_queries_only_exposed_metrics() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/herald-dashboard.json")).unwrap();
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let panels = dash["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
    for p in panels {
        assert!(p["gridPos"]["w"].as_u64().unwrap() <= 24, "{}", p["title"]);
    }

    let (exposed, exposed_labels) = exposed_samples().await;
    let exprs = panel_exprs(&dash);
    assert!(!exprs.is_empty());
    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        let bytes = expr.as_bytes();
        let mut i = 0;
        while let Some(pos) = expr[i..].find("herald_") {
            let start = i + pos;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            let name = &expr[start..end];
            assert!(
                exposed.contains(name),
                "panel {title:?} queries {name}, which Herald does not expose"
            );
            used.insert(name.to_owned());
            i = end;
        }
        // Labels grouped by must exist on some herald sample (or come from Prometheus).
        for part in expr.split("by (").skip(1) {
            for label in part.split(')').next().unwrap().split(',') {
                let label = label.trim();
                let known = ["instance", "job", "le"].contains(&label)
                    || exposed_labels.values().any(|set| set.contains(label));
                assert!(known, "panel {title:?} groups by unknown label {label}");
            }
        }
    }
    // What the dashboard must cover.
    for needed in [
        "herald_sent_total",
        "herald_retried_total",
        "herald_failed_total",
        "herald_expired_total",
        "herald_due_backlog",
        "herald_delivery_lag_seconds_bucket",
        "herald_in_flight",
        "herald_lock_contended_total",
        "herald_lock_no_quorum_total",
        "herald_poll_errors_total",
        "herald_lost_ownership_total",
        "herald_cleanup_deleted_total",
        "herald_cleanup_skipped_total",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

// --------------------------------------------------------------- examples

fn example_prefix() -> String {
    crate::helpers::key_prefix()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_exactly_once_processes_each_message_once() {
    let masters = Masters::start(3);
    let effects = lock_exactly_once::run(masters.urls(), &example_prefix(), 3, 20)
        .await
        .unwrap();
    assert_eq!(effects.len(), 20, "{effects:?}");
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_recurring_field_advances_once_and_leaves_other_fields_free() {
    let masters = Masters::start(3);
    let out = lock_recurring_field::run(masters.urls(), &example_prefix(), 4, 100)
        .await
        .unwrap();
    assert_eq!(out.advanced, 1, "{out:?}");
    assert_eq!(out.record.next_run_day, 107);
    assert_eq!(out.record.title, "weekly digest (renamed)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_once_per_window_elects_one_instance_per_window() {
    let masters = Masters::start(3);
    let windows = lock_once_per_window::run(
        masters.urls(),
        &example_prefix(),
        3,
        Duration::from_millis(500),
        4,
    )
    .await
    .unwrap();
    // Exactly one winner in every window; a task that falls behind on a
    // loaded machine may reach one more window than the others.
    assert!((4..=5).contains(&windows.len()), "{windows:?}");
    assert!(windows.values().all(|w| w.len() == 1), "{windows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_health_check_passes_and_fails_with_the_reason() {
    let mut masters = Masters::start(3);
    let prefix = example_prefix();
    lock_health_check::run(masters.urls(), &prefix, Duration::from_millis(500))
        .await
        .unwrap();
    // Leaves nothing behind.
    // (The release returns once a majority has answered; the last master
    // may delete a moment later.)
    wait_until(
        "the probe key deleted everywhere",
        Duration::from_secs(5),
        || {
            let left = masters
                .0
                .iter()
                .map(|m| m.raw(&format!("KEYS {prefix}*")))
                .filter(|reply| reply.trim() != "*0")
                .count();
            async move { left == 0 }
        },
    )
    .await;
    // Two of three masters gone: no quorum, said so, within the deadline.
    masters.0[1].kill();
    masters.0[2].kill();
    let start = std::time::Instant::now();
    let err = lock_health_check::run(masters.urls(), &prefix, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains("no quorum"), "{err}");
}
