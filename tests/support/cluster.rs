//! The real kube-apiserver (with etcd) from `tests/cluster/`, started once per test binary,
//! and a per-test environment: a fresh namespace, a real Redis, real restatus processes and a
//! MutatingWebhookConfiguration that sends that namespace's reviews to them.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        core::v1::{ConfigMap, Namespace},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
    },
    config::KubeConfigOptions,
};
use restatus::store::{KeySchema, ObjectIdentity};
use serde_json::{Value, json};

use super::{redis::RedisServer, restatus::Restatus};

const STARTUP: Duration = Duration::from_secs(180);

pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    // Holding the pipe keeps the control plane alive: it exits when this process ends.
    _stdin: Option<Mutex<ChildStdin>>,
    _child: Option<Mutex<Child>>,
    _dir: Option<tempfile::TempDir>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The control plane of this test binary: `RESTATUS_TEST_KUBECONFIG` if set, otherwise
/// one started (and built, if needed) by `tests/cluster/`.
pub fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        if let Ok(path) = std::env::var("RESTATUS_TEST_KUBECONFIG") {
            return ControlPlane {
                kubeconfig: PathBuf::from(path),
                _stdin: None,
                _child: None,
                _dir: None,
            };
        }
        let status = Command::new("bash")
            .arg(repo().join("tests/cluster/build.sh"))
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .expect("run tests/cluster/build.sh");
        assert!(status.success(), "tests/cluster/build.sh failed");

        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let log = super::log_dir().join(format!("kube-cluster-{}.log", std::process::id()));
        let mut child = Command::new(repo().join("target/cluster/kube-cluster"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--log-file")
            .arg(&log)
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start target/cluster/kube-cluster");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    let _ = tx.send(line);
                }
            }
        });
        match rx.recv_timeout(STARTUP) {
            Ok(line) => eprintln!("control plane {line}"),
            Err(_) => panic!(
                "control plane not ready within {STARTUP:?}; see {}",
                log.display()
            ),
        }
        let stdin = child.stdin.take();
        ControlPlane {
            kubeconfig,
            _stdin: stdin.map(Mutex::new),
            _child: Some(Mutex::new(child)),
            _dir: Some(dir),
        }
    })
}

/// A client of the test control plane.
pub async fn client() -> Client {
    super::init_crypto();
    let kc =
        kube::config::Kubeconfig::read_from(&control_plane().kubeconfig).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// Applies a CRD from `examples/` or a JSON value (server-side apply) and waits until it is
/// Established.
pub async fn apply_crd(client: &Client, crd: Value) -> CustomResourceDefinition {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd["metadata"]["name"]
        .as_str()
        .expect("CRD name")
        .to_owned();
    api.patch(
        &name,
        &PatchParams::apply("restatus-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    super::eventually(Duration::from_secs(30), "CRD to be established", || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let crd = api.get(&name).await.ok()?;
            let established = crd
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(crd)
        }
    })
    .await
}

/// A CRD in the group `infra.example.com` with free-form spec and status.
pub fn test_crd(
    plural: &str,
    kind: &str,
    version: &str,
    scope: &str,
    status_subresource: bool,
) -> Value {
    let mut version = json!({
        "name": version, "served": true, "storage": true,
        "schema": {"openAPIV3Schema": {"type": "object", "properties": {
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }}}
    });
    if status_subresource {
        version["subresources"] = json!({"status": {}});
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.infra.example.com")},
        "spec": {
            "group": "infra.example.com",
            "scope": scope,
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
            "versions": [version]
        }
    })
}

/// A webhook rule for a resource of `infra.example.com` and its status subresource.
pub fn test_rule(plural: &str, scope: &str) -> Value {
    json!({
        "apiGroups": ["infra.example.com"],
        "apiVersions": ["*"],
        "resources": [plural, format!("{plural}/status")],
        "operations": ["CREATE", "UPDATE", "DELETE"],
        "scope": scope
    })
}

/// The example KubernetesCluster CRD from `examples/`.
pub fn example_crd() -> Value {
    let text = std::fs::read_to_string(repo().join("examples/kubernetescluster-crd.yaml"))
        .expect("read examples/kubernetescluster-crd.yaml");
    serde_yaml::from_str(&text).expect("parse CRD yaml")
}

pub fn kubernetes_cluster_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("infra.example.com", "v1alpha1", "KubernetesCluster"),
        "kubernetesclusters",
    )
}

pub struct EnvOptions {
    /// Extra `restatus serve` flags.
    pub args: Vec<String>,
    /// restatus processes sharing the Redis (the webhook calls the first).
    pub replicas: usize,
    /// Extra webhook rules, e.g. for a cluster-scoped test type.
    pub extra_rules: Vec<Value>,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            replicas: 1,
            extra_rules: Vec::new(),
        }
    }
}

pub struct Env {
    pub client: Client,
    pub ns: String,
    pub redis: RedisServer,
    pub restatus: Vec<Restatus>,
    pub webhook: String,
    pub keys: KeySchema,
}

