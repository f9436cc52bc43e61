//! Flags, start-up and the serving loop: what the binary runs and what `loadgen serve oidc` will call.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use refbench_common::admin::{metrics_handle, serve_admin};
use refbench_common::announce::{Ready, announce};
use refbench_common::bind::{DEFAULT_BIND, bind_tcp};
use refbench_common::cpu::{ProcessArgs, pin_to_cpus};
use refbench_common::h1::serve_h1;
use refbench_common::http::Limits as HttpLimits;
use refbench_common::shutdown::{self, Shutdown};
use tokio::task::JoinHandle;

use crate::app::{MAX_FORM_BODY_BYTES, OidcApp, app};
use crate::clock::Clock;
use crate::config::{ConfigError, FileConfig, ResolvedConfig, validate_issuer};
use crate::error::OidcError;
use crate::keys::SigningAlg;
use crate::secret::{AdminToken, SecretHasher};

/// The `system` name in the readiness line.
pub const SYSTEM: &str = "oidc";

/// Command-line options of the token issuer; flatten into a clap `Parser`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    /// Address of the API listener (HTTP/1.1 and h2c).
    #[arg(long, visible_alias = "listen", value_name = "ADDR", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,

    /// Address of the admin listener (/metrics, /healthz).
    #[arg(long, visible_alias = "admin", value_name = "ADDR", default_value = DEFAULT_BIND)]
    pub admin_bind: SocketAddr,

    /// Issuer identifier (`iss`, discovery); overrides the config. Default: http://<bound API address>.
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,

    /// Signing algorithm; overrides the config. Default ES256.
    #[arg(long, value_enum, ignore_case = true, value_name = "ALG")]
    pub alg: Option<SigningAlg>,

    /// TOML file with clients, users, lifetimes and key policy (see API.md); replaces the embedded test clients.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Rotate the signing keys every N seconds (0 = only on demand); overrides the config.
    #[arg(long, value_name = "N")]
    pub rotate_every_s: Option<u64>,

    /// File holding the bearer secret of `POST /admin/rotate` (at least 22 characters). Without it the admin
    /// endpoint is disabled.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// File holding the pepper (unpadded base64url of 32 bytes) that `client_secret_hmac` values were made under.
    /// Default: a random pepper per process (plaintext `client_secret`s are hashed under it at start).
    #[arg(long, value_name = "FILE")]
    pub secret_pepper_file: Option<PathBuf>,

    /// --threads, --cpus, --max-connections.
    #[command(flatten)]
    pub process: ProcessArgs,

    /// `ALIAS=URL`: the config's trusted issuer with that `alias` is at URL (its exact `iss`), whatever the file
    /// says. For issuers started on ephemeral ports, e.g. by `loadgen run` (`{url:org-a}` in a target's args).
    /// Repeatable.
    #[arg(long, value_name = "ALIAS=URL")]
    pub trusted_issuer: Vec<String>,
}

impl Default for ServeArgs {
    /// The same values as the command-line defaults.
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Wrapper::try_parse_from(["token-issuer"])
            .expect("defaults of ServeArgs parse")
            .serve
    }
}

/// Validated options.
#[derive(Debug, Clone)]
pub struct ServePlan {
    /// API listener.
    pub bind: SocketAddr,
    /// Admin listener.
    pub admin_bind: SocketAddr,
    /// The resolved configuration (flags applied).
    pub config: ResolvedConfig,
    /// The admin bearer secret, if enabled.
    pub admin_token: Option<AdminToken>,
    /// Runtime threads.
    pub threads: usize,
    /// Cores to pin to; empty = no pinning.
    pub cpus: Vec<usize>,
    /// HTTP limits of the API listener.
    pub http: HttpLimits,
}

