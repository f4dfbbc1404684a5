//! The Helm chart: lint and render in every mode with Helm 3 and Helm 4, the rules every
//! rendering follows, the values reference, `helm install` on the real API server, and the
//! chart's own end to end: restatus run exactly as the chart's Deployment runs it, under the
//! chart's ServiceAccount, with self-managed certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingAdmissionPolicy},
    apps::v1::Deployment,
    authorization::v1::SubjectAccessReview,
    core::v1::{ConfigMap, Secret, Service},
    events::v1::Event,
    rbac::v1::ClusterRole,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use restatus::{
    certs::{Validity, ca_signing_key, generate_ca},
    policy::status_of,
    store::{KeySchema, ObjectIdentity},
};
use serde_json::{Value, json};
use support::{
    cluster::{self, WAIT, create_namespace, kubernetes_cluster, patch_status, wait_restored},
    eventually, free_port,
    helm::{self, Output},
    identity,
    redis::RedisServer,
    restatus::{Launch, Restatus},
    unique,
};

/// What a render without the cluster and without a lasting Valkey password fails with.
const NO_CLUSTER: &str = "this render has no access to the cluster";

fn ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(helm::chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "a values file per mode: {files:?}");
    files
}

fn must(out: Output, what: &str) -> Output {
    assert!(
        out.success,
        "{what} failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    out
}

#[test]
fn the_chart_lints_and_renders_in_every_mode_with_helm_3_and_4() {
    let chart = helm::chart();
    let chart = chart.to_str().unwrap();
    for bin in [helm::helm(), helm::helm3()] {
        let name = bin.file_name().unwrap().to_string_lossy().into_owned();
        must(
            helm::run(&bin, &["lint", "--strict", chart]),
            &format!("{name} lint"),
        );
        // Offline, the defaults need the Valkey password from somewhere that lasts; the
        // refusal says so.
        let bare = helm::run(&bin, &["template", "r", chart, "-n", "restatus"]);
        assert!(!bare.success, "{name} rendered the bare defaults offline");
        assert!(bare.stderr.contains(NO_CLUSTER), "{name}: {}", bare.stderr);
        let mut template = vec!["template", "r", chart, "-n", "restatus"];
        template.extend_from_slice(&OFFLINE);
        must(helm::run(&bin, &template), &format!("{name} template"));
        for values in ci_values() {
            let values = values.to_str().unwrap();
            let what = format!("{name} with {values}");
            must(
                helm::run(&bin, &["lint", "--strict", chart, "-f", values]),
                &format!("lint {what}"),
            );
            let out = must(
                helm::run(
                    &bin,
                    &["template", "r", chart, "-n", "restatus", "-f", values],
                ),
                &format!("template {what}"),
            );
            assert!(
                !helm::documents(&out.stdout).is_empty(),
                "{what} renders nothing"
            );
        }
    }
}

/// What every offline render needs besides the defaults: the bundled Valkey's password from
/// a Secret, since a render without the cluster cannot keep a generated one.
const OFFLINE: [&str; 2] = ["--set", "redis.bundled.existingSecret=restatus-valkey"];

/// `args` after [`OFFLINE`].
fn offline<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = OFFLINE.to_vec();
    all.extend_from_slice(args);
    all
}

/// `helm template r charts/restatus -n restatus` with [`OFFLINE`] and `args`.
fn render(args: &[&str]) -> Vec<Value> {
    helm::template("r", "restatus", &offline(args))
}

/// `helm template` with [`OFFLINE`] and `args`, expected to fail; its error output.
fn refused(args: &[&str]) -> String {
    refused_raw(&offline(args))
}

/// `helm template` with `args` alone, expected to fail with Helm 3 and 4; their error output.
fn refused_raw(args: &[&str]) -> String {
    let chart = helm::chart();
    let mut all = vec!["template", "r", chart.to_str().unwrap(), "-n", "restatus"];
    all.extend_from_slice(args);
    let mut messages = String::new();
    for bin in [helm::helm(), helm::helm3()] {
        let out = helm::run(&bin, &all);
        assert!(!out.success, "{args:?} was accepted by {}", bin.display());
        messages.push_str(&out.stderr);
    }
    messages
}

#[test]
fn typos_wrong_types_and_forbidden_resources_are_refused_with_a_clear_message() {
    let typo = refused(&["--set", "image.tagg=x"]);
    assert!(typo.contains("tagg"), "{typo}");
    let unknown = refused(&["--set", "replicas=3"]);
    assert!(unknown.contains("replicas"), "{unknown}");
    let wrong_type = refused(&["--set", "replicaCount=two"]);
    assert!(wrong_type.contains("replicaCount"), "{wrong_type}");
    let scheme = refused(&[
        "--set",
        "redis.mode=external",
        "--set",
        "redis.external.url=http://r:6380",
    ]);
    assert!(scheme.contains("/redis/external/url"), "{scheme}");
    let sealed = refused(&["--set", "encryption.requireSealed=true"]);
    assert!(
        sealed.contains("encryption.requireSealed needs encryption.existingSecret"),
        "{sealed}"
    );
    for forbidden in [
        "pods",
        "nodes",
        "leases",
        "events",
        "endpoints",
        "endpointslices",
        "tokenreviews",
        "subjectaccessreviews",
        "certificatesigningrequests",
    ] {
        let message = refused(&[
            "--set",
            &format!("trackedResources[0].resources[0]={forbidden}"),
        ]);
        assert!(
            message.contains(&format!("\"{forbidden}\" cannot be tracked")),
            "{forbidden}: {message}"
        );
    }
    refused(&["--set", "trackedResources[0].resources[0]=*"]);
    refused(&["--set", "trackedResources[0].group=*"]);
}

