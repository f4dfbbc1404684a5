//! Who may call the webhook. With `--client-ca-file`, a connection must present a client
//! certificate that chains to a CA in that file (kube-apiserver presents one through its
//! `AdmissionConfiguration`), or its TLS handshake fails: a forged review from inside the
//! cluster network never reaches the handler.
//!
//! [`ListenerTls`] is the TLS configuration each new connection takes. The client CA file is
//! polled by content (Kubernetes swaps Secret and ConfigMap volumes through a symlink, which
//! file-event watchers miss). A changed file that loads becomes a new configuration: new
//! connections are verified against the new CAs without a restart, open connections keep the
//! identity they proved. A new configuration starts with an empty session cache, so a TLS
//! session from before the change cannot be resumed past it. A file that does not load keeps
//! the previous CAs in service.
//!
//! With `--client-allowed-names` (like kube-apiserver's `--requestheader-allowed-names`), a
//! certificate that chains to the client CA is accepted only if its subject common name or one
//! of its subjectAltNames (DNS name, URI, email address) is one of the names: a client CA that
//! also issues other certificates (a cluster CA signs every kubelet's) then admits only the
//! API server's. A certificate without an allowed name fails the handshake like an untrusted
//! one, with the TLS alert `access_denied`.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use jiff::Timestamp;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
    client::danger::HandshakeSignatureValid,
    server::{
        ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject};
use tokio_util::sync::CancellationToken;
use x509_parser::extensions::GeneralName;

use super::{CertError, CertMetrics, ServingCert, Validity, resolver::read, server_config};

/// The metric label of the client CA.
const CLIENT_CA: &str = "client_ca";

/// Where the client CA comes from.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// PEM file with the CA certificates a caller's certificate must chain to.
    pub ca_file: PathBuf,
    /// How often the file is re-read.
    pub reload_interval: Duration,
    /// When not empty, a client certificate must also carry one of these names, as its
    /// subject common name or as a subjectAltName (DNS name, URI or email address).
    pub allowed_names: Vec<String>,
}

/// The names a client certificate may carry (`--client-allowed-names`).
#[derive(Debug)]
struct AllowedNames(Vec<String>);

/// A name a client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PresentedName {
    CommonName(String),
    Dns(String),
    Uri(String),
    Email(String),
}

impl std::fmt::Display for PresentedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CommonName(n) => write!(f, "CN={n}"),
            Self::Dns(n) => write!(f, "DNS:{n}"),
            Self::Uri(n) => write!(f, "URI:{n}"),
            Self::Email(n) => write!(f, "email:{n}"),
        }
    }
}

/// The subject common names and the DNS, URI and email subjectAltNames of a DER certificate;
/// nothing when it does not parse.
fn presented_names(der: &[u8]) -> Vec<PresentedName> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<PresentedName> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(|cn| PresentedName::CommonName(cn.to_owned()))
        .collect();
    if let Ok(Some(sans)) = cert.subject_alternative_name() {
        names.extend(sans.value.general_names.iter().filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(PresentedName::Dns((*d).to_owned())),
            GeneralName::URI(u) => Some(PresentedName::Uri((*u).to_owned())),
            GeneralName::RFC822Name(e) => Some(PresentedName::Email((*e).to_owned())),
            _ => None,
        }));
    }
    names
}

impl AllowedNames {
    /// Whether one of `presented` is allowed: equal to an allowed name, DNS names without
    /// regard to ASCII case (as DNS compares them), the others exactly.
    fn allows(&self, presented: &[PresentedName]) -> bool {
        presented.iter().any(|p| {
            self.0.iter().any(|allowed| match p {
                PresentedName::Dns(d) => d.eq_ignore_ascii_case(allowed),
                PresentedName::CommonName(n) | PresentedName::Uri(n) | PresentedName::Email(n) => {
                    n == allowed
                }
            })
        })
    }
}

/// Verifies a client certificate with the WebPki verifier (the chain to the client CA), then
/// requires one of the allowed names.
#[derive(Debug)]
struct NameCheckingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Arc<AllowedNames>,
}

