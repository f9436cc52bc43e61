//! The readiness line a reference server prints once it is listening.
//!
//! Servers bind ephemeral ports (`127.0.0.1:0`) so that parallel runs never
//! collide; the parent learns the real ports by reading the child's stdout line
//! by line until it sees a line starting with [`READY_PREFIX`].

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Prefix of the readiness line; the rest of the line is the JSON of [`Ready`].
pub const READY_PREFIX: &str = "REFBENCH_READY ";

/// What a server tells its parent once every listener is bound.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ready {
    /// Which reference system this is, e.g. "floor".
    pub system: String,
    /// The server's process id, so the parent can signal the right process.
    pub pid: u32,
    /// Bound listeners by role, e.g. "http", "admin".
    pub listeners: BTreeMap<String, SocketAddr>,
    /// PEM certificate clients should trust, when the server speaks TLS.
    pub tls_cert_pem: Option<PathBuf>,
}

/// Renders the readiness line without the trailing newline.
pub fn ready_line(ready: &Ready) -> String {
    // Serialization can only fail on a non-UTF-8 certificate path; fall back
    // to a lossy rendering of it so the line is never silently lost.
    let json = serde_json::to_string(ready).unwrap_or_else(|_| {
        let lossy = Ready {
            tls_cert_pem: ready
                .tls_cert_pem
                .as_ref()
                .map(|p| PathBuf::from(p.to_string_lossy().into_owned())),
            ..ready.clone()
        };
        serde_json::to_string(&lossy).unwrap_or_else(|_| String::from("{}"))
    });
    format!("{READY_PREFIX}{json}")
}

/// Prints exactly one `REFBENCH_READY {json}` line to stdout and flushes.
///
/// The whole line is written under one stdout lock so it cannot interleave
/// with other output. A write error is ignored: if the parent closed our
/// stdout it is no longer listening, and the server should keep its own
/// shutdown path rather than die here.
pub fn announce(ready: &Ready) {
    let mut line = ready_line(ready);
    line.push('\n');
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.write_all(line.as_bytes());
    let _ = lock.flush();
}

/// Parses a readiness line; `None` for any other line (logs, blank, malformed).
///
/// Trailing `\r`/`\n` are tolerated so callers can pass lines straight from
/// `read_line`.
pub fn parse_ready_line(line: &str) -> Option<Ready> {
    let rest = line
        .trim_end_matches(['\r', '\n'])
        .strip_prefix(READY_PREFIX)?;
    serde_json::from_str(rest).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ready {
        let mut listeners = BTreeMap::new();
        listeners.insert("http".to_string(), "127.0.0.1:4321".parse().unwrap());
        listeners.insert("admin".to_string(), "[::1]:9".parse().unwrap());
        Ready {
            system: "floor".into(),
            pid: 42,
            listeners,
            tls_cert_pem: Some(PathBuf::from("/tmp/x/cert.pem")),
        }
    }

    #[test]
    fn line_round_trips() {
        let r = sample();
        let line = ready_line(&r);
        assert!(line.starts_with(READY_PREFIX));
        assert!(!line.contains('\n'), "must be a single line: {line}");
        assert_eq!(parse_ready_line(&line), Some(r.clone()));
        assert_eq!(parse_ready_line(&format!("{line}\r\n")), Some(r));
    }

    #[test]
    fn other_lines_are_not_ready() {
        assert_eq!(parse_ready_line(""), None);
        assert_eq!(parse_ready_line("hello"), None);
        assert_eq!(parse_ready_line("REFBENCH_READY"), None);
        assert_eq!(parse_ready_line("REFBENCH_READY {not json"), None);
        assert_eq!(parse_ready_line(" REFBENCH_READY {}"), None);
    }

    #[test]
    fn no_tls_is_null() {
        let r = Ready {
            tls_cert_pem: None,
            ..sample()
        };
        let line = ready_line(&r);
        assert!(line.contains("\"tls_cert_pem\":null"), "{line}");
        assert_eq!(parse_ready_line(&line), Some(r));
    }
}