/// The defaults, rendered offline (the Valkey password from a Secret).
fn defaults() -> Vec<Value> {
    render(&[])
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = helm::of_kind(objects, kind);
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn seconds(duration: &str) -> u64 {
    restatus::duration::parse(duration).unwrap().as_secs()
}

#[test]
fn the_deployment_runs_two_locked_down_replicas_spread_across_nodes() {
    let objects = defaults();
    let deployment = one(&objects, "Deployment");
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let spread = &spec["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        spread["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let container = &spec["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert!(spec["securityContext"]["runAsUser"].as_u64().unwrap() > 0);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let grace = args
        .iter()
        .find_map(|a| a.strip_prefix("--shutdown-grace="))
        .expect("--shutdown-grace");
    assert!(
        spec["terminationGracePeriodSeconds"].as_u64().unwrap() > seconds(grace),
        "the pod outlives the shutdown grace"
    );
    assert!(args.contains(&"--cert-mode=self-managed"));
    // Every flag the chart passes is one restatus knows: the binary parses them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_restatus"))
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pdb = helm::of_kind(&objects, "PodDisruptionBudget")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "r-restatus")
        .expect("restatus's PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

#[test]
fn the_webhook_configuration_never_blocks_and_skips_system_namespaces() {
    let objects = defaults();
    let config = one(&objects, "MutatingWebhookConfiguration");
    let hook = &config["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "NoneOnDryRun");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["reinvocationPolicy"], "Never");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert!(
        hook["clientConfig"].get("caBundle").is_none(),
        "restatus fills the caBundle in self-managed mode"
    );
    let selector = hook["namespaceSelector"]["matchExpressions"].to_string();
    for ns in [
        "kube-system",
        "kube-node-lease",
        "restatus",
        "restatus.io/ignore",
    ] {
        assert!(selector.contains(ns), "{ns} excluded: {selector}");
    }
    assert!(
        hook["matchConditions"][0]["expression"]
            .as_str()
            .unwrap()
            .contains("system:serviceaccount:restatus:"),
        "restatus's own main-resource writes are skipped"
    );
    let rules = &hook["rules"][0];
    assert_eq!(rules["resources"], json!(["services", "services/status"]));
    assert_eq!(rules["operations"], json!(["CREATE", "UPDATE", "DELETE"]));
}

#[test]
fn encryption_at_rest_mounts_the_keyring_and_passes_the_flag() {
    let objects = render(&["--set", "encryption.existingSecret=restatus-keyring"]);
    let deployment = one(&objects, "Deployment");
    let spec = &deployment["spec"]["template"]["spec"];
    let args = spec["containers"][0]["args"].to_string();
    assert!(
        args.contains("--encryption-key-file=/etc/restatus/encryption/keyring"),
        "{args}"
    );
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "encryption")
        .expect("the keyring volume");
    assert_eq!(volume["secret"]["secretName"], "restatus-keyring");
    assert_eq!(volume["secret"]["items"][0]["path"], "keyring");
    assert!(args.contains("--require-sealed=false"), "{args}");
    let strict = container_args(&[
        "--set",
        "encryption.existingSecret=restatus-keyring",
        "--set",
        "encryption.requireSealed=true",
    ]);
    assert!(
        strict.iter().any(|a| a == "--require-sealed=true"),
        "{strict:?}"
    );
    let defaults = defaults();
    let args = one(&defaults, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .to_string();
    assert!(!args.contains("--encryption-key-file"), "off by default");
}

/// The args of the restatus container rendered with `args`.
fn container_args(args: &[&str]) -> Vec<String> {
    let objects = render(args);
    let deployment = one(&objects, "Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_client_ca_and_its_allowed_names_become_flags() {
    let values = helm::chart().join("ci/client-ca-values.yaml");
    let args = container_args(&["-f", values.to_str().unwrap()]);
    assert!(args.contains(&"--client-ca-file=/etc/restatus/client-ca/ca.crt".to_owned()));
    assert!(
        args.contains(
            &"--client-allowed-names=kube-apiserver,apiserver-webhook-client.example.com"
                .to_owned()
        ),
        "{args:?}"
    );
    // restatus knows the flags as the chart passes them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_restatus"))
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let defaults = container_args(&[]);
    assert!(
        !defaults.iter().any(|a| a.starts_with("--client-")),
        "{defaults:?}"
    );
    let without_ca = refused(&[
        "--set-json",
        r#"certificates.clientCA.allowedNames=["kube-apiserver"]"#,
    ]);
    assert!(
        without_ca.contains("certificates.clientCA.allowedNames needs the client CA"),
        "{without_ca}"
    );
    let comma = refused(&[
        "--set",
        "certificates.clientCA.configMapName=ca",
        "--set-json",
        r#"certificates.clientCA.allowedNames=["a,b"]"#,
    ]);
    assert!(comma.contains("allowedNames"), "{comma}");
}

/// The notes `helm install` prints for `args` (Helm 4, a client-side dry run).
fn install_notes(args: &[&str]) -> String {
    let chart = helm::chart();
    let mut all = vec![
        "install",
        "r",
        chart.to_str().unwrap(),
        "-n",
        "restatus",
        "--dry-run=client",
    ];
    all.extend_from_slice(&offline(args));
    let out = must(
        helm::run(&helm::helm(), &all),
        "helm install --dry-run=client",
    );
    out.stdout
        .split_once("\nNOTES:\n")
        .map(|(_, notes)| notes.to_owned())
        .expect("helm install prints NOTES")
}

#[test]
fn the_install_notes_say_plainly_when_any_pod_can_call_the_webhook() {
    const OPEN: &str = "WARNING: ANY POD CAN CALL THE WEBHOOK.";
    let cidrs = r#"networkPolicy.apiServerCIDRs=["10.0.0.10/32"]"#;
    let konnectivity = helm::chart().join("ci/networkpolicy-konnectivity-values.yaml");
    let client_ca = helm::chart().join("ci/client-ca-values.yaml");
    let cases: [(&str, Vec<&str>, bool); 7] = [
        ("the defaults", vec![], true),
        (
            "a NetworkPolicy without the API server's addresses",
            vec!["--set", "networkPolicy.enabled=true"],
            true,
        ),
        (
            "the API server's addresses, but no NetworkPolicy",
            vec!["--set-json", cidrs],
            true,
        ),
        (
            "a NetworkPolicy with the API server's addresses",
            vec!["--set", "networkPolicy.enabled=true", "--set-json", cidrs],
            false,
        ),
        (
            "a NetworkPolicy admitting the konnectivity agents",
            vec!["-f", konnectivity.to_str().unwrap()],
            false,
        ),
        (
            "client certificates",
            vec!["--set", "certificates.clientCA.secretName=apiserver-ca"],
            false,
        ),
        (
            "client certificates with allowed names and a NetworkPolicy",
            vec!["-f", client_ca.to_str().unwrap()],
            false,
        ),
    ];
    for (what, args, open) in cases {
        let notes = install_notes(&args);
        assert_eq!(notes.contains(OPEN), open, "{what}:\n{notes}");
    }
    let any_certificate =
        install_notes(&["--set", "certificates.clientCA.secretName=apiserver-ca"]);
    assert!(
        any_certificate.contains("set\n  certificates.clientCA.allowedNames"),
        "{any_certificate}"
    );
}

/// Every string anywhere in a JSON value.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[test]
fn rbac_grants_exactly_the_tracked_resources_with_no_wildcard() {
    let tracked = json!([
        {"group": "", "resources": ["services"]},
        {"group": "infra.example.com", "resources": ["kubernetesclusters"]}
    ]);
    let objects = render(&["--set-json", &format!("trackedResources={tracked}")]);
    for kind in ["ClusterRole", "Role"] {
        for role in helm::of_kind(&objects, kind) {
            let mut all = Vec::new();
            strings(&role["rules"], &mut all);
            assert!(
                !all.iter().any(|s| s.contains('*')),
                "{kind} has a wildcard"
            );
        }
    }
    let rules = one(&objects, "ClusterRole")["rules"].as_array().unwrap();
    let rule = |resources: Value| {
        rules
            .iter()
            .find(|r| r["apiGroups"] == json!([""]) && r["resources"] == resources)
            .unwrap_or_else(|| panic!("no rule for {resources}"))
    };
    // The main resource is listed by resync; its status is only read and patched.
    assert_eq!(
        rule(json!(["services"]))["verbs"],
        json!(["get", "list", "patch"])
    );
    assert_eq!(
        rule(json!(["services/status"]))["verbs"],
        json!(["get", "patch"])
    );
    let webhook_rule = rules
        .iter()
        .find(|r| r["resources"] == json!(["mutatingwebhookconfigurations"]))
        .unwrap();
    assert_eq!(webhook_rule["resourceNames"], json!(["r-restatus"]));
    let role = one(&objects, "Role");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["r-restatus-ca"], "verbs": ["get", "update"]}])
    );
}

#[test]
fn the_admission_policy_covers_the_tracked_resources_and_the_webhook_configuration() {
    let tracked = json!([
        {"group": "", "resources": ["services"]},
        {"group": "infra.example.com", "resources": ["kubernetesclusters"], "scope": "Namespaced"}
    ]);
    let tracked = format!("trackedResources={tracked}");
    let objects = render(&["--set-json", &tracked]);
    let policy = one(&objects, "ValidatingAdmissionPolicy");
    let binding = one(&objects, "ValidatingAdmissionPolicyBinding");
    assert_eq!(policy["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    let spec = &policy["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    assert_eq!(
        spec["matchConditions"][0]["expression"],
        "request.userInfo.username == \"system:serviceaccount:restatus:r-restatus\""
    );
    let rules = &spec["matchConstraints"]["resourceRules"];
    let all = json!(["CREATE", "UPDATE", "DELETE"]);
    assert_eq!(
        rules,
        &json!([
            {"apiGroups": [""], "apiVersions": ["*"], "resources": ["services"], "operations": all, "scope": "*"},
            {"apiGroups": ["infra.example.com"], "apiVersions": ["*"], "resources": ["kubernetesclusters"], "operations": all, "scope": "Namespaced"},
            {"apiGroups": ["admissionregistration.k8s.io"], "apiVersions": ["*"], "resources": ["mutatingwebhookconfigurations"], "resourceNames": ["r-restatus"], "operations": all}
        ]),
        "the main resources only: restatus writes statuses through /status"
    );
    let off = render(&["--set", "ownWritesPolicy.enabled=false"]);
    assert!(helm::of_kind(&off, "ValidatingAdmissionPolicy").is_empty());
    assert!(helm::of_kind(&off, "ValidatingAdmissionPolicyBinding").is_empty());
}

/// The leaf paths of a YAML mapping, the way the values reference names them: lists (and
/// empty maps) are one value.
fn leaves(prefix: &str, value: &serde_yaml::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_yaml::Value::Mapping(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = k.as_str().unwrap();
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&path, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn the_alerts_of_the_docs_ship_as_a_prometheus_rule_for_the_charts_job() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(helm::chart().join("alerts/restatus.yaml")).unwrap();
    let docs = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let block = docs.split("## Alerts").nth(1).unwrap();
    let block = block
        .split("```yaml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let rules: String = shipped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        rules, block,
        "charts/restatus/alerts/restatus.yaml and docs/metrics.md differ"
    );

    assert!(
        helm::of_kind(&defaults(), "PrometheusRule").is_empty(),
        "off by default"
    );
    // Knowing that the API server calls restatus: the alerts on the last review, and the
    // status line every replica logs.
    for alert in ["RestatusNoReviews", "RestatusWritesNotSeen"] {
        assert!(block.contains(&format!("- alert: {alert}\n")), "{alert}");
    }
    let args = container_args(&[]);
    assert!(
        args.contains(&"--status-log-interval=5m".to_owned()),
        "{args:?}"
    );
    let args = container_args(&["--set", "config.statusLogInterval=0s"]);
    assert!(
        args.contains(&"--status-log-interval=0s".to_owned()),
        "{args:?}"
    );
    let objects = render(&["--set", "prometheusRule.enabled=true"]);
    let rule = one(&objects, "PrometheusRule");
    let alerts = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(alerts.len(), block.matches("- alert:").count());
    let exprs: Vec<&str> = alerts.iter().map(|a| a["expr"].as_str().unwrap()).collect();
    assert!(
        exprs.iter().all(|e| !e.contains("job=\"restatus\"")),
        "{exprs:?}"
    );
    assert!(
        exprs.iter().all(|e| e.contains("job=\"r-restatus\"")),
        "the ServiceMonitor's job: {exprs:?}"
    );
    let objects = render(&[
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.job=webhooks",
    ]);
    let exprs = one(&objects, "PrometheusRule")["spec"]["groups"][0]["rules"].to_string();
    assert!(
        exprs.contains("job=\\\"webhooks\\\"") && !exprs.contains("r-restatus"),
        "{exprs}"
    );
}

#[test]
fn the_values_reference_lists_every_value() {
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(helm::chart().join("values.yaml")).unwrap())
            .unwrap();
    let mut in_values = BTreeSet::new();
    leaves("", &values, &mut in_values);
    let reference = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/chart-values.md"),
    )
    .unwrap();
    let in_docs: BTreeSet<String> = reference
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(path, _)| path.to_owned())
        .collect();
    let missing: Vec<_> = in_values.difference(&in_docs).collect();
    let stale: Vec<_> = in_docs.difference(&in_values).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/chart-values.md is out of step with values.yaml: missing {missing:?}, stale {stale:?}"
    );
}

/// The env var `name` of a container, as rendered.
fn env_var<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in {}", container["name"]))
}

/// The restatus container and the bundled Valkey container of a rendering.
fn restatus_and_valkey(objects: &[Value]) -> (&Value, &Value) {
    let restatus = &one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let valkey = &one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0];
    (restatus, valkey)
}

