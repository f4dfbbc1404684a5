//! A watch cache of CustomResourceDefinitions, so the admission path knows whether a custom
//! type keeps `.status` on create without calling the API server.

use futures::{StreamExt, future};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio_util::sync::CancellationToken;

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
pub struct CrdCache {
    store: Option<Store<CustomResourceDefinition>>,
}

impl CrdCache {
    /// A cache that knows no CRDs; every type is treated as dropping status on create.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Starts watching CRDs. The returned future runs the watch until `shutdown`.
    pub fn start(
        client: Client,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (reader, writer) = reflector::store();
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default()).default_backoff(),
        )
        .touched_objects()
        .for_each(|event| {
            if let Err(error) = event {
                tracing::warn!(%error, "CustomResourceDefinition watch failed; retrying");
            }
            future::ready(())
        });
        let task = async move {
            tokio::select! {
                () = stream => {},
                () = shutdown.cancelled() => {},
            }
        };
        (
            Self {
                store: Some(reader),
            },
            task,
        )
    }

    /// Whether objects of `group/version, resource` keep their status on create.
    ///
    /// Unknown types, built-in types and a cache that has not synced yet all answer
    /// [`TypeInfo::DropsStatusOnCreate`]: the worker path, which also works for a type that
    /// turns out to keep status.
    pub fn type_info(&self, group: &str, version: &str, resource: &str) -> TypeInfo {
        if group.is_empty() || !group.contains('.') {
            return TypeInfo::DropsStatusOnCreate;
        }
        let Some(store) = &self.store else {
            return TypeInfo::DropsStatusOnCreate;
        };
        let Some(crd) = store.get(&ObjectRef::new(&format!("{resource}.{group}"))) else {
            return TypeInfo::DropsStatusOnCreate;
        };
        type_info_of(&crd, version)
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
