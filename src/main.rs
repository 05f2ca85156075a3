//! The `herald` binary: parse arguments, set up logging, call the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    herald::cli::main(herald::cli::parse_args())
}
