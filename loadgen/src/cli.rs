//! Command line: options are parsed here, validated once into a plan by `plan::resolve`, and run by `run::run`.
//! Exit codes: 0 all SLOs hold, 1 an SLO failed, 2 invalid input or an invalid (loader-bound) run.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::run::{LoadgenError, RunOptions};

/// refbench load generator.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "refbench: run load profiles and measure tail latency and CPU cost honestly"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once at start-up and matched once: the size of the largest variant (a server's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a load profile and write result.json plus Goose's report.
    Run {
        /// Profile (TOML).
        profile: PathBuf,
        /// Output folder [default: results/runs/<time>-<profile>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace a profile target by an external URL: NAME=URL (repeatable).
        #[arg(long = "target", value_name = "NAME=URL")]
        targets: Vec<String>,
        /// Allow targets that are not on loopback.
        #[arg(long)]
        allow_remote: bool,
        /// No live progress lines.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Check a profile and print the resolved plan.
    Validate {
        /// Profile (TOML).
        profile: PathBuf,
        /// Same as for `run`.
        #[arg(long = "target", value_name = "NAME=URL")]
        targets: Vec<String>,
        /// Same as for `run`.
        #[arg(long)]
        allow_remote: bool,
    },
    /// Run a built-in server in the foreground.
    Serve {
        /// Which server.
        #[command(subcommand)]
        system: ServeSystem,
    },
    /// Compare two result.json files phase by phase (candidate against baseline).
    Compare {
        /// Baseline result.json.
        baseline: PathBuf,
        /// Candidate result.json.
        candidate: PathBuf,
        /// Exit 1 when p99 latency or CPU per request (floor-normalized when both have calibration) grows by more
        /// than this many percent.
        #[arg(long)]
        max_regression_pct: Option<f64>,
    },
    /// Internal: a loader process (spec on stdin, report on stdout).
    #[command(hide = true)]
    Worker,
}

/// Built-in servers.
#[derive(Debug, Subcommand)]
pub enum ServeSystem {
    /// The floor: minimal hyper HTTP/1.1 + HTTP/2 server, calibration unit and known-latency server.
    Floor(refbench_floor::ServeArgs),
    /// The ledger-writer: a durable double-entry ledger (see servers/ledger-writer/API.md).
    Ledger(refbench_ledger::ServeArgs),
    /// The token-issuer: an OAuth 2.0 / OpenID Connect issuer (see servers/token-issuer/API.md).
    Oidc(refbench_oidc::ServeArgs),
    /// The cdn-cache: a cache tier (edge or shield) or the synthetic origin.
    Cdn {
        /// Which role.
        #[command(subcommand)]
        role: CdnRole,
    },
}

/// Roles of `loadgen serve cdn`.
#[derive(Debug, Subcommand)]
pub enum CdnRole {
    /// A cache tier: `--role edge` (misses go to shields by rendezvous hashing) or `--role shield` (misses go to the
    /// origin).
    Cache(refbench_cdn::cache::CacheArgs),
    /// The synthetic origin: deterministic objects with cache headers, fault injection, fetch counts.
    Origin(refbench_cdn::origin::OriginArgs),
}

fn parse_targets(raw: &[String]) -> Result<Vec<(String, String)>, String> {
    raw.iter()
        .map(|t| {
            t.split_once('=')
                .filter(|(n, u)| !n.is_empty() && !u.is_empty())
                .map(|(n, u)| (n.to_string(), u.to_string()))
                .ok_or_else(|| format!("--target `{t}`: expected NAME=URL"))
        })
        .collect()
}

/// Parsed `--target` overrides, or `None` after printing why they are refused.
fn targets_or_report(raw: &[String]) -> Option<Vec<(String, String)>> {
    parse_targets(raw).map_err(|e| eprintln!("error: {e}")).ok()
}

/// Runs the CLI and returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    match cli.command {
        Command::Run {
            profile,
            out,
            targets,
            allow_remote,
            quiet,
        } => {
            let Some(target_overrides) = targets_or_report(&targets) else {
                return 2;
            };
            let opts = RunOptions {
                profile,
                out_dir: out,
                target_overrides,
                allow_remote,
                quiet,
            };
            match crate::run::run(&opts) {
                Ok(done) => {
                    print!("{}", crate::report::summary(&done.result));
                    println!("result: {}", done.out_dir.join("result.json").display());
                    done.exit_code()
                }
                Err(LoadgenError::Profile(e)) => {
                    eprintln!("error: {e}");
                    2
                }
                Err(LoadgenError::Run(e)) => {
                    eprintln!("error: run failed: {e}");
                    2
                }
            }
        }
        Command::Validate {
            profile,
            targets,
            allow_remote,
        } => {
            let Some(target_overrides) = targets_or_report(&targets) else {
                return 2;
            };
            let opts = RunOptions {
                profile,
                target_overrides,
                allow_remote,
                ..RunOptions::default()
            };
            match crate::run::load_plan(&opts) {
                Ok(plan) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&plan).expect("plain data serializes")
                    );
                    eprintln!(
                        "profile `{}` is valid: {} phases",
                        plan.name,
                        plan.phases.len()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    2
                }
            }
        }
        Command::Serve { system } => match system {
            ServeSystem::Floor(args) => match refbench_floor::run(args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: floor: {e}");
                    2
                }
            },
            ServeSystem::Ledger(args) => match refbench_ledger::run(args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: ledger: {e}");
                    2
                }
            },
            ServeSystem::Oidc(args) => match refbench_oidc::run(args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: oidc: {e}");
                    2
                }
            },
            ServeSystem::Cdn { role } => {
                let (what, r) = match role {
                    CdnRole::Cache(args) => (
                        "cdn cache",
                        refbench_cdn::cache::run(args).map_err(|e| e.to_string()),
                    ),
                    CdnRole::Origin(args) => (
                        "cdn origin",
                        refbench_cdn::origin::run(args).map_err(|e| e.to_string()),
                    ),
                };
                match r {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("error: {what}: {e}");
                        2
                    }
                }
            }
        },
        Command::Compare {
            baseline,
            candidate,
            max_regression_pct,
        } => match crate::compare::compare_files(&baseline, &candidate, max_regression_pct) {
            Ok((text, regressed)) => {
                print!("{text}");
                i32::from(regressed)
            }
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
        Command::Worker => match crate::worker::run_from_stdin() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: loader: {e}");
                3
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_overrides_need_name_and_url() {
        assert_eq!(
            parse_targets(&["a=http://127.0.0.1:1".into()]).unwrap(),
            vec![("a".to_string(), "http://127.0.0.1:1".to_string())]
        );
        assert!(parse_targets(&["a".into()]).is_err());
        assert!(parse_targets(&["=x".into()]).is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
