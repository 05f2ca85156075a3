//! One integration-test binary (faster to link than one per file). Every
//! test gets its own database and Redis key prefix, so they run in parallel.

mod bench;
mod channels;
mod channels_worker;
mod companions;
mod deploy;
mod faults;
mod foundation;
mod gate;
mod gate_edges;
mod helpers;
mod limits;
mod lock;
mod lock_faults;
mod mariadb_proc;
mod ops_api;
mod ops_commands;
mod policy;
mod receiver;
mod redis_procs;
mod store_edges;
mod transport;
mod worker;
mod worker_faults;
