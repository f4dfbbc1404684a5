//! End to end: policy by annotation at each level, who may get a status back, and the
//! record-path fixes, against the real kube-apiserver (with its namespace controller), real
//! Redis and restatus under the chart's least-privilege identity.
//!
//! Recording happens inside the admission review, before the API call returns, so right
//! after a write its record is there or it never will be: "not recorded" needs no waiting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::{core::v1::Namespace, events::v1::Event};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use restatus::policy::{
    ANNOTATION_EXCLUDE_FIELDS, ANNOTATION_FIELDS, ANNOTATION_MODE, ANNOTATION_POLICY,
    ANNOTATION_RESTORE, ANNOTATION_RESTORE_FOR, ANNOTATION_RESTORED_AT, ANNOTATION_RETENTION,
    RESTORE_PENDING, status_of,
};
use serde_json::{Value, json};
use support::{
    cluster::{
        self, Env, EnvOptions, TestType, WAIT, kubernetes_cluster, patch_status, wait_restored,
    },
    eventually, fixture, helm,
    http::{self, Alpn, TlsClient},
    identity,
    redis::RedisServer,
    restatus::{Options, Restatus},
};

const DAY_MS: i64 = 86_400_000;

fn saved() -> Value {
    json!({
        "phase": "Running",
        "endpoint": "https://203.0.113.40:6443",
        "clusterID": "c-policy",
        "secretRef": "kubeconfig-c-policy"
    })
}

/// A KubernetesCluster manifest with annotations.
fn annotated(name: &str, annotations: &[(&str, &str)]) -> DynamicObject {
    let mut obj = kubernetes_cluster(name);
    for (k, v) in annotations {
        obj.annotations_mut().insert((*k).into(), (*v).into());
    }
    obj
}

/// Creates `manifest`, writes `status`, and returns what restatus recorded (right away:
/// recording is part of the review).
async fn record_of(
    env: &Env,
    api: &Api<DynamicObject>,
    manifest: &DynamicObject,
    id_of: &dyn Fn(&str) -> restatus::store::ObjectIdentity,
    status: &Value,
) -> Option<Value> {
    let name = manifest.name_any();
    api.create(&PostParams::default(), manifest).await.unwrap();
    patch_status(api, &name, status.clone()).await;
    env.recorded_status(&id_of(&name)).await
}

async fn record_of_kc(env: &Env, manifest: &DynamicObject, status: &Value) -> Option<Value> {
    let api = env.clusters();
    record_of(env, &api, manifest, &|n| env.kc_id(n), status).await
}

/// Deletes `name` and waits until restatus has recorded the deletion; the record's TTL in ms.
async fn delete_and_ttl(
    env: &Env,
    api: &Api<DynamicObject>,
    id: &restatus::store::ObjectIdentity,
) -> i64 {
    api.delete(&id.name, &DeleteParams::default())
        .await
        .unwrap();
    env.wait_deletion_recorded(id).await;
    env.redis.pttl(&env.keys.record(id)).await
}

#[tokio::test]
async fn object_annotations_narrow_what_is_recorded_and_never_widen_it() {
    let env = Env::start(EnvOptions::default()).await;
    // Disabled on the object: nothing recorded.
    let off = annotated("off", &[(ANNOTATION_POLICY, "disabled")]);
    assert_eq!(record_of_kc(&env, &off, &saved()).await, None);
    // The control: no annotation, recorded (without the default-excluded fields).
    let plain = kubernetes_cluster("plain");
    assert_eq!(record_of_kc(&env, &plain, &saved()).await, Some(saved()));
    // fields narrows the record; exclude-fields adds to the exclusions.
    let narrow = annotated(
        "narrow",
        &[
            (ANNOTATION_FIELDS, "/endpoint,/secretRef"),
            (ANNOTATION_EXCLUDE_FIELDS, "/secretRef"),
        ],
    );
    assert_eq!(
        record_of_kc(&env, &narrow, &saved()).await,
        Some(json!({"endpoint": "https://203.0.113.40:6443"}))
    );
    // retention only shortens: 1d applies, 90d does not beat the global 30d.
    let short = annotated("short", &[(ANNOTATION_RETENTION, "1d")]);
    record_of_kc(&env, &short, &saved()).await.unwrap();
    let ttl = delete_and_ttl(&env, &env.clusters(), &env.kc_id("short")).await;
    assert!((DAY_MS - 60_000..=DAY_MS).contains(&ttl), "1d: {ttl}");
    let long = annotated("long", &[(ANNOTATION_RETENTION, "90d")]);
    record_of_kc(&env, &long, &saved()).await.unwrap();
    let ttl = delete_and_ttl(&env, &env.clusters(), &env.kc_id("long")).await;
    assert!(
        ttl <= 30 * DAY_MS && ttl > 29 * DAY_MS,
        "capped at 30d: {ttl}"
    );
}

