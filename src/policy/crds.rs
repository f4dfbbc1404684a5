//! A watch cache of CustomResourceDefinitions, so the admission path knows whether a custom
//! type keeps `.status` on create without calling the API server.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use tokio_util::sync::CancellationToken;

use super::{
    Level, LevelAnnotations,
    watch::{Cache, InvalidReporter, Watch},
};

/// What the admission path needs to know about a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeInfo {
    /// The API server drops `.status` on create and serves a status subresource: built-in
    /// types and CRDs with `subresources.status`. Restores go through the worker.
    DropsStatusOnCreate,
    /// A CRD version without the status subresource: `.status` is part of the object and is
    /// kept on create and on every update of the main resource.
    KeepsStatusOnCreate,
}

#[derive(Clone, Default)]
pub struct CrdCache(Cache<CustomResourceDefinition>);

/// The watch that fills a [`CrdCache`]: one of restatus's tasks.
pub struct CrdWatch(Watch<CustomResourceDefinition>);

impl CrdWatch {
    /// Keeps the cache in step with the API server until `shutdown`; CRDs with invalid policy
    /// annotations are reported.
    pub async fn run(self, shutdown: CancellationToken) {
        self.0.run(shutdown).await;
    }
}

/// The name of the CRD of a custom type, `None` for a built-in group.
fn crd_name(group: &str, resource: &str) -> Option<String> {
    (!group.is_empty() && group.contains('.')).then(|| format!("{resource}.{group}"))
}

impl CrdCache {
    /// A cache that knows no CRDs; every type is treated as dropping status on create.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A cache of the cluster's CRDs, empty until its watch runs and syncs.
    pub fn new(client: Client, reporter: InvalidReporter) -> (Self, CrdWatch) {
        let (cache, watch) = Cache::new(client, "CustomResourceDefinition", Level::Crd, reporter);
        (Self(cache), CrdWatch(watch))
    }

    /// Waits until the first list of CRDs is in the cache.
    pub async fn synced(&self) {
        self.0.synced().await;
    }

    /// The policy annotations of the CRD of `group`/`resource`, if it is known and has any.
    pub fn overrides(&self, group: &str, resource: &str) -> Option<LevelAnnotations> {
        self.0.overrides(&crd_name(group, resource)?)
    }

    /// Whether objects of `group/version, resource` keep their status on create.
    ///
    /// Unknown types, built-in types and a cache that has not synced yet all answer
    /// [`TypeInfo::DropsStatusOnCreate`]: the worker path, which also works for a type that
    /// turns out to keep status.
    pub fn type_info(&self, group: &str, version: &str, resource: &str) -> TypeInfo {
        let crd = crd_name(group, resource).and_then(|name| self.0.get(&name));
        match crd {
            Some(crd) => type_info_of(&crd, version),
            None => TypeInfo::DropsStatusOnCreate,
        }
    }
}

fn type_info_of(crd: &CustomResourceDefinition, version: &str) -> TypeInfo {
    let has_status = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .map(|v| {
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        });
    match has_status {
        Some(false) => TypeInfo::KeepsStatusOnCreate,
        _ => TypeInfo::DropsStatusOnCreate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(with_status: bool) -> CustomResourceDefinition {
        let subresources = if with_status {
            serde_json::json!({"status": {}})
        } else {
            serde_json::json!(null)
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"plural": "widgets", "kind": "Widget"},
                "scope": "Namespaced",
                "versions": [{
                    "name": "v1",
                    "served": true,
                    "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                    "subresources": subresources
                }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn status_subresource_decides_the_type_info() {
        assert_eq!(
            type_info_of(&crd(true), "v1"),
            TypeInfo::DropsStatusOnCreate
        );
        assert_eq!(
            type_info_of(&crd(false), "v1"),
            TypeInfo::KeepsStatusOnCreate
        );
        // An unknown version is treated as the safe default.
        assert_eq!(
            type_info_of(&crd(false), "v2"),
            TypeInfo::DropsStatusOnCreate
        );
    }

    #[test]
    fn empty_cache_and_builtin_groups_drop_status() {
        let cache = CrdCache::empty();
        assert_eq!(
            cache.type_info("example.com", "v1", "widgets"),
            TypeInfo::DropsStatusOnCreate
        );
        assert_eq!(
            cache.type_info("", "v1", "services"),
            TypeInfo::DropsStatusOnCreate
        );
        assert_eq!(
            cache.type_info("apps", "v1", "deployments"),
            TypeInfo::DropsStatusOnCreate
        );
    }
}
