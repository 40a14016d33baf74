//! TLS configuration from PEM files, with errors that name the file.
//!
//! The crypto provider is passed explicitly (aws-lc-rs, the project's one provider) so
//! nothing depends on a process-wide default being installed first.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

use super::MllpError;

/// A TLS acceptor from a PEM certificate chain (leaf first) and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1).
pub fn tls_acceptor(cert_pem_path: &Path, key_pem_path: &Path) -> Result<TlsAcceptor, MllpError> {
    server_config(cert_pem_path, key_pem_path, Path::new(""))
        .map(|c| TlsAcceptor::from(Arc::new(c)))
}

/// A server configuration (also used for HTTPS). With a non-empty `client_ca_pem_path`
/// every client must present a certificate issued by one of those CAs.
pub fn server_config(
    cert_pem_path: &Path,
    key_pem_path: &Path,
    client_ca_pem_path: &Path,
) -> Result<ServerConfig, MllpError> {
    let certs = read_certs(cert_pem_path)?;
    let key =
        PrivateKeyDer::from_pem_slice(&read_file(key_pem_path)?).map_err(|e| MllpError::Pem {
            path: key_pem_path.to_owned(),
            problem: format!("no usable private key: {e}"),
        })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(MllpError::Tls)?;
    let builder = if client_ca_pem_path.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(client_ca_pem_path)? {
            roots.add(cert).map_err(|e| MllpError::Pem {
                path: client_ca_pem_path.to_owned(),
                problem: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| MllpError::Pem {
            path: client_ca_pem_path.to_owned(),
            problem: format!("cannot verify clients with these CAs: {e}"),
        })?;
        builder.with_client_cert_verifier(verifier)
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|source| MllpError::KeyPair {
            cert: cert_pem_path.to_owned(),
            key: key_pem_path.to_owned(),
            source,
        })
}

/// A client configuration trusting only the CA certificates in `root_cert_pem_path`.
pub(super) fn client_config(root_cert_pem_path: &Path) -> Result<Arc<ClientConfig>, MllpError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(root_cert_pem_path)? {
        roots.add(cert).map_err(|e| MllpError::Pem {
            path: root_cert_pem_path.to_owned(),
            problem: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(MllpError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, MllpError> {
    std::fs::read(path).map_err(|source| MllpError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MllpError> {
    let pem_error = |problem: String| MllpError::Pem {
        path: path.to_owned(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(&read_file(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error("no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}
