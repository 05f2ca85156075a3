//! One integration-test binary (faster to link than one per file). Every
//! test gets its own database and Redis key prefix, so they run in parallel.

mod bench;
mod companions;
mod delivery_policy;
mod deploy;
mod faults;
mod foundation;
mod helpers;
mod history;
mod lock;
mod lock_faults;
mod mariadb_proc;
mod policy;
mod receiver;
mod redis_procs;
mod store_edges;
mod transport;
mod worker;
mod worker_faults;
