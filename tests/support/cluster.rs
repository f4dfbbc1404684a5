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
        core::v1::{ConfigMap, Namespace, Service},
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

use super::{
    identity::{self, Identity},
    redis::RedisServer,
    restatus::Restatus,
};

const STARTUP: Duration = Duration::from_secs(180);
/// How long tests wait for restatus to record or restore something.
pub const WAIT: Duration = Duration::from_secs(30);

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
        ControlPlane::start(&[])
    })
}

impl ControlPlane {
    /// Starts a control plane of its own (built, if needed, by `tests/cluster/`), with
    /// `apiserver_args` appended to kube-apiserver's flags, for a test that needs the API
    /// server configured differently from the shared [`control_plane`]. It stops when
    /// dropped.
    pub fn start(apiserver_args: &[String]) -> ControlPlane {
        super::run_build_script("tests/cluster/build.sh");

        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let log = super::log_dir().join(super::unique("kube-cluster") + ".log");
        let mut child = Command::new(repo().join("target/cluster/kube-cluster"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            // No --data-dir: kube-cluster makes its own and removes it when it exits (the shared
            // control plane is a static, whose temporary directory is never dropped).
            .arg("--log-file")
            .arg(&log)
            // Namespace deletion and garbage collection as in a real cluster: tests delete
            // their namespaces, and namespace deletion sends restatus per-object DELETEs.
            .arg("--controllers")
            .arg("namespace,garbagecollector")
            .arg("--exit-on-stdin-eof")
            .arg("--")
            .args(apiserver_args)
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
    }

    /// What restatus runs as on this control plane: the chart's ServiceAccount and RBAC in
    /// `namespace`, for the resources an [`Env`] sends to restatus and `types`, with a
    /// kubeconfig holding a token for it. `client` is this control plane's admin.
    pub async fn restatus_identity(
        &self,
        client: &Client,
        namespace: &str,
        types: &[TestType],
    ) -> Identity {
        let values = identity_values(types);
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        identity::from_chart_in(&self.kubeconfig, client, namespace, namespace, &values).await
    }

    /// A client of this control plane, as its admin.
    pub async fn client(&self) -> Client {
        super::init_crypto();
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }
}

impl Drop for ControlPlane {
    /// Closes stdin, which stops the control plane (within its 10 s shutdown bound), and
    /// waits for it before its data directory goes.
    fn drop(&mut self) {
        drop(self._stdin.take());
        if let Some(child) = self._child.take() {
            let mut child = child.into_inner().unwrap_or_else(|p| p.into_inner());
            let _ = child.wait();
        }
    }
}

/// A client of the test control plane.
pub async fn client() -> Client {
    control_plane().client().await
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

/// A custom resource type of a test: a CRD in `infra.example.com` with free-form spec and
/// status. [`EnvOptions::types`] applies the CRD and sends the type's reviews to restatus.
#[derive(Debug, Clone, Copy)]
pub struct TestType {
    pub plural: &'static str,
    pub kind: &'static str,
    pub version: &'static str,
    pub cluster_scoped: bool,
    pub status_subresource: bool,
    /// Annotations of the CRD (CRD-level policy).
    pub annotations: &'static [(&'static str, &'static str)],
}

impl TestType {
    pub const GROUP: &'static str = "infra.example.com";

    /// A namespaced type with the status subresource, served as `v1`.
    pub const fn namespaced(plural: &'static str, kind: &'static str) -> Self {
        Self {
            plural,
            kind,
            version: "v1",
            cluster_scoped: false,
            status_subresource: true,
            annotations: &[],
        }
    }

    /// The same type with these annotations on its CRD.
    pub const fn annotated(self, annotations: &'static [(&'static str, &'static str)]) -> Self {
        Self {
            annotations,
            ..self
        }
    }

    /// The same type without the status subresource: `.status` is part of the object.
    pub const fn without_status_subresource(self) -> Self {
        Self {
            status_subresource: false,
            ..self
        }
    }

    /// The same type, cluster-scoped.
    pub const fn cluster_scoped(self) -> Self {
        Self {
            cluster_scoped: true,
            ..self
        }
    }

    fn scope(&self) -> &'static str {
        if self.cluster_scoped {
            "Cluster"
        } else {
            "Namespaced"
        }
    }

    pub fn crd(&self) -> Value {
        let mut version = json!({
            "name": self.version, "served": true, "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }}}
        });
        if self.status_subresource {
            version["subresources"] = json!({"status": {}});
        }
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": format!("{}.{}", self.plural, Self::GROUP),
                "annotations": self.annotations.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>()
            },
            "spec": {
                "group": Self::GROUP,
                "scope": self.scope(),
                "names": {"plural": self.plural, "singular": self.kind.to_lowercase(), "kind": self.kind},
                "versions": [version]
            }
        })
    }

    /// The webhook rule for the type and its status subresource.
    pub fn rule(&self) -> Value {
        json!({
            "apiGroups": [Self::GROUP],
            "apiVersions": ["*"],
            "resources": [self.plural, format!("{}/status", self.plural)],
            "operations": ["CREATE", "UPDATE", "DELETE"],
            "scope": self.scope()
        })
    }

    pub fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(Self::GROUP, self.version, self.kind),
            self.plural,
        )
    }

    /// A manifest of this type without status.
    pub fn object(&self, name: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": format!("{}/{}", Self::GROUP, self.version),
            "kind": self.kind,
            "metadata": {"name": name},
            "spec": {"region": "eu-west-1"}
        }))
        .unwrap()
    }
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
    /// Test types whose CRDs are applied and whose reviews go to restatus.
    pub types: Vec<TestType>,
    /// Annotations of the test's namespace, set before restatus starts (namespace policy).
    pub namespace_annotations: Vec<(String, String)>,
    /// An encryption keyring (the text of the file) for restatus; the environment opens
    /// sealed records with it.
    pub keyring: Option<String>,
    /// A Redis that keeps its data when it is stopped and started again.
    pub persistent_redis: bool,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            replicas: 1,
            types: Vec::new(),
            namespace_annotations: Vec::new(),
            keyring: None,
            persistent_redis: false,
        }
    }
}

