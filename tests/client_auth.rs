//! Only the API server may call the webhook: with `--client-ca-file`, a caller without a
//! client certificate from that CA is refused during the TLS handshake, before any review is
//! read, and with `--client-allowed-names` so is one whose certificate from that CA carries
//! none of the names. Against the `restatus serve` process with a real HTTPS client, and
//! against the real kube-apiserver configured (AdmissionConfiguration + kubeconfig) to
//! present its certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use restatus::{
    certs::{ClientName, Pair, generate_ca, issue_client, issue_client_with_names},
    store::{KeySchema, ObjectIdentity},
};
use serde_json::{Value, json};
use support::{
    cluster::{
        ControlPlane, apply_crd, base64, create_namespace, example_crd, kubernetes_cluster,
        kubernetes_cluster_resource, patch_status,
    },
    fixture,
    http::{Alpn, ClientCert, TlsClient},
    redis::RedisServer,
    restatus::{Options, Restatus},
};

const HOUR: Duration = Duration::from_secs(3600);

/// A client CA and a client certificate it issued for `name`.
fn client_pki(name: &str) -> (Pair, ClientCert) {
    let ca = generate_ca(HOUR).unwrap();
    let client = issue_client(&ca, name, HOUR).unwrap();
    (ca, client.into())
}

