//! `bench-client`: open-loop latency and throughput benchmark for `ocm-server`.
//! See the library's documentation, or `bench-client --help`;
//! `bench-client scale --help` for the scale-in-members mode.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

use argh::FromArgs;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("scale-child") {
        // One process of `bench-client scale`'s members, started by it.
        let rest: Vec<&str> = argv[2..].iter().map(String::as_str).collect();
        let result = bench_client::scale::procs::ChildArgs::from_args(&["scale-child"], &rest)
            .map_err(|e| e.output)
            .and_then(|a| bench_client::scale::procs::child_main(&a));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench-client: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = if argv.get(1).map(String::as_str) == Some("scale") {
        let rest: Vec<&str> = argv[2..].iter().map(String::as_str).collect();
        match bench_client::scale::ScaleArgs::from_args(&["bench-client scale"], &rest) {
            Ok(args) => bench_client::scale::run(&args),
            Err(early) => {
                // --help, or arguments argh refused: its own text, as argh::from_env does.
                return match early.status {
                    Ok(()) => {
                        println!("{}", early.output);
                        ExitCode::SUCCESS
                    }
                    Err(()) => {
                        eprintln!(
                            "{}\nRun bench-client scale --help for more information.",
                            early.output
                        );
                        ExitCode::FAILURE
                    }
                };
            }
        }
    } else {
        let args: bench_client::cli::Args = argh::from_env();
        bench_client::run::run(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-client: {e}");
            ExitCode::FAILURE
        }
    }
}