impl EnvOptions {
    /// restatus encrypts saved statuses with this keyring text.
    pub fn with_keyring(mut self, keyring: &str) -> Self {
        self.keyring = Some(keyring.to_owned());
        self
    }

    /// A Redis that keeps its data when it is stopped and started again.
    pub fn persistent_redis(mut self) -> Self {
        self.persistent_redis = true;
        self
    }

    /// Adds an annotation to the test's namespace.
    pub fn namespace_annotation(mut self, key: &str, value: &str) -> Self {
        self.namespace_annotations
            .push((key.to_owned(), value.to_owned()));
        self
    }

    /// restatus without a restore worker: the webhook queues jobs, nothing takes them until
    /// a test starts a replica with a worker ([`Env::start_replica`]).
    pub fn webhook_only() -> Self {
        Self {
            args: vec!["--restore-worker=false".into()],
            ..Self::default()
        }
    }

    /// restatus with the test types `types` applied and routed to it.
    pub fn with_types(types: &[TestType]) -> Self {
        Self {
            types: types.to_vec(),
            ..Self::default()
        }
    }

    pub fn with_args(args: &[&str]) -> Self {
        Self {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Self::default()
        }
    }
}

/// One test's world: a fresh namespace, a Redis, restatus processes and a webhook
/// configuration for that namespace. Dropping it removes the webhook configuration, the
/// namespace and the cluster-scoped objects registered with [`Env::delete_on_drop`], so a
/// failing test leaves nothing behind for the next one.
pub struct Env {
    // Fields drop in order: the restatus processes stop before their Redis.
    pub restatus: Vec<Restatus>,
    pub client: Client,
    pub ns: String,
    pub redis: RedisServer,
    pub webhook: String,
    pub keys: KeySchema,
    /// The key prefix of this environment's restatus.
    pub prefix: String,
    /// What restatus runs as: the chart's ServiceAccount and RBAC for this test's resources.
    pub identity: Identity,
    /// The keyring restatus seals records with, if any (and its file).
    pub keyring: Option<(restatus::store::Keyring, tempfile::TempDir)>,
    /// The flags the environment's restatus processes were started with.
    args: Vec<String>,
    cluster_objects: Mutex<Vec<(ApiResource, String)>>,
}

