//! Races and creates that do not go as planned: the owning controller writes first, the
//! object still exists, the create is a dry run, a later admission step rejects it.

use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    events::v1::Event,
};
use kube::{ResourceExt, api::PostParams};
use restatus::policy::{ANNOTATION_RESTORE, ANNOTATION_RESTORED_AT, status_of};
use serde_json::json;

use super::{
    events, outcome, queue_len, recreate_pending, saved_status, wait_outcome, wait_queue_empty,
    wait_restored,
};
use crate::support::{
    cluster::{Env, EnvOptions, WAIT, kubernetes_cluster, patch_status},
    eventually,
};

#[tokio::test]
async fn a_controller_writing_right_after_the_create_keeps_its_facts_and_gets_the_saved_ones() {
    // No worker yet, so the controller's write certainly comes first.
    let env = Env::start(EnvOptions::webhook_only()).await;
    env.create_record_delete("raced", &saved_status()).await;
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("raced"))
        .await
        .unwrap();
    // The owning controller reacts to the new object at once: its write lands with the
    // saved facts merged in, while the object still waits for its restore.
    let written = patch_status(&api, "raced", json!({"phase": "Provisioning"})).await;
    let merged = status_of(&written).unwrap();
    assert_eq!(merged["phase"], "Provisioning");
    assert_eq!(merged["clusterID"], "c-7f3a9", "merged in the write");
    assert!(written.annotations().contains_key(ANNOTATION_RESTORE));
    let _worker = env.start_replica("worker", &[]).await;
    let restored = wait_restored(&api, "raced").await;
    let status = status_of(&restored).unwrap();
    assert_eq!(
        status["phase"], "Provisioning",
        "the controller's fresh fact wins"
    );
    assert_eq!(status["apiServerURL"], "https://203.0.113.10:6443");
    assert_eq!(status["masterVersion"], "1.31.4");
    assert_eq!(status["clusterID"], "c-7f3a9");
}

#[tokio::test]
async fn create_of_an_object_that_still_exists_leaves_it_alone() {
    let env = Env::start(EnvOptions::default()).await;
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("exists"))
        .await
        .unwrap();
    let status = saved_status();
    patch_status(&api, "exists", status.clone()).await;
    env.wait_recorded(&env.kc_id("exists"), &status).await;
    let before = api.get("exists").await.unwrap();

    let err = api
        .create(&PostParams::default(), &kubernetes_cluster("exists"))
        .await
        .expect_err("AlreadyExists");
    match err {
        kube::Error::Api(s) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("unexpected error {other}"),
    }
    let r = &env.restatus[0];
    // The object that exists does not carry the job's id: not the job's to touch.
    eventually(WAIT, "the job to be dropped as not ours", || async {
        (outcome(r, "not_ours").await == 1.0).then_some(())
    })
    .await;
    let after = api.get("exists").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "untouched"
    );
    assert!(!after.annotations().contains_key(ANNOTATION_RESTORED_AT));
    assert!(!after.annotations().contains_key(ANNOTATION_RESTORE));
    wait_queue_empty(&env).await;
    assert_eq!(outcome(r, "restored").await, 0.0);
}

#[tokio::test]
async fn a_dry_run_create_of_a_known_object_queues_nothing() {
    let env = Env::start(EnvOptions::default()).await;
    env.create_record_delete("dry", &saved_status()).await;
    let api = env.clusters();
    let r = &env.restatus[0];
    let dry_before = r
        .metric("restatus_admission_requests_total{operation=\"CREATE\",outcome=\"dry_run\"}")
        .await;
    let answer = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &kubernetes_cluster("dry"),
        )
        .await
        .unwrap();
    assert!(!answer.annotations().contains_key(ANNOTATION_RESTORE));
    assert!(
        r.metric("restatus_admission_requests_total{operation=\"CREATE\",outcome=\"dry_run\"}")
            .await
            > dry_before,
        "the webhook saw the dry-run create"
    );
    assert!(api.get_opt("dry").await.unwrap().is_none());
    assert_eq!(queue_len(&env).await, 0, "no job");
    assert_eq!(r.metric("restatus_restore_jobs_enqueued_total").await, 0.0);
}

