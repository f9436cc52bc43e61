//! `token-issuer`: the OAuth 2.0 / OpenID Connect token issuer (see the library docs and `API.md`).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The token-issuer reference server.
#[derive(Parser, Debug)]
#[command(name = "token-issuer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the issuer; prints `REFBENCH_READY {json}` once listening, stops on SIGTERM/SIGINT.
    Serve(Box<refbench_oidc::ServeArgs>),
    /// Read a client secret from the first line of stdin and print HMAC-SHA256(pepper, secret) in unpadded
    /// base64url: the `client_secret_hmac` value for a config served with the same `--secret-pepper-file`.
    HashSecret {
        /// File holding the pepper (unpadded base64url of 32 bytes).
        #[arg(long, value_name = "FILE")]
        secret_pepper_file: PathBuf,
    },
}

fn hash_secret(pepper_file: &PathBuf) -> anyhow::Result<String> {
    let pepper = std::fs::read_to_string(pepper_file)
        .with_context(|| format!("--secret-pepper-file {}", pepper_file.display()))?;
    let hasher = refbench_oidc::secret::SecretHasher::from_pepper_b64(&pepper)
        .with_context(|| format!("--secret-pepper-file {}", pepper_file.display()))?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the secret from stdin")?;
    let secret = line.trim_end_matches(['\r', '\n']);
    let n = secret.chars().count();
    anyhow::ensure!(
        n >= refbench_oidc::secret::MIN_CLIENT_SECRET_CHARS,
        "the secret has {n} characters; generated secrets have at least {}",
        refbench_oidc::secret::MIN_CLIENT_SECRET_CHARS
    );
    Ok(hasher.hash(secret.as_bytes()).to_b64())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => refbench_oidc::run(*args).context("token-issuer serve"),
        Command::HashSecret { secret_pepper_file } => {
            hash_secret(&secret_pepper_file).map(|h| println!("{h}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