/// `helm template` values that render the chart's identity for an environment: RBAC for the
/// resources the environment's webhook sends to restatus, and certificates from files (the
/// tests make them), so no Secret access.
fn identity_values(types: &[TestType]) -> Vec<String> {
    let mut custom = vec!["kubernetesclusters"];
    custom.extend(types.iter().map(|t| t.plural));
    let tracked = json!([
        {"group": TestType::GROUP, "resources": custom},
        {"group": "", "resources": ["services", "configmaps"]}
    ]);
    let ca = "-----BEGIN CERTIFICATE-----\nunused\n-----END CERTIFICATE-----\n";
    [
        "--set",
        "certificates.mode=provided",
        "--set",
        "certificates.provided.secretName=unused",
        "--set",
        &format!("certificates.provided.caBundle={}", base64(ca)),
        "--set",
        "redis.mode=external",
        "--set",
        "redis.external.url=redis://127.0.0.1:6379",
        "--set-json",
        &format!("trackedResources={tracked}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Creates the namespace `name`.
pub async fn create_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
}

/// Standard base64 with padding.
pub fn base64(text: &str) -> String {
    restatus::text::base64_encode(text.as_bytes())
}

impl Env {
    /// Fresh namespace, Redis and restatus, with a webhook that is verified to be called.
    pub async fn start(opts: EnvOptions) -> Env {
        let client = client().await;
        apply_crd(&client, example_crd()).await;
        for t in &opts.types {
            apply_crd(&client, t.crd()).await;
        }
        let ns = super::unique("e2e");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let annotations: serde_json::Map<String, Value> = opts
            .namespace_annotations
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": ns, "annotations": annotations}}),
                )
                .unwrap(),
            )
            .await
            .expect("create namespace");

        let values = identity_values(&opts.types);
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let identity = identity::from_chart(&client, &ns, &ns, &values).await;

        let redis = if opts.persistent_redis {
            RedisServer::start_persistent().await
        } else {
            RedisServer::start().await
        };
        let prefix = super::unique("e2e");
        let keyring = opts.keyring.as_ref().map(|text| {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("keyring"), text).expect("write keyring");
            let parsed = restatus::store::Keyring::parse(text).expect("test keyring");
            (parsed, dir)
        });
        // The end-to-end tests are not about the admission budget (tests/serve.rs is): a
        // loaded test machine must not turn a slow Redis answer into a missing record.
        let mut args = vec!["--redis-timeout=1s".to_owned()];
        args.extend(opts.args.clone());
        if let Some((_, dir)) = &keyring {
            args.push("--encryption-key-file".into());
            args.push(dir.path().join("keyring").display().to_string());
        }
        let mut restatus = Vec::new();
        let args_kept = args.clone();
        for i in 0..opts.replicas.max(1) {
            let mut o = super::restatus::Options::new(redis.url());
            o.key_prefix = prefix.clone();
            o.kubeconfig = Some(identity.kubeconfig.clone());
            o.args = args.clone();
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
        rules.extend(opts.types.iter().map(TestType::rule));
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

        let cluster_objects = Mutex::new(identity.cluster_objects.clone());
        let env = Env {
            keys: KeySchema::new(&prefix, "default"),
            prefix,
            client,
            ns,
            redis,
            restatus,
            webhook,
            identity,
            keyring,
            args: args_kept,
            cluster_objects,
        };
        env.wait_for_webhook().await;
        env
    }

    /// Stops the restatus the webhook calls at once (SIGKILL, as an OOM kill or a lost node):
    /// from then on the API server's calls fail, and are ignored.
    pub fn kill_restatus(&mut self) {
        self.restatus[0].kill();
    }

    /// Starts the restatus the webhook calls again, on its port, with its certificates and
    /// flags, and waits until it is called.
    pub async fn restart_restatus(&mut self) {
        let old = &self.restatus[0];
        let mut o = super::restatus::Options::new(self.redis.url());
        o.key_prefix = old.key_prefix.clone();
        o.kubeconfig = Some(self.identity.kubeconfig.clone());
        o.port = Some(old.port);
        o.certs_from = Some(old.certs.path().to_owned());
        o.args = self.args.clone();
        o.args
            .extend(["--consumer-name".to_owned(), format!("{}-0-again", self.ns)]);
        o.name = format!("{}-restatus-0-again", self.ns);
        self.restatus[0] = Restatus::start(o).await;
        self.wait_for_webhook().await;
    }

    /// Another restatus process on this environment's Redis and key prefix, with `args`.
    /// The webhook keeps calling the first one.
    pub async fn start_replica(&self, name: &str, args: &[&str]) -> Restatus {
        let mut opts = super::restatus::Options::new(self.redis.url());
        opts.key_prefix = self.restatus[0].key_prefix.clone();
        opts.kubeconfig = Some(self.identity.kubeconfig.clone());
        opts.args = vec!["--redis-timeout=1s".to_owned()];
        opts.args.extend(args.iter().map(|a| (*a).to_owned()));
        opts.name = format!("{}-{name}", self.ns);
        Restatus::start(opts).await
    }

    /// Stops the API server from calling restatus for this environment's namespace, as while
    /// restatus is rolled out, killed, or not yet installed: writes land unreviewed (the
    /// webhook's failurePolicy is Ignore). [`Env::resume_webhook`] undoes it.
    pub async fn pause_webhook(&self) {
        self.set_webhook_namespace("restatus-test-no-such-namespace")
            .await;
    }

    /// Routes this environment's namespace to restatus again and waits until it is called.
    pub async fn resume_webhook(&self) {
        self.set_webhook_namespace(&self.ns.clone()).await;
        self.wait_for_webhook().await;
    }

    async fn set_webhook_namespace(&self, namespace: &str) {
        let hooks = Api::<MutatingWebhookConfiguration>::all(self.client.clone());
        let mut config = hooks.get(&self.webhook).await.unwrap();
        for hook in config.webhooks.iter_mut().flatten() {
            hook.namespace_selector = Some(
                serde_json::from_value(
                    json!({"matchLabels": {"kubernetes.io/metadata.name": namespace}}),
                )
                .unwrap(),
            );
        }
        hooks
            .replace(&self.webhook, &PostParams::default(), &config)
            .await
            .unwrap();
        if namespace != self.ns {
            // The API server reads webhook configurations from an informer: wait until a
            // dry-run create is no longer reviewed.
            let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns);
            let restatus = &self.restatus[0];
            let reviewed =
                "restatus_admission_requests_total{operation=\"CREATE\",outcome=\"dry_run\"}";
            super::eventually(
                Duration::from_secs(30),
                "the webhook to stop being called",
                || {
                    let cms = cms.clone();
                    async move {
                        let before = restatus.metric(reviewed).await;
                        let canary: ConfigMap = serde_json::from_value(
                            json!({"metadata": {"name": "restatus-canary"}}),
                        )
                        .unwrap();
                        let pp = PostParams {
                            dry_run: true,
                            ..Default::default()
                        };
                        cms.create(&pp, &canary).await.ok()?;
                        (restatus.metric(reviewed).await == before).then_some(())
                    }
                },
            )
            .await;
        }
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

    /// Deletes the cluster-scoped object `name` of `resource` when the environment is dropped.
    pub fn delete_on_drop(&self, resource: ApiResource, name: &str) {
        self.cluster_objects
            .lock()
            .unwrap()
            .push((resource, name.to_owned()));
    }

    /// Creates a cluster-scoped object that the environment deletes when dropped.
    pub async fn create_cluster_scoped<K>(&self, obj: &K) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let created = Api::<K>::all(self.client.clone())
            .create(&PostParams::default(), obj)
            .await
            .unwrap_or_else(|e| panic!("create {obj:?}: {e}"));
        let name = created.meta().name.clone().unwrap_or_default();
        self.delete_on_drop(ApiResource::erase::<K>(&()), &name);
        created
    }

    pub fn identity(&self, group: &str, resource: &str, name: &str) -> ObjectIdentity {
        ObjectIdentity {
            group: group.into(),
            resource: resource.into(),
            namespace: Some(self.ns.clone()),
            name: name.into(),
        }
    }

    /// The identity of a KubernetesCluster in this namespace.
    pub fn kc_id(&self, name: &str) -> ObjectIdentity {
        self.identity("infra.example.com", "kubernetesclusters", name)
    }

    /// A store on this environment's Redis and keys, as anyone who can write Redis has (it
    /// seals with the environment's keyring, if any).
    pub fn store(&self) -> restatus::store::Store {
        restatus::store::Store::connect(
            &self.redis.url(),
            &self.prefix,
            "default",
            restatus::store::StoreMetrics::register(&mut restatus::telemetry::registry()),
            self.keyring.as_ref().map(|(_, dir)| {
                std::sync::Arc::new(
                    restatus::store::Keyring::load(&dir.path().join("keyring")).expect("keyring"),
                )
            }),
        )
        .expect("store")
    }

    /// The record hash of an object (empty when there is none).
    pub async fn record(&self, id: &ObjectIdentity) -> HashMap<String, String> {
        self.redis.hgetall(&self.keys.record(id)).await
    }

    /// The recorded status of an object, if any.
    pub async fn recorded_status(&self, id: &ObjectIdentity) -> Option<Value> {
        let rec = self.record(id).await;
        let stored = rec.get("status")?;
        let json = match &self.keyring {
            Some((keyring, _)) if stored.starts_with("enc:") => {
                let key = self.keys.record(id);
                String::from_utf8(keyring.open(&key, stored).expect("open sealed record"))
                    .expect("UTF-8 status")
            }
            _ => stored.clone(),
        };
        Some(serde_json::from_str(&json).expect("status JSON"))
    }

    /// Waits until the record of `id` holds `status`.
    pub async fn wait_recorded(&self, id: &ObjectIdentity, status: &Value) {
        super::eventually(WAIT, &format!("record of {id} to be {status}"), || async {
            (self.recorded_status(id).await.as_ref() == Some(status)).then_some(())
        })
        .await;
    }

    /// Waits until the record of `id` carries a deletion (its retention clock runs).
    pub async fn wait_deletion_recorded(&self, id: &ObjectIdentity) {
        super::eventually(
            WAIT,
            &format!("the deletion of {id} to be recorded"),
            || async {
                self.record(id)
                    .await
                    .contains_key("deletedAt")
                    .then_some(())
            },
        )
        .await;
    }

    /// Creates a KubernetesCluster, gives it `status`, waits until restatus has recorded it,
    /// deletes it and waits until the deletion is recorded.
    pub async fn create_record_delete(&self, name: &str, status: &Value) {
        let api = self.clusters();
        api.create(&PostParams::default(), &kubernetes_cluster(name))
            .await
            .unwrap();
        self.record_delete(&api, &self.kc_id(name), status, &kept_by_default(status))
            .await;
    }

    /// [`Env::create_record_delete`] for an object of a test type, recorded whole.
    pub async fn create_record_delete_of(&self, t: &TestType, name: &str, status: &Value) {
        let api = self.api(t);
        api.create(&PostParams::default(), &t.object(name))
            .await
            .unwrap();
        let id = self.identity(TestType::GROUP, t.plural, name);
        self.record_delete(&api, &id, status, status).await;
    }

    /// Gives the existing object `id` `status`, waits until it is recorded as `recorded`,
    /// deletes the object and waits until the deletion is recorded.
    async fn record_delete(
        &self,
        api: &Api<DynamicObject>,
        id: &ObjectIdentity,
        status: &Value,
        recorded: &Value,
    ) {
        patch_status(api, &id.name, status.clone()).await;
        self.wait_recorded(id, recorded).await;
        api.delete(&id.name, &DeleteParams::default())
            .await
            .unwrap();
        self.wait_deletion_recorded(id).await;
    }

    pub fn clusters(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &kubernetes_cluster_resource(),
        )
    }

    /// The API of a test type: in this namespace, or cluster-wide for a cluster-scoped type.
    pub fn api(&self, t: &TestType) -> Api<DynamicObject> {
        if t.cluster_scoped {
            Api::all_with(self.client.clone(), &t.resource())
        } else {
            Api::namespaced_with(self.client.clone(), &self.ns, &t.resource())
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let webhook = self.webhook.clone();
        let ns = self.ns.clone();
        let objects = std::mem::take(&mut *self.cluster_objects.lock().unwrap());
        // Drop cannot await, and the test's runtime may be the one running this drop: clean up
        // on a thread of its own with its own runtime and client.
        let cleaned = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = client().await;
                let dp = DeleteParams::default();
                let mut failures = Vec::new();
                let hooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
                if let Err(e) = hooks.delete(&webhook, &dp).await {
                    failures.push(format!("webhook configuration {webhook}: {e}"));
                }
                for (resource, name) in objects {
                    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
                    if let Err(e) = api.delete(&name, &dp).await
                        && !matches!(&e, kube::Error::Api(s) if s.code == 404)
                    {
                        failures.push(format!("{} {name}: {e}", resource.kind));
                    }
                }
                let namespaces: Api<Namespace> = Api::all(client);
                if let Err(e) = namespaces.delete(&ns, &dp).await {
                    failures.push(format!("namespace {ns}: {e}"));
                }
                failures
            })
        })
        .join();
        match cleaned {
            Ok(failures) if failures.is_empty() => {}
            Ok(failures) => eprintln!("test cleanup could not delete: {}", failures.join("; ")),
            Err(_) => eprintln!("test cleanup panicked"),
        }
    }
}