/// The secretKeyRef (name and key) an env var reads.
fn secret_ref(container: &Value, name: &str) -> (String, String) {
    let r = &env_var(container, name)["valueFrom"]["secretKeyRef"];
    (
        r["name"].as_str().unwrap().to_owned(),
        r["key"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn the_bundled_valkey_is_pinned_by_digest_persistent_and_locked_down_like_restatus() {
    let objects = defaults();
    let (restatus, valkey) = restatus_and_valkey(&objects);
    let image = valkey["image"].as_str().unwrap();
    let (repository, digest) = image.split_once('@').expect("pulled by digest");
    assert!(
        repository.starts_with("docker.io/valkey/valkey:"),
        "{image}"
    );
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    assert!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{digest}"
    );
    assert_eq!(valkey["command"], json!(["valkey-server"]));
    let args: Vec<&str> = valkey["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for pair in [
        ["--appendonly", "yes"],
        ["--appendfsync", "everysec"],
        ["--maxmemory-policy", "noeviction"],
        ["--dir", "/data"],
        // The AOF a Redis 7.4 pod of earlier chart versions left behind still loads.
        ["--rdb-version-check", "relaxed"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    // The password is read from the environment, never written into the args.
    assert!(args.contains(&"$(REDIS_PASSWORD)"), "{args:?}");
    let statefulset = one(&objects, "StatefulSet");
    let claim = &statefulset["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], "data");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert_eq!(valkey["volumeMounts"][0]["mountPath"], "/data");
    // As hardened as restatus's own pod.
    let pod = &statefulset["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    let restatus_pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    for key in ["runAsNonRoot", "seccompProfile"] {
        assert_eq!(
            pod["securityContext"][key], restatus_pod["securityContext"][key],
            "pod {key}"
        );
    }
    for key in [
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "runAsNonRoot",
        "capabilities",
        "seccompProfile",
    ] {
        assert_eq!(
            valkey["securityContext"][key], restatus["securityContext"][key],
            "container {key}"
        );
    }
    assert!(valkey["resources"]["limits"]["memory"].is_string());
    // One pod: by default no budget of its own, so that drains never stall on it.
    assert!(
        helm::of_kind(&objects, "PodDisruptionBudget")
            .iter()
            .all(|p| p["metadata"]["name"] != "r-restatus-redis")
    );
    // With one, no voluntary eviction takes it down, but a pod that is not ready may go.
    let with = render(&["--set", "redis.bundled.podDisruptionBudget.enabled=true"]);
    let pdbs = helm::of_kind(&with, "PodDisruptionBudget");
    let pdb = pdbs
        .iter()
        .find(|p| p["metadata"]["name"] == "r-restatus-redis")
        .expect("the Valkey PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 0);
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        statefulset["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(helm::of_kind(&with, "PodDisruptionBudget").len(), 2);

    // Scheduling values reach the pod.
    let values = helm::chart().join("ci/bundled-redis-values.yaml");
    let scheduled = helm::template("r", "restatus", &["-f", values.to_str().unwrap()]);
    let pod = &one(&scheduled, "StatefulSet")["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(
        pod["nodeSelector"]["node-role.example.com/stateful"],
        "true"
    );
    assert_eq!(
        pod["tolerations"][0]["key"],
        "node-role.example.com/stateful"
    );
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    assert!(defaults().iter().all(|o| {
        o["spec"]["template"]["spec"]
            .get("priorityClassName")
            .is_none()
    }));

    // Only restatus may reach it, and it reaches nothing.
    let fenced = render(&["--set", "networkPolicy.enabled=true"]);
    let policy = helm::of_kind(&fenced, "NetworkPolicy")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "r-restatus-redis")
        .expect("the Valkey NetworkPolicy");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        one(&objects, "Deployment")["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(policy["spec"]["egress"], json!([]));

    // The chart README states the image's licence.
    let readme = std::fs::read_to_string(helm::chart().join("README.md")).unwrap();
    assert!(
        readme.contains("Valkey") && readme.contains("BSD 3-Clause"),
        "{readme}"
    );
}

#[test]
fn the_bundled_password_survives_offline_renders_and_both_sides_read_the_same_secret() {
    let sha = |objects: &[Value]| {
        let (r, v) = (one(objects, "Deployment"), one(objects, "StatefulSet"));
        let annotation =
            |o: &Value| o["spec"]["template"]["metadata"]["annotations"]["checksum/redis"].clone();
        assert_eq!(annotation(r), annotation(v), "both roll together");
        annotation(r)
    };
    for bin in [helm::helm(), helm::helm3()] {
        let name = bin.display().to_string();
        let chart = helm::chart();
        let render_with = |args: &[&str]| {
            let mut all = vec!["template", "r", chart.to_str().unwrap(), "-n", "restatus"];
            all.extend_from_slice(args);
            helm::documents(&must(helm::run(&bin, &all), &name).stdout)
        };
        // A password as a value: the chart's Secret holds exactly it, on every render.
        let set = ["--set", "redis.bundled.password=s3cr3t-valkey"];
        let (first, second) = (render_with(&set), render_with(&set));
        for objects in [&first, &second] {
            let (restatus, valkey) = restatus_and_valkey(objects);
            let secret = helm::of_kind(objects, "Secret")
                .into_iter()
                .find(|s| s["metadata"]["name"] == "r-restatus-redis")
                .expect("the chart's Valkey Secret");
            let stored = secret["data"]["password"].as_str().unwrap();
            use base64::Engine as _;
            let stored = base64::engine::general_purpose::STANDARD
                .decode(stored)
                .unwrap();
            assert_eq!(stored, b"s3cr3t-valkey", "{name}");
            let reference = ("r-restatus-redis".to_owned(), "password".to_owned());
            assert_eq!(secret_ref(restatus, "RESTATUS_REDIS_PASSWORD"), reference);
            assert_eq!(secret_ref(valkey, "REDIS_PASSWORD"), reference);
            // restatus reaches Valkey through its Service; the URL holds no password.
            assert!(
                helm::of_kind(objects, "Service")
                    .iter()
                    .any(|s| s["metadata"]["name"] == "r-restatus-redis")
            );
            assert_eq!(
                env_var(restatus, "RESTATUS_REDIS_URL")["value"],
                "redis://r-restatus-redis.restatus.svc:6379"
            );
        }
        assert_eq!(first, second, "{name}: two renders are the same");
        assert_eq!(sha(&first), sha(&second));
        let other = render_with(&["--set", "redis.bundled.password=an0ther"]);
        assert_ne!(sha(&first), sha(&other), "a new password rolls both");

        // An existing Secret: no Secret of the chart, both sides read that one.
        let set = ["--set", "redis.bundled.existingSecret=valkey-auth"];
        let (first, second) = (render_with(&set), render_with(&set));
        assert_eq!(first, second, "{name}: two renders are the same");
        assert!(
            helm::of_kind(&first, "Secret")
                .iter()
                .all(|s| s["metadata"]["name"] != "r-restatus-redis"),
            "no chart Secret"
        );
        let (restatus, valkey) = restatus_and_valkey(&first);
        let reference = ("valkey-auth".to_owned(), "password".to_owned());
        assert_eq!(secret_ref(restatus, "RESTATUS_REDIS_PASSWORD"), reference);
        assert_eq!(secret_ref(valkey, "REDIS_PASSWORD"), reference);
    }
    // Neither: a render without the cluster would make up a new password each time; it is
    // refused, with what to set.
    let refusal = refused_raw(&[]);
    assert!(refusal.contains(NO_CLUSTER), "{refusal}");
    assert!(
        refusal.contains("redis.bundled.existingSecret")
            && refusal.contains("redis.bundled.password"),
        "{refusal}"
    );
    let both = refused_raw(&[
        "--set",
        "redis.bundled.password=a",
        "--set",
        "redis.bundled.existingSecret=b",
    ]);
    assert!(both.contains("/redis/bundled"), "{both}");
}

/// The `-f ci/NAME` rendering's restatus container.
fn ci_container(name: &str) -> (Vec<Value>, Value) {
    let values = helm::chart().join("ci").join(name);
    let objects = render(&["-f", values.to_str().unwrap()]);
    let container =
        one(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0].clone();
    (objects, container)
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// restatus's own Service of a rendering (the bundled Valkey has one too).
fn restatus_service(objects: &[Value]) -> &Value {
    helm::of_kind(objects, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "r-restatus")
        .expect("the restatus Service")
}

/// The restatus pod spec of a rendering.
fn pod_spec(objects: &[Value]) -> &Value {
    &one(objects, "Deployment")["spec"]["template"]["spec"]
}

/// The containerPort named `name` of the restatus container.
fn container_port(container: &Value, name: &str) -> i64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
        .as_i64()
        .unwrap()
}

#[test]
fn ports_listen_addresses_and_host_network_follow_the_platform_presets() {
    // Defaults: IPv4 on 8443 and 8080, in the pod network.
    let objects = defaults();
    let pod = pod_spec(&objects);
    let args = args_of(&pod["containers"][0]);
    assert!(
        args.contains(&"--listen=0.0.0.0:8443".to_owned()),
        "{args:?}"
    );
    assert!(args.contains(&"--admin-listen=0.0.0.0:8080".to_owned()));
    assert!(pod.get("hostNetwork").is_none() && pod.get("dnsPolicy").is_none());
    let service = restatus_service(&objects);
    assert!(service["spec"].get("ipFamilyPolicy").is_none());

    // GKE private: the webhook on 10250, which the control plane may reach; the Service and
    // the webhook configuration still use 443.
    let (objects, container) = ci_container("gke-private-values.yaml");
    assert!(args_of(&container).contains(&"--listen=0.0.0.0:10250".to_owned()));
    assert_eq!(container_port(&container, "https"), 10250);
    let service = restatus_service(&objects);
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "https");
    let hook = one(&objects, "MutatingWebhookConfiguration");
    assert_eq!(hook["webhooks"][0]["clientConfig"]["service"]["port"], 443);

    // EKS with a custom CNI: the node's network, cluster DNS kept, ports clear of the kubelet.
    let (objects, container) = ci_container("eks-custom-cni-values.yaml");
    let pod = pod_spec(&objects);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let args = args_of(&container);
    assert!(
        args.contains(&"--listen=0.0.0.0:10260".to_owned()),
        "{args:?}"
    );
    assert!(args.contains(&"--admin-listen=0.0.0.0:10261".to_owned()));
    assert_eq!(container_port(&container, "admin"), 10261);
    // An explicit DNS policy wins.
    let values = helm::chart().join("ci/eks-custom-cni-values.yaml");
    let objects = render(&["-f", values.to_str().unwrap(), "--set", "dnsPolicy=Default"]);
    assert_eq!(pod_spec(&objects)["dnsPolicy"], "Default");

    // IPv6 only and dual stack: both listeners on "::" (which takes both families).
    let (objects, container) = ci_container("ipv6-values.yaml");
    let args = args_of(&container);
    assert!(args.contains(&"--listen=[::]:8443".to_owned()), "{args:?}");
    assert!(args.contains(&"--admin-listen=[::]:8080".to_owned()));
    let service = restatus_service(&objects);
    assert_eq!(service["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(service["spec"]["ipFamilies"], json!(["IPv6"]));
    let (objects, container) = ci_container("dual-stack-values.yaml");
    assert!(args_of(&container).contains(&"--listen=[::]:8443".to_owned()));
    assert_eq!(
        restatus_service(&objects)["spec"]["ipFamilyPolicy"],
        "PreferDualStack"
    );
    // OpenShift: no fixed user, group or fsGroup anywhere, still non-root.
    let (objects, _) = ci_container("openshift-values.yaml");
    let text = serde_json::to_string(&objects).unwrap();
    for fixed in ["runAsUser", "runAsGroup", "\"fsGroup\""] {
        assert!(!text.contains(fixed), "{fixed} is set");
    }
    assert_eq!(pod_spec(&objects)["securityContext"]["runAsNonRoot"], true);

    // One address of its own.
    let args = container_args(&["--set", "listenAddress=fd00::10"]);
    assert!(
        args.contains(&"--listen=[fd00::10]:8443".to_owned()),
        "{args:?}"
    );

    // What cannot work is refused before anything is installed.
    let kubelet = refused(&[
        "--set",
        "hostNetwork=true",
        "--set",
        "containerPorts.webhook=10250",
    ]);
    assert!(kubelet.contains("10250 is the kubelet's"), "{kubelet}");
    let same = refused(&["--set", "containerPorts.admin=8443"]);
    assert!(same.contains("must differ"), "{same}");
    let address = refused(&["--set", "listenAddress=localhost"]);
    assert!(address.contains("listenAddress"), "{address}");
    let dns = refused(&["--set", "dnsPolicy=Cluster"]);
    assert!(dns.contains("dnsPolicy"), "{dns}");
    let family = refused(&["--set", "service.ipFamilies[0]=IPv5"]);
    assert!(family.contains("ipFamilies"), "{family}");
}

#[test]
fn the_webhook_scope_values_narrow_it_and_label_its_configuration() {
    let (objects, _) = ci_container("scoped-webhook-values.yaml");
    let hook = one(&objects, "MutatingWebhookConfiguration");
    let webhook = &hook["webhooks"][0];
    assert_eq!(
        webhook["objectSelector"],
        json!({"matchLabels": {"restatus.io/track": "true"}})
    );
    let conditions = webhook["matchConditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 2, "the chart's own and the extra one");
    assert_eq!(conditions[0]["name"], "skip-restatus-main-resource-writes");
    assert_eq!(conditions[1]["name"], "skip-noisy-controller");
    assert_eq!(
        hook["metadata"]["labels"]["argocd.argoproj.io/instance"],
        "restatus"
    );
    assert_eq!(
        hook["metadata"]["labels"]["app.kubernetes.io/name"],
        "restatus"
    );
    assert_eq!(
        hook["metadata"]["annotations"]["admissions.enforcer/disabled"],
        "true"
    );
    // cert-manager's injection annotation stays beside the extra ones.
    let values = helm::chart().join("ci/cert-manager-values.yaml");
    let objects = render(&[
        "-f",
        values.to_str().unwrap(),
        "--set",
        "webhook.annotations.a=b",
    ]);
    let annotations = &one(&objects, "MutatingWebhookConfiguration")["metadata"]["annotations"];
    assert_eq!(annotations["a"], "b");
    assert!(annotations["cert-manager.io/inject-ca-from"].is_string());

    // Defaults: no objectSelector, one matchCondition, no annotations.
    let defaults = defaults();
    let hook = one(&defaults, "MutatingWebhookConfiguration");
    assert!(hook["webhooks"][0].get("objectSelector").is_none());
    assert_eq!(
        hook["webhooks"][0]["matchConditions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(hook["metadata"].get("annotations").is_none());

    // The chart's own condition cannot be shadowed, and a condition needs an expression.
    refused(&[
        "--set",
        "webhook.matchConditions[0].name=skip-restatus-main-resource-writes",
        "--set",
        "webhook.matchConditions[0].expression=true",
    ]);
    let missing = refused(&["--set", "webhook.matchConditions[0].name=x"]);
    assert!(missing.contains("expression"), "{missing}");
}

#[test]
fn a_budget_that_blocks_every_drain_is_refused() {
    let zero = refused(&["--set", "podDisruptionBudget.maxUnavailable=0"]);
    assert!(
        zero.contains("/podDisruptionBudget/maxUnavailable"),
        "{zero}"
    );
    let percent = refused(&["--set", "podDisruptionBudget.maxUnavailable=0%"]);
    assert!(
        percent.contains("/podDisruptionBudget/maxUnavailable"),
        "{percent}"
    );
    // Both set (minAvailable keeps its default of 1).
    let both = refused(&["--set", "podDisruptionBudget.maxUnavailable=1"]);
    assert!(both.contains("/podDisruptionBudget"), "{both}");
    let all = refused(&["--set", "podDisruptionBudget.minAvailable=2"]);
    assert!(all.contains("no drain could ever evict"), "{all}");
    let hundred = refused(&["--set", "podDisruptionBudget.minAvailable=100%"]);
    assert!(
        hundred.contains("/podDisruptionBudget/minAvailable"),
        "{hundred}"
    );

    let objects = render(&[
        "--set",
        "podDisruptionBudget.minAvailable=",
        "--set",
        "podDisruptionBudget.maxUnavailable=1",
    ]);
    let spec = &one(&objects, "PodDisruptionBudget")["spec"];
    assert_eq!(spec["maxUnavailable"], 1);
    assert!(spec.get("minAvailable").is_none());
    let objects = render(&["--set", "podDisruptionBudget.minAvailable=50%"]);
    assert_eq!(
        one(&objects, "PodDisruptionBudget")["spec"]["minAvailable"],
        "50%"
    );
}

#[test]
fn cert_manager_certificates_carry_no_common_name_that_could_pass_64_bytes() {
    let values = helm::chart().join("ci/cert-manager-values.yaml");
    let long = "n".repeat(53);
    let objects = helm::template(
        &long,
        &"s".repeat(63),
        &offline(&["-f", values.to_str().unwrap()]),
    );
    let certificates = helm::of_kind(&objects, "Certificate");
    assert_eq!(certificates.len(), 2, "the CA and the serving certificate");
    for certificate in certificates {
        let spec = &certificate["spec"];
        if spec["isCA"] == true {
            assert!(spec["commonName"].as_str().unwrap().len() <= 64, "{spec}");
        } else {
            assert!(spec.get("commonName").is_none(), "{spec}");
            assert!(spec["dnsNames"][0].as_str().unwrap().len() > 64);
        }
    }
}

#[test]
fn an_external_redis_over_tls_with_an_acl_user_gets_its_files_mounted_read_only() {
    let (objects, container) = ci_container("external-redis-tls-values.yaml");
    let args = args_of(&container);
    for flag in [
        "--redis-username=restatus",
        "--redis-ca-file=/etc/restatus/redis-ca/ca.crt",
        "--redis-client-cert-file=/etc/restatus/redis-client/tls.crt",
        "--redis-client-key-file=/etc/restatus/redis-client/tls.key",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.contains("--redis-topology")),
        "standalone is the binary's default: {args:?}"
    );
    // The password only through the environment, from the Secret.
    assert!(!args.iter().any(|a| a.contains("password")), "{args:?}");
    assert_eq!(
        secret_ref(&container, "RESTATUS_REDIS_PASSWORD"),
        ("restatus-redis-acl".to_owned(), "password".to_owned())
    );
    let url = helm::of_kind(&objects, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "r-restatus-redis")
        .expect("the URL Secret")["data"]["url"]
        .clone();
    use base64::Engine as _;
    let url = base64::engine::general_purpose::STANDARD
        .decode(url.as_str().unwrap())
        .unwrap();
    assert!(url.starts_with(b"rediss://"));
    let mounts = container["volumeMounts"].as_array().unwrap();
    for (name, path) in [
        ("redis-ca", "/etc/restatus/redis-ca"),
        ("redis-client", "/etc/restatus/redis-client"),
    ] {
        let mount = mounts.iter().find(|m| m["name"] == name).expect(name);
        assert_eq!(mount["mountPath"], path);
        assert_eq!(mount["readOnly"], true);
    }
    let volumes = &one(&objects, "Deployment")["spec"]["template"]["spec"]["volumes"];
    let volume = |name: &str| {
        volumes
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(volume("redis-ca")["configMap"]["name"], "redis-ca");
    let client = volume("redis-client");
    assert_eq!(client["secret"]["secretName"], "restatus-redis-client");
    assert_eq!(
        client["secret"]["items"],
        json!([{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}])
    );
    // The egress rule follows the TLS port.
    let policy = one(&objects, "NetworkPolicy");
    assert!(
        policy["spec"]["egress"].to_string().contains("6380"),
        "{}",
        policy["spec"]["egress"]
    );
    // restatus knows every flag the chart passes for TLS.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_restatus"))
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A CA from a Secret instead of a ConfigMap.
    let values = helm::chart().join("ci/external-redis-sentinel-values.yaml");
    let objects = render(&["-f", values.to_str().unwrap()]);
    let volumes = one(&objects, "Deployment")["spec"]["template"]["spec"]["volumes"].clone();
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "redis-ca" && v["secret"]["secretName"] == "redis-ca"),
        "{volumes}"
    );
}

#[test]
fn sentinel_and_cluster_values_become_the_topology_flags() {
    let (objects, container) = ci_container("external-redis-sentinel-values.yaml");
    let args = args_of(&container);
    for flag in [
        "--redis-topology=sentinel",
        "--redis-sentinel-master=mymaster",
        "--redis-sentinels=redis-sentinel-0.redis-sentinel.redis.svc:26379,redis-sentinel-1.redis-sentinel.redis.svc:26379,redis-sentinel-2.redis-sentinel.redis.svc:26379",
        "--redis-sentinel-password-file=/etc/restatus/redis-sentinel/password",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "redis-sentinel")
        .expect("the sentinel password mount")
        .clone();
    assert_eq!(mount["mountPath"], "/etc/restatus/redis-sentinel");
    assert_eq!(mount["readOnly"], true);
    let volume = one(&objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "redis-sentinel")
        .unwrap()
        .clone();
    assert_eq!(volume["secret"]["secretName"], "restatus-redis-sentinel");
    assert_eq!(
        volume["secret"]["items"],
        json!([{"key": "sentinel-password", "path": "password"}])
    );
    assert_eq!(
        secret_ref(&container, "RESTATUS_REDIS_PASSWORD"),
        ("restatus-redis-auth".to_owned(), "password".to_owned())
    );
    assert_eq!(
        secret_ref(&container, "RESTATUS_REDIS_URL"),
        ("restatus-redis-url".to_owned(), "url".to_owned())
    );
    // The NetworkPolicy lets restatus reach the sentinels too.
    let egress = one(&objects, "NetworkPolicy")["spec"]["egress"].to_string();
    assert!(
        egress.contains("26379") && egress.contains("6379"),
        "{egress}"
    );

    let (_, container) = ci_container("external-redis-cluster-values.yaml");
    let args = args_of(&container);
    assert!(
        args.iter().any(|a| a == "--redis-topology=cluster"),
        "{args:?}"
    );
    assert!(
        args.iter().any(|a| a == "--redis-username=restatus"),
        "{args:?}"
    );
    assert!(
        args.iter().any(|a| a
            == "--redis-cluster-nodes=redis://redis-cluster-0.redis-cluster-headless.redis.svc:6379,redis://redis-cluster-1.redis-cluster-headless.redis.svc:6379,redis://redis-cluster-2.redis-cluster-headless.redis.svc:6379"),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a.contains("sentinel")), "{args:?}");
    // Without seed nodes the URL is the only seed: no flag.
    let args = container_args(&[
        "--set",
        "redis.mode=external",
        "--set",
        "redis.external.url=redis://c:6379",
        "--set",
        "redis.external.topology=cluster",
    ]);
    assert!(
        args.iter().any(|a| a == "--redis-topology=cluster"),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.contains("--redis-cluster-nodes")),
        "{args:?}"
    );
}

/// Pods on the host network connect from their node's address: the bundled store's
/// NetworkPolicy, which admits restatus's pods by label, would shut them out.
#[test]
fn host_network_with_the_bundled_store_behind_a_network_policy_is_refused() {
    let error = refused(&[
        "--set",
        "hostNetwork=true",
        "--set",
        "containerPorts.webhook=10260",
        "--set",
        "containerPorts.admin=10261",
        "--set",
        "networkPolicy.enabled=true",
    ]);
    assert!(
        error.contains("hostNetwork with networkPolicy.enabled and the bundled Redis"),
        "{error}"
    );
    // Either one alone renders.
    render(&[
        "--set",
        "hostNetwork=true",
        "--set",
        "containerPorts.webhook=10260",
        "--set",
        "containerPorts.admin=10261",
    ]);
}

#[test]
fn the_schema_refuses_redis_settings_restatus_cannot_use() {
    let external = |more: &[&str]| {
        let mut args = vec!["--set", "redis.mode=external"];
        args.extend_from_slice(more);
        refused(&args)
    };
    let cases: [(&str, Vec<&str>, &str); 12] = [
        (
            "a password in a cluster seed node, which is on the command line",
            vec![
                "--set",
                "redis.external.url=redis://r",
                "--set",
                "redis.external.topology=cluster",
                "--set",
                "redis.external.cluster.nodes[0]=redis://u:secret@n1:6379",
            ],
            "/redis/external/cluster/nodes/0",
        ),
        (
            "sentinel without a master name",
            vec![
                "--set",
                "redis.external.url=redis://r",
                "--set",
                "redis.external.topology=sentinel",
                "--set",
                "redis.external.sentinel.sentinels[0]=s:26379",
            ],
            "/redis/external/sentinel/masterName",
        ),
        (
            "sentinel without sentinels",
            vec![
                "--set",
                "redis.external.url=redis://r",
                "--set",
                "redis.external.topology=sentinel",
                "--set",
                "redis.external.sentinel.masterName=mymaster",
            ],
            "/redis/external/sentinel/sentinels",
        ),
        (
            "a sentinel without its port",
            vec![
                "--set",
                "redis.external.url=redis://r",
                "--set",
                "redis.external.topology=sentinel",
                "--set",
                "redis.external.sentinel.masterName=mymaster",
                "--set",
                "redis.external.sentinel.sentinels[0]=s",
            ],
            "/redis/external/sentinel/sentinels/0",
        ),
        (
            "sentinel values with topology cluster (both at once)",
            vec![
                "--set",
                "redis.external.url=redis://r",
                "--set",
                "redis.external.topology=cluster",
                "--set",
                "redis.external.sentinel.masterName=mymaster",
            ],
            "/redis/external/sentinel/masterName",
        ),
        (
            "cluster nodes with topology sentinel (both at once)",
            vec![
                "--set",
                "redis.external.url=redis://r",
                "--set",
                "redis.external.topology=sentinel",
                "--set",
                "redis.external.sentinel.masterName=mymaster",
                "--set",
                "redis.external.sentinel.sentinels[0]=s:26379",
                "--set",
                "redis.external.cluster.nodes[0]=redis://n:6379",
            ],
            "/redis/external/cluster/nodes",
        ),
        (
            "a client certificate without its key",
            vec![
                "--set",
                "redis.external.url=rediss://r",
                "--set",
                "redis.external.tls.clientCertificate.secretName=client",
                "--set",
                "redis.external.tls.clientCertificate.keyKey=",
            ],
            "/redis/external/tls/clientCertificate/keyKey",
        ),
        (
            "a CA with a redis:// URL",
            vec![
                "--set",
                "redis.external.url=redis://r",
                "--set",
                "redis.external.tls.ca.secretName=ca",
            ],
            "/redis/external/url",
        ),
        (
            "a client certificate with a redis:// URL",
            vec![
                "--set",
                "redis.external.url=redis://r",
                "--set",
                "redis.external.tls.clientCertificate.secretName=client",
            ],
            "/redis/external/url",
        ),
        (
            "a CA from a Secret and a ConfigMap",
            vec![
                "--set",
                "redis.external.url=rediss://r",
                "--set",
                "redis.external.tls.ca.secretName=ca",
                "--set",
                "redis.external.tls.ca.configMapName=ca",
            ],
            "/redis/external/tls/ca",
        ),
        (
            "plain seed nodes with a rediss:// URL",
            vec![
                "--set",
                "redis.external.url=rediss://r",
                "--set",
                "redis.external.topology=cluster",
                "--set",
                "redis.external.cluster.nodes[0]=redis://n:6379",
            ],
            "/redis/external/cluster/nodes/0",
        ),
        (
            "an unknown topology",
            vec![
                "--set",
                "redis.external.url=redis://r",
                "--set",
                "redis.external.topology=replicas",
            ],
            "/redis/external/topology",
        ),
    ];
    for (what, args, path) in cases {
        let message = external(&args);
        assert!(message.contains(path), "{what}: {message}");
    }
    // What restatus can use is accepted: rediss:// with a CA and a client certificate, and
    // each topology.
    for args in [
        vec!["--set", "redis.external.url=rediss://r:6380"],
        vec![
            "--set",
            "redis.external.url=rediss://r:6380",
            "--set",
            "redis.external.tls.ca.configMapName=ca",
            "--set",
            "redis.external.tls.clientCertificate.secretName=client",
        ],
        vec![
            "--set",
            "redis.external.url=rediss://r:6380",
            "--set",
            "redis.external.topology=cluster",
            "--set",
            "redis.external.cluster.nodes[0]=rediss://n:6380",
        ],
    ] {
        let mut all = vec!["--set", "redis.mode=external"];
        all.extend_from_slice(&args);
        render(&all);
    }
}

/// Chart tests that install into the shared control plane run one at a time: each install's
/// webhook configuration sends reviews of every other namespace to its restatus.
static INSTALLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A Helm release in a fresh namespace, uninstalled (with its namespace) when dropped.
struct Release {
    name: String,
    namespace: String,
    helm: PathBuf,
    kubeconfig: PathBuf,
}

impl Release {
    async fn install(client: &Client, helm: PathBuf, args: &[&str]) -> Release {
        let namespace = unique("chart");
        create_namespace(client, &namespace).await;
        let release = Release {
            name: "rs".into(),
            namespace,
            helm,
            kubeconfig: cluster::control_plane().kubeconfig.clone(),
        };
        release.helm(
            &["install", &release.name, helm::chart().to_str().unwrap()],
            args,
        );
        release
    }

    fn helm(&self, command: &[&str], args: &[&str]) -> Output {
        let kubeconfig = self.kubeconfig.to_str().unwrap().to_owned();
        let mut all: Vec<&str> = command.to_vec();
        all.extend(["--kubeconfig", &kubeconfig, "--namespace", &self.namespace]);
        all.extend_from_slice(args);
        must(helm::run(&self.helm, &all), &format!("helm {command:?}"))
    }

    fn fullname(&self) -> String {
        format!("{}-restatus", self.name)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let kubeconfig = self.kubeconfig.to_str().unwrap().to_owned();
        let out = helm::run(
            &self.helm,
            &[
                "uninstall",
                &self.name,
                "--kubeconfig",
                &kubeconfig,
                "-n",
                &self.namespace,
            ],
        );
        if !out.success {
            eprintln!("helm uninstall failed: {}", out.stderr);
        }
    }
}

async fn secret_data(client: &Client, ns: &str, name: &str) -> BTreeMap<String, Vec<u8>> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

#[tokio::test]
async fn helm_install_upgrade_and_uninstall_on_the_api_server_with_helm_3_and_4() {
    let _serial = INSTALLING.lock().await;
    let client = cluster::client().await;
    for bin in [helm::helm(), helm::helm3()] {
        // Every object must pass the API server's validation.
        let release = Release::install(&client, bin.clone(), &[]).await;
        let ns = release.namespace.clone();
        let fullname = release.fullname();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        // The CA Secret is created empty; restatus fills it. Simulate that, and the bundled
        // Redis's generated password, and check that an upgrade keeps both.
        let ca_secret = format!("{fullname}-ca");
        assert!(secret_data(&client, &ns, &ca_secret).await.is_empty());
        secrets
            .patch(
                &ca_secret,
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"ca.crt": "kept"}})),
            )
            .await
            .unwrap();
        let redis_secret = format!("{fullname}-redis");
        let password = secret_data(&client, &ns, &redis_secret).await["password"].clone();
        assert!(password.len() >= 16, "a generated Redis password");
        release.helm(
            &["upgrade", &release.name, helm::chart().to_str().unwrap()],
            &["--set", "config.logLevel=debug"],
        );
        assert_eq!(
            secret_data(&client, &ns, &ca_secret).await["ca.crt"],
            b"kept".to_vec(),
            "{}: the upgrade kept the CA",
            bin.display()
        );
        assert_eq!(
            secret_data(&client, &ns, &redis_secret).await["password"],
            password,
            "the upgrade kept the Redis password"
        );
        let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get(&fullname)
            .await
            .unwrap();
        assert!(
            serde_json::to_string(&deployment.spec)
                .unwrap()
                .contains("--log-level=debug"),
            "the upgrade changed the Deployment"
        );
        drop(release);
        // Uninstalling removes the webhook configuration and keeps the CA Secret.
        let hooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
        assert!(hooks.get_opt(&fullname).await.unwrap().is_none());
        assert!(secrets.get_opt(&ca_secret).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn the_sentinel_cluster_and_bundled_values_install_on_the_api_server() {
    let _serial = INSTALLING.lock().await;
    let client = cluster::client().await;
    for (values, expect) in [
        (
            "external-redis-sentinel-values.yaml",
            "--redis-topology=sentinel",
        ),
        (
            "external-redis-cluster-values.yaml",
            "--redis-topology=cluster",
        ),
        ("bundled-redis-values.yaml", "RESTATUS_REDIS_PASSWORD"),
    ] {
        let values = helm::chart().join("ci").join(values);
        // Every object passes the API server's validation.
        let release =
            Release::install(&client, helm::helm(), &["-f", values.to_str().unwrap()]).await;
        let deployment = Api::<Deployment>::namespaced(client.clone(), &release.namespace)
            .get(&release.fullname())
            .await
            .unwrap();
        let spec = serde_json::to_string(&deployment.spec).unwrap();
        assert!(spec.contains(expect), "{}: {spec}", values.display());
    }
    // The bundled Valkey's budget is in place.
    let release = Release::install(
        &client,
        helm::helm(),
        &[
            "--set",
            "redis.bundled.password=installed",
            "--set",
            "redis.bundled.podDisruptionBudget.enabled=true",
        ],
    )
    .await;
    let budget = Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(
        client.clone(),
        &release.namespace,
    )
    .get(&format!("{}-redis", release.fullname()))
    .await
    .unwrap();
    assert_eq!(
        budget.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
}

/// restatus running as the chart runs it, for one release.
struct ChartEnv {
    // Fields drop in order: restatus stops before its Redis and its release go away.
    restatus: Restatus,
    client: Client,
    release: Release,
    /// Where the test's objects live (the release namespace is excluded by the webhook).
    objects_ns: String,
    redis: RedisServer,
    keys: KeySchema,
    _identity: (PathBuf, tempfile::TempDir),
    /// The pod's mounted Secrets and ConfigMaps, written out where its args find them.
    _mounts: tempfile::TempDir,
}

impl ChartEnv {
    /// [`ChartEnv::start`] with `certificates.selfManaged` values (short lives, in tests).
    async fn self_managed(values: &[(&str, &str)]) -> ChartEnv {
        let sets: Vec<String> = values
            .iter()
            .map(|(k, v)| format!("certificates.selfManaged.{k}={v}"))
            .collect();
        let args: Vec<&str> = sets.iter().flat_map(|s| ["--set", s.as_str()]).collect();
        ChartEnv::start(&args).await
    }

    /// Installs the chart for KubernetesClusters with a development webhook URL and
    /// external Redis, then runs the Deployment's container as a process: its args, its env
    /// (downward API and Secret references resolved), the chart's ServiceAccount's token.
    async fn start(extra: &[&str]) -> ChartEnv {
        Installed::new(extra).await.launch().await
    }
}

/// A release installed for [`ChartEnv`], before restatus runs: a test may prepare the
/// cluster (the CA Secret, the webhook configuration, RBAC) the way it wants restatus to
/// find it.
struct Installed {
    client: Client,
    release: Release,
    objects_ns: String,
    redis: RedisServer,
    port: u16,
    admin_port: u16,
    prefix: String,
}

impl Installed {
    /// Installs the chart for KubernetesClusters with a development webhook URL and
    /// external Redis; `extra` are more helm arguments.
    async fn new(extra: &[&str]) -> Installed {
        Installed::with_redis(RedisServer::start().await, extra).await
    }

    /// [`Installed::new`] with this Redis (its plain URL is set; `extra` may set another).
    async fn with_redis(redis: RedisServer, extra: &[&str]) -> Installed {
        let client = cluster::client().await;
        cluster::apply_crd(&client, cluster::example_crd()).await;
        let (port, admin_port) = (free_port(), free_port());
        let prefix = unique("chart");
        let tracked = json!([{"group": "infra.example.com", "resources": ["kubernetesclusters"]}]);
        let mut args: Vec<String> = [
            "--set-json",
            &format!("trackedResources={tracked}"),
            "--set",
            &format!("webhook.url=https://127.0.0.1:{port}/mutate"),
            "--set-json",
            r#"certificates.selfManaged.extraHosts=["127.0.0.1"]"#,
            "--set",
            &format!("containerPorts.webhook={port}"),
            "--set",
            &format!("containerPorts.admin={admin_port}"),
            "--set",
            "redis.mode=external",
            "--set",
            &format!("redis.external.url={}", redis.url()),
            "--set",
            &format!("config.keyPrefix={prefix}"),
            "--set",
            r"config.logLevel=info\,restatus=debug",
            "--set",
            "config.logFormat=text",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let release = Release::install(&client, helm::helm(), &args).await;
        let objects_ns = unique("objects");
        create_namespace(&client, &objects_ns).await;
        Installed {
            client,
            release,
            objects_ns,
            redis,
            port,
            admin_port,
            prefix,
        }
    }

    /// The Secrets of the release namespace (the CA Secret is `<fullname>-ca`).
    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.release.namespace)
    }

    /// Runs the Deployment's container as a process: its args, its env (downward API and
    /// Secret references resolved), the chart's ServiceAccount's token.
    async fn launch(self) -> ChartEnv {
        let Installed {
            client,
            release,
            objects_ns,
            redis,
            port,
            admin_port,
            prefix,
        } = self;
        let identity =
            identity::token_kubeconfig(&client, &release.namespace, &release.fullname()).await;
        let deployment = Api::<Deployment>::namespaced(client.clone(), &release.namespace)
            .get(&release.fullname())
            .await
            .unwrap();
        let pod = deployment.spec.template.spec.unwrap();
        let container = pod.containers[0].clone();
        let mounts = tempfile::tempdir().unwrap();
        let mut args = container.args.clone().unwrap_or_default();
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let dir = mount_volume(&client, &release.namespace, &pod, &mount, mounts.path()).await;
            for arg in &mut args {
                *arg = arg.replace(&format!("{}/", mount.mount_path), &format!("{dir}/"));
            }
        }
        let mut env = vec![("KUBECONFIG".to_owned(), identity.0.display().to_string())];
        for var in container.env.unwrap_or_default() {
            let value = match (&var.value, &var.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    if let Some(field) = &from.field_ref {
                        match field.field_path.as_str() {
                            "metadata.name" => format!("{}-7d9c6b5f4-x2x8q", release.fullname()),
                            "metadata.namespace" => release.namespace.clone(),
                            other => panic!("unexpected fieldRef {other}"),
                        }
                    } else if let Some(key) = &from.secret_key_ref {
                        let data = secret_data(&client, &release.namespace, &key.name).await;
                        String::from_utf8(data[&key.key].clone()).unwrap()
                    } else {
                        panic!("unexpected env source for {}", var.name)
                    }
                }
                (None, None) => String::new(),
            };
            env.push((var.name, value));
        }
        let launch = Launch {
            args,
            env,
            port,
            admin_port,
            key_prefix: prefix.clone(),
            name: format!("{}-restatus", release.namespace),
            wait_ready: true,
        };
        let restatus = Restatus::launch(launch, None).await;
        ChartEnv {
            client,
            release,
            objects_ns,
            redis,
            restatus,
            keys: KeySchema::new(&prefix, "default"),
            _identity: identity,
            _mounts: mounts,
        }
    }
}

/// Writes what the pod mounts at `mount` (the items of a Secret or ConfigMap volume, read from
/// the API server) into a directory under `root`, as the kubelet would; that directory.
async fn mount_volume(
    client: &Client,
    ns: &str,
    pod: &k8s_openapi::api::core::v1::PodSpec,
    mount: &k8s_openapi::api::core::v1::VolumeMount,
    root: &std::path::Path,
) -> String {
    assert_eq!(
        mount.read_only,
        Some(true),
        "{} is mounted read-only",
        mount.name
    );
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("no volume {}", mount.name));
    let (data, items): (BTreeMap<String, Vec<u8>>, _) = if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap();
        (secret_data(client, ns, &name).await, secret.items.clone())
    } else if let Some(config) = &volume.config_map {
        let map = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get(&config.name)
            .await
            .unwrap();
        let data = map
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        (data, config.items.clone())
    } else {
        panic!("volume {} is neither a Secret nor a ConfigMap", mount.name)
    };
    let dir = root.join(&mount.name);
    std::fs::create_dir_all(&dir).unwrap();
    let items: Vec<(String, String)> = match items {
        Some(items) => items.into_iter().map(|i| (i.key, i.path)).collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in items {
        let bytes = data
            .get(&key)
            .unwrap_or_else(|| panic!("volume {} has no key {key}", mount.name));
        std::fs::write(dir.join(path), bytes).unwrap();
    }
    dir.display().to_string()
}

impl ChartEnv {
    fn clusters(&self) -> Api<kube::api::DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.objects_ns,
            &cluster::kubernetes_cluster_resource(),
        )
    }

    fn id(&self, name: &str) -> ObjectIdentity {
        ObjectIdentity {
            group: "infra.example.com".into(),
            resource: "kubernetesclusters".into(),
            namespace: Some(self.objects_ns.clone()),
            name: name.into(),
        }
    }

    async fn recorded(&self, name: &str) -> Option<Value> {
        let rec = self.redis.hgetall(&self.keys.record(&self.id(name))).await;
        rec.get("status").map(|s| serde_json::from_str(s).unwrap())
    }

    /// The caBundle of the release's webhook configuration.
    async fn ca_bundle(&self) -> String {
        let config = Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .get(&self.release.fullname())
            .await
            .unwrap();
        let bundle = config.webhooks.unwrap()[0].client_config.ca_bundle.clone();
        bundle
            .map(|b| String::from_utf8(b.0).unwrap())
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn the_chart_runs_restatus_under_its_service_account_with_self_managed_certificates() {
    let _serial = INSTALLING.lock().await;
    let env = ChartEnv::start(&[]).await;
    let secret = format!("{}-ca", env.release.fullname());

    // restatus made the CA, kept it in the chart's Secret and patched the caBundle itself,
    // under its field manager.
    let ca = secret_data(&env.client, &env.release.namespace, &secret).await;
    let ca_pem = String::from_utf8(ca["ca.crt"].clone()).unwrap();
    assert!(ca.contains_key("ca.key"));
    let bundle = eventually(WAIT, "restatus to publish the caBundle", || async {
        let bundle = env.ca_bundle().await;
        (!bundle.is_empty()).then_some(bundle)
    })
    .await;
    assert_eq!(bundle.trim(), ca_pem.trim());
    let config = Api::<MutatingWebhookConfiguration>::all(env.client.clone())
        .get(&env.release.fullname())
        .await
        .unwrap();
    let managers: Vec<String> = config
        .managed_fields()
        .iter()
        .filter(|m| {
            serde_json::to_string(&m.fields_v1)
                .unwrap()
                .contains("caBundle")
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["restatus"], "only restatus owns the caBundle");

    // The API server verifies restatus's certificate against that bundle: a status write is
    // recorded, and a recreated object gets its status back, all under the chart's identity.
    let api = env.clusters();
    let saved = json!({"phase": "Running", "clusterID": "c-chart", "apiServerURL": "https://203.0.113.30:6443"});
    api.create(&PostParams::default(), &kubernetes_cluster("charted"))
        .await
        .unwrap();
    patch_status(&api, "charted", saved.clone()).await;
    eventually(WAIT, "the status to be recorded", || async {
        (env.recorded("charted").await.as_ref() == Some(&saved)).then_some(())
    })
    .await;
    api.delete("charted", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "the deletion to be recorded", || async {
        let rec = env
            .redis
            .hgetall(&env.keys.record(&env.id("charted")))
            .await;
        rec.contains_key("deletedAt").then_some(())
    })
    .await;
    api.create(&PostParams::default(), &kubernetes_cluster("charted"))
        .await
        .unwrap();
    let restored = wait_restored(&api, "charted").await;
    assert_eq!(status_of(&restored), Some(&saved));
    let log = env.restatus.log_text();
    assert!(
        !log.contains("Forbidden"),
        "a permission was missing:\n{log}"
    );
    drop(env);
}

#[tokio::test]
async fn restatus_run_as_the_chart_runs_it_reaches_redis_over_tls_as_an_acl_user_with_a_client_certificate()
 {
    let _serial = INSTALLING.lock().await;
    let (redis, tls) = RedisServer::start_tls(true).await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "restatus",
            "on",
            ">chart-acl-pw",
            "~*",
            "&*",
            "+@all",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let url = format!("redis.external.url={}", redis.tls_url());
    let installed = Installed::with_redis(
        redis,
        &[
            "--set",
            &url,
            "--set",
            "redis.external.username=restatus",
            "--set",
            "redis.external.password.existingSecret=redis-acl",
            "--set",
            "redis.external.tls.ca.configMapName=redis-ca",
            "--set",
            "redis.external.tls.clientCertificate.secretName=redis-client",
        ],
    )
    .await;
    // What the cluster's operator creates beside the release: the ACL password, the CA, and
    // restatus's client certificate.
    let client_cert =
        restatus::certs::issue_client(&tls.ca, "restatus", Duration::from_secs(3600)).unwrap();
    let secret = |name: &str, type_: &str, data: Value| {
        serde_json::from_value::<Secret>(json!({
            "metadata": {"name": name}, "type": type_, "stringData": data,
        }))
        .unwrap()
    };
    let pp = PostParams::default();
    let secrets = installed.secrets();
    secrets
        .create(
            &pp,
            &secret("redis-acl", "Opaque", json!({"password": "chart-acl-pw"})),
        )
        .await
        .unwrap();
    secrets
        .create(
            &pp,
            &secret(
                "redis-client",
                "kubernetes.io/tls",
                json!({"tls.crt": client_cert.cert_pem, "tls.key": client_cert.key_pem}),
            ),
        )
        .await
        .unwrap();
    let ca: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "redis-ca"}, "data": {"ca.crt": tls.ca.cert_pem},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(installed.client.clone(), &installed.release.namespace)
        .create(&pp, &ca)
        .await
        .unwrap();
    let env = installed.launch().await;
    status_writes_are_recorded(&env, "over-tls").await;
    // The records came over TLS, from restatus's ACL user.
    let mut conn = env.redis.conn().await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(clients.contains("user=restatus"), "{clients}");
    drop(env);
}

/// A SubjectAccessReview, as the cluster admin, of what `user` may do.
async fn may(client: &Client, user: &str, ns: &str, attrs: Value) -> bool {
    let mut attrs = attrs;
    if attrs.get("namespace").is_none() {
        attrs["namespace"] = json!(ns);
    }
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            "resourceAttributes": attrs
        }
    }))
    .unwrap();
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

