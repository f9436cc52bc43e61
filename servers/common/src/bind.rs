//! Binding listeners.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::CommonError;

/// Default bind address: loopback, ephemeral port. Servers announce the real
/// port (see [`crate::announce`]), so parallel runs never collide.
pub const DEFAULT_BIND: &str = "127.0.0.1:0";

/// Binds a TCP listener; the error names the address. Tokio sets SO_REUSEADDR,
/// so a restarted server can rebind a port still in TIME_WAIT.
pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, CommonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CommonError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn binds_ephemeral_and_names_address_on_error() {
        let addr: SocketAddr = DEFAULT_BIND.parse().unwrap();
        let l = bind_tcp(addr).await.unwrap();
        let bound = l.local_addr().unwrap();
        assert_ne!(bound.port(), 0);
        // The port is taken now, so binding it again must fail and say where.
        let err = bind_tcp(bound).await.unwrap_err();
        assert!(matches!(err, CommonError::Bind { addr, .. } if addr == bound));
        assert!(err.to_string().contains(&bound.to_string()), "{err}");
    }
}
