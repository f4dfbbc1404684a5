//! The serving certificate: read from files, swapped in place when their content changes.
//!
//! Kubernetes updates Secret volumes by swapping a symlink, which file-event watchers miss;
//! the files are polled by content instead.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable PEM private key")]
    NoKey {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the key in {key} does not fit the certificate in {cert}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration failed")]
    Config(#[source] rustls::Error),
}

#[derive(Debug)]
struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: Arc<CertifiedKey>,
}

/// Serves the certificate pair from two files and reloads it when they change.
#[derive(Debug)]
pub struct FileCertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<Loaded>>,
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| CertError::NoKey {
        path: key_path.to_owned(),
        source,
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|source| CertError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source,
        })
}

impl FileCertResolver {
    /// Loads the pair; fails when either file is unreadable or they do not belong together.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, CertError> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = certified_key(cert_path, key_path, &cert_pem, &key_pem)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(Loaded {
                cert_pem,
                key_pem,
                key,
            })),
        }))
    }

    fn loaded(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files; swaps the served pair if their content changed and is valid.
    /// Returns whether a new pair is now served.
    pub fn reload(&self) -> Result<bool, CertError> {
        let cert_pem = read(&self.cert_path)?;
        let key_pem = read(&self.key_path)?;
        let current = self.loaded();
        if current.cert_pem == cert_pem && current.key_pem == key_pem {
            return Ok(false);
        }
        let key = certified_key(&self.cert_path, &self.key_path, &cert_pem, &key_pem)?;
        let loaded = Arc::new(Loaded {
            cert_pem,
            key_pem,
            key,
        });
        match self.current.write() {
            Ok(mut guard) => *guard = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok(true)
    }

    /// Polls the files every `interval` until `shutdown`. A pair that fails to load (for
    /// instance half-written) keeps the previous one in service and is retried.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {},
            }
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reload()).await {
                Ok(Ok(true)) => {
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded")
                }
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(error = %crate::error::error_chain(&error), "serving certificate not reloaded; the previous one stays in service")
                }
                Err(error) => tracing::warn!(%error, "certificate reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for FileCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.loaded().key.clone())
    }
}

/// TLS 1.2 and 1.3 with ALPN `h2` and `http/1.1`, serving from `resolver`.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(CertError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, host: &str) {
        let g = super::super::generate(&[host.to_owned()], Duration::from_secs(3600)).unwrap();
        std::fs::write(dir.join("tls.crt"), g.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), g.key_pem).unwrap();
    }

    /// A resolver serving a fresh pair for `a.example` from files in a temporary directory.
    fn resolver() -> (tempfile::TempDir, Arc<FileCertResolver>) {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "a.example");
        let r = FileCertResolver::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))
            .unwrap();
        (dir, r)
    }

    #[test]
    fn loads_and_reloads_only_on_change() {
        let (dir, r) = resolver();
        let first = r.loaded().key.clone();
        assert!(!r.reload().unwrap(), "unchanged files are not reloaded");
        write_pair(dir.path(), "b.example");
        assert!(r.reload().unwrap());
        assert!(!Arc::ptr_eq(&first, &r.loaded().key));
    }

    #[test]
    fn a_broken_pair_keeps_the_old_one() {
        let (dir, r) = resolver();
        let before = r.loaded().key.clone();
        // A key from another pair does not fit the certificate.
        let other =
            super::super::generate(&["c.example".to_owned()], Duration::from_secs(3600)).unwrap();
        std::fs::write(dir.path().join("tls.key"), other.key_pem).unwrap();
        assert!(matches!(r.reload(), Err(CertError::Mismatch { .. })));
        assert!(Arc::ptr_eq(&before, &r.loaded().key));
        std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
        assert!(matches!(r.reload(), Err(CertError::NoCertificate { .. })));
    }

    #[test]
    fn missing_files_are_named() {
        let err = FileCertResolver::load(
            Path::new("/nonexistent/tls.crt"),
            Path::new("/nonexistent/tls.key"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tls.crt"));
    }
}