#[tokio::test]
async fn namespace_annotations_set_the_policy_and_objects_cannot_reenable_it() {
    let env = Env::start(
        EnvOptions::default()
            .namespace_annotation(ANNOTATION_POLICY, "disabled")
            .namespace_annotation(ANNOTATION_RETENTION, "2d"),
    )
    .await;
    assert_eq!(
        record_of_kc(&env, &kubernetes_cluster("a"), &saved()).await,
        None
    );
    let reenabled = annotated("b", &[(ANNOTATION_POLICY, "enabled")]);
    assert_eq!(
        record_of_kc(&env, &reenabled, &saved()).await,
        None,
        "an object cannot widen its namespace's policy"
    );
    let r = &env.restatus[0];
    assert!(
        r.metric("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"disabled\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn namespace_retention_and_fields_apply_to_records_and_restores() {
    let env = Env::start(
        EnvOptions::default()
            .namespace_annotation(ANNOTATION_RETENTION, "2d")
            .namespace_annotation(ANNOTATION_FIELDS, "/endpoint,/clusterID"),
    )
    .await;
    let kept = json!({"endpoint": "https://203.0.113.40:6443", "clusterID": "c-policy"});
    assert_eq!(
        record_of_kc(&env, &kubernetes_cluster("kept"), &saved()).await,
        Some(kept.clone())
    );
    let ttl = delete_and_ttl(&env, &env.clusters(), &env.kc_id("kept")).await;
    assert!(
        (2 * DAY_MS - 60_000..=2 * DAY_MS).contains(&ttl),
        "2d: {ttl}"
    );
    // The restore brings back only what was kept.
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("kept"))
        .await
        .unwrap();
    let restored = wait_restored(&api, "kept").await;
    assert_eq!(status_of(&restored), Some(&kept));
}

#[tokio::test]
async fn an_objects_fields_never_bring_back_what_its_namespace_excludes() {
    // The namespace keeps the second endpoint's token out of restatus; the object asks for
    // every endpoint's token. The first endpoint has none, so a selection that closed up the
    // list before the exclusion applied would move the second token into the first place.
    let env = Env::start(
        EnvOptions::default().namespace_annotation(ANNOTATION_EXCLUDE_FIELDS, "/endpoints/1/token"),
    )
    .await;
    const EXCLUDED: &str = "excluded-token-of-endpoint-1";
    let status = json!({
        "phase": "Running",
        "endpoints": [
            {"host": "a.example.com"},
            {"host": "b.example.com", "token": EXCLUDED},
            {"host": "c.example.com", "token": "token-of-endpoint-2"},
            {"host": "d.example.com", "token": "token-of-endpoint-3"},
        ]
    });
    let kept = json!({"endpoints": [
        {"token": "token-of-endpoint-2"},
        {"token": "token-of-endpoint-3"},
    ]});
    let manifest = annotated("tokens", &[(ANNOTATION_FIELDS, "/endpoints/*/token")]);
    let id = env.kc_id("tokens");
    let never_stored = |when: &'static str| {
        let env = &env;
        async move {
            assert_eq!(
                env.redis.keys_holding(EXCLUDED).await,
                Vec::<String>::new(),
                "Redis holds the excluded token {when}"
            );
        }
    };

    assert_eq!(
        record_of_kc(&env, &manifest, &status).await,
        Some(kept.clone())
    );
    never_stored("after the status write").await;
    let api = env.clusters();
    api.delete("tokens", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_deletion_recorded(&id).await;
    assert_eq!(env.recorded_status(&id).await, Some(kept.clone()));
    never_stored("after the deletion").await;

    // Recreated: the other tokens come back, the excluded one does not.
    api.create(&PostParams::default(), &manifest).await.unwrap();
    let restored = wait_restored(&api, "tokens").await;
    assert_eq!(status_of(&restored), Some(&kept));
    never_stored("after the restore").await;
}

const POLICED: TestType = TestType::namespaced("policedclusters", "PolicedCluster").annotated(&[
    (ANNOTATION_EXCLUDE_FIELDS, "/secretRef"),
    (ANNOTATION_RETENTION, "7d"),
    (ANNOTATION_MODE, "replace"),
]);

#[tokio::test]
async fn crd_annotations_apply_and_the_namespace_wins_over_them() {
    // The CRD excludes /secretRef, keeps records 7 days and restores in replace mode; the
    // namespace overrides the retention.
    let env = Env::start(
        EnvOptions::with_types(&[POLICED]).namespace_annotation(ANNOTATION_RETENTION, "3d"),
    )
    .await;
    let api = env.api(&POLICED);
    let id = |n: &str| env.identity(TestType::GROUP, POLICED.plural, n);
    let recorded = record_of(&env, &api, &POLICED.object("p"), &id, &saved()).await;
    let mut expected = saved();
    expected.as_object_mut().unwrap().remove("secretRef");
    assert_eq!(recorded, Some(expected.clone()), "the CRD's exclusion");
    let ttl = delete_and_ttl(&env, &api, &id("p")).await;
    assert!(
        (3 * DAY_MS - 60_000..=3 * DAY_MS).contains(&ttl),
        "the namespace's 3d: {ttl}"
    );
}

#[tokio::test]
async fn a_namespace_in_replace_mode_overwrites_and_an_object_can_narrow_it_to_fill() {
    // No worker yet: the jobs wait, the controller writes first, then a worker (with the
    // default fill mode on its command line) restores with the mode resolved at the create.
    let env =
        Env::start(EnvOptions::webhook_only().namespace_annotation(ANNOTATION_MODE, "replace"))
            .await;
    let api = env.clusters();
    for (name, annotations) in [
        ("replaced", vec![]),
        ("filled", vec![(ANNOTATION_MODE, "fill")]),
    ] {
        env.create_record_delete(name, &saved()).await;
        api.create(&PostParams::default(), &annotated(name, &annotations))
            .await
            .unwrap();
        patch_status(&api, name, json!({"phase": "Provisioning"})).await;
    }
    let _worker = env.start_replica("worker", &[]).await;
    let replaced = wait_restored(&api, "replaced").await;
    assert_eq!(
        status_of(&replaced).unwrap()["phase"],
        "Running",
        "replace: the saved value"
    );
    let filled = wait_restored(&api, "filled").await;
    assert_eq!(
        status_of(&filled).unwrap()["phase"],
        "Provisioning",
        "fill: the live value"
    );
    assert_eq!(status_of(&filled).unwrap()["endpoint"], saved()["endpoint"]);
}

#[tokio::test]
async fn a_type_disabled_globally_is_recorded_where_a_namespace_opts_in() {
    let off = [
        "--resource-policy",
        "kubernetesclusters.infra.example.com=disabled",
    ];
    let env = Env::start(EnvOptions::with_args(&off)).await;
    assert_eq!(
        record_of_kc(&env, &kubernetes_cluster("x"), &saved()).await,
        None
    );
    let env =
        Env::start(EnvOptions::with_args(&off).namespace_annotation(ANNOTATION_POLICY, "enabled"))
            .await;
    assert_eq!(
        record_of_kc(&env, &kubernetes_cluster("x"), &saved()).await,
        Some(saved())
    );
}

#[tokio::test]
async fn an_invalid_annotation_is_skipped_with_a_warning_kubectl_shows_an_event_and_a_metric() {
    let env = Env::start(EnvOptions::default()).await;
    let manifest = json!({
        "apiVersion": "infra.example.com/v1alpha1",
        "kind": "KubernetesCluster",
        "metadata": {"name": "typo", "namespace": env.ns,
                     "annotations": {ANNOTATION_MODE: "sideways", ANNOTATION_POLICY: "disabled"}},
        "spec": {"region": "eu-west-1"}
    });
    let kubectl =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cluster/kubectl");
    let mut child = std::process::Command::new(kubectl)
        .args([
            "--kubeconfig",
            cluster::control_plane().kubeconfig.to_str().unwrap(),
        ])
        .args(["create", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Warning: restatus")
            && stderr.contains("restatus.io/mode")
            && stderr.contains("sideways"),
        "kubectl prints the warning: {stderr}"
    );
    // The whole object level is skipped, including its valid `disabled`: the global policy
    // applies and the status is recorded.
    patch_status(&env.clusters(), "typo", saved()).await;
    assert_eq!(env.recorded_status(&env.kc_id("typo")).await, Some(saved()));
    let r = &env.restatus[0];
    assert!(
        r.metric("restatus_policy_invalid_annotations_total{level=\"object\"}")
            .await
            >= 2.0
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(WAIT, "an InvalidPolicyAnnotation event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("InvalidPolicyAnnotation")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("typo")
            })
            .filter(|e| e.note.as_deref().unwrap_or_default().contains("sideways"))
    })
    .await;
}

fn pending(obj: &DynamicObject) -> bool {
    obj.annotations()
        .get(ANNOTATION_RESTORE)
        .map(String::as_str)
        == Some(RESTORE_PENDING)
}

fn cluster_rules(status: bool) -> Value {
    identity::cluster_rules(status)
}

fn clusters_as(user: &identity::User, namespace: &str) -> Api<DynamicObject> {
    user.clusters(namespace)
}

#[tokio::test]
async fn only_creators_who_may_write_status_get_it_back_until_the_namespace_opens_restores() {
    let env = Env::start(EnvOptions::default()).await;
    let tenant = identity::user(&env.client, &env.ns, "tenant", cluster_rules(false)).await;
    let operator = identity::user(&env.client, &env.ns, "operator", cluster_rules(true)).await;
    let as_tenant = clusters_as(&tenant, &env.ns);
    let as_operator = clusters_as(&operator, &env.ns);

    // A tenant who may create the object but not write its status gets nothing back.
    env.create_record_delete("claimed", &saved()).await;
    let created = as_tenant
        .create(&PostParams::default(), &kubernetes_cluster("claimed"))
        .await
        .unwrap();
    assert!(!pending(&created), "no restore for the tenant");
    let r = &env.restatus[0];
    assert_eq!(
        r.metric(
            "restatus_admission_requests_total{operation=\"CREATE\",outcome=\"not_permitted\"}"
        )
        .await,
        1.0
    );
    assert!(
        r.metric("restatus_access_checks_total{outcome=\"denied\",cached=\"false\"}")
            .await
            >= 1.0
    );

    // A user allowed to write status (an operator, a GitOps controller) gets it back. The
    // check is for every name in the namespace: its answer serves the operator's next object.
    let allowed_from_cache = "restatus_access_checks_total{outcome=\"allowed\",cached=\"true\"}";
    for (name, from_cache) in [("operated", 0.0), ("operated-too", 1.0)] {
        let before = r.metric(allowed_from_cache).await;
        env.create_record_delete(name, &saved()).await;
        let created = as_operator
            .create(&PostParams::default(), &kubernetes_cluster(name))
            .await
            .unwrap();
        assert!(pending(&created), "{name}");
        assert_eq!(
            r.metric(allowed_from_cache).await,
            before + from_cache,
            "{name}"
        );
    }
    let restored = wait_restored(&env.clusters(), "operated").await;
    assert_eq!(status_of(&restored), Some(&saved()));

    // Status rights on some names only (RBAC resourceNames) give back those names only.
    let mut rules = cluster_rules(false);
    rules.as_array_mut().unwrap().push(json!({
        "apiGroups": ["infra.example.com"], "resources": ["kubernetesclusters/status"],
        "verbs": ["update"], "resourceNames": ["named"]
    }));
    let scoped = identity::user(&env.client, &env.ns, "scoped", rules).await;
    let as_scoped = clusters_as(&scoped, &env.ns);
    for (name, restores) in [("unnamed", false), ("named", true)] {
        env.create_record_delete(name, &saved()).await;
        let created = as_scoped
            .create(&PostParams::default(), &kubernetes_cluster(name))
            .await
            .unwrap();
        assert_eq!(pending(&created), restores, "{name}");
    }
    let restored = wait_restored(&env.clusters(), "named").await;
    assert_eq!(status_of(&restored), Some(&saved()));

    // The namespace opens restores to every creator. The cache learns it from the watch: the
    // tenant retries until its create comes back pending.
    env.create_record_delete("opened", &saved()).await;
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &env.ns,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {ANNOTATION_RESTORE_FOR: "creators"}}}),
            ),
        )
        .await
        .unwrap();
    eventually(WAIT, "the tenant's create to be restored", || async {
        let created = as_tenant
            .create(&PostParams::default(), &kubernetes_cluster("opened"))
            .await
            .ok()?;
        if pending(&created) {
            return Some(());
        }
        as_tenant
            .delete("opened", &DeleteParams::default())
            .await
            .ok()?;
        None
    })
    .await;
    let restored = wait_restored(&env.clusters(), "opened").await;
    assert_eq!(status_of(&restored), Some(&saved()));

    // restore-for on the object is ignored: it could only widen.
    let env = Env::start(EnvOptions::default()).await;
    let tenant = identity::user(&env.client, &env.ns, "tenant", cluster_rules(false)).await;
    let as_tenant = clusters_as(&tenant, &env.ns);
    env.create_record_delete("sneaky", &saved()).await;
    let created = as_tenant
        .create(
            &PostParams::default(),
            &annotated("sneaky", &[(ANNOTATION_RESTORE_FOR, "creators")]),
        )
        .await
        .unwrap();
    assert!(!pending(&created), "an object cannot open its own restore");
}

