//! Certificates: generation with rcgen, the serving certificate behind the TLS listener, and
//! the self-managed mode that keeps a shared CA in a Secret and the webhook's caBundle in step.
//!
//! - [`ServingCert`] is what the listener serves from: a certified key swapped in place.
//! - [`FileSource`] fills it from `--tls-cert-file`/`--tls-key-file`, polled by content.
//! - [`SelfManaged`] fills it with a certificate it issues from the shared CA.
//! - [`ListenerTls`] is the listener's TLS configuration: the serving certificate and, with
//!   `--client-ca-file`, the CA a caller's client certificate must chain to, polled by content.

mod client_ca;
mod manager;
mod metrics;
mod resolver;
mod rotation;

use std::{net::IpAddr, path::Path, time::Duration};

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};

pub use client_ca::{ClientAuth, ListenerTls};
pub use manager::{ManagerError, SelfManaged, SelfManagedSettings};
pub use metrics::CertMetrics;
use resolver::server_config;
pub use resolver::{CertError, FileSource, ServingCert};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{0:?} is neither an IP address nor a valid DNS name, URI or email address")]
    Host(String),
    #[error("could not generate the {what}")]
    Rcgen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("could not write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("validity {0:?} is out of range")]
    Validity(Duration),
    #[error("the CA cannot sign")]
    CaKey(#[from] CaKeyError),
}

/// A DNS name as certificates carry it: dot-separated labels of letters, digits and '-',
/// the first label possibly `*`.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Why a CA's key cannot sign for its certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaKeyError {
    #[error("the key is missing")]
    Missing,
    #[error("no PEM private key in it")]
    NotPem(#[source] rustls_pki_types::pem::Error),
    #[error(
        "not a PKCS#8 private key of a type restatus signs with (ECDSA P-256 or P-384, Ed25519, RSA)"
    )]
    Unsupported(#[source] rcgen::Error),
    #[error("the certificate is not a PEM X.509 certificate")]
    Certificate,
    #[error("the key does not belong to the certificate")]
    Mismatch,
}

impl CaKeyError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::NotPem(_) => "not_pem",
            Self::Unsupported(_) => "unsupported",
            Self::Certificate => "certificate",
            Self::Mismatch => "mismatch",
        }
    }
}

