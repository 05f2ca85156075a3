mod lock;
mod redis_procs;
