//! Small HTTP clients: plain HTTP for the admin port, and HTTPS that trusts only a given CA.

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, pem::PemObject};

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub version: http::Version,
    pub body: String,
}

/// Reads a whole response.
pub async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Response, String> {
    let status = resp.status().as_u16();
    let version = resp.version();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Response {
        status,
        version,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// GET over plain HTTP.
pub async fn get(url: &str) -> Result<Response, String> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(url.parse().map_err(|e| format!("{e}"))?)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    collect(resp).await
}

/// Which HTTP version the HTTPS client offers by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http2,
    Http1,
}

/// A client certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl From<restatus::certs::Pair> for ClientCert {
    fn from(pair: restatus::certs::Pair) -> Self {
        Self {
            cert_pem: pair.cert_pem,
            key_pem: pair.key_pem,
        }
    }
}

/// A TLS client configuration that trusts only the CA in `ca_file` and presents
/// `client_cert`, if any.
pub fn client_config(ca_file: &Path, client_cert: Option<&ClientCert>) -> rustls::ClientConfig {
    super::init_crypto();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("read ca.crt") {
        roots.add(cert.expect("parse ca.crt")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match client_cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("client certificate"),
                rustls_pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
                    .expect("client key"),
            )
            .expect("client certificate and key"),
    }
}

/// An HTTPS client that trusts only the CA in `ca_file`.
pub struct TlsClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl TlsClient {
    pub fn new(ca_file: &Path, alpn: Alpn) -> Self {
        Self::build(client_config(ca_file, None), alpn)
    }

    /// A client that presents `client_cert` when the server asks for one.
    pub fn with_client_cert(ca_file: &Path, alpn: Alpn, client_cert: &ClientCert) -> Self {
        Self::build(client_config(ca_file, Some(client_cert)), alpn)
    }

    fn build(tls: rustls::ClientConfig, alpn: Alpn) -> Self {
        // As the API server (Go) does: without it, a request written in two pieces waits
        // for restatus's delayed ACK (40 ms), which is not what tests measure.
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let (connector, http2_only) = match alpn {
            Alpn::Http2 => (builder.enable_http2().wrap_connector(tcp), true),
            Alpn::Http1 => (builder.enable_http1().wrap_connector(tcp), false),
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2_only)
            .build(connector);
        Self { client }
    }

    /// POSTs `body` as JSON.
    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Result<Response, String> {
        let req = http::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("POST {url}: {e:?}"))?;
        collect(resp).await
    }
}