/// The signing key of the CA certificate `cert_pem`, from the PEM in `key_pem`: a PKCS#8 key
/// rcgen can sign with, whose public key is the certificate's.
pub fn ca_signing_key(cert_pem: &str, key_pem: &[u8]) -> Result<KeyPair, CaKeyError> {
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(CaKeyError::NotPem)?;
    let key = KeyPair::try_from(&der).map_err(CaKeyError::Unsupported)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|_| CaKeyError::Certificate)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&pem.contents).map_err(|_| CaKeyError::Certificate)?;
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(CaKeyError::Mismatch);
    }
    Ok(key)
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Pair {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A CA and a serving certificate it signed, PEM encoded.
pub struct Generated {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity_window(
    validity: Duration,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), GenerateError> {
    let now = time::OffsetDateTime::now_utc();
    let span = time::Duration::try_from(validity).map_err(|_| GenerateError::Validity(validity))?;
    let not_after = now
        .checked_add(span)
        .ok_or(GenerateError::Validity(validity))?;
    // A little slack for clocks that are behind: five minutes, or a tenth of a short validity
    // (so that a short-lived certificate is not due for renewal the moment it is made).
    let slack = std::cmp::min(span / 10_i32, time::Duration::minutes(5));
    Ok((now - slack, not_after))
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> GenerateError {
    move |source| GenerateError::Rcgen { what, source }
}

/// Makes a self-signed CA valid for `validity` that may sign end-entity certificates (serving
/// or client) but no intermediate CA.
pub fn generate_ca(validity: Duration) -> Result<Pair, GenerateError> {
    let (not_before, not_after) = validity_window(validity)?;
    let key = KeyPair::generate().map_err(rcgen_err("CA key"))?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "restatus CA");
    name.push(DnType::OrganizationName, "restatus");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_err("CA certificate"))?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What a leaf certificate is for.
enum Leaf<'a> {
    /// A serving certificate for DNS names or IP addresses.
    Serving(&'a [String]),
    /// A client certificate for a common name, with subjectAltNames.
    Client(&'a str, &'a [ClientName]),
}

/// A subjectAltName of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientName {
    Dns(String),
    Uri(String),
    Email(String),
}

/// Makes a leaf certificate and its key, signed by `ca`.
fn issue(ca: &Pair, leaf: Leaf<'_>, validity: Duration) -> Result<Pair, GenerateError> {
    let (not_before, not_after) = validity_window(validity)?;
    let ca_key = ca_signing_key(&ca.cert_pem, ca.key_pem.as_bytes())?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(rcgen_err("CA certificate"))?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    let what = match leaf {
        Leaf::Serving(hosts) => {
            params.subject_alt_names = hosts
                .iter()
                .map(|h| match h.parse::<IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) if is_dns_name(h) => h
                        .clone()
                        .try_into()
                        .map(SanType::DnsName)
                        .map_err(|_| GenerateError::Host(h.clone())),
                    Err(_) => Err(GenerateError::Host(h.clone())),
                })
                .collect::<Result<_, _>>()?;
            let common_name = hosts.first().map_or("restatus", String::as_str);
            name.push(DnType::CommonName, common_name);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            ("serving key", "serving certificate")
        }
        Leaf::Client(common_name, alt_names) => {
            name.push(DnType::CommonName, common_name);
            params.subject_alt_names = alt_names
                .iter()
                .map(|n| {
                    let (text, san): (&str, fn(rcgen::string::Ia5String) -> SanType) = match n {
                        ClientName::Dns(t) => (t, SanType::DnsName),
                        ClientName::Uri(t) => (t, SanType::URI),
                        ClientName::Email(t) => (t, SanType::Rfc822Name),
                    };
                    text.to_owned()
                        .try_into()
                        .map(san)
                        .map_err(|_| GenerateError::Host(text.to_owned()))
                })
                .collect::<Result<_, _>>()?;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            ("client key", "client certificate")
        }
    };
    params.distinguished_name = name;
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(rcgen_err(what.0))?;
    let cert = params.signed_by(&key, &issuer).map_err(rcgen_err(what.1))?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Makes a serving certificate for `hosts` (DNS names or IP addresses) signed by `ca`.
pub fn issue_serving(
    ca: &Pair,
    hosts: &[String],
    validity: Duration,
) -> Result<Pair, GenerateError> {
    issue(ca, Leaf::Serving(hosts), validity)
}

/// Makes a client certificate (extended key usage `clientAuth`) for `common_name`, signed by
/// `ca`: what kube-apiserver presents to a webhook that requires one (`--client-ca-file`).
pub fn issue_client(
    ca: &Pair,
    common_name: &str,
    validity: Duration,
) -> Result<Pair, GenerateError> {
    issue(ca, Leaf::Client(common_name, &[]), validity)
}

/// [`issue_client`] with subjectAltNames besides the common name.
pub fn issue_client_with_names(
    ca: &Pair,
    common_name: &str,
    alt_names: &[ClientName],
    validity: Duration,
) -> Result<Pair, GenerateError> {
    issue(ca, Leaf::Client(common_name, alt_names), validity)
}

/// Makes a CA and a serving certificate for `hosts` (DNS names or IP addresses).
pub fn generate(hosts: &[String], validity: Duration) -> Result<Generated, GenerateError> {
    let ca = generate_ca(validity)?;
    let serving = issue_serving(&ca, hosts, validity)?;
    Ok(Generated {
        ca_pem: ca.cert_pem,
        cert_pem: serving.cert_pem,
        key_pem: serving.key_pem,
    })
}

/// When a certificate starts and stops being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

#[derive(Debug, thiserror::Error)]
#[error("not a PEM X.509 certificate")]
pub struct ParseCertError;