impl Env {
    /// Fresh namespace, Redis and restatus, with a webhook that is verified to be called.
    pub async fn start(opts: EnvOptions) -> Env {
        let client = client().await;
        apply_crd(&client, example_crd()).await;
        let ns = super::unique("e2e");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .expect("create namespace");

        let redis = RedisServer::start().await;
        let prefix = super::unique("e2e");
        let mut restatus = Vec::new();
        for i in 0..opts.replicas.max(1) {
            let mut o = super::restatus::Options::new(redis.url());
            o.key_prefix = prefix.clone();
            o.kubeconfig = Some(control_plane().kubeconfig.clone());
            o.args = opts.args.clone();
            o.args
                .extend(["--consumer-name".to_owned(), format!("{ns}-{i}")]);
            o.name = format!("{ns}-restatus-{i}");
            restatus.push(Restatus::start(o).await);
        }

        let webhook = format!("{ns}.restatus.test");
        let mut rules = vec![
            json!({
                "apiGroups": ["infra.example.com"],
                "apiVersions": ["*"],
                "resources": ["kubernetesclusters", "kubernetesclusters/status"],
                "operations": ["CREATE", "UPDATE", "DELETE"],
                "scope": "Namespaced"
            }),
            json!({
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["services", "services/status", "configmaps"],
                "operations": ["CREATE", "UPDATE", "DELETE"],
                "scope": "Namespaced"
            }),
        ];
        rules.extend(opts.extra_rules);
        let mut config: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": webhook},
            "webhooks": [{
                "name": "status.restatus.io",
                "clientConfig": {"url": restatus[0].mutate_url()},
                "rules": rules,
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "failurePolicy": "Ignore",
                "sideEffects": "NoneOnDryRun",
                "admissionReviewVersions": ["v1"],
                "reinvocationPolicy": "Never",
                "timeoutSeconds": 5
            }]
        }))
        .expect("webhook configuration");
        for hook in config.webhooks.iter_mut().flatten() {
            hook.client_config.ca_bundle =
                Some(k8s_openapi::ByteString(restatus[0].ca_pem().into_bytes()));
        }
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &config)
            .await
            .expect("create MutatingWebhookConfiguration");

        let env = Env {
            keys: KeySchema::new(&prefix, "default"),
            client,
            ns,
            redis,
            restatus,
            webhook,
        };
        env.wait_for_webhook().await;
        env
    }

    /// Another restatus process on this environment's Redis and key prefix, with `args`.
    /// The webhook keeps calling the first one.
    pub async fn start_replica(&self, name: &str, args: &[&str]) -> Restatus {
        let mut opts = super::restatus::Options::new(self.redis.url());
        opts.key_prefix = self.restatus[0].key_prefix.clone();
        opts.kubeconfig = Some(control_plane().kubeconfig.clone());
        opts.args = args.iter().map(|a| (*a).to_owned()).collect();
        opts.name = format!("{}-{name}", self.ns);
        Restatus::start(opts).await
    }

    /// Dry-run creates of a canary ConfigMap until restatus reports a review of one.
    async fn wait_for_webhook(&self) {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns);
        let restatus = &self.restatus[0];
        super::eventually(Duration::from_secs(30), "the webhook to be called", || {
            let cms = cms.clone();
            async move {
                let canary: ConfigMap =
                    serde_json::from_value(json!({"metadata": {"name": "restatus-canary"}}))
                        .unwrap();
                let pp = PostParams {
                    dry_run: true,
                    ..Default::default()
                };
                cms.create(&pp, &canary).await.ok()?;
                let seen = restatus
                    .metric("restatus_admission_requests_total{operation=\"CREATE\",outcome=\"dry_run\"}")
                    .await;
                (seen > 0.0).then_some(())
            }
        })
        .await;
    }

    /// Removes the webhook configuration (namespaces stay; no controller deletes them here).
    pub async fn cleanup(self) {
        let _ = Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .delete(&self.webhook, &DeleteParams::default())
            .await;
    }

    pub fn identity(&self, group: &str, resource: &str, name: &str) -> ObjectIdentity {
        ObjectIdentity {
            group: group.into(),
            resource: resource.into(),
            namespace: Some(self.ns.clone()),
            name: name.into(),
        }
    }

    /// The record hash of an object (empty when there is none).
    pub async fn record(&self, id: &ObjectIdentity) -> HashMap<String, String> {
        self.redis.hgetall(&self.keys.record(id)).await
    }

    /// The recorded status of an object, if any.
    pub async fn recorded_status(&self, id: &ObjectIdentity) -> Option<Value> {
        let rec = self.record(id).await;
        rec.get("status")
            .map(|s| serde_json::from_str(s).expect("status JSON"))
    }

    pub fn clusters(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &kubernetes_cluster_resource(),
        )
    }
}

/// A KubernetesCluster manifest without status.
pub fn kubernetes_cluster(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "infra.example.com/v1alpha1",
        "kind": "KubernetesCluster",
        "metadata": {"name": name},
        "spec": {"region": "eu-west-1", "version": "1.31", "nodeCount": 3}
    }))
    .unwrap()
}

/// Patches `.status` through the status subresource (merge patch).
pub async fn patch_status(api: &Api<DynamicObject>, name: &str, status: Value) -> DynamicObject {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .unwrap_or_else(|e| panic!("patch status of {name}: {e}"))
}
