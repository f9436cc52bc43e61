//! `refbench-floor`: see the library docs for what it serves.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use refbench_floor::ServeArgs;

/// The floor reference server: minimal HTTP/1.1 + h2c responder with optional
/// injected delay and stalls. Prints `REFBENCH_READY {json}` once listening;
/// stops on SIGTERM/SIGINT.
#[derive(Parser, Debug)]
#[command(name = "refbench-floor", version, about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match refbench_floor::run(cli.serve).context("refbench-floor") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
