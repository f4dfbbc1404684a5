//! Certificates: generation with rcgen, and the serving certificate behind the TLS listener.

mod resolver;

use std::{net::IpAddr, path::Path, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

pub use resolver::{CertError, FileCertResolver, server_config};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{0:?} is neither an IP address nor a valid DNS name")]
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
    // A little slack for clocks that are behind.
    Ok((now - time::Duration::minutes(5), not_after))
}

/// Makes a CA and a serving certificate for `hosts` (DNS names or IP addresses).
pub fn generate(hosts: &[String], validity: Duration) -> Result<Generated, GenerateError> {
    let (not_before, not_after) = validity_window(validity)?;
    let rcgen_err = |what| move |source| GenerateError::Rcgen { what, source };

    let ca_key = KeyPair::generate().map_err(rcgen_err("CA key"))?;
    let mut ca_params = CertificateParams::default();
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "restatus CA");
    ca_name.push(DnType::OrganizationName, "restatus");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(rcgen_err("CA certificate"))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::default();
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
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        hosts.first().cloned().unwrap_or_else(|| "restatus".into()),
    );
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(rcgen_err("serving key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_err("serving certificate"))?;

    Ok(Generated {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
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
