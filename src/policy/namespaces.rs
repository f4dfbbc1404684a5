//! A watch cache of namespace metadata, so the admission path reads namespace policy
//! annotations from memory, never from the API server.

use k8s_openapi::api::core::v1::Namespace;
use kube::{Client, core::PartialObjectMeta};

use super::{
    Level,
    watch::{Cache, InvalidReporter, Watch},
};

/// The namespaces of the cluster, metadata only: an `Api<PartialObjectMeta<_>>` asks the API
/// server for PartialObjectMetadata (kube sets the Accept header), so neither the list, the
/// watch nor the cache carries specs or statuses. `overrides(name)` gives
/// a namespace's policy annotations. Empty (no namespace level applies) without a
/// Kubernetes API.
pub type NamespaceCache = Cache<PartialObjectMeta<Namespace>>;

/// The watch that fills a [`NamespaceCache`]: one of restatus's tasks.
pub type NamespaceWatch = Watch<PartialObjectMeta<Namespace>>;

impl NamespaceCache {
    /// A cache of the cluster's namespaces, empty until its watch syncs; namespaces with
    /// invalid policy annotations are reported.
    pub fn namespaces(client: Client, reporter: InvalidReporter) -> (Self, NamespaceWatch) {
        Cache::new(client, "Namespace", Level::Namespace, reporter)
    }
}
