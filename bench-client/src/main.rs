//! `bench-client`: open-loop latency and throughput benchmark for `ocm-server`.
//! See the library's documentation, or `bench-client --help`.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: bench_client::cli::Args = argh::from_env();
    match bench_client::run::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-client: {e}");
            ExitCode::FAILURE
        }
    }
}