#[tokio::test]
async fn a_create_rejected_after_restatus_expires_its_job_quietly() {
    let env = Env::start(EnvOptions::with_args(&["--restore-deadline", "2s"])).await;
    reject_labelled_creates(&env).await;
    let api = env.clusters();
    let mut rejected = kubernetes_cluster("rejected");
    rejected.labels_mut().insert("reject".into(), "yes".into());

    env.create_record_delete("rejected", &saved_status()).await;
    let err = api
        .create(&PostParams::default(), &rejected)
        .await
        .expect_err("the policy rejects the create");
    assert!(
        err.to_string().contains("rejected by the test policy"),
        "{err}"
    );
    let r = &env.restatus[0];
    assert_eq!(r.metric("restatus_restore_jobs_enqueued_total").await, 1.0);
    eventually(WAIT, "the job to expire", || async {
        (outcome(r, "expired").await == 1.0).then_some(())
    })
    .await;
    wait_queue_empty(&env).await;
    let noisy: Vec<Event> = [
        events(&env, "rejected", "StatusRestored").await,
        events(&env, "rejected", "StatusRestoreFailed").await,
    ]
    .concat();
    assert!(
        noisy.is_empty(),
        "no events for a create that never landed: {noisy:?}"
    );
    // The record is still there for a create that does land.
    assert!(
        env.record(&env.kc_id("rejected"))
            .await
            .contains_key("deletedAt")
    );
}

#[tokio::test]
async fn a_job_stopped_between_the_status_and_the_annotations_is_finished_when_redelivered() {
    let env = Env::start(EnvOptions::with_args(&["--restore-worker=false"])).await;
    let saved = saved_status();
    recreate_pending(&env, "interrupted", &saved).await;
    // What a worker stopped after its status patch leaves: the restored status, written as
    // restatus (so recorded under the new incarnation), and the object still pending.
    let kubeconfig = kube::config::Kubeconfig::read_from(&env.identity.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let as_restatus = kube::Api::namespaced_with(
        kube::Client::try_from(config).unwrap(),
        &env.ns,
        &crate::support::cluster::kubernetes_cluster_resource(),
    );
    patch_status(&as_restatus, "interrupted", saved.clone()).await;

    let worker = env.start_replica("worker", &[]).await;
    let restored = wait_restored(&env.clusters(), "interrupted").await;
    assert_eq!(status_of(&restored), Some(&saved));
    wait_outcome(&worker, "restored", 1.0).await;
    let id = env.kc_id("interrupted");
    let record = env.record(&id).await;
    assert!(!record.contains_key("deletedAt"), "{record:?}");
    assert!(record.contains_key("restoredAt"), "{record:?}");
    assert_eq!(env.redis.pttl(&env.keys.record(&id)).await, -1);
}

/// The worker's annotation patches carry the uid of the incarnation they are for; the API
/// server refuses one that reaches an object created again in between, so a late swap cannot
/// unmark the next incarnation's restore.
#[tokio::test]
async fn an_annotation_patch_for_an_earlier_incarnation_is_refused() {
    let env = Env::start(EnvOptions::default()).await;
    let api = env.clusters();
    let first = api
        .create(&PostParams::default(), &kubernetes_cluster("again"))
        .await
        .unwrap();
    api.delete("again", &Default::default()).await.unwrap();
    api.create(&PostParams::default(), &kubernetes_cluster("again"))
        .await
        .unwrap();
    let late = json!({"metadata": {"uid": first.uid(), "annotations": {ANNOTATION_RESTORE: null}}});
    let refused = api
        .patch(
            "again",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&late),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 409 || s.code == 422),
        "{refused:?}"
    );
    // With the live incarnation's uid the same patch lands.
    let live = api.get("again").await.unwrap();
    let current = json!({"metadata": {"uid": live.uid(), "annotations": {"team": "a"}}});
    api.patch(
        "again",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&current),
    )
    .await
    .unwrap();
}

/// Makes the API server reject, after mutating admission, every CREATE of a KubernetesCluster
/// labelled `reject` in the environment's namespace (a ValidatingAdmissionPolicy), and waits
/// until it does: such a CREATE is reviewed by restatus but never lands.
pub(crate) async fn reject_labelled_creates(env: &Env) {
    // A policy that rejects creates labelled reject=yes in this namespace, evaluated after
    // mutating admission.
    let policy_name = format!("{}-reject", env.ns);
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": policy_name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["infra.example.com"], "apiVersions": ["*"],
                "operations": ["CREATE"], "resources": ["kubernetesclusters"]
            }]},
            "validations": [{
                "expression": "!has(object.metadata.labels) || !('reject' in object.metadata.labels)",
                "message": "rejected by the test policy"
            }]
        }
    }))
    .unwrap();
    env.create_cluster_scoped(&policy).await;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": policy_name},
        "spec": {
            "policyName": policy_name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}}}
        }
    }))
    .unwrap();
    env.create_cluster_scoped(&binding).await;

    let api = env.clusters();
    let mut probe = kubernetes_cluster("probe");
    probe.labels_mut().insert("reject".into(), "yes".into());
    // Wait until the policy is in force (a dry-run is evaluated the same way).
    eventually(WAIT, "the admission policy to reject creates", || async {
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        api.create(&dry, &probe).await.is_err().then_some(())
    })
    .await;
}