#[tokio::test]
async fn the_service_account_may_do_what_restatus_needs_and_nothing_more() {
    let _serial = INSTALLING.lock().await;
    let client = cluster::client().await;
    let tracked = json!([{"group": "infra.example.com", "resources": ["kubernetesclusters"]}]);
    let release = Release::install(
        &client,
        helm::helm(),
        &["--set-json", &format!("trackedResources={tracked}")],
    )
    .await;
    let ns = release.namespace.clone();
    let user = format!("system:serviceaccount:{ns}:{}", release.fullname());
    let own = release.fullname();
    let ca_secret = format!("{own}-ca");
    let kc = |verb: &str, sub: Option<&str>| {
        let mut a = json!({"group": "infra.example.com", "resource": "kubernetesclusters", "verb": verb, "namespace": "team-a"});
        if let Some(s) = sub {
            a["subresource"] = json!(s);
        }
        a
    };
    let allowed = [
        kc("get", None),
        // Resync lists the tracked types page by page; it keeps no watch.
        kc("list", None),
        kc("patch", None),
        kc("patch", Some("status")),
        kc("get", Some("status")),
        json!({"group": "apiextensions.k8s.io", "resource": "customresourcedefinitions", "verb": "watch", "namespace": ""}),
        json!({"group": "", "resource": "namespaces", "verb": "list", "namespace": ""}),
        json!({"group": "events.k8s.io", "resource": "events", "verb": "create", "namespace": "team-a"}),
        json!({"group": "events.k8s.io", "resource": "events", "verb": "patch", "namespace": "team-a"}),
        json!({"group": "authorization.k8s.io", "resource": "subjectaccessreviews", "verb": "create", "namespace": ""}),
        json!({"group": "admissionregistration.k8s.io", "resource": "mutatingwebhookconfigurations", "verb": "get", "name": own, "namespace": ""}),
        json!({"group": "admissionregistration.k8s.io", "resource": "mutatingwebhookconfigurations", "verb": "patch", "name": own, "namespace": ""}),
        json!({"group": "", "resource": "secrets", "verb": "get", "name": ca_secret}),
        json!({"group": "", "resource": "secrets", "verb": "update", "name": ca_secret}),
    ];
    let denied = [
        kc("watch", None),
        kc("list", Some("status")),
        kc("create", None),
        kc("update", None),
        kc("delete", None),
        kc("deletecollection", None),
        kc("update", Some("status")),
        json!({"group": "", "resource": "secrets", "verb": "get", "name": "other"}),
        json!({"group": "", "resource": "secrets", "verb": "list"}),
        json!({"group": "", "resource": "secrets", "verb": "create"}),
        json!({"group": "", "resource": "secrets", "verb": "get", "name": ca_secret, "namespace": "kube-system"}),
        json!({"group": "", "resource": "secrets", "verb": "delete", "name": ca_secret}),
        json!({"group": "", "resource": "secrets", "verb": "patch", "name": ca_secret}),
        json!({"group": "admissionregistration.k8s.io", "resource": "mutatingwebhookconfigurations", "verb": "patch", "name": "someone-else", "namespace": ""}),
        json!({"group": "admissionregistration.k8s.io", "resource": "mutatingwebhookconfigurations", "verb": "list", "namespace": ""}),
        json!({"group": "admissionregistration.k8s.io", "resource": "validatingwebhookconfigurations", "verb": "patch", "name": own, "namespace": ""}),
        json!({"group": "", "resource": "services", "verb": "patch", "namespace": "team-a"}),
        json!({"group": "", "resource": "services", "verb": "patch", "subresource": "status", "namespace": "team-a"}),
        json!({"group": "", "resource": "configmaps", "verb": "get", "namespace": "team-a"}),
        json!({"group": "", "resource": "pods", "verb": "list", "namespace": "team-a"}),
        json!({"group": "", "resource": "namespaces", "verb": "delete", "name": "team-a", "namespace": ""}),
        json!({"group": "apiextensions.k8s.io", "resource": "customresourcedefinitions", "verb": "patch", "namespace": ""}),
        json!({"group": "rbac.authorization.k8s.io", "resource": "clusterroles", "verb": "escalate", "namespace": ""}),
        json!({"group": "", "resource": "users", "verb": "impersonate", "namespace": ""}),
        json!({"group": "authentication.k8s.io", "resource": "tokenreviews", "verb": "create", "namespace": ""}),
    ];
    for attrs in allowed {
        assert!(
            may(&client, &user, &ns, attrs.clone()).await,
            "restatus needs {attrs}"
        );
    }
    for attrs in denied {
        assert!(
            !may(&client, &user, &ns, attrs.clone()).await,
            "restatus must not {attrs}"
        );
    }
    drop(release);
}

