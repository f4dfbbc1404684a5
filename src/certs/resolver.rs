//! The serving certificate: a certified key the TLS listener resolves per handshake, swapped
//! in place when it is renewed, so a new certificate is served without a restart and open
//! connections keep theirs.
//!
//! [`FileSource`] fills it from PEM files. Kubernetes updates Secret volumes by swapping a
//! symlink, which file-event watchers miss; the files are polled by content instead.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use jiff::Timestamp;
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert, danger::ClientCertVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_util::sync::CancellationToken;

use super::{CertMetrics, Validity};
use crate::error::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} holds no PEM certificate")]
    NoCertificate { what: String },
    #[error("{what} holds no usable PEM private key")]
    NoKey {
        what: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the key does not fit the certificate in {what}")]
    Mismatch {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the certificate in {what} has no readable validity")]
    Validity {
        what: String,
        #[source]
        source: super::ParseCertError,
    },
    #[error("TLS configuration failed")]
    Config(#[source] rustls::Error),
    #[error("{what} is not valid PEM")]
    Pem {
        what: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} holds a certificate that cannot be a trust anchor")]
    TrustAnchor {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("could not build the client certificate verifier from {what}")]
    ClientVerifier {
        what: String,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// A certificate ready to serve, with what it was made from. Its `Debug` shows the validity
/// only: the key must never reach a log through `{:?}`.
struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    validity: Validity,
    key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

impl Loaded {
    /// `what` names the pair in errors (file names, or "the issued serving certificate").
    fn parse(what: &str, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Self, CertError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(CertError::NoCertificate { what: what.into() });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| CertError::NoKey {
            what: what.into(),
            source,
        })?;
        let validity = Validity::of_der(&chain[0]).map_err(|source| CertError::Validity {
            what: what.into(),
            source,
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider)
            .map(Arc::new)
            .map_err(|source| CertError::Mismatch {
                what: what.into(),
                source,
            })?;
        Ok(Self {
            cert_pem,
            key_pem,
            validity,
            key,
        })
    }
}

/// The certificate the webhook listener serves. Cheap to share behind an `Arc`. Its `Debug`
/// shows the validity only.
pub struct ServingCert {
    current: RwLock<Arc<Loaded>>,
    metrics: CertMetrics,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("validity", &self.validity())
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Serves the PEM pair from now on; `what` names it in errors.
    pub fn new(
        what: &str,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
        metrics: CertMetrics,
    ) -> Result<Arc<Self>, CertError> {
        let loaded = Loaded::parse(what, cert_pem, key_pem)?;
        metrics.expires("serving", loaded.validity.not_after);
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(loaded)),
            metrics,
        }))
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Serves a new pair if it differs from the served one and is valid. Returns whether a
    /// new pair is now served; a broken pair leaves the old one in service.
    pub fn replace(
        &self,
        what: &str,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
    ) -> Result<bool, CertError> {
        let current = self.loaded();
        if current.cert_pem == cert_pem && current.key_pem == key_pem {
            return Ok(false);
        }
        let loaded = Arc::new(Loaded::parse(what, cert_pem, key_pem)?);
        self.metrics.expires("serving", loaded.validity.not_after);
        self.metrics.rotated("serving");
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(true)
    }

    /// When the served certificate expires and when it was issued.
    pub fn validity(&self) -> Validity {
        self.loaded().validity
    }

    /// Due for renewal at `now`: less than a third of its lifetime left.
    pub fn due(&self, now: Timestamp) -> bool {
        self.validity().due(now)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.loaded().key.clone())
    }
}

/// The serving pair from `--tls-cert-file` and `--tls-key-file`, re-read when they change.
/// Its `Debug` shows the paths and the validity, never the key.
pub struct FileSource {
    cert_path: PathBuf,
    key_path: PathBuf,
    serving: Arc<ServingCert>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("serving", &self.serving)
            .finish()
    }
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

impl FileSource {
    /// Loads the pair; fails when either file is unreadable or they do not belong together.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        metrics: CertMetrics,
    ) -> Result<Self, CertError> {
        let what = format!("{} and {}", cert_path.display(), key_path.display());
        let serving = ServingCert::new(&what, read(cert_path)?, read(key_path)?, metrics)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            serving,
        })
    }

    /// The certificate the listener serves.
    pub fn serving(&self) -> Arc<ServingCert> {
        self.serving.clone()
    }

    /// Re-reads the files; serves them if their content changed and is valid.
    pub fn reload(&self) -> Result<bool, CertError> {
        let what = format!(
            "{} and {}",
            self.cert_path.display(),
            self.key_path.display()
        );
        self.serving
            .replace(&what, read(&self.cert_path)?, read(&self.key_path)?)
    }

    /// Polls the files every `interval` until `shutdown`. A pair that fails to load (for
    /// instance half-written) keeps the previous one in service and is retried.
    pub async fn watch(self, interval: Duration, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let cert = this.cert_path.display().to_string();
        poll_files("serving certificate", interval, shutdown, move || {
            let reloaded = this.reload()?;
            if reloaded {
                tracing::info!(%cert, "serving certificate reloaded");
            }
            Ok(reloaded)
        })
        .await;
    }
}