impl ClientCertVerifier for NameCheckingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let presented = presented_names(end_entity);
        if self.allowed.allows(&presented) {
            return Ok(verified);
        }
        // The certificate chains to the client CA, so its names are the CA's word, not the
        // caller's: worth naming (a few, cut short) to find who holds it.
        let names: Vec<String> = presented
            .iter()
            .take(8)
            .map(|n| crate::text::clip(&n.to_string(), 128))
            .collect();
        tracing::debug!(
            names = %names.join(", "),
            "client certificate from the client CA refused: none of its names is in --client-allowed-names"
        );
        // The one failure WebPki never reports, so the listener can tell it apart.
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The client CAs of one version of the file, ready to verify with.
struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
    /// How many CA certificates the file holds.
    cas: usize,
    /// When the first of them expires.
    not_after: Timestamp,
}

impl ClientCa {
    /// `what` names the file in errors. With `allowed`, a certificate must also carry one of
    /// its names.
    fn parse(
        what: &str,
        pem: &[u8],
        allowed: Option<&Arc<AllowedNames>>,
    ) -> Result<Self, CertError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| CertError::Pem {
                what: what.into(),
                source,
            })?;
        if certs.is_empty() {
            return Err(CertError::NoCertificate { what: what.into() });
        }
        let mut not_after = None::<Timestamp>;
        let mut roots = RootCertStore::empty();
        for cert in certs.iter() {
            let validity = Validity::of_der(cert).map_err(|source| CertError::Validity {
                what: what.into(),
                source,
            })?;
            not_after = Some(not_after.map_or(validity.not_after, |t| t.min(validity.not_after)));
            roots
                .add(cert.clone())
                .map_err(|source| CertError::TrustAnchor {
                    what: what.into(),
                    source,
                })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|source| CertError::ClientVerifier {
                what: what.into(),
                source,
            })?;
        if let Some(allowed) = allowed {
            verifier = Arc::new(NameCheckingVerifier {
                inner: verifier,
                allowed: allowed.clone(),
            });
        }
        Ok(Self {
            verifier,
            cas: certs.len(),
            not_after: not_after.ok_or(CertError::NoCertificate { what: what.into() })?,
        })
    }
}

/// The client CA file, the content in service, and the last content that did not load.
struct ClientCaFile {
    path: PathBuf,
    reload_interval: Duration,
    /// The names a certificate must carry; `None`: any certificate from the CA.
    allowed: Option<Arc<AllowedNames>>,
    contents: Mutex<Contents>,
}

struct Contents {
    in_service: Vec<u8>,
    rejected: Option<Vec<u8>>,
}

