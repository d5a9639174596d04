//! TLS for the endpoints: the PEM certificate chain and private key of `metrics.tls` read into
//! an acceptor, with errors that name the file at fault. Serving over it is `connection`'s.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Reads the PEM certificate chain and private key into a TLS acceptor (HTTP/1.1 only).
pub(super) fn acceptor(tls: &TlsConfig) -> Result<TlsAcceptor> {
    let certs = read_certificates(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        anyhow!(
            "read the private key from metrics.tls.key_file {}: {}",
            tls.key_file.display(),
            pem_error(e, "private key")
        )
    })?;
    // The provider the rest of the binary uses (reqwest, object_store), named explicitly:
    // the process-wide default is ambiguous when more than one is compiled in.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("set up TLS for the metrics endpoints")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            let e = match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    "the private key is not the certificate's (the first in the file)".to_owned()
                }
                e => e.to_string(),
            };
            anyhow!(
                "use metrics.tls.cert_file {} with metrics.tls.key_file {}: {e}",
                tls.cert_file.display(),
                tls.key_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let what = || {
        format!(
            "read the certificates from metrics.tls.cert_file {}",
            path.display()
        )
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("{}: {}", what(), pem_error(e, "certificate")))?;
    if certs.is_empty() {
        bail!("{}: no PEM certificate in it", what());
    }
    Ok(certs)
}

/// pki-types says "no items found" when a file holds no PEM section of the wanted kind.
fn pem_error(e: rustls::pki_types::pem::Error, kind: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("no PEM {kind} in it"),
        e => e.to_string(),
    }
}