/// What restatus records of `status` with the default policy: all but `observedGeneration`,
/// at the top and in conditions.
pub fn kept_by_default(status: &Value) -> Value {
    let patterns: Vec<restatus::policy::FieldPattern> =
        ["/observedGeneration", "/conditions/*/observedGeneration"]
            .iter()
            .map(|p| p.parse().expect("pattern"))
            .collect();
    let mut kept = status.clone();
    restatus::policy::exclude(&mut kept, &patterns);
    kept
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

/// A LoadBalancer Service manifest (its status holds the address a cloud gave it).
pub fn load_balancer_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": "LoadBalancer", "selector": {"app": name},
                 "ports": [{"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}]}
    }))
    .unwrap()
}

/// Waits until the object carries `restatus.io/restored-at` and no `restatus.io/restore`.
pub async fn wait_restored(api: &Api<DynamicObject>, name: &str) -> DynamicObject {
    use restatus::policy::{ANNOTATION_RESTORE, ANNOTATION_RESTORED_AT};
    super::eventually(WAIT, &format!("{name} to be restored"), || async {
        let obj = api.get_opt(name).await.ok()??;
        let a = obj.metadata.annotations.clone().unwrap_or_default();
        (a.contains_key(ANNOTATION_RESTORED_AT) && !a.contains_key(ANNOTATION_RESTORE))
            .then_some(obj)
    })
    .await
}

/// Replaces the status schema of a test type's CRD (to make a saved status invalid for it)
/// and waits until the API server enforces it: a dry-run status patch of a probe object
/// with `refused` is rejected.
pub async fn tighten_status_schema(env: &Env, t: &TestType, schema: Value, refused: Value) {
    let mut crd = t.crd();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"] = schema;
    apply_crd(&env.client, crd).await;
    let api = env.api(t);
    api.create(&PostParams::default(), &t.object("probe"))
        .await
        .unwrap();
    super::eventually(WAIT, "the tightened schema to be enforced", || async {
        let dry = PatchParams {
            dry_run: true,
            ..Default::default()
        };
        let patch = Patch::Merge(json!({"status": refused}));
        api.patch_status("probe", &dry, &patch)
            .await
            .is_err()
            .then_some(())
    })
    .await;
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