/// Calls `reload` off the async runtime every `interval` until `shutdown`. A reload that
/// fails is logged, and what was loaded before stays in service until a later one succeeds.
pub(super) async fn poll_files(
    what: &'static str,
    interval: Duration,
    shutdown: CancellationToken,
    reload: impl Fn() -> Result<bool, CertError> + Send + Sync + 'static,
) {
    let reload = Arc::new(reload);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {},
        }
        let once = reload.clone();
        match tokio::task::spawn_blocking(move || once()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(
                error = %error_chain(&error),
                "{what} not reloaded; the previous one stays in service"
            ),
            Err(error) => tracing::warn!(%error, "{what} reload task failed"),
        }
    }
}

/// TLS 1.2 and 1.3 with ALPN `h2` and `http/1.1`, serving from `resolver`; with
/// `client_verifier`, a client certificate it accepts is required.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<ServerConfig, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(CertError::Config)?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{assert_samples, registered};

    fn write_pair(dir: &Path, host: &str) {
        let g = super::super::generate(&[host.to_owned()], Duration::from_secs(3600)).unwrap();
        std::fs::write(dir.join("tls.crt"), g.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), g.key_pem).unwrap();
    }

    /// A source serving a fresh pair for `a.example` from files in a temporary directory.
    fn source(metrics: CertMetrics) -> (tempfile::TempDir, FileSource) {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "a.example");
        let s = FileSource::load(
            &dir.path().join("tls.crt"),
            &dir.path().join("tls.key"),
            metrics,
        )
        .unwrap();
        (dir, s)
    }

    #[test]
    fn loads_and_reloads_only_on_change() {
        let (registry, metrics) = registered(CertMetrics::register);
        let (dir, s) = source(metrics);
        let first = s.serving().loaded().key.clone();
        assert!(!s.reload().unwrap(), "unchanged files are not reloaded");
        write_pair(dir.path(), "b.example");
        assert!(s.reload().unwrap());
        assert!(!Arc::ptr_eq(&first, &s.serving().loaded().key));
        assert_samples(
            &registry,
            &["restatus_certificate_rotations_total{certificate=\"serving\"} 1"],
        );
        let expiry = s.serving().validity().not_after.as_second();
        assert_samples(
            &registry,
            &[&format!(
                "restatus_certificate_expiry_timestamp_seconds{{certificate=\"serving\"}} {expiry}"
            )],
        );
    }

    #[test]
    fn a_broken_pair_keeps_the_old_one() {
        let (_registry, metrics) = registered(CertMetrics::register);
        let (dir, s) = source(metrics);
        let before = s.serving().loaded().key.clone();
        // A key from another pair does not fit the certificate.
        let other =
            super::super::generate(&["c.example".to_owned()], Duration::from_secs(3600)).unwrap();
        std::fs::write(dir.path().join("tls.key"), other.key_pem).unwrap();
        assert!(matches!(s.reload(), Err(CertError::Mismatch { .. })));
        assert!(Arc::ptr_eq(&before, &s.serving().loaded().key));
        std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
        assert!(matches!(s.reload(), Err(CertError::NoCertificate { .. })));
    }

    #[test]
    fn nothing_that_holds_the_serving_key_prints_it() {
        let (_registry, metrics) = registered(CertMetrics::register);
        let (dir, source) = source(metrics);
        let key_pem = std::fs::read_to_string(dir.path().join("tls.key")).unwrap();
        let serving = source.serving();
        let loaded = serving.loaded();
        for debug in [
            format!("{loaded:?}"),
            format!("{serving:?}"),
            format!("{source:?}"),
            format!("{source:#?}"),
        ] {
            super::super::assert_no_key(&debug, &key_pem);
            assert!(
                debug.contains("not_after"),
                "the validity is shown: {debug}"
            );
        }
        assert!(
            format!("{source:?}").contains("tls.key"),
            "the paths are shown"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let (_registry, metrics) = registered(CertMetrics::register);
        let err = FileSource::load(
            Path::new("/nonexistent/tls.crt"),
            Path::new("/nonexistent/tls.key"),
            metrics,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tls.crt"));
    }
}
