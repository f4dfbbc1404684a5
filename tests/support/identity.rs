//! The identity restatus runs under in tests: the chart's own ServiceAccount and RBAC,
//! rendered by `helm template`, with a token from the TokenRequest API. Never
//! `system:masters`: a permission the chart forgets fails a test.

use std::path::{Path, PathBuf};

use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
use kube::{
    Api, Client,
    api::{ApiResource, PostParams},
};
use serde_json::{Value, json};

use super::helm;

/// The kinds of the chart that make up restatus's identity.
const IDENTITY_KINDS: [&str; 5] = [
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

pub struct Identity {
    pub namespace: String,
    pub service_account: String,
    /// `system:serviceaccount:<namespace>:<name>`, as the API server sees restatus.
    pub username: String,
    /// A kubeconfig that authenticates as the ServiceAccount with a bearer token.
    pub kubeconfig: PathBuf,
    /// Cluster-scoped objects created for it (to delete when the test ends).
    pub cluster_objects: Vec<(ApiResource, String)>,
    _dir: tempfile::TempDir,
}

/// Creates the chart's ServiceAccount and RBAC for release `release` in `namespace`,
/// rendered with `helm_args` (values), and a kubeconfig with a one-hour token for it, on the
/// shared test control plane.
pub async fn from_chart(
    client: &Client,
    release: &str,
    namespace: &str,
    helm_args: &[&str],
) -> Identity {
    let admin = &super::cluster::control_plane().kubeconfig;
    from_chart_in(admin, client, release, namespace, helm_args).await
}

/// [`from_chart`] on the control plane whose admin kubeconfig is `admin_kubeconfig` (and
/// whose admin `client` is).
pub async fn from_chart_in(
    admin_kubeconfig: &Path,
    client: &Client,
    release: &str,
    namespace: &str,
    helm_args: &[&str],
) -> Identity {
    let rendered = helm::template(release, namespace, helm_args);
    let objects: Vec<&Value> = rendered
        .iter()
        .filter(|o| IDENTITY_KINDS.contains(&o["kind"].as_str().unwrap_or_default()))
        .collect();
    helm::create_all(client, namespace, &objects).await;
    let cluster_objects = objects
        .iter()
        .filter_map(|o| {
            let resource = match o["kind"].as_str()? {
                "ClusterRole" => ApiResource::erase::<k8s_openapi::api::rbac::v1::ClusterRole>(&()),
                "ClusterRoleBinding" => {
                    ApiResource::erase::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(&())
                }
                _ => return None,
            };
            Some((resource, o["metadata"]["name"].as_str()?.to_owned()))
        })
        .collect();
    let service_account = helm::of_kind(&rendered, "ServiceAccount")
        .first()
        .and_then(|sa| sa["metadata"]["name"].as_str())
        .expect("the chart renders a ServiceAccount")
        .to_owned();

    let (kubeconfig, dir) =
        token_kubeconfig_in(admin_kubeconfig, client, namespace, &service_account).await;
    Identity {
        username: format!("system:serviceaccount:{namespace}:{service_account}"),
        namespace: namespace.to_owned(),
        service_account,
        kubeconfig,
        cluster_objects,
        _dir: dir,
    }
}

/// A kubeconfig for the shared test control plane that authenticates as the ServiceAccount
/// `namespace/name` with a one-hour token from the TokenRequest API. The file lives as long
/// as the returned directory.
pub async fn token_kubeconfig(
    client: &Client,
    namespace: &str,
    name: &str,
) -> (PathBuf, tempfile::TempDir) {
    let admin = &super::cluster::control_plane().kubeconfig;
    token_kubeconfig_in(admin, client, namespace, name).await
}

/// [`token_kubeconfig`] for the control plane whose admin kubeconfig is `admin_kubeconfig`
/// (its server and CA are copied; `client` asks for the token).
pub async fn token_kubeconfig_in(
    admin_kubeconfig: &Path,
    client: &Client,
    namespace: &str,
    name: &str,
) -> (PathBuf, tempfile::TempDir) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": [], "expirationSeconds": 3600}
    }))
    .unwrap();
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
        .status
        .expect("token status")
        .token;

    let admin = kube::config::Kubeconfig::read_from(admin_kubeconfig).expect("admin kubeconfig");
    let cluster = admin.clusters.first().expect("a cluster").clone();
    let cluster = cluster.cluster.expect("cluster entry");
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": cluster.server,
            "certificate-authority-data": cluster.certificate_authority_data,
        }}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "restatus", "context": {"cluster": "test", "user": name}}],
        "current-context": "restatus"
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).expect("write kubeconfig");
    (path, dir)
}

/// A user of the test control plane: a ServiceAccount with a Role in one namespace.
pub struct User {
    pub client: Client,
    pub username: String,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

/// Creates the ServiceAccount `name` in `namespace`, a Role with `rules` bound to it, and a
/// client that authenticates as it.
pub async fn user(client: &Client, namespace: &str, name: &str, rules: Value) -> User {
    let objects = [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": name}, "rules": rules}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]}),
    ];
    let refs: Vec<&Value> = objects.iter().collect();
    helm::create_all(client, namespace, &refs).await;
    let (kubeconfig, dir) = token_kubeconfig(client, namespace, name).await;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("user kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("user config");
    User {
        client: Client::try_from(config).expect("user client"),
        username: format!("system:serviceaccount:{namespace}:{name}"),
        kubeconfig,
        _dir: dir,
    }
}

/// Rights on KubernetesClusters in a namespace, with or without `update` on their status: a
/// tenant who may create objects but not write their status, or an operator who may.
pub fn cluster_rules(status: bool) -> Value {
    let mut rules = vec![json!({
        "apiGroups": ["infra.example.com"], "resources": ["kubernetesclusters"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]
    })];
    if status {
        rules.push(json!({
            "apiGroups": ["infra.example.com"], "resources": ["kubernetesclusters/status"],
            "verbs": ["get", "update", "patch"]
        }));
    }
    Value::Array(rules)
}

impl User {
    /// The KubernetesClusters of `namespace`, as this user sees them.
    pub fn clusters(&self, namespace: &str) -> Api<kube::api::DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            namespace,
            &super::cluster::kubernetes_cluster_resource(),
        )
    }
}
