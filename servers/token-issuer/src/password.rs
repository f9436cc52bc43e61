//! User passwords: argon2id hashing at config load, and verification at login off the async reactor.
//!
//! Human passwords are low-entropy, so unlike client secrets (see the crate docs) they are stored only as argon2id
//! PHC strings (RFC 9106; `$argon2id$v=19$m=..,t=..,p=..$salt$hash`) and checked with the same slow, memory-hard
//! function. A plaintext test password from the config is hashed at start and dropped.
//!
//! Verification costs tens of milliseconds of CPU and `memory_kib` of memory. Run on a reactor thread it would
//! stall every other connection on that thread (client_credentials requests included) for that long, so it runs on
//! tokio's blocking pool. That pool is large (512 threads by default) and queues without bound, so a burst of logins
//! would still take all the CPU and `in_flight x memory_kib` of memory: a semaphore caps the checks in flight, and
//! when every permit is taken the login is answered 503 with `Retry-After` at once instead of waiting in a queue
//! that an attacker can make arbitrarily long.
//!
//! An unknown username is verified against a decoy hash made with the same parameters, so the answer takes the same
//! time as a wrong password and does not reveal which usernames exist.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use aws_lc_rs::rand;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::config::ConfigError;

/// OWASP's argon2id minimum: 19 MiB.
pub const DEFAULT_MEMORY_KIB: u32 = 19_456;
/// OWASP's argon2id minimum: two passes.
pub const DEFAULT_ITERATIONS: u32 = 2;
/// OWASP's argon2id minimum: one lane.
pub const DEFAULT_PARALLELISM: u32 = 1;
/// Default password checks in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// Least memory argon2 accepts (8 KiB per lane). Far below OWASP's advice: for tests only.
pub const MIN_MEMORY_KIB: u32 = 8;
/// Most memory per hash: 1 GiB (times `max_in_flight` at once).
pub const MAX_MEMORY_KIB: u32 = 1_048_576;
/// Most passes.
pub const MAX_ITERATIONS: u32 = 16;
/// Most lanes.
pub const MAX_PARALLELISM: u32 = 16;
/// Most password checks in flight.
pub const MAX_IN_FLIGHT: usize = 256;
/// Longest password accepted at login: longer ones cannot match a configured password and would only cost hashing.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// `Retry-After` when every permit is taken: a check takes well under a second.
pub const BUSY_RETRY_AFTER_S: u64 = 1;

/// `[password_hashing]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordHashingFile {
    /// argon2id memory cost, KiB.
    pub memory_kib: Option<u32>,
    /// argon2id passes.
    pub iterations: Option<u32>,
    /// argon2id lanes.
    pub parallelism: Option<u32>,
    /// Password checks running at once (each holds `memory_kib`).
    pub max_in_flight: Option<usize>,
}

/// The validated argon2id cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory cost, KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Checks in flight.
    pub max_in_flight: usize,
}

impl Default for PasswordParams {
    fn default() -> Self {
        PasswordParams {
            memory_kib: DEFAULT_MEMORY_KIB,
            iterations: DEFAULT_ITERATIONS,
            parallelism: DEFAULT_PARALLELISM,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

fn out_of_range(field: &str, lo: u64, hi: u64, got: u64) -> ConfigError {
    ConfigError::Invalid {
        field: format!("password_hashing.{field}"),
        reason: format!("must be between {lo} and {hi}, got {got}"),
    }
}

impl PasswordHashingFile {
    /// Validates the table (absent values take OWASP's defaults).
    pub fn resolve(self) -> Result<PasswordParams, ConfigError> {
        let d = PasswordParams::default();
        let p = PasswordParams {
            memory_kib: self.memory_kib.unwrap_or(d.memory_kib),
            iterations: self.iterations.unwrap_or(d.iterations),
            parallelism: self.parallelism.unwrap_or(d.parallelism),
            max_in_flight: self.max_in_flight.unwrap_or(d.max_in_flight),
        };
        let check = |f: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(out_of_range(f, lo, hi, v))
            }
        };
        check(
            "parallelism",
            p.parallelism.into(),
            1,
            MAX_PARALLELISM.into(),
        )?;
        // argon2 needs 8 KiB per lane.
        let min_memory = MIN_MEMORY_KIB.max(8 * p.parallelism);
        check(
            "memory_kib",
            p.memory_kib.into(),
            min_memory.into(),
            MAX_MEMORY_KIB.into(),
        )?;
        check("iterations", p.iterations.into(), 1, MAX_ITERATIONS.into())?;
        check(
            "max_in_flight",
            p.max_in_flight as u64,
            1,
            MAX_IN_FLIGHT as u64,
        )?;
        Ok(p)
    }
}

/// Why a password could not be hashed or a stored hash was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// The parameters are outside what argon2 accepts.
    #[error("argon2 parameters refused: {0}")]
    Params(String),
    /// The system CSPRNG failed while drawing a salt.
    #[error("the system random generator failed")]
    Random,
    /// Hashing failed.
    #[error("argon2 hashing failed: {0}")]
    Hash(String),
    /// A configured `password_hash` is not an argon2id PHC string within the cost bounds.
    #[error("{0}")]
    BadHash(String),
}