/// A directory laid out like a Kubernetes Secret or ConfigMap volume: each file is a symlink
/// into `..data`, itself a symlink to a timestamped directory, swapped with one rename on
/// each update. File-event watchers miss this swap; restatus must not.
struct ProjectedVolume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl ProjectedVolume {
    fn new(file: &str, content: &str) -> Self {
        let mut volume = Self {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        volume.update(file, content);
        std::os::unix::fs::symlink(format!("..data/{file}"), volume.path(file)).unwrap();
        volume
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn update(&mut self, file: &str, content: &str) {
        self.generation += 1;
        let version = format!("..v{}", self.generation);
        std::fs::create_dir(self.dir.path().join(&version)).unwrap();
        std::fs::write(self.dir.path().join(&version).join(file), content).unwrap();
        let staged = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).unwrap();
        std::fs::rename(&staged, self.dir.path().join("..data")).unwrap();
    }
}

/// The review must fail: the connection is refused during the TLS handshake.
async fn refused(client: &TlsClient, r: &Restatus, review: &Value) -> String {
    match client.post(&r.mutate_url(), review.to_string()).await {
        Ok(resp) => panic!("a caller without a trusted client certificate was answered {resp:?}"),
        Err(error) => error,
    }
}

/// A client certificate from `ca` for the common name `cn` with DNS subjectAltNames `dns`.
fn named(ca: &Pair, cn: &str, dns: &[&str]) -> ClientCert {
    let names: Vec<ClientName> = dns.iter().map(|d| ClientName::Dns((*d).into())).collect();
    issue_client_with_names(ca, cn, &names, HOUR)
        .unwrap()
        .into()
}

fn with_cert(r: &Restatus, alpn: Alpn, cert: &ClientCert) -> TlsClient {
    TlsClient::with_client_cert(&r.ca_file(), alpn, cert)
}

fn kc(namespace: &str, name: &str) -> ObjectIdentity {
    ObjectIdentity {
        group: "infra.example.com".into(),
        resource: "kubernetesclusters".into(),
        namespace: Some(namespace.into()),
        name: name.into(),
    }
}

/// The fixture review of a status write, about `namespace/name`, with its own uid.
fn review_of(namespace: &str, name: &str) -> Value {
    let mut review = fixture("reviews/kc-update-status.json");
    let request = &mut review["request"];
    request["uid"] = json!(support::unique("forged"));
    request["namespace"] = json!(namespace);
    request["name"] = json!(name);
    for object in ["object", "oldObject"] {
        request[object]["metadata"]["namespace"] = json!(namespace);
        request[object]["metadata"]["name"] = json!(name);
    }
    review
}

async fn handshake_failures(r: &Restatus, reason: &str) -> f64 {
    r.metric(&format!(
        "restatus_tls_handshake_failures_total{{reason=\"{reason}\"}}"
    ))
    .await
}

#[tokio::test]
async fn only_callers_with_a_certificate_from_the_client_ca_are_served_and_the_ca_reloads() {
    let redis = RedisServer::start().await;
    let (old_ca, old_client) = client_pki("kube-apiserver");
    let (new_ca, new_client) = client_pki("kube-apiserver");
    let mut volume = ProjectedVolume::new("ca.crt", &old_ca.cert_pem);
    let mut opts = Options::new(redis.url());
    opts.args = vec![
        format!("--client-ca-file={}", volume.path("ca.crt").display()),
        "--tls-reload-interval=100ms".into(),
    ];
    let r = Restatus::start(opts).await;
    let review = fixture("reviews/kc-update-status.json");
    let key = KeySchema::new(&r.key_prefix, "default").record(&kc("team-a", "prod-eu-1"));

    // No certificate, over either protocol; then a certificate from another CA.
    for alpn in [Alpn::Http2, Alpn::Http1] {
        refused(&TlsClient::new(&r.ca_file(), alpn), &r, &review).await;
    }
    refused(&with_cert(&r, Alpn::Http2, &new_client), &r, &review).await;
    assert!(
        redis.keys("*").await.is_empty(),
        "a refused review reached Redis"
    );
    assert!(handshake_failures(&r, "no_client_certificate").await >= 2.0);
    assert!(handshake_failures(&r, "untrusted_client_certificate").await >= 1.0);

    for alpn in [Alpn::Http2, Alpn::Http1] {
        r.review_allowed(&with_cert(&r, alpn, &old_client), &review)
            .await;
    }
    assert!(
        redis.hgetall(&key).await.contains_key("status"),
        "the caller's review was recorded"
    );

    // A new CA, swapped in the way the kubelet updates a Secret volume: new connections are
    // verified against it without a restart.
    volume.update("ca.crt", &new_ca.cert_pem);
    support::eventually(Duration::from_secs(10), "the new client CA", || async {
        let client = with_cert(&r, Alpn::Http2, &new_client);
        client
            .post(&r.mutate_url(), review.to_string())
            .await
            .ok()
            .filter(|resp| resp.status == 200)
    })
    .await;
    refused(&with_cert(&r, Alpn::Http2, &old_client), &r, &review).await;
    assert_eq!(
        r.metric("restatus_certificate_rotations_total{certificate=\"client_ca\"}")
            .await,
        1.0
    );

    // A broken file keeps the CA in service.
    volume.update("ca.crt", "not a certificate\n");
    support::eventually(
        Duration::from_secs(10),
        "the broken client CA file to be noticed",
        || async {
            r.log_text()
                .contains("client CA not reloaded; the previous one stays in service")
                .then_some(())
        },
    )
    .await;
    r.review_allowed(&with_cert(&r, Alpn::Http2, &new_client), &review)
        .await;
    refused(&with_cert(&r, Alpn::Http2, &old_client), &r, &review).await;

    // Every refused handshake is logged at debug level with the peer; warnings are at most one
    // a minute, so a scanner cannot flood the logs.
    let log = r.log_text();
    let failures = handshake_failures(&r, "no_client_certificate").await
        + handshake_failures(&r, "untrusted_client_certificate").await;
    let debug_lines = log
        .lines()
        .filter(|l| l.contains("TLS handshake failed") && l.contains("peer=127.0.0.1:"))
        .count();
    assert!(debug_lines as f64 >= failures, "{debug_lines} < {failures}");
    assert_eq!(
        log.matches("TLS handshakes of webhook callers are failing")
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn with_allowed_names_a_certificate_from_the_client_ca_must_carry_one() {
    let redis = RedisServer::start().await;
    let old_ca = generate_ca(HOUR).unwrap();
    let new_ca = generate_ca(HOUR).unwrap();
    let mut volume = ProjectedVolume::new("ca.crt", &old_ca.cert_pem);
    let mut opts = Options::new(redis.url());
    opts.args = vec![
        format!("--client-ca-file={}", volume.path("ca.crt").display()),
        "--client-allowed-names=kube-apiserver,webhook-client.apiserver.example".into(),
        "--tls-reload-interval=100ms".into(),
    ];
    let r = Restatus::start(opts).await;
    let review = fixture("reviews/kc-update-status.json");

    // A kubelet's certificate from the same CA: it chains, but names no allowed caller.
    let kubelet = named(&old_ca, "system:node:worker-1", &["worker-1"]);
    for alpn in [Alpn::Http2, Alpn::Http1] {
        refused(&with_cert(&r, alpn, &kubelet), &r, &review).await;
    }
    // Names that only resemble an allowed one.
    for near in [
        named(&old_ca, "kube-apiserver-proxy", &[]),
        named(&old_ca, "x", &["evil.webhook-client.apiserver.example"]),
    ] {
        refused(&with_cert(&r, Alpn::Http2, &near), &r, &review).await;
    }
    assert!(
        redis.keys("*").await.is_empty(),
        "a refused review reached Redis"
    );
    assert!(handshake_failures(&r, "client_name_not_allowed").await >= 4.0);
    assert_eq!(
        handshake_failures(&r, "untrusted_client_certificate").await,
        0.0,
        "told apart from a certificate of another CA"
    );
    let log = r.log_text();
    assert!(
        log.contains("none of its names is in --client-allowed-names")
            && log.contains("CN=system:node:worker-1, DNS:worker-1"),
        "the refused names are logged at debug level:\n{log}"
    );

    // The allowed common name, and an allowed DNS subjectAltName, are served.
    let by_cn = named(&old_ca, "kube-apiserver", &[]);
    let by_san = named(
        &old_ca,
        "apiserver-7f9c",
        &["webhook-client.apiserver.example"],
    );
    r.review_allowed(&with_cert(&r, Alpn::Http2, &by_cn), &review)
        .await;
    r.review_allowed(&with_cert(&r, Alpn::Http1, &by_san), &review)
        .await;

    // A new client CA is loaded as before, and the names still apply to it.
    volume.update("ca.crt", &new_ca.cert_pem);
    let new_apiserver = named(&new_ca, "kube-apiserver", &[]);
    support::eventually(Duration::from_secs(10), "the new client CA", || async {
        let client = with_cert(&r, Alpn::Http2, &new_apiserver);
        client
            .post(&r.mutate_url(), review.to_string())
            .await
            .ok()
            .filter(|resp| resp.status == 200)
    })
    .await;
    let before = handshake_failures(&r, "client_name_not_allowed").await;
    let new_kubelet = named(&new_ca, "system:node:worker-1", &["worker-1"]);
    refused(&with_cert(&r, Alpn::Http2, &new_kubelet), &r, &review).await;
    assert_eq!(
        handshake_failures(&r, "client_name_not_allowed").await,
        before + 1.0
    );
    refused(&with_cert(&r, Alpn::Http2, &by_cn), &r, &review).await;
}

/// An AdmissionConfiguration that makes kube-apiserver present `client` to the webhook at
/// `host_port`, and where it is written.
fn admission_configuration(dir: &Path, host_port: &str, client: &ClientCert) -> PathBuf {
    // The kubeconfig's user is picked by the webhook's host:port (for a `service` webhook,
    // `<service>.<namespace>.svc:<port>`), or `*` for every webhook.
    let kubeconfig = dir.join("webhook-kubeconfig.yaml");
    let users = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "users": [{"name": host_port, "user": {
            "client-certificate-data": base64(&client.cert_pem),
            "client-key-data": base64(&client.key_pem),
        }}]
    });
    std::fs::write(&kubeconfig, serde_yaml::to_string(&users).unwrap()).unwrap();
    let config = json!({
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AdmissionConfiguration",
        "plugins": [{
            "name": "MutatingAdmissionWebhook",
            "configuration": {
                "apiVersion": "apiserver.config.k8s.io/v1",
                "kind": "WebhookAdmissionConfiguration",
                "kubeConfigFile": kubeconfig,
            }
        }]
    });
    let path = dir.join("admission-configuration.yaml");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn the_api_server_presents_its_client_certificate_and_a_forged_review_is_refused() {
    support::init_crypto();
    let pki = tempfile::tempdir().unwrap();
    let (client_ca, apiserver) = client_pki("kube-apiserver");
    let client_ca_file = pki.path().join("client-ca.crt");
    std::fs::write(&client_ca_file, &client_ca.cert_pem).unwrap();
    let port = support::free_port();
    let admission = admission_configuration(pki.path(), &format!("127.0.0.1:{port}"), &apiserver);
    let cp = ControlPlane::start(&[format!(
        "--admission-control-config-file={}",
        admission.display()
    )]);
    let client = cp.client().await;
    apply_crd(&client, example_crd()).await;
    let ns = support::unique("mtls");
    create_namespace(&client, &ns).await;
    let identity = cp.restatus_identity(&client, &ns, &[]).await;

    let redis = RedisServer::start().await;
    let mut opts = Options::new(redis.url());
    opts.port = Some(port);
    opts.kubeconfig = Some(identity.kubeconfig.clone());
    opts.name = format!("{ns}-restatus");
    // The API server's certificate names it kube-apiserver; the client CA could sign others.
    opts.args = vec![
        format!("--client-ca-file={}", client_ca_file.display()),
        "--client-allowed-names=kube-apiserver".into(),
    ];
    let r = Restatus::start(opts).await;
    let keys = KeySchema::new(&r.key_prefix, "default");

    let webhook = format!("{ns}.restatus.test");
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": webhook},
        "webhooks": [{
            "name": "status.restatus.io",
            "clientConfig": {"url": r.mutate_url(), "caBundle": base64(&r.ca_pem())},
            "rules": [{
                "apiGroups": ["infra.example.com"],
                "apiVersions": ["*"],
                "resources": ["kubernetesclusters", "kubernetesclusters/status"],
                "operations": ["CREATE", "UPDATE", "DELETE"],
                "scope": "Namespaced"
            }],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "failurePolicy": "Ignore",
            "sideEffects": "NoneOnDryRun",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5
        }]
    }))
    .unwrap();
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    webhooks
        .create(&PostParams::default(), &config)
        .await
        .unwrap();

    // Reviews from the API server are served and recorded (status writes go on until the new
    // webhook configuration has reached the API server's cache).
    let clusters: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &kubernetes_cluster_resource());
    clusters
        .create(&PostParams::default(), &kubernetes_cluster("prod"))
        .await
        .unwrap();
    let mut attempt = 0;
    support::eventually(
        support::cluster::WAIT,
        "the API server's review to be recorded",
        || {
            attempt += 1;
            let status = json!({"phase": "Ready", "attempt": attempt});
            let (clusters, redis, keys, ns) = (&clusters, &redis, &keys, &ns);
            async move {
                patch_status(clusters, "prod", status.clone()).await;
                let record = redis.hgetall(&keys.record(&kc(ns, "prod"))).await;
                let recorded: Value = serde_json::from_str(record.get("status")?).ok()?;
                (recorded == status).then_some(())
            }
        },
    )
    .await;
    let answered = r.metric_total("restatus_admission_requests_total").await;
    assert!(answered >= 1.0);
    let failed = r
        .metric_total("restatus_tls_handshake_failures_total")
        .await;
    assert_eq!(
        failed, 0.0,
        "every connection of the API server carried its client certificate"
    );

    // A review posted from inside the network without the API server's certificate, or with
    // one of another CA, is refused at TLS and leaves nothing in Redis.
    let forged = review_of(&ns, "forged");
    let before = redis.keys("*").await.len();
    let error = refused(&TlsClient::new(&r.ca_file(), Alpn::Http2), &r, &forged).await;
    let (_, intruder) = client_pki("kube-apiserver");
    refused(&with_cert(&r, Alpn::Http1, &intruder), &r, &forged).await;
    // A certificate the client CA signed for someone else (a kubelet) is refused too.
    let kubelet = named(&client_ca, "system:node:worker-1", &["worker-1"]);
    refused(&with_cert(&r, Alpn::Http2, &kubelet), &r, &forged).await;
    assert!(
        redis
            .hgetall(&keys.record(&kc(&ns, "forged")))
            .await
            .is_empty(),
        "the forged review was recorded ({error})"
    );
    assert_eq!(redis.keys("*").await.len(), before);
    assert!(handshake_failures(&r, "no_client_certificate").await >= 1.0);
    assert!(handshake_failures(&r, "untrusted_client_certificate").await >= 1.0);
    assert!(handshake_failures(&r, "client_name_not_allowed").await >= 1.0);

    let _ = webhooks.delete(&webhook, &DeleteParams::default()).await;
}
