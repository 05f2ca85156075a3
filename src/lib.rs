//! Herald sends scheduled notifications stored in a MySQL table.
//!
//! Any number of identical worker processes poll the table; a Redlock per
//! notification (or per user) decides which instance sends what, and a fenced
//! claim in MySQL makes that decision safe even when Redis forgets a key or a
//! process stalls past its lock. See `DESIGN.md` in the shared notes and the
//! README for the delivery protocol.
//!
//! # Module tour
//!
//! * [`config`] — every setting, as CLI flags with `HERALD_*` environment
//!   equivalents, validated at start-up.
//! * [`secret`] — URLs whose passwords never reach logs or `Debug` output.
//! * [`notification`] — the row model, statuses and input validation for
//!   enqueue.
//! * [`outcome`] — what became of a claimed row, and counters keyed by it.
//! * [`intake`] — JSON lines to rows, for `herald enqueue`.
//! * [`store`] — everything that talks to MySQL: migrations, enqueue, the
//!   candidate/claim/finish queries of the delivery protocol, status counts
//!   and pruning.
//! * [`lock`] — our own Redlock over 1..N Redis masters: single and batched
//!   acquire, extend, release, watchdog, once-per-window keys, health probe.
//! * [`transport`] — delivers one notification (webhook, log, file) and says
//!   whether a failure is transient or permanent.
//! * [`worker`] — the poll → lock → claim → send → finish → release loop.
//! * [`metrics`] — the Prometheus registry every part reports to.
//! * [`companions`] — starts and stops the tasks beside the worker:
//!   * [`http`] — `/livez`, `/readyz`, `/metrics`;
//!   * [`cleanup`] — singleton, backlog-gated, batched pruning of finished
//!     rows (also `herald cleanup --once`);
//!   * [`stats`] — fleet statistics, logged by one instance per window.
//! * [`app`] — builds the whole application from validated settings.
//! * [`telemetry`] — tracing subscriber set-up (text or JSON).
//! * [`bench`] — `herald bench`: the shared benchmark workload against real
//!   worker processes.
//! * [`cli`] — the `herald` command line; `main.rs` only calls into it.

pub mod app;
pub mod bench;
pub mod cleanup;
pub mod cli;
pub mod companions;
pub mod config;
pub mod http;
pub mod intake;
pub mod lock;
pub mod metrics;
pub mod notification;
pub mod outcome;
pub mod secret;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod worker;