#[tokio::test]
async fn the_serving_certificate_is_renewed_while_the_webhook_configuration_cannot_be_written() {
    let _serial = INSTALLING.lock().await;
    let env = ChartEnv::self_managed(&[("certValidity", "6s"), ("checkInterval", "1s")]).await;
    // The caBundle cannot be published any more: the serving certificate must not lapse.
    Api::<MutatingWebhookConfiguration>::all(env.client.clone())
        .delete(&env.release.fullname(), &DeleteParams::default())
        .await
        .unwrap();
    let renewals = "restatus_certificate_rotations_total{certificate=\"serving\"}";
    let before = env.restatus.metric(renewals).await;
    eventually(
        Duration::from_secs(30),
        "a renewal without a webhook configuration",
        || async { (env.restatus.metric(renewals).await >= before + 2.0).then_some(()) },
    )
    .await;
    assert!(
        env.restatus
            .log_text()
            .contains("certificate check failed; retrying at the next check"),
        "the publish failure is still reported"
    );
}

#[tokio::test]
async fn serving_and_ca_rotation_under_load_lose_no_review() {
    let _serial = INSTALLING.lock().await;
    // Short lives so that both rotate within the test: the serving certificate is renewed
    // about every 10 s, the CA once after about 30 s.
    let env = ChartEnv::self_managed(&[
        ("caValidity", "45s"),
        ("certValidity", "15s"),
        ("checkInterval", "1s"),
    ])
    .await;
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("busy"))
        .await
        .unwrap();
    let first_ca = env.ca_bundle().await;
    let writes = std::sync::atomic::AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let writer = async {
        let mut n = 0u64;
        while !done.load(Ordering::SeqCst) {
            n += 1;
            patch_status(&api, "busy", json!({"generationSeen": n})).await;
            writes.store(n, Ordering::SeqCst);
        }
    };
    let rotations = async {
        let r = &env.restatus;
        eventually(
            Duration::from_secs(120),
            "a CA rotation and serving renewals",
            || async {
                let ca = r
                    .metric("restatus_certificate_rotations_total{certificate=\"ca\"}")
                    .await;
                let serving = r
                    .metric("restatus_certificate_rotations_total{certificate=\"serving\"}")
                    .await;
                // The CA rotated, and the serving certificate has since moved to the new CA.
                let bundle = env.ca_bundle().await;
                let moved = serving >= 3.0 && ca >= 1.0 && bundle != first_ca;
                moved.then_some(())
            },
        )
        .await;
        // Keep writing across one more renewal after the switch.
        let before = r
            .metric("restatus_certificate_rotations_total{certificate=\"serving\"}")
            .await;
        eventually(Duration::from_secs(60), "one more renewal", || async {
            let now = r
                .metric("restatus_certificate_rotations_total{certificate=\"serving\"}")
                .await;
            (now > before).then_some(())
        })
        .await;
        done.store(true, Ordering::SeqCst);
    };
    tokio::join!(writer, rotations);
    let total = writes.load(Ordering::SeqCst);
    assert!(total > 20, "reviews flowed during the rotations: {total}");
    // Every status write reached restatus and was recorded: none was skipped by the API
    // server because of a certificate it did not trust (failurePolicy Ignore hides that).
    let recorded = env
        .restatus
        .metric("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"recorded\"}")
        .await;
    assert_eq!(
        recorded, total as f64,
        "every status write was reviewed and recorded"
    );
    assert_eq!(
        env.recorded("busy").await,
        Some(json!({"generationSeen": total}))
    );
    let log = env.restatus.log_text();
    assert!(!log.contains("TLS handshake failed"), "{log}");
    // What restatus serves now chains to the published bundle: a client that trusts only
    // that bundle completes the handshake.
    let trust = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(trust.path(), env.ca_bundle().await).unwrap();
    let client = support::http::TlsClient::new(trust.path(), support::http::Alpn::Http2);
    let answer = client
        .post(&env.restatus.mutate_url(), "not a review")
        .await
        .expect("a TLS handshake against the published caBundle");
    assert_eq!(answer.status, 400);
    let bundle = env.ca_bundle().await;
    let cas = bundle.matches("BEGIN CERTIFICATE").count();
    assert!((1..=2).contains(&cas), "{cas} CAs in the bundle");
    assert!(Validity::of_pem(bundle.as_bytes()).unwrap().not_after > jiff::Timestamp::now());
}