impl Validity {
    /// The validity of the first certificate in `pem`.
    pub fn of_pem(pem: &[u8]) -> Result<Self, ParseCertError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| ParseCertError)?;
        Self::of_der(&pem.contents)
    }

    /// The validity of a DER certificate.
    pub fn of_der(der: &[u8]) -> Result<Self, ParseCertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| ParseCertError)?;
        let time = |t: &x509_parser::time::ASN1Time| {
            Timestamp::from_second(t.timestamp()).map_err(|_| ParseCertError)
        };
        Ok(Self {
            not_before: time(&cert.validity().not_before)?,
            not_after: time(&cert.validity().not_after)?,
        })
    }

    /// Due for renewal: less than a third of the lifetime is left (or it expired).
    pub fn due(&self, now: Timestamp) -> bool {
        let lifetime = self.not_after.duration_since(self.not_before);
        let left = self.not_after.duration_since(now);
        left < lifetime / 3
    }

    pub fn expired(&self, now: Timestamp) -> bool {
        now >= self.not_after
    }
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`, creating it if needed.
pub fn write(dir: &Path, generated: &Generated) -> Result<(), GenerateError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| GenerateError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for (file, content, private) in [
        ("ca.crt", &generated.ca_pem, false),
        ("tls.crt", &generated.cert_pem, false),
        ("tls.key", &generated.key_pem, true),
    ] {
        let path = dir.join(file);
        write_file(&path, content.as_bytes(), private).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_file(path: &Path, content: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp)?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// `debug` shows nothing of the private key `key_pem`: neither its PEM, nor a line of its
/// base64 body, nor its bytes as `{:?}` of a `Vec<u8>` prints them.
#[cfg(test)]
fn assert_no_key(debug: &str, key_pem: &str) {
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!debug.contains(line), "a line of the key in {debug}");
    }
    let bytes = format!("{:?}", key_pem.as_bytes());
    let start = &bytes[..bytes.len().min(40)];
    assert!(!debug.contains(start), "the key's bytes in {debug}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_ca_and_a_serving_certificate_for_names_and_ips() {
        let g = generate(
            &["restatus.restatus.svc".into(), "127.0.0.1".into()],
            Duration::from_secs(86_400),
        )
        .unwrap();
        assert!(g.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(g.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(g.key_pem.contains("PRIVATE KEY"));
        assert_ne!(g.ca_pem, g.cert_pem);
        // The names go in as a DNS name and an IP address, as clients check them.
        let (_, pem) = x509_parser::pem::parse_x509_pem(g.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .expect("a subjectAltName extension")
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => format!("dns:{d}"),
                x509_parser::extensions::GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["dns:restatus.restatus.svc", "ip:[127, 0, 0, 1]"]);
    }

    #[test]
    fn a_serving_certificate_chains_to_its_ca() {
        let ca = generate_ca(Duration::from_secs(3600)).unwrap();
        let serving = issue_serving(&ca, &["a.example".into()], Duration::from_secs(600)).unwrap();
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let ca_cert = ca_pem.parse_x509().unwrap();
        let (_, leaf_pem) = x509_parser::pem::parse_x509_pem(serving.cert_pem.as_bytes()).unwrap();
        let leaf = leaf_pem.parse_x509().unwrap();
        assert_eq!(leaf.issuer(), ca_cert.subject());
        leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
        let other = generate_ca(Duration::from_secs(3600)).unwrap();
        let (_, other_pem) = x509_parser::pem::parse_x509_pem(other.cert_pem.as_bytes()).unwrap();
        assert!(
            leaf.verify_signature(Some(other_pem.parse_x509().unwrap().public_key()))
                .is_err()
        );
    }

    #[test]
    fn validity_is_read_back_and_due_after_two_thirds() {
        let ca = generate_ca(Duration::from_secs(3 * 3600)).unwrap();
        let v = Validity::of_pem(ca.cert_pem.as_bytes()).unwrap();
        let now = Timestamp::now();
        let left = v.not_after.duration_since(now).as_secs();
        assert!((3 * 3600 - 5..=3 * 3600).contains(&left), "{left}");
        assert!(!v.due(now));
        assert!(!v.expired(now));
        // Five minutes of slack before now: lifetime is 3h05m, due with under 1h01m40s left.
        // A short validity gets a tenth of itself as slack and is not due at once.
        let short = generate_ca(Duration::from_secs(45)).unwrap();
        assert!(
            !Validity::of_pem(short.cert_pem.as_bytes())
                .unwrap()
                .due(now)
        );
        let later = |secs: i64| {
            now.checked_add(jiff::SignedDuration::from_secs(secs))
                .unwrap()
        };
        assert!(!v.due(later(3600 + 3600 - 120)));
        assert!(v.due(later(3600 + 3600)));
        assert!(v.expired(later(3 * 3600 + 1)));
        assert!(Validity::of_pem(b"garbage").is_err());
    }

    #[test]
    fn dns_names_are_checked() {
        for ok in [
            "localhost",
            "restatus.restatus.svc",
            "*.example.com",
            "a-b.c1",
        ] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in ["", "a..b", "-a.b", "a b", "a_b", "x.*"] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn rejects_a_host_that_is_not_a_name() {
        assert!(matches!(
            generate(&["bad name with spaces".into()], Duration::from_secs(60)),
            Err(GenerateError::Host(..))
        ));
    }

    #[test]
    fn pairs_never_print_their_key() {
        let ca = generate_ca(Duration::from_secs(60)).unwrap();
        assert_no_key(&format!("{ca:?}"), &ca.key_pem);
        assert_no_key(&format!("{ca:#?}"), &ca.key_pem);
        let key = ca_signing_key(&ca.cert_pem, ca.key_pem.as_bytes()).unwrap();
        assert_no_key(&format!("{key:?}"), &ca.key_pem);
    }

    #[test]
    fn a_ca_key_must_be_a_pem_key_of_its_certificate_that_can_sign() {
        let ca = generate_ca(Duration::from_secs(60)).unwrap();
        let other = generate_ca(Duration::from_secs(60)).unwrap();
        let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem();
        // A PKCS#1 block: PEM with a private key label, but not a form rcgen loads. Its body
        // is not a real key: the form is refused before the contents are looked at.
        let label = "RSA PRIVATE KEY";
        let body = crate::text::base64_encode(b"not parsed: PKCS#1 is refused first");
        let pkcs1 = format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
        assert!(ca_signing_key(&ca.cert_pem, ca.key_pem.as_bytes()).is_ok());
        let cases: [(&str, &[u8], &str); 6] = [
            ("empty", b"", "not_pem"),
            ("garbage", b"not a key", "not_pem"),
            ("a certificate", ca.cert_pem.as_bytes(), "not_pem"),
            ("PKCS#1", pkcs1.as_bytes(), "unsupported"),
            ("another CA's key", other.key_pem.as_bytes(), "mismatch"),
            ("a key of another type", ed25519.as_bytes(), "mismatch"),
        ];
        for (what, key, label) in cases {
            let err = ca_signing_key(&ca.cert_pem, key).unwrap_err();
            assert_eq!(err.label(), label, "{what}: {err}");
        }
        // Issuing with such a CA fails with the reason, never with a certificate.
        let broken = Pair {
            cert_pem: ca.cert_pem.clone(),
            key_pem: other.key_pem.clone(),
        };
        let err = issue_serving(&broken, &["a.example".into()], Duration::from_secs(60));
        assert!(matches!(
            err,
            Err(GenerateError::CaKey(CaKeyError::Mismatch))
        ));
    }

    #[test]
    fn client_certificates_carry_their_alternative_names() {
        let ca = generate_ca(Duration::from_secs(60)).unwrap();
        let names = [
            ClientName::Dns("apiserver.example".into()),
            ClientName::Uri("spiffe://cluster.local/apiserver".into()),
            ClientName::Email("apiserver@example.com".into()),
        ];
        let client =
            issue_client_with_names(&ca, "kube-apiserver", &names, Duration::from_secs(60))
                .unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(client.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let sans = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        for want in [
            "apiserver.example",
            "spiffe://cluster.local/apiserver",
            "apiserver@example.com",
        ] {
            assert!(sans.contains(want), "{want} in {sans}");
        }
        assert!(matches!(
            issue_client_with_names(
                &ca,
                "x",
                &[ClientName::Dns("ü.example".into())],
                Duration::from_secs(60)
            ),
            Err(GenerateError::Host(_))
        ));
    }

    #[test]
    fn writes_the_three_files_with_a_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(&["localhost".into()], Duration::from_secs(60)).unwrap();
        write(dir.path(), &g).unwrap();
        for f in ["ca.crt", "tls.crt", "tls.key"] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("tls.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
