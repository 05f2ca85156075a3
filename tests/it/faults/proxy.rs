//! A TCP fault proxy for tests: sits in front of a Redis master or MySQL and,
//! switchable at run time, passes traffic, adds latency, black-holes it,
//! resets connections, or goes half-open (the server's answers stop while
//! the client's requests still arrive).
//!
//! A black hole holds bytes instead of dropping them: that is what TCP does
//! across a partition (it retransmits and delivers once the path heals), so
//! a connection that outlives the fault sees its late replies, exactly the
//! case that matters for a lock service (grants arriving after the caller
//! gave up).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Added to each direction, so a round trip gains twice this.
    Latency(Duration),
    /// Accepts connections, never forwards anything either way.
    BlackHole,
    /// Resets every open connection and every new one.
    Reset,
    /// Requests still reach the server; its answers are held.
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub resets: AtomicU64,
}

#[derive(Debug)]
pub struct FaultProxy {
    pub port: u16,
    tx: watch::Sender<Fault>,
    pub stats: Arc<Stats>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free local port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(Fault::Pass);
        let stats = Arc::new(Stats::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, rx, stats.clone()));
        FaultProxy {
            port,
            tx,
            stats,
            accept,
        }
    }

    pub fn set(&self, fault: Fault) {
        self.tx.send_replace(fault);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn resets(&self) -> u64 {
        self.stats.resets.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    /// Stops accepting; the connection tasks end when they see the sender
    /// gone, closing both sides.
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    rx: watch::Receiver<Fault>,
    stats: Arc<Stats>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        if *rx.borrow() == Fault::Reset {
            reset(&client, &stats);
            continue;
        }
        let rx = rx.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                reset(&client, &stats);
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pipe(cr, sw, rx.clone(), Dir::Up, stats.clone()));
            tokio::spawn(pipe(sr, cw, rx, Dir::Down, stats));
        });
    }
}

/// Linger 0, then close: the peer sees a connection reset, not an orderly end.
#[allow(deprecated)]
fn reset(s: &TcpStream, stats: &Stats) {
    let _ = s.set_linger(Some(Duration::ZERO));
    stats.resets.fetch_add(1, Ordering::Relaxed);
}

/// Waits until `dir` may carry bytes; false when the connection must be
/// reset (or the proxy is gone).
async fn open(rx: &mut watch::Receiver<Fault>, dir: Dir) -> bool {
    loop {
        match *rx.borrow_and_update() {
            Fault::Reset => return false,
            Fault::BlackHole => {}
            Fault::HalfOpen if dir == Dir::Down => {}
            _ => return true,
        }
        if rx.changed().await.is_err() {
            return false;
        }
    }
}

/// One direction: a reader that stamps each chunk with its delivery time
/// and a writer that delivers it then, so latency delays without limiting
/// throughput, and both halves honour black hole / half-open / reset.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    rx: watch::Receiver<Fault>,
    dir: Dir,
    stats: Arc<Stats>,
) {
    let (q_tx, mut q_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut rrx = rx.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if !open(&mut rrx, dir).await {
                reset(from.as_ref(), &stats);
                return;
            }
            tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let delay = match *rrx.borrow() {
                            Fault::Latency(d) => d,
                            _ => Duration::ZERO,
                        };
                        if q_tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                },
                c = rrx.changed() => if c.is_err() { return },
            }
        }
    };
    let mut wrx = rx;
    let writer = async move {
        while let Some((at, bytes)) = q_rx.recv().await {
            tokio::time::sleep_until(at).await;
            if !open(&mut wrx, dir).await {
                #[allow(deprecated)]
                let _ = to.as_ref().set_linger(Some(Duration::ZERO));
                return;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// One proxy per Redis master, for one worker.
#[derive(Debug)]
pub struct ProxySet(pub Vec<FaultProxy>);

impl ProxySet {
    pub async fn start(urls: &[String]) -> ProxySet {
        let mut v = Vec::new();
        for u in urls {
            let port: u16 = u.rsplit(':').next().unwrap().parse().unwrap();
            v.push(FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await);
        }
        ProxySet(v)
    }

    pub fn urls(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|p| format!("redis://{}", p.addr()))
            .collect()
    }

    pub fn set(&self, which: &[usize], fault: Fault) {
        for &i in which {
            self.0[i].set(fault);
        }
    }

    pub fn resets(&self) -> u64 {
        self.0.iter().map(FaultProxy::resets).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_procs::RedisProc;

    async fn ping(port: u16, limit: Duration) -> Result<String, String> {
        let fut = async {
            let mut s = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or_else(|_| Err("timeout".into()))
    }

    /// Each mode does what it says against a real redis-server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fault_proxy_passes_delays_blackholes_resets_and_goes_half_open() {
        let redis = RedisProc::start();
        let p = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
        assert_eq!(
            ping(p.port, Duration::from_secs(5)).await.unwrap(),
            "+PONG\r\n"
        );

        p.set(Fault::Latency(Duration::from_millis(150)));
        let t = std::time::Instant::now();
        assert_eq!(
            ping(p.port, Duration::from_secs(5)).await.unwrap(),
            "+PONG\r\n"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );

        p.set(Fault::BlackHole);
        assert_eq!(
            ping(p.port, Duration::from_millis(500)).await,
            Err("timeout".into())
        );

        // Half-open: the request arrives (the key is set), no answer returns.
        p.set(Fault::HalfOpen);
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
        s.write_all(b"SET halfopen 1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf))
                .await
                .is_err(),
            "no answer while half-open"
        );
        crate::helpers::wait_until("the request to arrive", Duration::from_secs(5), || async {
            redis.raw("GET halfopen").contains('1')
        })
        .await;
        // Healing delivers the held answer on the same connection.
        p.set(Fault::Pass);
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"+OK\r\n");

        p.set(Fault::Reset);
        let r = ping(p.port, Duration::from_secs(5)).await;
        assert!(r.is_err() && r != Err("timeout".into()), "{r:?}");
        // The open connection is reset too.
        let r = s.read(&mut buf).await;
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert!(p.resets() >= 1);
        p.set(Fault::Pass);
        assert_eq!(
            ping(p.port, Duration::from_secs(5)).await.unwrap(),
            "+PONG\r\n"
        );
    }
}