/// `ChartEnv::self_managed`'s helm arguments for `values`.
fn self_managed_sets(values: &[(&str, &str)]) -> Vec<String> {
    values
        .iter()
        .flat_map(|(k, v)| {
            [
                "--set".to_owned(),
                format!("certificates.selfManaged.{k}={v}"),
            ]
        })
        .collect()
}

/// Whether restatus's webhook listener serves a certificate that chains to `ca_pem`: a
/// client that trusts only that CA completes a TLS handshake (and is answered 400 for a body
/// that is no review).
async fn serves_a_certificate_of(restatus: &Restatus, ca_pem: &str) -> bool {
    let trust = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(trust.path(), ca_pem).unwrap();
    let client = support::http::TlsClient::new(trust.path(), support::http::Alpn::Http2);
    client
        .post(&restatus.mutate_url(), "not a review")
        .await
        .is_ok_and(|answer| answer.status == 400)
}

/// A status write through the API server is recorded: the API server trusts what restatus
/// serves. Writes go on until one is recorded or `WAIT` passes.
async fn status_writes_are_recorded(env: &ChartEnv, name: &str) {
    let api = env.clusters();
    if api.get_opt(name).await.unwrap().is_none() {
        api.create(&PostParams::default(), &kubernetes_cluster(name))
            .await
            .unwrap();
    }
    let mut attempt = 0;
    eventually(WAIT, "a status write to be recorded", || {
        attempt += 1;
        let status = json!({"phase": "Ready", "attempt": attempt, "nonce": unique("w")});
        let api = &api;
        async move {
            patch_status(api, name, status.clone()).await;
            (env.recorded(name).await == Some(status)).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_replica_that_cannot_publish_the_ca_bundle_signs_with_a_ca_the_api_server_trusts() {
    let _serial = INSTALLING.lock().await;
    let sets = self_managed_sets(&[("checkInterval", "1s")]);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let installed = Installed::new(&sets).await;
    let fullname = installed.release.fullname();

    // Another replica has just rotated the CA: the Secret holds the new CA and the old one,
    // and the caBundle the API server trusts still holds only the old one.
    let (old, new) = (
        generate_ca(Duration::from_secs(86_400)).unwrap(),
        generate_ca(Duration::from_secs(86_400)).unwrap(),
    );
    installed
        .secrets()
        .patch(
            &format!("{fullname}-ca"),
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {
                "ca.crt": new.cert_pem,
                "ca.key": new.key_pem,
                "ca-previous.crt": old.cert_pem,
                "ca-previous.key": old.key_pem,
                "rotated-at": jiff::Timestamp::now().to_string(),
            }})),
        )
        .await
        .unwrap();
    let webhooks = Api::<MutatingWebhookConfiguration>::all(installed.client.clone());
    webhooks
        .patch(
            &fullname,
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{
                    "op": "add",
                    "path": "/webhooks/0/clientConfig/caBundle",
                    "value": cluster::base64(&old.cert_pem),
                }]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    // And this replica may read the webhook configuration but not write it, so it never
    // publishes a bundle of its own.
    let roles = Api::<ClusterRole>::all(installed.client.clone());
    let mut role = roles.get(&fullname).await.unwrap();
    for rule in role.rules.iter_mut().flatten() {
        if rule.resources.as_deref() == Some(&["mutatingwebhookconfigurations".to_owned()]) {
            rule.verbs = vec!["get".into()];
        }
    }
    roles
        .replace(&fullname, &PostParams::default(), &role)
        .await
        .unwrap();

    let env = installed.launch().await;
    assert!(
        serves_a_certificate_of(&env.restatus, &old.cert_pem).await,
        "the serving certificate is signed by the CA in the caBundle"
    );
    assert!(
        !serves_a_certificate_of(&env.restatus, &new.cert_pem).await,
        "not by the new CA the API server does not trust"
    );
    status_writes_are_recorded(&env, "trusted").await;
    // Checks go on failing to publish, and the certificate stays with the trusted CA.
    eventually(Duration::from_secs(10), "a failed publish", || async {
        env.restatus
            .log_text()
            .contains("certificate check failed; retrying at the next check")
            .then_some(())
    })
    .await;
    assert_eq!(env.ca_bundle().await.trim(), old.cert_pem.trim());
    assert!(serves_a_certificate_of(&env.restatus, &old.cert_pem).await);
}

#[tokio::test]
async fn a_ca_key_that_cannot_sign_is_replaced_and_the_serving_certificate_never_lapses() {
    let _serial = INSTALLING.lock().await;
    let env = ChartEnv::self_managed(&[("certValidity", "8s"), ("checkInterval", "1s")]).await;
    let ca_secret = format!("{}-ca", env.release.fullname());
    let ns = env.release.namespace.clone();
    let first_ca = eventually(WAIT, "restatus to publish its CA", || async {
        let bundle = env.ca_bundle().await;
        (!bundle.is_empty()).then_some(bundle)
    })
    .await;
    status_writes_are_recorded(&env, "before").await;

    // The key in the Secret stops fitting the certificate (someone restored the wrong key).
    let stranger = generate_ca(Duration::from_secs(3600)).unwrap();
    Api::<Secret>::namespaced(env.client.clone(), &ns)
        .patch(
            &ca_secret,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"ca.key": stranger.key_pem}})),
        )
        .await
        .unwrap();
    let renewals = "restatus_certificate_rotations_total{certificate=\"serving\"}";
    let renewed_before = env.restatus.metric(renewals).await;

    // restatus replaces the CA, keeping the old certificate (without its key) in the bundle.
    let data = eventually(WAIT, "a new CA in the Secret", || async {
        let data = secret_data(&env.client, &ns, &ca_secret).await;
        let cert = String::from_utf8(data.get("ca.crt")?.clone()).ok()?;
        (cert.trim() != first_ca.trim()).then_some(data)
    })
    .await;
    let cert = String::from_utf8(data["ca.crt"].clone()).unwrap();
    assert!(ca_signing_key(&cert, &data["ca.key"]).is_ok());
    assert_eq!(
        String::from_utf8(data["ca-previous.crt"].clone())
            .unwrap()
            .trim(),
        first_ca.trim()
    );
    assert!(
        !data.contains_key("ca-previous.key"),
        "the unusable key is not carried"
    );
    eventually(WAIT, "the new and the old CA in the caBundle", || async {
        let bundle = env.ca_bundle().await;
        (bundle.contains(cert.trim()) && bundle.contains(first_ca.trim())).then_some(())
    })
    .await;

    // Reported: a metric, an error naming the Secret and the key, an Event on the Secret.
    assert!(
        env.restatus
            .metric("restatus_certificate_ca_key_unusable_total{reason=\"mismatch\"}")
            .await
            >= 1.0
    );
    let log = env.restatus.log_text();
    let named =
        format!("the key ca.key of the Secret {ns}/{ca_secret} cannot sign for its certificate");
    assert!(log.contains(&named), "{log}");
    let event = eventually(WAIT, "a CAKeyUnusable Event", || async {
        Api::<Event>::namespaced(env.client.clone(), &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("CAKeyUnusable"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some(ca_secret.as_str())
    );
    assert!(event.note.unwrap_or_default().contains(&named));

    // The serving certificate goes on being renewed, now from the new CA, past the life of
    // the one served when the key broke, and the API server keeps trusting it.
    eventually(
        Duration::from_secs(60),
        "renewals from the new CA",
        || async {
            let renewed = env.restatus.metric(renewals).await >= renewed_before + 2.0;
            (renewed && serves_a_certificate_of(&env.restatus, &cert).await).then_some(())
        },
    )
    .await;
    status_writes_are_recorded(&env, "after").await;
}

/// A client of the test control plane that authenticates with the kubeconfig at `path`.
async fn client_of(path: &std::path::Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

/// The outcome of a write: `Ok`, or the API server's refusal (its code and message).
fn refusal<T>(result: Result<T, kube::Error>) -> Result<(), (u16, String)> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err((status.code, status.message)),
        Err(e) => panic!("not an answer of the API server: {e}"),
    }
}

#[tokio::test]
async fn the_admission_policy_lets_restatus_change_only_status_its_annotations_and_its_ca_bundle() {
    let _serial = INSTALLING.lock().await;
    let client = cluster::client().await;
    cluster::apply_crd(&client, cluster::example_crd()).await;
    // A custom type without the status subresource: the worker writes its status through the
    // main resource.
    let inline =
        cluster::TestType::namespaced("vapwidgets", "VapWidget").without_status_subresource();
    cluster::apply_crd(&client, inline.crd()).await;
    let tracked = json!([
        {"group": "", "resources": ["services"]},
        {"group": "infra.example.com", "resources": ["kubernetesclusters", "vapwidgets"]}
    ]);
    let tracked = format!("trackedResources={tracked}");
    let release = Release::install(&client, helm::helm(), &["--set-json", &tracked]).await;
    let fullname = release.fullname();
    let policy = format!("{fullname}-own-writes");
    let policies = Api::<ValidatingAdmissionPolicy>::all(client.clone());
    assert!(
        policies.get_opt(&policy).await.unwrap().is_some(),
        "on by default"
    );

    // The objects, created by the cluster admin: a Service, a custom object with the status
    // subresource, one without.
    let ns = unique("objects");
    create_namespace(&client, &ns).await;
    let service = ApiResource::erase::<Service>(&());
    let kc = cluster::kubernetes_cluster_resource();
    let widget = inline.resource();
    let api = |client: &Client, resource: &ApiResource| {
        Api::<DynamicObject>::namespaced_with(client.clone(), &ns, resource)
    };
    let web: DynamicObject = serde_json::from_value(
        serde_json::to_value(cluster::load_balancer_service("web")).unwrap(),
    )
    .unwrap();
    for (resource, object) in [
        (&service, web),
        (&kc, kubernetes_cluster("prod")),
        (&widget, inline.object("w")),
    ] {
        api(&client, resource)
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
    }

    // restatus, as the API server sees it: the chart's ServiceAccount, with its own token.
    let (kubeconfig, _dir) =
        identity::token_kubeconfig(&client, &release.namespace, &fullname).await;
    let restatus = client_of(&kubeconfig).await;
    let pp = PatchParams::default();
    let patch = |resource: &ApiResource, name: &str, body: Value| {
        let api = api(&restatus, resource);
        let name = name.to_owned();
        async move {
            refusal(
                api.patch(&name, &PatchParams::default(), &Patch::Merge(body))
                    .await,
            )
        }
    };

    // A stolen token rewrites a Service's spec: denied by the policy (RBAC would let it patch).
    let mut attempt = 0;
    let (code, message) = eventually(WAIT, "the policy to be in force", || {
        attempt += 1;
        let body = json!({"spec": {"selector": {"app": format!("stolen-{attempt}")}}});
        let patched = patch(&service, "web", body);
        async move { patched.await.err() }
    })
    .await;
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains(&format!("ValidatingAdmissionPolicy '{policy}'"))
            && message
                .contains("may change only the status and its restore annotations of services web"),
        "{message}"
    );

    // What restatus does: its restore markers, added, swapped and removed; the status,
    // through /status and through the main resource of a type without it.
    for annotations in [
        json!({"restatus.io/restore": "pending", "restatus.io/restore-job": "j"}),
        json!({"restatus.io/restore": null, "restatus.io/restored-at": "2030-01-01T00:00:00Z"}),
        json!({"restatus.io/restored-at": null, "restatus.io/restore-job": null}),
    ] {
        for (resource, name) in [(&service, "web"), (&kc, "prod"), (&widget, "w")] {
            let body = json!({"metadata": {"annotations": annotations}});
            patch(resource, name, body)
                .await
                .unwrap_or_else(|e| panic!("restore annotations of {name}: {e:?}"));
        }
    }
    let status = json!({"status": {"phase": "Running"}});
    refusal(
        api(&restatus, &kc)
            .patch_status("prod", &pp, &Patch::Merge(status.clone()))
            .await,
    )
    .expect("/status");
    patch(&widget, "w", status)
        .await
        .expect("the status of a type without the status subresource");
    let stored = api(&client, &widget).get("w").await.unwrap();
    assert_eq!(stored.data["status"], json!({"phase": "Running"}));

    // What a stolen token would do to tracked objects.
    let only_annotations = "may change only its restore annotations";
    let no_labels = "may not change the labels, finalizers or ownerReferences";
    let no_spec = "not its spec or other fields";
    let port = json!({"name": "https", "port": 443, "targetPort": 9999, "protocol": "TCP"});
    let denied_changes = [
        (
            "another annotation",
            &service,
            "web",
            json!({"metadata": {"annotations": {"example.com/owner": "mallory"}}}),
            only_annotations,
        ),
        (
            "a restatus.io/ policy annotation",
            &service,
            "web",
            json!({"metadata": {"annotations": {"restatus.io/policy": "disabled"}}}),
            only_annotations,
        ),
        (
            "a label",
            &service,
            "web",
            json!({"metadata": {"labels": {"exposed": "true"}}}),
            no_labels,
        ),
        (
            "a finalizer",
            &kc,
            "prod",
            json!({"metadata": {"finalizers": ["example.com/hold"]}}),
            no_labels,
        ),
        (
            "the spec of a Service",
            &service,
            "web",
            json!({"spec": {"ports": [port]}}),
            no_spec,
        ),
        (
            "the spec of a custom object",
            &kc,
            "prod",
            json!({"spec": {"nodeCount": 300}}),
            no_spec,
        ),
        (
            "a spec with a status",
            &widget,
            "w",
            json!({"spec": {"region": "x"}, "status": {"phase": "Gone"}}),
            no_spec,
        ),
    ];
    for (what, resource, name, body, says) in denied_changes {
        let (code, message) = patch(resource, name, body).await.expect_err(what);
        assert_eq!(code, 403, "{what}: {message}");
        assert!(
            message.contains(&policy) && message.contains(says),
            "{what}: {message}"
        );
    }

    // Its own webhook configuration: the caBundle, nothing else.
    let webhooks = Api::<MutatingWebhookConfiguration>::all(restatus.clone());
    let json_patch = |ops: Value| Patch::<()>::Json(serde_json::from_value(ops).unwrap());
    let ca = generate_ca(Duration::from_secs(3600)).unwrap();
    let hook = "/webhooks/0";
    let ca_bundle = json!([{
        "op": "add",
        "path": format!("{hook}/clientConfig/caBundle"),
        "value": cluster::base64(&ca.cert_pem),
    }]);
    refusal(webhooks.patch(&fullname, &pp, &json_patch(ca_bundle)).await).expect("the caBundle");
    let denied_changes = [
        (
            "the Service it calls",
            json!([{"op": "replace", "path": format!("{hook}/clientConfig/service/name"), "value": "mallory"}]),
        ),
        (
            "a URL instead of the Service",
            json!([{"op": "remove", "path": format!("{hook}/clientConfig/service")},
                   {"op": "add", "path": format!("{hook}/clientConfig/url"), "value": "https://203.0.113.66/mutate"}]),
        ),
        (
            "its rules",
            json!([{"op": "add", "path": format!("{hook}/rules/0/operations/-"), "value": "CONNECT"}]),
        ),
        (
            "its failure policy",
            json!([{"op": "replace", "path": format!("{hook}/failurePolicy"), "value": "Fail"}]),
        ),
        (
            "an annotation",
            json!([{"op": "add", "path": "/metadata/annotations", "value": {"example.com/x": "y"}}]),
        ),
    ];
    for (what, ops) in denied_changes {
        let (code, message) =
            refusal(webhooks.patch(&fullname, &pp, &json_patch(ops)).await).expect_err(what);
        assert_eq!(code, 403, "{what}: {message}");
        assert!(
            message.contains(&policy)
                && message.contains("may change only webhooks[*].clientConfig.caBundle"),
            "{what}: {message}"
        );
    }

    // The policy binds restatus only: the admin changes the same spec.
    let admin_change = json!({"spec": {"selector": {"app": "admin"}}});
    refusal(
        api(&client, &service)
            .patch("web", &pp, &Patch::Merge(admin_change))
            .await,
    )
    .expect("the cluster admin is not bound by restatus's policy");

    // Without the policy, the same token may do all of it: the policy is what stops it.
    release.helm(
        &["upgrade", &release.name, helm::chart().to_str().unwrap()],
        &[
            "--set-json",
            &tracked,
            "--set",
            "ownWritesPolicy.enabled=false",
        ],
    );
    assert!(policies.get_opt(&policy).await.unwrap().is_none());
    let mut attempt = 0;
    eventually(
        WAIT,
        "the spec change to be allowed without the policy",
        || {
            attempt += 1;
            let body = json!({"spec": {"selector": {"app": format!("stolen-{attempt}")}}});
            let patched = patch(&service, "web", body);
            async move { patched.await.ok() }
        },
    )
    .await;
    let timeout = json!([{"op": "replace", "path": format!("{hook}/timeoutSeconds"), "value": 6}]);
    refusal(webhooks.patch(&fullname, &pp, &json_patch(timeout)).await)
        .expect("RBAC alone lets restatus's token change its webhook");
    drop(release);
}

