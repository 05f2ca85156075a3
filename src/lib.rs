//! Herald sends scheduled notifications stored in a MySQL table.
//!
//! Any number of identical worker processes poll the table; a Redlock per
//! notification (or per user) decides which instance sends what, and a fenced
//! claim in MySQL makes that decision safe even when Redis forgets a key or a
//! process stalls past its lock. See `docs/design.md` and the README for the
//! delivery protocol.
//!
//! # Module tour
//!
//! From the top down; a module imports only modules listed below it (one
//! exception: [`config`] takes cleanup's settings from `cleanup::config`,
//! which lives beside the service it configures and imports only
//! [`setting`] and [`store`]).
//!
//! * [`cli`] — the `herald` command line, one thin module per command;
//!   `main.rs` only calls into it.
//! * [`demo`] — `herald demo`: servers found or started, a realistic mix,
//!   a checking receiver, three workers (one killed), a summary.
//! * [`bench`](mod@bench) — `herald bench`: the shared benchmark workload against real
//!   worker processes, and its flags. Uses the library like any caller.
//! * [`app`] — the one place that assembles the store, the lock, the
//!   transports and metrics from validated settings, and runs the worker
//!   with its companions.
//! * [`companions`] — starts and stops the tasks beside the worker:
//!   * [`http`] — `/livez`, `/readyz`, `/metrics`;
//!   * [`cleanup`] — singleton, backlog-gated, batched pruning of finished
//!     rows (also `herald cleanup`), with its settings;
//!   * [`stats`] — fleet statistics, logged by one instance per window.
//! * [`worker`] — the poll → lock → claim → send → finish → release loop.
//! * [`services`] — the bag of services ([`services::Deps`]) the worker and
//!   its companions share.
//! * [`config`] — the global and per-command settings, as CLI flags with
//!   `HERALD_*` environment equivalents, and the channel config file
//!   (`HERALD_CONFIG`), validated at start-up.
//! * [`intake`] — JSON lines to rows, for `herald enqueue`.
//! * [`metrics`] — the Prometheus registry every part reports to.
//! * [`store`] — everything that talks to MySQL: connecting, migrations,
//!   enqueue, the candidate/claim/finish queries of the delivery protocol,
//!   the attempt history, status counts and pruning.
//! * [`transport`] — delivers one notification (webhook, log, file) and says
//!   whether a failure is transient or permanent.
//! * [`gate`] — fleet-wide rate limits and circuit breakers per channel,
//!   state in Redis (one Lua call per poll batch); the worker's adapter is
//!   `worker::admission`.
//! * [`lock`] — our own Redlock over 1..N Redis masters: single and batched
//!   acquire, extend, release, watchdog, once-per-window keys, health probe.
//!   Self-contained: usable as a library on its own.
//! * [`notification`] — the row model, statuses and input validation for
//!   enqueue.
//! * [`outcome`] — what became of a claimed row, and counters keyed by it.
//! * [`telemetry`] — tracing subscriber set-up (text or JSON).
//! * Leaves: [`cause`] (error chains printed with each cause once), [`policy`] (the retry schedule), [`setting`] (the error naming a setting, durations), [`name`]
//!   (the one rule for region and channel names), [`secret`] (URLs and
//!   strings whose secrets never reach logs, errors or `Debug` output; the
//!   one redaction).

pub mod admin;
pub mod app;
pub mod bench;
pub mod cause;
pub mod cleanup;
pub mod cli;
pub mod companions;
pub mod config;
pub mod demo;
pub mod gate;
pub mod http;
pub mod intake;
pub mod lock;
pub mod metrics;
pub mod name;
pub mod notification;
pub mod outcome;
pub mod policy;
pub mod secret;
pub mod services;
pub mod setting;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod worker;
