//! `loadgen`: parse the command line and hand over to the library.

use clap::Parser as _;

fn main() {
    let cli = refbench_loadgen::cli::Cli::parse();
    std::process::exit(refbench_loadgen::cli::main(cli));
}