fn argon2(p: &PasswordParams) -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
        .map_err(|e| PasswordError::Params(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` with argon2id under `p` and a fresh 128-bit salt; the PHC string.
pub fn hash_password(password: &str, p: &PasswordParams) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt).map_err(|_| PasswordError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    argon2(p)?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Checks a configured PHC string: argon2id, version 0x13, and a cost within the configurable bounds (so a config
/// cannot make every login cost gigabytes).
pub fn check_phc(phc: &str) -> Result<(), PasswordError> {
    let h = PasswordHash::new(phc)
        .map_err(|e| PasswordError::BadHash(format!("not a PHC string: {e}")))?;
    if h.algorithm != Algorithm::Argon2id.ident() {
        return Err(PasswordError::BadHash(format!(
            "must be argon2id, got {}",
            h.algorithm
        )));
    }
    let params = Params::try_from(&h).map_err(|e| PasswordError::BadHash(e.to_string()))?;
    if params.m_cost() > MAX_MEMORY_KIB
        || params.t_cost() > MAX_ITERATIONS
        || params.p_cost() > MAX_PARALLELISM
    {
        return Err(PasswordError::BadHash(format!(
            "cost above the bounds (m <= {MAX_MEMORY_KIB}, t <= {MAX_ITERATIONS}, p <= {MAX_PARALLELISM})"
        )));
    }
    if h.hash.is_none() || h.salt.is_none() {
        return Err(PasswordError::BadHash("no salt or hash".into()));
    }
    Ok(())
}

/// Verifies `password` against a PHC string (argon2's own comparison is constant-time). Blocking: tens of ms.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &h)
        .is_ok()
}

/// All password checks are busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{in_flight} password checks are already running; retry after {BUSY_RETRY_AFTER_S} s")]
pub struct Busy {
    /// The bound.
    pub in_flight: usize,
}

/// Runs password checks on the blocking pool, at most `max_in_flight` at once, with a decoy for unknown users.
#[derive(Debug)]
pub struct PasswordChecker {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    decoy: Arc<str>,
}

impl PasswordChecker {
    /// A checker whose decoy hash has the cost `p` (what configured plaintext passwords get).
    pub fn new(p: &PasswordParams) -> Result<PasswordChecker, PasswordError> {
        let decoy = hash_password("decoy: never a user's password", p)?;
        Ok(PasswordChecker {
            permits: Arc::new(Semaphore::new(p.max_in_flight)),
            max_in_flight: p.max_in_flight,
            decoy: decoy.into(),
        })
    }

    /// Checks `password` against `phc` (or the decoy when the user is unknown). `Err(Busy)` when every permit is
    /// taken; `Ok(false)` for a wrong password, an unknown user, or a failed check.
    pub async fn check(&self, password: String, phc: Option<Arc<str>>) -> Result<bool, Busy> {
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| Busy {
                in_flight: self.max_in_flight,
            })?;
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| Arc::clone(&self.decoy));
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // Over-long passwords are refused after the same work, so their length tells nothing either.
            let ok = verify_password(&password, &phc);
            ok && password.len() <= MAX_PASSWORD_BYTES
        })
        .await
        .unwrap_or(false);
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordParams {
        PasswordParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            max_in_flight: 1,
        }
    }

    #[test]
    fn hashes_verify_and_are_argon2id_phc_strings() {
        let h = hash_password("correct horse", &cheap()).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{h}");
        check_phc(&h).unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct hors", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        let h2 = hash_password("correct horse", &cheap()).unwrap();
        assert_ne!(h, h2, "salted");
    }

    #[test]
    fn configured_hashes_must_be_argon2id_within_bounds() {
        let i =
            "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        assert!(check_phc(i).unwrap_err().to_string().contains("argon2id"));
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        assert!(check_phc(huge).is_err());
        assert!(check_phc("plaintext").is_err());
    }

    #[test]
    fn params_are_bounded_and_name_the_field() {
        let e = PasswordHashingFile {
            memory_kib: Some(4),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("password_hashing.memory_kib"), "{e}");
        let e = PasswordHashingFile {
            iterations: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("password_hashing.iterations"), "{e}");
        assert_eq!(
            PasswordHashingFile::default().resolve().unwrap(),
            PasswordParams::default()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn checker_refuses_unknown_users_and_sheds_load() {
        let c = PasswordChecker::new(&cheap()).unwrap();
        let h: Arc<str> = hash_password("pw", &cheap()).unwrap().into();
        assert_eq!(c.check("pw".into(), Some(Arc::clone(&h))).await, Ok(true));
        assert_eq!(c.check("no".into(), Some(Arc::clone(&h))).await, Ok(false));
        assert_eq!(c.check("pw".into(), None).await, Ok(false));
        // Hold the only permit: the next check is refused at once.
        let held = Arc::clone(&c.permits).try_acquire_owned().unwrap();
        assert_eq!(
            c.check("pw".into(), Some(h)).await,
            Err(Busy { in_flight: 1 })
        );
        drop(held);
    }
}
