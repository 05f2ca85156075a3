//! The `herald` binary: parse arguments, set up logging, call the library.

use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the lock and claim paths allocate many
/// small short-lived buffers (commands, keys, replies), and under 64
/// concurrent tasks glibc's arenas showed up as ~12 % of the worker's CPU.
/// Built without transparent huge pages (`no_thp`): with them a worker's
/// peak RSS in S1 was 50+ MiB instead of ~18.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3), which the Rust
/// bindings do not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Freed pages go back to the OS at once rather than after mimalloc's
    // default delay (one second in the v3 it builds): with large payloads
    // (read at send time, under the payload budget) a worker's peak RSS
    // was twice its live memory, ~100 MiB against ~50 for 150 sends of
    // 1 MB. S1's throughput did not change (three alternating pairs).
    // SAFETY: called first, before any other thread exists; the option is
    // a plain integer that mimalloc reads when it purges.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0)
    };
    herald::cli::main(herald::cli::parse_args())
}
