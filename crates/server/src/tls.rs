//! HTTPS from a PEM certificate chain and key named in the configuration
//! (`tls_cert`, `tls_key`), with rustls, and their reload without a
//! restart: [`TlsCerts::reload`] (what SIGHUP calls) reads both files again
//! and, if they make a usable pair, hands the new one to every handshake
//! from then on. The listener and the connections already open are not
//! touched; a pair that does not load is logged and the old one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate pair could not be loaded. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("set both tls_cert and tls_key, or neither")]
    Half,
    #[error("cannot read the certificate chain {path}: {reason} (tls_cert must name a PEM file)")]
    Cert { path: PathBuf, reason: String },
    #[error(
        "cannot read the private key {path}: {reason} (tls_key must name a PEM PKCS#8, PKCS#1 or SEC1 key)"
    )]
    Key { path: PathBuf, reason: String },
    #[error("the key {key} does not fit the certificate {cert}: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The certificate pair in use, replaceable while the node runs.
#[derive(Debug)]
pub struct TlsCerts {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl TlsCerts {
    /// The pair of the configuration, if TLS is on.
    pub fn from_config(cfg: &crate::ServerConfig) -> Result<Option<Arc<TlsCerts>>, TlsError> {
        match (&cfg.tls_cert, &cfg.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Self::load(cert, key).map(|c| Some(Arc::new(c))),
            _ => Err(TlsError::Half),
        }
    }

    fn load(cert: &Path, key: &Path) -> Result<TlsCerts, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read_pair(&provider, cert, key)?;
        Ok(TlsCerts {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Reads both files again; new handshakes use the new pair. On error
    /// the old pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = read_pair(&self.provider, &self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(())
    }

    /// A handshake driver using whatever pair is current at each handshake.
    pub fn acceptor(self: &Arc<Self>) -> tokio_rustls::TlsAcceptor {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    }
}

impl ResolvesServerCert for TlsCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn read_pair(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block in it".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Reloads the pair on every SIGHUP, for as long as the returned future
/// runs. The handler is installed by this call, before the future is
/// polled: a SIGHUP sent once the node answers is never the default
/// action (which would end the process).
pub fn reload_on_sighup(certs: Arc<TlsCerts>) -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let hup = signal(SignalKind::hangup());
    async move {
        let mut hup = match hup {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: TLS certificates will not reload");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match certs.reload() {
                Ok(()) => tracing::info!(cert = %certs.cert.display(), "SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the old one")
                }
            }
        }
    }
}