#[tokio::test]
async fn the_platform_presets_and_a_scoped_webhook_install_on_the_api_server() {
    let _serial = INSTALLING.lock().await;
    let client = cluster::client().await;
    // The local API server is IPv4 only: an IPv6-only Service cannot be created there, so
    // ipv6-values.yaml is only rendered (above); its listeners are the dual-stack preset's.
    for (values, expect) in [
        ("gke-private-values.yaml", "--listen=0.0.0.0:10250"),
        ("eks-custom-cni-values.yaml", "\"hostNetwork\":true"),
        ("dual-stack-values.yaml", "--listen=[::]:8443"),
        ("openshift-values.yaml", "\"runAsNonRoot\":true"),
        ("scoped-webhook-values.yaml", "--listen=0.0.0.0:8443"),
    ] {
        let values = helm::chart().join("ci").join(values);
        let release =
            Release::install(&client, helm::helm(), &["-f", values.to_str().unwrap()]).await;
        let deployment = Api::<Deployment>::namespaced(client.clone(), &release.namespace)
            .get(&release.fullname())
            .await
            .unwrap();
        let spec = serde_json::to_string(&deployment.spec).unwrap();
        assert!(spec.contains(expect), "{}: {spec}", values.display());
        let service = Api::<Service>::namespaced(client.clone(), &release.namespace)
            .get(&release.fullname())
            .await
            .unwrap();
        assert_eq!(
            service.spec.unwrap().ports.unwrap()[0].port,
            443,
            "{}",
            values.display()
        );
    }
}

