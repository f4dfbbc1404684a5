//! The Helm chart in tests: the pinned `helm` built from its Go module (`hack/tools/`),
//! rendering, and applying rendered objects to the test control plane.

use std::{path::PathBuf, process::Command, sync::OnceLock};

use kube::{
    Api, Client,
    api::{DynamicObject, GroupVersionKind, PostParams},
    discovery,
};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart() -> PathBuf {
    repo().join("charts/restatus")
}

/// Builds the pinned helm binaries once per test binary (cached across runs by a stamp).
fn build_tools() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| super::run_build_script("hack/tools/build.sh"));
}

/// The Helm 4 binary.
pub fn helm() -> PathBuf {
    build_tools();
    repo().join("target/tools/helm")
}

/// The Helm 3 binary.
pub fn helm3() -> PathBuf {
    build_tools();
    repo().join("target/tools/helm3")
}

/// The output of a helm command, and whether it succeeded.
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `helm` (the binary at `bin`) with `args`.
pub fn run(bin: &PathBuf, args: &[&str]) -> Output {
    let out = Command::new(bin)
        .args(args)
        // No user configuration, repositories or plugins of the machine running the tests.
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("restatus-helm-config"),
        )
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("restatus-helm-cache"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("restatus-helm-data"),
        )
        .env_remove("KUBECONFIG")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Parses a multi-document YAML stream into JSON values, skipping empty documents.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template RELEASE charts/restatus -n NAMESPACE ARGS...`: the rendered objects.
pub fn template(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut all = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    all.extend_from_slice(args);
    let out = run(&helm(), &all);
    assert!(out.success, "helm template failed:\n{}", out.stderr);
    documents(&out.stdout)
}

/// The rendered objects of `kind`.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// Creates rendered objects on the API server, finding each kind's resource by discovery.
pub async fn create_all(client: &Client, namespace: &str, objects: &[&Value]) {
    for obj in objects {
        let api_version = obj["apiVersion"].as_str().expect("apiVersion");
        let kind = obj["kind"].as_str().expect("kind");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discover {api_version} {kind}: {e}"));
        let api: Api<DynamicObject> = if caps.scope == discovery::Scope::Namespaced {
            Api::namespaced_with(client.clone(), namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let object: DynamicObject = serde_json::from_value((*obj).clone()).expect("object");
        api.create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("create {kind} {:?}: {e}", object.metadata.name));
    }
}
