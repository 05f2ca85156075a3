//! The process's bag of long-lived services, built once by [`crate::app`]
//! and handed to the worker, the HTTP endpoints, cleanup and stats. It lives
//! low in the module tree so all of them can take it without importing the
//! code that builds it (or one another).

use std::sync::Arc;

use crate::lock::Redlock;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::transport::Transports;

/// What the sender and its companions need from the outside world; cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct Deps {
    pub store: Store,
    pub redlock: Redlock,
    pub transports: Transports,
    pub metrics: Arc<Metrics>,
}
