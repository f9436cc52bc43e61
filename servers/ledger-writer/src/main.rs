//! `ledger-writer`: the durable double-entry ledger server (see the library docs and `API.md`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The ledger-writer reference server.
#[derive(Parser, Debug)]
#[command(name = "ledger-writer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API; prints `REFBENCH_READY {json}` once listening, stops on SIGTERM/SIGINT.
    Serve(refbench_ledger::ServeArgs),
    /// Audit a data directory: checksums and hash chain from the first record, replay, currencies sum to zero.
    /// Prints the JSON report; exit 0 when it verifies, 1 when it does not. Read-only.
    Verify {
        /// The data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match refbench_ledger::run(args).context("ledger-writer serve") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Verify { data_dir } => {
            if !data_dir.join("log").is_dir() {
                eprintln!(
                    "error: --data-dir {}: no log/ folder here",
                    data_dir.display()
                );
                return ExitCode::from(2);
            }
            let report = refbench_ledger::verify::verify_dir(&data_dir, None);
            match serde_json::to_string_pretty(&report) {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