/// The TLS configuration of the webhook listener, read once per new connection.
pub struct ListenerTls {
    resolver: Arc<dyn ResolvesServerCert>,
    client_ca: Option<ClientCaFile>,
    config: RwLock<Arc<ServerConfig>>,
    metrics: CertMetrics,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("client_ca_file", &self.client_ca.as_ref().map(|c| &c.path))
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Serves `serving`; with `client_auth`, requires client certificates from its CA file,
    /// which must load now.
    pub fn new(
        serving: Arc<ServingCert>,
        client_auth: Option<ClientAuth>,
        metrics: CertMetrics,
    ) -> Result<Arc<Self>, CertError> {
        let resolver: Arc<dyn ResolvesServerCert> = serving;
        let Some(auth) = client_auth else {
            let config = server_config(resolver.clone(), None)?;
            return Ok(Arc::new(Self {
                resolver,
                client_ca: None,
                config: RwLock::new(Arc::new(config)),
                metrics,
            }));
        };
        let allowed = (!auth.allowed_names.is_empty())
            .then(|| Arc::new(AllowedNames(auth.allowed_names.clone())));
        let pem = read(&auth.ca_file)?;
        let ca = ClientCa::parse(&auth.ca_file.display().to_string(), &pem, allowed.as_ref())?;
        metrics.expires(CLIENT_CA, ca.not_after);
        let config = server_config(resolver.clone(), Some(ca.verifier))?;
        tracing::info!(
            client_ca_file = %auth.ca_file.display(),
            cas = ca.cas,
            allowed_names = %auth.allowed_names.join(","),
            "webhook callers must present a client certificate"
        );
        Ok(Arc::new(Self {
            resolver,
            client_ca: Some(ClientCaFile {
                path: auth.ca_file,
                reload_interval: auth.reload_interval,
                allowed,
                contents: Mutex::new(Contents {
                    in_service: pem,
                    rejected: None,
                }),
            }),
            config: RwLock::new(Arc::new(config)),
            metrics,
        }))
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether callers must present a client certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    /// Re-reads the client CA file; uses it for new connections if its content changed and
    /// loads. Returns whether it did; a file that does not load leaves the previous CAs in
    /// service, and is reported once (until its content changes again). Without a client CA
    /// file there is nothing to do.
    pub fn reload_client_ca(&self) -> Result<bool, CertError> {
        let Some(file) = &self.client_ca else {
            return Ok(false);
        };
        let pem = read(&file.path)?;
        let mut contents = file.contents.lock().unwrap_or_else(PoisonError::into_inner);
        if contents.in_service == pem || contents.rejected.as_ref() == Some(&pem) {
            return Ok(false);
        }
        let ca = match ClientCa::parse(
            &file.path.display().to_string(),
            &pem,
            file.allowed.as_ref(),
        ) {
            Ok(ca) => ca,
            Err(error) => {
                contents.rejected = Some(pem);
                return Err(error);
            }
        };
        let config = Arc::new(server_config(self.resolver.clone(), Some(ca.verifier))?);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        *contents = Contents {
            in_service: pem,
            rejected: None,
        };
        self.metrics.expires(CLIENT_CA, ca.not_after);
        self.metrics.rotated(CLIENT_CA);
        tracing::info!(
            client_ca_file = %file.path.display(),
            cas = ca.cas,
            "client CA reloaded; new connections are verified against it"
        );
        Ok(true)
    }

    /// Polls the client CA file until `shutdown`. Without one, only waits for `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(interval) = self.client_ca.as_ref().map(|c| c.reload_interval) else {
            shutdown.cancelled().await;
            return;
        };
        super::resolver::poll_files("client CA", interval, shutdown, move || {
            self.reload_client_ca()
        })
        .await;
    }

    /// The client CA file, if callers must present a certificate.
    #[cfg(test)]
    fn client_ca_file(&self) -> Option<&std::path::Path> {
        self.client_ca.as_ref().map(|c| c.path.as_path())
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::{PrivateKeyDer, ServerName};

    use super::*;
    use crate::{
        certs::{ClientName, Pair, generate, generate_ca, issue_client, issue_client_with_names},
        telemetry::{assert_samples, registered},
    };

    const HOUR: Duration = Duration::from_secs(3600);

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// A listener serving `a.example`, and the CA its clients trust.
    #[derive(Debug)]
    struct Listener {
        tls: Arc<ListenerTls>,
        serving_ca: String,
    }

    fn listener(
        client_ca_file: Option<&std::path::Path>,
        metrics: CertMetrics,
    ) -> Result<Listener, CertError> {
        listener_allowing(client_ca_file, &[], metrics)
    }

    /// [`listener`], accepting only certificates that carry one of `allowed_names`.
    fn listener_allowing(
        client_ca_file: Option<&std::path::Path>,
        allowed_names: &[&str],
        metrics: CertMetrics,
    ) -> Result<Listener, CertError> {
        let g = generate(&["a.example".into()], HOUR).unwrap();
        let serving = ServingCert::new(
            "test pair",
            g.cert_pem.into_bytes(),
            g.key_pem.into_bytes(),
            metrics.clone(),
        )
        .unwrap();
        let auth = client_ca_file.map(|path| ClientAuth {
            ca_file: path.to_owned(),
            reload_interval: Duration::from_secs(1),
            allowed_names: allowed_names.iter().map(|n| (*n).to_owned()).collect(),
        });
        Ok(Listener {
            tls: ListenerTls::new(serving, auth, metrics)?,
            serving_ca: g.ca_pem,
        })
    }

    /// A TLS handshake in memory between the listener's current configuration and a client
    /// presenting `client` (or no certificate): the server's verdict.
    fn handshake(listener: &Listener, client: Option<&Pair>) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots.add(der(&listener.serving_ca)).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let client_config = match client {
            Some(pair) => builder
                .with_client_auth_cert(
                    vec![der(&pair.cert_pem)],
                    PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let mut client = rustls::ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from("a.example").unwrap(),
        )
        .unwrap();
        let mut server = rustls::ServerConnection::new(listener.tls.config()).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().map_err(|e| e.to_string())?;
            if !server.is_handshaking() && !client.is_handshaking() {
                return Ok(());
            }
        }
        Err("the handshake did not finish".into())
    }

    /// A client CA and a client certificate it issued.
    fn client_pki() -> (Pair, Pair) {
        let ca = generate_ca(HOUR).unwrap();
        let client = issue_client(&ca, "kube-apiserver", HOUR).unwrap();
        (ca, client)
    }

    /// A listener that asks for certificates from the CAs in `ca_pem`, read from a file in a
    /// temporary directory: its metrics, the directory (removed on drop) and the file.
    fn guarded(
        ca_pem: &str,
    ) -> (
        prometheus_client::registry::Registry,
        tempfile::TempDir,
        PathBuf,
        Listener,
    ) {
        guarded_allowing(ca_pem, &[])
    }

    /// [`guarded`], accepting only certificates that carry one of `allowed_names`.
    fn guarded_allowing(
        ca_pem: &str,
        allowed_names: &[&str],
    ) -> (
        prometheus_client::registry::Registry,
        tempfile::TempDir,
        PathBuf,
        Listener,
    ) {
        let (registry, metrics) = registered(CertMetrics::register);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client-ca.crt");
        std::fs::write(&file, ca_pem).unwrap();
        let l = listener_allowing(Some(&file), allowed_names, metrics).unwrap();
        (registry, dir, file, l)
    }

    /// A client certificate from `ca` with common name `cn` and subjectAltNames `sans`.
    fn client(ca: &Pair, cn: &str, sans: &[ClientName]) -> Pair {
        issue_client_with_names(ca, cn, sans, HOUR).unwrap()
    }

    #[test]
    fn with_allowed_names_only_a_certificate_naming_one_is_accepted() {
        let ca = generate_ca(HOUR).unwrap();
        let allowed = [
            "kube-apiserver",
            "apiserver.example",
            "spiffe://cluster.local/ns/kube-system/sa/apiserver",
            "apiserver@example.com",
        ];
        let (_registry, _dir, _file, l) = guarded_allowing(&ca.cert_pem, &allowed);
        let dns = |n: &str| ClientName::Dns(n.into());
        let accepted = [
            ("the common name", client(&ca, "kube-apiserver", &[])),
            (
                "a DNS name",
                client(&ca, "other", &[dns("apiserver.example")]),
            ),
            (
                "a DNS name in capitals",
                client(&ca, "other", &[dns("APIServer.Example")]),
            ),
            (
                "a URI",
                client(
                    &ca,
                    "other",
                    &[ClientName::Uri(
                        "spiffe://cluster.local/ns/kube-system/sa/apiserver".into(),
                    )],
                ),
            ),
            (
                "an email address",
                client(
                    &ca,
                    "other",
                    &[ClientName::Email("apiserver@example.com".into())],
                ),
            ),
            (
                "one of several names",
                client(
                    &ca,
                    "system:node:worker-1",
                    &[dns("worker-1"), dns("apiserver.example")],
                ),
            ),
        ];
        for (what, pair) in &accepted {
            handshake(&l, Some(pair)).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        let refused = [
            (
                "another name",
                client(&ca, "system:node:worker-1", &[dns("worker-1")]),
            ),
            (
                "a common name in capitals",
                client(&ca, "KUBE-APISERVER", &[]),
            ),
            (
                "a prefix of an allowed name",
                client(&ca, "kube-apiserver-x", &[]),
            ),
            (
                "an allowed name as a DNS suffix",
                client(&ca, "x", &[dns("x.apiserver.example")]),
            ),
            // A name the CA never signed (a DNS name that is only the common name of another
            // certificate) counts only where it is: here, a URI is not a DNS name.
            (
                "a URI that is an allowed DNS name",
                client(
                    &ca,
                    "x",
                    &[ClientName::Uri("https://apiserver.example".into())],
                ),
            ),
        ];
        for (what, pair) in &refused {
            let error = handshake(&l, Some(pair)).expect_err(what);
            assert!(
                error.contains("ApplicationVerificationFailure"),
                "{what}: {error}"
            );
        }
        // An allowed name from another CA is still refused: the chain comes first.
        let (_, foreign) = client_pki();
        let error = handshake(&l, Some(&foreign)).unwrap_err();
        assert!(
            error.contains("invalid peer certificate")
                && !error.contains("ApplicationVerificationFailure"),
            "{error}"
        );
        assert!(handshake(&l, None).unwrap_err().contains("no certificates"));
    }

    #[test]
    fn a_reloaded_client_ca_keeps_the_allowed_names() {
        let (old_ca, _) = client_pki();
        let new_ca = generate_ca(HOUR).unwrap();
        let (_registry, _dir, file, l) = guarded_allowing(&old_ca.cert_pem, &["kube-apiserver"]);
        std::fs::write(&file, &new_ca.cert_pem).unwrap();
        assert!(l.tls.reload_client_ca().unwrap());
        handshake(&l, Some(&client(&new_ca, "kube-apiserver", &[]))).unwrap();
        let error = handshake(&l, Some(&client(&new_ca, "kubelet", &[]))).unwrap_err();
        assert!(error.contains("ApplicationVerificationFailure"), "{error}");
    }

    #[test]
    fn without_a_client_ca_no_certificate_is_asked_for() {
        let (_registry, metrics) = registered(CertMetrics::register);
        let l = listener(None, metrics).unwrap();
        assert!(!l.tls.requires_client_certificates());
        handshake(&l, None).unwrap();
        assert!(!l.tls.reload_client_ca().unwrap());
    }

    #[test]
    fn only_a_certificate_from_the_client_ca_is_accepted() {
        let (ca, good) = client_pki();
        let (_, foreign) = client_pki();
        let (registry, _dir, file, l) = guarded(&ca.cert_pem);
        assert!(l.tls.requires_client_certificates());
        assert_eq!(l.tls.client_ca_file(), Some(file.as_path()));

        handshake(&l, Some(&good)).unwrap();
        let none = handshake(&l, None).unwrap_err();
        assert!(none.contains("no certificates"), "{none}");
        // The other CA has the same name as the good one: only its signature tells them apart.
        let other = handshake(&l, Some(&foreign)).unwrap_err();
        assert!(other.contains("invalid peer certificate"), "{other}");
        let expiry = Validity::of_pem(ca.cert_pem.as_bytes())
            .unwrap()
            .not_after
            .as_second();
        assert_samples(
            &registry,
            &[&format!(
                "restatus_certificate_expiry_timestamp_seconds{{certificate=\"client_ca\"}} {expiry}"
            )],
        );
    }

    #[test]
    fn a_new_client_ca_applies_to_new_connections_and_a_broken_one_keeps_the_old() {
        let (old_ca, old_client) = client_pki();
        let (new_ca, new_client) = client_pki();
        let (registry, _dir, file, l) = guarded(&old_ca.cert_pem);
        assert!(!l.tls.reload_client_ca().unwrap(), "unchanged file");

        std::fs::write(&file, &new_ca.cert_pem).unwrap();
        assert!(l.tls.reload_client_ca().unwrap());
        handshake(&l, Some(&new_client)).unwrap();
        assert!(handshake(&l, Some(&old_client)).is_err());
        assert_samples(
            &registry,
            &["restatus_certificate_rotations_total{certificate=\"client_ca\"} 1"],
        );

        // Both CAs in one bundle: an overlap while callers move to the new one.
        std::fs::write(&file, format!("{}{}", old_ca.cert_pem, new_ca.cert_pem)).unwrap();
        assert!(l.tls.reload_client_ca().unwrap());
        handshake(&l, Some(&old_client)).unwrap();
        handshake(&l, Some(&new_client)).unwrap();

        for broken in [
            "",
            "garbage",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        ] {
            std::fs::write(&file, broken).unwrap();
            let err = l.tls.reload_client_ca().unwrap_err();
            assert!(err.to_string().contains("client-ca.crt"), "{err}");
            assert!(
                !l.tls.reload_client_ca().unwrap(),
                "the same broken content is reported once"
            );
            handshake(&l, Some(&old_client)).unwrap();
            handshake(&l, Some(&new_client)).unwrap();
        }
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            l.tls.reload_client_ca(),
            Err(CertError::Read { .. })
        ));
        handshake(&l, Some(&new_client)).unwrap();
    }

    #[test]
    fn a_client_ca_file_that_does_not_load_stops_the_start() {
        let (_registry, metrics) = registered(CertMetrics::register);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        let err = listener(Some(&missing), metrics.clone()).unwrap_err();
        assert!(err.to_string().contains("missing.crt"), "{err}");
        let key_only = dir.path().join("key.pem");
        std::fs::write(&key_only, client_pki().0.key_pem).unwrap();
        assert!(matches!(
            listener(Some(&key_only), metrics),
            Err(CertError::NoCertificate { .. })
        ));
    }
}