#[tokio::test]
async fn a_restore_marker_a_tenant_sets_is_undone_and_merges_no_saved_status() {
    let env = Env::start(EnvOptions::default()).await;
    let tenant = identity::user(&env.client, &env.ns, "tenant", cluster_rules(false)).await;
    let as_tenant = clusters_as(&tenant, &env.ns);
    env.create_record_delete("forged", &saved()).await;

    // The tenant may not get the saved status back, and marking the object pending itself
    // does not help: the marker is removed on create, and refused on update.
    let forged = annotated("forged", &[(ANNOTATION_RESTORE, RESTORE_PENDING)]);
    let created = as_tenant
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    assert!(!created.annotations().contains_key(ANNOTATION_RESTORE));
    let updated = as_tenant
        .patch(
            "forged",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {ANNOTATION_RESTORE: RESTORE_PENDING}}}),
            ),
        )
        .await
        .unwrap();
    assert!(!updated.annotations().contains_key(ANNOTATION_RESTORE));

    // The object's controller writes its first status: nothing saved is merged into it.
    let written = patch_status(&env.clusters(), "forged", json!({"phase": "Provisioning"})).await;
    assert_eq!(status_of(&written), Some(&json!({"phase": "Provisioning"})));
    let r = &env.restatus[0];
    assert_eq!(
        r.metric("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"merged\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn namespace_deletion_starts_every_records_retention_clock() {
    let env = Env::start(EnvOptions::default()).await;
    let names: Vec<String> = (0..5).map(|i| format!("doomed-{i}")).collect();
    for name in &names {
        assert!(
            record_of_kc(&env, &kubernetes_cluster(name), &saved())
                .await
                .is_some()
        );
    }
    // The namespace controller deletes every object with DeleteCollection: per-object DELETE
    // reviews without a name.
    Api::<Namespace>::all(env.client.clone())
        .delete(&env.ns, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the namespace to be gone",
        || async {
            let ns = Api::<Namespace>::all(env.client.clone())
                .get_opt(&env.ns)
                .await
                .ok()?;
            ns.is_none().then_some(())
        },
    )
    .await;
    for name in &names {
        let id = env.kc_id(name);
        let rec = env.record(&id).await;
        assert!(rec.contains_key("deletedAt"), "{name}: {rec:?}");
        let ttl = env.redis.pttl(&env.keys.record(&id)).await;
        assert!(ttl > 29 * DAY_MS, "{name}: retention running, ttl {ttl}");
    }
    let nameless = env
        .redis
        .keys(&format!(
            "{}:rec:*|{}|}}",
            env.restatus[0].key_prefix, env.ns
        ))
        .await;
    assert!(
        nameless.is_empty(),
        "no record under an empty name: {nameless:?}"
    );
}

#[tokio::test]
async fn an_update_the_api_server_rejects_with_a_conflict_is_not_recorded() {
    let env = Env::start(EnvOptions::default()).await;
    let api = env.clusters();
    assert_eq!(
        record_of_kc(&env, &kubernetes_cluster("raced"), &saved()).await,
        Some(saved())
    );
    let stale = api.get("raced").await.unwrap();
    patch_status(&api, "raced", json!({"phase": "Upgrading"})).await;
    let mut expected = saved();
    expected["phase"] = json!("Upgrading");
    assert_eq!(
        env.recorded_status(&env.kc_id("raced")).await,
        Some(expected.clone())
    );
    // A status update from the stale copy: the API server refuses it after admission.
    let mut from_stale = stale.clone();
    from_stale.data["status"] = json!({"phase": "Forged"});
    let err = api
        .replace_status("raced", &PostParams::default(), &from_stale)
        .await
        .expect_err("409 Conflict");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    assert_eq!(
        env.recorded_status(&env.kc_id("raced")).await,
        Some(expected)
    );
}

#[tokio::test]
async fn a_client_naming_itself_restatus_in_field_manager_does_not_write_the_record() {
    let env = Env::start(EnvOptions::webhook_only()).await;
    let api = env.clusters();
    env.create_record_delete("posed", &saved()).await;
    api.create(&PostParams::default(), &kubernetes_cluster("posed"))
        .await
        .unwrap();
    let posing = PatchParams {
        field_manager: Some("restatus".into()),
        ..PatchParams::default()
    };
    let written = api
        .patch_status(
            "posed",
            &posing,
            &Patch::Merge(json!({"status": {"phase": "Posed"}})),
        )
        .await
        .unwrap();
    // Merged like any other writer's status write, and not recorded.
    assert_eq!(status_of(&written).unwrap()["phase"], "Posed");
    assert_eq!(
        status_of(&written).unwrap()["endpoint"],
        saved()["endpoint"]
    );
    assert_eq!(
        env.recorded_status(&env.kc_id("posed")).await,
        Some(saved())
    );
}

#[tokio::test]
async fn a_restore_cancelled_by_taking_the_marker_off_writes_nothing() {
    let env = Env::start(EnvOptions::webhook_only()).await;
    let api = env.clusters();
    env.create_record_delete("moved", &saved()).await;
    let created = api
        .create(&PostParams::default(), &kubernetes_cluster("moved"))
        .await
        .unwrap();
    assert!(pending(&created));
    // Someone takes the pending mark off (which anyone may) and the new incarnation writes
    // its own status: the record now belongs to it, not to the deleted object.
    api.patch(
        "moved",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION_RESTORE: null}}})),
    )
    .await
    .unwrap();
    let own = json!({"phase": "Fresh"});
    patch_status(&api, "moved", own.clone()).await;
    assert_eq!(env.recorded_status(&env.kc_id("moved")).await, Some(own));
    let worker = env.start_replica("worker", &[]).await;
    eventually(WAIT, "the job to finish as cancelled", || async {
        let n = worker
            .metric("restatus_restores_total{outcome=\"cancelled\"}")
            .await;
        (n == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        worker
            .metric("restatus_restores_total{outcome=\"restored\"}")
            .await,
        0.0
    );
    let live = api.get("moved").await.unwrap();
    assert!(!live.annotations().contains_key(ANNOTATION_RESTORED_AT));
    assert_eq!(status_of(&live), Some(&json!({"phase": "Fresh"})));
}

#[tokio::test]
async fn restatus_is_unready_and_records_nothing_until_its_policy_caches_have_synced() {
    let client = cluster::client().await;
    let ns = support::unique("unsynced");
    cluster::create_namespace(&client, &ns).await;
    // restatus may watch CRDs, but not (yet) namespaces: the namespace cache cannot sync.
    let role = |name: &str, resources: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name}, "rules": resources})
    };
    let binding = |name: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": ns}]})
    };
    let crds = format!("{ns}-crds");
    let namespaces = format!("{ns}-namespaces");
    let account =
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "limited"}});
    let crd_role = role(
        &crds,
        json!([{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]}]),
    );
    helm::create_all(&client, &ns, &[&account, &crd_role, &binding(&crds)]).await;
    let (kubeconfig, _dir) = identity::token_kubeconfig(&client, &ns, "limited").await;
    let redis = RedisServer::start().await;
    let mut opts = Options::new(redis.url());
    opts.kubeconfig = Some(kubeconfig);
    opts.args = vec!["--restore-worker=false".into()];
    opts.wait_ready = false;
    let r = Restatus::start(opts).await;

    eventually(
        WAIT,
        "the namespace watch to fail for want of RBAC",
        || async {
            r.log_text()
                .contains("Namespace watch failed")
                .then_some(())
        },
    )
    .await;
    let ready = http::get(&r.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready
            .body
            .contains("the CRD and namespace caches have not synced"),
        "{}",
        ready.body
    );
    // A review is answered at once, allowed, and nothing is recorded on the global policy
    // alone: the namespace could have said `policy: disabled`.
    let tls = TlsClient::new(&r.ca_file(), Alpn::Http2);
    let review = fixture("reviews/kc-update-status.json");
    let answer = r.review_allowed(&tls, &review).await;
    assert!(!answer.body.contains("\"patch\""), "{}", answer.body);
    assert_eq!(
        r.metric("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"not_ready\"}")
            .await,
        1.0
    );
    assert!(redis.keys("*").await.is_empty(), "nothing recorded");

    // Once restatus may watch namespaces, the cache syncs and it is ready.
    let ns_role = role(
        &namespaces,
        json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]),
    );
    helm::create_all(&client, &ns, &[&ns_role, &binding(&namespaces)]).await;
    eventually(WAIT, "restatus to be ready", || async {
        let ready = http::get(&r.admin_url("/readyz")).await.ok()?;
        (ready.status == 200).then_some(())
    })
    .await;
    let mut again = review.clone();
    again["request"]["uid"] = json!("after-sync");
    r.review_allowed(&tls, &again).await;
    assert_eq!(
        r.metric("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"recorded\"}")
            .await,
        1.0
    );
    for (kind, name) in [
        ("ClusterRoleBinding", &crds),
        ("ClusterRoleBinding", &namespaces),
        ("ClusterRole", &crds),
        ("ClusterRole", &namespaces),
    ] {
        let resource = match kind {
            "ClusterRole" => ApiResource::erase::<k8s_openapi::api::rbac::v1::ClusterRole>(&()),
            _ => ApiResource::erase::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(&()),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
}