fn read_flag_file(flag: &'static str, path: &Path) -> Result<String, OidcError> {
    std::fs::read_to_string(path).map_err(|source| OidcError::ReadFile {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

impl ServeArgs {
    /// Reads the files the flags name and validates everything once; errors name the flag or config field.
    pub fn resolve(&self) -> Result<ServePlan, OidcError> {
        let process = self
            .process
            .validate()
            .map_err(|(flag, reason)| OidcError::invalid(flag, reason))?;
        if let Some(i) = &self.issuer {
            validate_issuer(i).map_err(|r| OidcError::invalid("--issuer", r))?;
        }
        let (hasher, pepper_given) = match &self.secret_pepper_file {
            Some(p) => {
                let text = read_flag_file("--secret-pepper-file", p)?;
                let h = SecretHasher::from_pepper_b64(&text)
                    .map_err(|e| OidcError::invalid("--secret-pepper-file", e.to_string()))?;
                (h, true)
            }
            None => (
                SecretHasher::random()
                    .map_err(|e| OidcError::invalid("--secret-pepper-file", e.to_string()))?,
                false,
            ),
        };
        let admin_token = match &self.admin_token_file {
            Some(p) => {
                let text = read_flag_file("--admin-token-file", p)?;
                let token = text.trim();
                if token.chars().count() < AdminToken::MIN_CHARS
                    || token.chars().any(|c| !c.is_ascii_graphic())
                {
                    return Err(OidcError::invalid(
                        "--admin-token-file",
                        format!(
                            "the token must be at least {} visible ASCII characters",
                            AdminToken::MIN_CHARS
                        ),
                    ));
                }
                Some(AdminToken::new(token))
            }
            None => None,
        };
        let mut file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::embedded(),
        };
        if self.issuer.is_some() {
            file.issuer.clone_from(&self.issuer);
        }
        if self.alg.is_some() {
            file.signing_alg = self.alg;
        }
        if self.rotate_every_s.is_some() {
            file.rotate_every_s = self.rotate_every_s;
        }
        for o in &self.trusted_issuer {
            let bad = |r: String| OidcError::invalid("--trusted-issuer", r);
            let (alias, url) = o
                .split_once('=')
                .ok_or_else(|| bad(format!("{o:?}: give ALIAS=URL")))?;
            validate_issuer(url).map_err(|r| bad(format!("{o:?}: {r}")))?;
            let t = file
                .trusted_issuers
                .iter_mut()
                .flatten()
                .find(|t| t.alias.as_deref() == Some(alias))
                .ok_or_else(|| {
                    bad(format!(
                        "the config has no trusted issuer with alias {alias:?}"
                    ))
                })?;
            t.issuer = url.to_string();
        }
        let config = file.resolve(hasher, pepper_given).map_err(|e| match e {
            // A value the flag set is the flag's fault.
            ConfigError::Invalid { field, reason }
                if field == "rotate_every_s" && self.rotate_every_s.is_some() =>
            {
                OidcError::invalid("--rotate-every-s", reason)
            }
            e => OidcError::Config(e),
        })?;
        Ok(ServePlan {
            bind: self.bind,
            admin_bind: self.admin_bind,
            config,
            admin_token,
            threads: process.threads,
            cpus: process.cpus,
            http: HttpLimits {
                max_connections: process.max_connections,
                max_body_bytes: MAX_TRANSPORT_BODY_BYTES,
                ..HttpLimits::default()
            },
        })
    }
}

/// Largest request body the HTTP server reads at all. It is larger than the form endpoints' own limit
/// ([`MAX_FORM_BODY_BYTES`]) so that a body over that limit still reaches the endpoint and gets an OAuth error
/// (RFC 6749 §5.2, status 413); only a body past this one is refused by the transport (a plain 413, unread).
pub const MAX_TRANSPORT_BODY_BYTES: usize = 64 * 1024;
const _: () = assert!(MAX_TRANSPORT_BODY_BYTES > MAX_FORM_BODY_BYTES);

/// The issuer identifier when none is configured: `http://<bound address>`. A wildcard address names no host a
/// client could use, so it needs `--issuer`.
pub fn derive_issuer(addr: SocketAddr) -> Result<String, OidcError> {
    if addr.ip().is_unspecified() {
        return Err(OidcError::invalid(
            "--issuer",
            format!("required when binding the wildcard address {addr}"),
        ));
    }
    Ok(format!("http://{addr}"))
}

/// A token issuer running on the caller's runtime (see [`start`]).
#[derive(Debug)]
pub struct Started {
    /// Bound address of the API listener.
    pub http_addr: SocketAddr,
    /// Bound address of the admin listener.
    pub admin_addr: SocketAddr,
    /// The issuer identifier in use.
    pub issuer: String,
    /// The service (shared with the listener): tests reach the key ring and clock through it.
    pub app: OidcApp,
    http: JoinHandle<Result<(), refbench_common::CommonError>>,
    admin: JoinHandle<Result<(), refbench_common::CommonError>>,
    rotator: Option<JoinHandle<()>>,
    refreshers: Vec<JoinHandle<()>>,
}

impl Started {
    /// The readiness announcement.
    pub fn ready(&self) -> Ready {
        let mut listeners = BTreeMap::new();
        listeners.insert("http".to_string(), self.http_addr);
        listeners.insert("admin".to_string(), self.admin_addr);
        Ready {
            system: SYSTEM.to_string(),
            pid: std::process::id(),
            listeners,
            tls_cert_pem: None,
        }
    }

    /// Waits until both listeners drained and the rotation task stopped (after the shutdown fired).
    pub async fn join(self) -> Result<(), OidcError> {
        let http = flatten("http", self.http.await);
        let admin = flatten("admin", self.admin.await);
        let rotator = match self.rotator {
            Some(t) => t.await.map_err(|e| OidcError::Task {
                task: "rotation",
                reason: e.to_string(),
            }),
            None => Ok(()),
        };
        for r in self.refreshers {
            r.await.map_err(|e| OidcError::Task {
                task: "jwks refresh",
                reason: e.to_string(),
            })?;
        }
        http.and(admin).and(rotator)
    }
}

fn flatten(
    task: &'static str,
    r: Result<Result<(), refbench_common::CommonError>, tokio::task::JoinError>,
) -> Result<(), OidcError> {
    match r {
        Ok(inner) => inner.map_err(OidcError::from),
        Err(e) => Err(OidcError::Task {
            task,
            reason: e.to_string(),
        }),
    }
}

/// Rotates every `every_s` seconds until shutdown. A refused rotation (too many retired keys still published) is
/// reported and retried at the next tick; it cannot happen with a period the config accepted.
async fn rotate_every(app: OidcApp, every_s: u64, mut shutdown: Shutdown) {
    let period = Duration::from_secs(every_s);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.wait() => break,
            _ = tick.tick() => {
                if let Err(e) = app.issuer().rotate() {
                    eprintln!("token-issuer: scheduled key rotation failed: {e}");
                }
            }
        }
    }
}

