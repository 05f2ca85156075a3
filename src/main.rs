//! The `herald` binary: parse arguments, set up logging, call the library.

use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the lock and claim paths allocate many
/// small short-lived buffers (commands, keys, replies), and under 64
/// concurrent tasks glibc's arenas showed up as ~12 % of the worker's CPU.
/// Built without transparent huge pages (`no_thp`): with them a worker's
/// peak RSS in S1 was 50+ MiB instead of ~18.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    herald::cli::main(herald::cli::parse_args())
}
