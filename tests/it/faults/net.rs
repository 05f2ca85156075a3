//! Network faults between one worker and its Redis masters or MySQL, through
//! the fault proxy; a second worker keeps a clean path, as in a real fleet
//! where one host's network goes bad.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use super::proxy::{Fault, FaultProxy, ProxySet};
use super::*;
use crate::redis_procs::Masters;

/// Which of worker A's links the fault hits.
enum Target {
    /// These of A's three Redis proxies.
    Redis(&'static [usize]),
    /// A's MySQL connection.
    Mysql,
}

async fn scenario(name: &str, injected: &str, target: Target, fault: Fault) {
    let size = size();
    let masters = Masters::start(3);
    let mut rig = Rig::shared(size).await;
    let redis_a = ProxySet::start(&masters.urls()).await;
    let server = url::Url::parse(crate::helpers::mysql_server()).unwrap();
    let port = server.port().unwrap_or(3306);
    let mysql_a = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let url_a = rig
        .url
        .replacen(&format!("127.0.0.1:{port}"), &mysql_a.addr(), 1);
    assert_ne!(
        url_a, rig.url,
        "the test database must be on 127.0.0.1 (HERALD_TEST_DATABASE_URL)"
    );
    let url_b = rig.url.clone();
    let a = rig.spawn("a", &url_a, &redis_a.urls(), &[]);
    let b = rig.spawn("b", &url_b, &masters.urls(), &[]);
    let mut workers = vec![a, b];
    rig.wait_sent(rig.strike_at()).await;

    let start = db_now();
    match &target {
        Target::Redis(which) => redis_a.set(which, fault),
        Target::Mysql => mysql_a.set(fault),
    }
    let sent_before = rig.sent().await;
    tokio::time::sleep(size.fault).await;
    let sent_during = rig.sent().await - sent_before;
    redis_a.set(&[0, 1, 2], Fault::Pass);
    mysql_a.set(Fault::Pass);
    let window = window_since(start);

    let resets = redis_a.resets() + mysql_a.resets();
    settle_and_report(
        &rig,
        name,
        injected,
        window,
        &mut workers,
        Some(&["a"]),
        json!({ "sent_during_fault": sent_during, "connections_reset": resets }),
    )
    .await;
}

/// The same rig without a fault: the figures the others compare with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_baseline_without_a_fault() {
    scenario(
        "baseline",
        "none (same rig, proxies pass everything)",
        Target::Redis(&[]),
        Fault::Pass,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_latency_on_one_worker() {
    scenario(
        "redis_latency",
        "proxy adds 40 ms each way between worker A and all 3 masters (B clean)",
        Target::Redis(&[0, 1, 2]),
        Fault::Latency(Duration::from_millis(40)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_black_hole_on_one_worker() {
    scenario(
        "redis_black_hole",
        "proxy holds all bytes between worker A and all 3 masters (B clean)",
        Target::Redis(&[0, 1, 2]),
        Fault::BlackHole,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_reset_on_one_worker() {
    scenario(
        "redis_reset",
        "proxy resets every connection of worker A to all 3 masters (B clean)",
        Target::Redis(&[0, 1, 2]),
        Fault::Reset,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_half_open_on_one_worker() {
    scenario(
        "redis_half_open",
        "masters' answers to worker A held, its requests still arrive (B clean)",
        Target::Redis(&[0, 1, 2]),
        Fault::HalfOpen,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_partition_one_worker_reaches_one_of_three_masters() {
    scenario(
        "redis_partition_1_of_3",
        "worker A reaches only master 0 (black hole to 1 and 2); B reaches all",
        Target::Redis(&[1, 2]),
        Fault::BlackHole,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_mysql_latency_on_one_worker() {
    scenario(
        "mysql_latency",
        "proxy adds 40 ms each way between worker A and MySQL (B clean)",
        Target::Mysql,
        Fault::Latency(Duration::from_millis(40)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_mysql_black_hole_on_one_worker() {
    scenario(
        "mysql_black_hole",
        "proxy holds all bytes between worker A and MySQL (B clean)",
        Target::Mysql,
        Fault::BlackHole,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_mysql_reset_on_one_worker() {
    scenario(
        "mysql_reset",
        "proxy resets every connection of worker A to MySQL (B clean)",
        Target::Mysql,
        Fault::Reset,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_mysql_half_open_on_one_worker() {
    scenario(
        "mysql_half_open",
        "MySQL's answers to worker A held, its statements still arrive (B clean)",
        Target::Mysql,
        Fault::HalfOpen,
    )
    .await;
}