/// Binds both listeners, builds the service (the issuer derived from the bound address unless configured) and
/// serves on the current runtime until `shutdown`. Installs the global Prometheus recorder first.
pub async fn start(plan: &ServePlan, shutdown: Shutdown) -> Result<Started, OidcError> {
    let handle = metrics_handle()?;
    let http = bind_tcp(plan.bind).await?;
    let admin = bind_tcp(plan.admin_bind).await?;
    let http_addr = http.local_addr().map_err(|source| OidcError::LocalAddr {
        listener: "http",
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| OidcError::LocalAddr {
        listener: "admin",
        source,
    })?;
    let issuer = match &plan.config.issuer {
        Some(i) => i.clone(),
        None => derive_issuer(http_addr)?,
    };
    let oidc = app(
        plan.config.clone(),
        &issuer,
        Clock::System,
        plan.admin_token.clone(),
    )?;
    // Trusted issuers' keys before serving (and so before REFBENCH_READY): a token of theirs must verify at once.
    oidc.issuer().federation().fetch_at_start().await?;
    let refreshers = oidc
        .issuer()
        .federation()
        .issuers()
        .iter()
        .filter(|t| t.is_fetched())
        .map(|t| tokio::spawn(std::sync::Arc::clone(t).keep_fresh(shutdown.clone())))
        .collect();
    let http = tokio::spawn(serve_h1(
        http,
        oidc.clone(),
        plan.http.clone(),
        shutdown.clone(),
    ));
    let admin = tokio::spawn(serve_admin(admin, handle, shutdown.clone()));
    let rotator = plan
        .config
        .rotate_every_s
        .map(|every| tokio::spawn(rotate_every(oidc.clone(), every, shutdown)));
    Ok(Started {
        http_addr,
        admin_addr,
        issuer,
        app: oidc,
        http,
        admin,
        rotator,
        refreshers,
    })
}

/// The whole server: validate, pin, build the runtime, bind, announce `REFBENCH_READY`, serve until
/// SIGTERM/SIGINT, drain, return.
pub fn run(args: ServeArgs) -> Result<(), OidcError> {
    let plan = args.resolve()?;
    // Before the runtime exists, so every thread it spawns inherits the mask.
    pin_to_cpus(&plan.cpus)?;
    let runtime = refbench_common::runtime::build(plan.threads, "oidc-http").map_err(|source| {
        OidcError::Spawn {
            what: "tokio runtime",
            source,
        }
    })?;
    let result = runtime.block_on(async {
        let (trigger, shutdown) = shutdown::channel();
        // Handlers go in before the announce: the parent may signal us the moment it reads the line.
        shutdown::trigger_on_signals(trigger)?;
        let started = start(&plan, shutdown).await?;
        announce(&started.ready());
        started.join().await
    });
    runtime.shutdown_timeout(refbench_common::runtime::SHUTDOWN_TIMEOUT);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let plan = ServeArgs::default().resolve().unwrap();
        assert_eq!(plan.config.clients.len(), 7);
        assert!(plan.admin_token.is_none());
        assert_eq!(plan.http.max_body_bytes, MAX_TRANSPORT_BODY_BYTES);
    }

    #[test]
    fn flags_override_and_errors_name_the_flag() {
        let args = ServeArgs {
            alg: Some(SigningAlg::EdDsa),
            rotate_every_s: Some(600),
            issuer: Some("https://id.test".into()),
            ..ServeArgs::default()
        };
        let plan = args.resolve().unwrap();
        assert_eq!(plan.config.signing_alg, SigningAlg::EdDsa);
        assert_eq!(plan.config.rotate_every_s, Some(600));
        assert_eq!(plan.config.issuer.as_deref(), Some("https://id.test"));
        let e = ServeArgs {
            rotate_every_s: Some(1),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().starts_with("--rotate-every-s"), "{e}");
        let e = ServeArgs {
            issuer: Some("id.test".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().starts_with("--issuer"), "{e}");
        for bad in ["org-a", "nobody=http://127.0.0.1:9", "org-a=ftp://x"] {
            let e = ServeArgs {
                trusted_issuer: vec![bad.into()],
                ..ServeArgs::default()
            }
            .resolve()
            .unwrap_err();
            assert!(e.to_string().starts_with("--trusted-issuer"), "{bad}: {e}");
        }
        let e = ServeArgs {
            admin_token_file: Some("/nonexistent/token".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().starts_with("--admin-token-file"), "{e}");
    }

    #[test]
    fn issuer_from_the_bound_address() {
        assert_eq!(
            derive_issuer("127.0.0.1:8080".parse().unwrap()).unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            derive_issuer("[::1]:9".parse().unwrap()).unwrap(),
            "http://[::1]:9"
        );
        assert!(derive_issuer("0.0.0.0:1".parse().unwrap()).is_err());
    }
}
