//! One integration-test binary (faster to link than one per file). Every
//! test gets its own database and Redis key prefix, so they run in parallel.

mod bench;
mod browser;
mod channels;
mod channels_worker;
mod companions;
mod delivery_policy;
mod demo;
mod deploy;
mod faults;
mod firstrun;
mod foundation;
mod gate;
mod gate_edges;
mod harness;
mod helpers;
mod history;
mod limits;
mod lock;
mod lock_faults;
mod mariadb_proc;
mod on_time;
mod ops_api;
mod ops_browser;
mod ops_commands;
mod ops_hostile;
mod policy;
mod receiver;
mod redis_procs;
mod redis_tls;
mod secrets;
mod store_edges;
mod transport;
mod worker;
mod worker_faults;
