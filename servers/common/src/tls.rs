//! Self-signed TLS material for servers that speak HTTPS.
//!
//! Each run generates a fresh certificate into its own directory; the server
//! announces the PEM path so the load generator can trust exactly that cert.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::CommonError;

/// A certificate and its private key, both on disk (PEM) and in memory (DER).
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// `dir/cert.pem`, readable by clients.
    pub cert_pem_path: PathBuf,
    /// `dir/key.pem`, mode 0600.
    pub key_pem_path: PathBuf,
    /// The certificate, DER encoded.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER encoded.
    pub key_der: Vec<u8>,
}

/// Generates a self-signed certificate whose SANs are `names` (DNS names, or
/// IP addresses such as "127.0.0.1", which become IP SANs) and writes
/// `cert.pem` and `key.pem` into `dir` (created if missing).
pub fn self_signed(dir: &Path, names: &[String]) -> Result<TlsMaterial, CommonError> {
    if names.is_empty() {
        return Err(CommonError::Tls(
            "a certificate needs at least one subject alternative name".into(),
        ));
    }
    let certified = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| CommonError::Tls(format!("generating certificate for {names:?}: {e}")))?;
    fs::create_dir_all(dir).map_err(|source| CommonError::Io {
        what: format!("create {}", dir.display()),
        source,
    })?;
    let cert_pem_path = dir.join("cert.pem");
    let key_pem_path = dir.join("key.pem");
    write_file(&cert_pem_path, certified.cert.pem().as_bytes(), 0o644)?;
    write_file(
        &key_pem_path,
        certified.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    Ok(TlsMaterial {
        cert_pem_path,
        key_pem_path,
        cert_der: certified.cert.der().to_vec(),
        key_der: certified.signing_key.serialize_der(),
    })
}

/// Writes `bytes` to `path`, creating it with `mode` so a key is never
/// briefly world-readable. An existing file keeps its inode but is
/// truncated, and its mode is forced to `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CommonError> {
    use std::os::unix::fs::PermissionsExt;
    let io_err = |source| CommonError::Io {
        what: format!("write {}", path.display()),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_err)?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err)?;
    f.write_all(bytes).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn writes_cert_and_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("tls");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let m = self_signed(&sub, &names).unwrap();

        let cert = fs::read_to_string(&m.cert_pem_path).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        let key = fs::read_to_string(&m.key_pem_path).unwrap();
        assert!(key.contains("PRIVATE KEY-----"), "{key}");
        let mode = fs::metadata(&m.key_pem_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // DER is an ASN.1 SEQUENCE; the SANs are in it verbatim: the DNS name
        // as ASCII, the IP SAN as its 4 raw octets.
        assert_eq!(m.cert_der[0], 0x30);
        assert_eq!(m.key_der[0], 0x30);
        let der = &m.cert_der;
        assert!(der.windows(9).any(|w| w == b"localhost"));
        assert!(der.windows(4).any(|w| w == [127, 0, 0, 1]));

        // Regenerating overwrites with a different key.
        let again = self_signed(&sub, &names).unwrap();
        assert_ne!(again.key_der, m.key_der);
        assert_ne!(fs::read_to_string(&m.key_pem_path).unwrap(), key);
    }

    #[test]
    fn needs_a_name() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            self_signed(dir.path(), &[]),
            Err(CommonError::Tls(_))
        ));
    }
}
