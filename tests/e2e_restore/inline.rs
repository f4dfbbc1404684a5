//! CRDs without the status subresource keep `.status` on create: the webhook restores the
//! saved status in the create itself.

use kube::{
    ResourceExt,
    api::{DeleteParams, PostParams},
};
use restatus::policy::{ANNOTATION_RESTORE, ANNOTATION_RESTORED_AT, status_of};
use serde_json::json;

use super::wait_event;
use crate::support::cluster::{Env, EnvOptions, TestType};

const LEGACY: TestType =
    TestType::namespaced("legacyclusters", "LegacyCluster").without_status_subresource();

#[tokio::test]
async fn a_crd_without_the_status_subresource_gets_its_status_in_the_create_itself() {
    let env = Env::start(EnvOptions::with_types(&[LEGACY])).await;
    let api = env.api(&LEGACY);
    let manifest = LEGACY.object("legacy");
    api.create(&PostParams::default(), &manifest).await.unwrap();
    // Without the subresource, status is written with the object itself.
    let saved = json!({"endpoint": "https://198.51.100.20", "allocatedID": "a-42"});
    let mut live = api.get("legacy").await.unwrap();
    live.data["status"] = saved.clone();
    api.replace("legacy", &PostParams::default(), &live)
        .await
        .unwrap();
    let id = env.identity(TestType::GROUP, LEGACY.plural, "legacy");
    env.wait_recorded(&id, &saved).await;
    api.delete("legacy", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_deletion_recorded(&id).await;

    let created = api.create(&PostParams::default(), &manifest).await.unwrap();
    assert_eq!(
        status_of(&created),
        Some(&saved),
        "the create response carries the status"
    );
    assert!(created.annotations().contains_key(ANNOTATION_RESTORED_AT));
    assert!(!created.annotations().contains_key(ANNOTATION_RESTORE));
    wait_event(&env, "legacy", "StatusRestored").await;
}