/// The descriptions of values.yaml: the comment lines right above each key, by dotted path
/// (keys inside list items are not values of their own).
fn value_comments(values_yaml: &str) -> BTreeMap<String, String> {
    let mut comments = BTreeMap::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for line in values_yaml.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(comment) = trimmed.strip_prefix('#') {
            pending.push(comment.trim().to_owned());
            continue;
        }
        let key = trimmed
            .split_once(':')
            .map(|(k, _)| k)
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        let Some(key) = key else {
            pending.clear();
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_owned()));
        let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        comments.insert(path.join("."), pending.join(" "));
        pending.clear();
    }
    comments
}

/// The values table of the chart README, helm-docs style: every value of values.yaml with
/// its type, default and the comment above it.
fn values_table() -> String {
    let text = std::fs::read_to_string(helm::chart().join("values.yaml")).unwrap();
    let values: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut paths = BTreeSet::new();
    leaves("", &values, &mut paths);
    let comments = value_comments(&text);
    let mut table = String::from(
        "| Key | Type | Default | Description |\n|-----|------|---------|-------------|\n",
    );
    // In the order of values.yaml, not alphabetical.
    let mut ordered: Vec<&String> = paths.iter().collect();
    let order: Vec<String> = {
        let mut seen = Vec::new();
        let mut stack: Vec<(usize, String)> = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if trimmed.starts_with('#') || trimmed.starts_with('-') {
                continue;
            }
            let Some((key, _)) = trimmed.split_once(':') else {
                continue;
            };
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            stack.push((indent, key.to_owned()));
            seen.push(
                stack
                    .iter()
                    .map(|(_, k)| k.as_str())
                    .collect::<Vec<_>>()
                    .join("."),
            );
        }
        seen
    };
    ordered.sort_by_key(|p| order.iter().position(|o| o == *p).unwrap_or(usize::MAX));
    for path in ordered {
        let mut value = &values;
        for key in path.split('.') {
            value = &value[key];
        }
        let kind = match value {
            serde_yaml::Value::Bool(_) => "bool",
            serde_yaml::Value::Number(n) if n.is_f64() => "float",
            serde_yaml::Value::Number(_) => "int",
            serde_yaml::Value::String(_) => "string",
            serde_yaml::Value::Sequence(_) => "list",
            _ => "object",
        };
        let default =
            serde_json::to_string(&serde_yaml::from_value::<Value>(value.clone()).unwrap())
                .unwrap()
                .replace('|', "\\|");
        let description = comments
            .get(path)
            .map(String::as_str)
            .unwrap_or("")
            .replace('|', "\\|")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        table.push_str(&format!(
            "| `{path}` | {kind} | `{default}` | {description} |\n"
        ));
    }
    table
}

#[test]
fn the_chart_readme_lists_every_value_as_values_yaml_describes_it() {
    let readme_path = helm::chart().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (start, end) = ("<!-- values:start -->\n", "<!-- values:end -->");
    let (head, rest) = readme
        .split_once(start)
        .expect("the values table's start marker");
    let (_, tail) = rest.split_once(end).expect("the values table's end marker");
    let table = values_table();
    let generated = format!("{head}{start}{table}{end}{tail}");
    if std::env::var_os("RESTATUS_UPDATE_CHART_README").is_some() {
        std::fs::write(&readme_path, &generated).unwrap();
        return;
    }
    assert!(
        generated == readme,
        "charts/restatus/README.md's values table is out of step with values.yaml; \
         regenerate it with RESTATUS_UPDATE_CHART_README=1 cargo test --test chart \
         the_chart_readme_lists_every_value"
    );
    // Every value has a description.
    for line in table.lines().skip(2) {
        assert!(!line.ends_with("|  |"), "no comment above {line}");
    }
}

#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    support::run_build_script("hack/promtool/build.sh");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let promtool = root.join("target/promtool/promtool");
    let rules = root.join("charts/restatus/alerts/restatus.yaml");
    let check = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let tests = root.join("tests/alerts/restatus.test.yaml");
    let out = std::process::Command::new(&promtool)
        .args(["test", "rules"])
        .arg(&tests)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
