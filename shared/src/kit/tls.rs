//! TLS for the gRPC servers and the sync client (rustls through tonic).
//!
//! A server with a certificate and key serves TLS only; with a client CA as
//! well it requires client certificates signed by it (mutual TLS). A client
//! trusts the given CA, or the system's roots when none is given, and presents
//! its own certificate when one is configured.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))
}

/// Server TLS from PEM files; `client_ca` makes client certificates mandatory.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, String> {
    let identity = Identity::from_pem(
        read(cert, "STORESYNC_TLS_CERT")?,
        read(key, "STORESYNC_TLS_KEY")?,
    );
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca, "STORESYNC_TLS_CLIENT_CA")?));
    }
    Ok(config)
}

/// Client TLS: trust `ca` (or the system roots), present `identity` (cert, key) if given.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, String> {
    let mut config = ClientTlsConfig::new();
    config = match ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca, "STORESYNC_MASTER_CA")?)),
        None => config.with_native_roots(),
    };
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(
            read(cert, "STORESYNC_MASTER_CLIENT_CERT")?,
            read(key, "STORESYNC_MASTER_CLIENT_KEY")?,
        ));
    }
    Ok(config)
}
