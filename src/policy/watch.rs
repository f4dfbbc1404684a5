//! What the watch caches share: running a reflector until shutdown, and reporting objects
//! whose restatus policy annotations are invalid (a Warning Event, once per bad value).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{Api, Client};
use kube::{
    Resource,
    runtime::{
        WatchStreamExt,
        events::{Event, EventType, Recorder},
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher,
    },
};
use tokio_util::sync::CancellationToken;

use super::{InvalidAnnotation, Level, LevelAnnotations, Overrides, PolicyMetrics};
use crate::error::error_chain;

/// How many objects' invalid values are remembered to report each only once.
const REMEMBERED: usize = 10_000;

/// Reports invalid policy annotations with a Warning Event `InvalidPolicyAnnotation` about
/// the object that carries them, once per object and bad value.
#[derive(Clone)]
pub struct InvalidReporter {
    recorder: Option<Recorder>,
    metrics: PolicyMetrics,
    reported: Arc<Mutex<HashMap<String, String>>>,
}

impl InvalidReporter {
    pub fn new(recorder: Option<Recorder>, metrics: PolicyMetrics) -> Self {
        Self {
            recorder,
            metrics,
            reported: Arc::default(),
        }
    }

    /// Remembers that `key` (an object) has `bad` now; true when that is news.
    fn news(&self, key: &str, bad: Option<&InvalidAnnotation>) -> bool {
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        match bad {
            None => {
                reported.remove(key);
                false
            }
            Some(error) => {
                let value = error.to_string();
                if reported.get(key) == Some(&value) {
                    return false;
                }
                if reported.len() >= REMEMBERED {
                    reported.clear();
                }
                reported.insert(key.to_owned(), value);
                true
            }
        }
    }

    /// Checks the annotations of the object `reference` at `level`; publishes an Event when
    /// a value is newly invalid.
    pub async fn check(
        &self,
        level: Level,
        reference: &ObjectReference,
        annotations: Option<&BTreeMap<String, String>>,
    ) {
        match Overrides::parse(annotations) {
            Err(error) => {
                if let Some(event) = self.newly_invalid(level, reference, &error) {
                    self.publish(&event, reference).await;
                }
            }
            Ok(_) if annotations.is_some() => {
                // Valid now: a later bad value is news again.
                let _ = self.news(&key_of(reference), None);
            }
            Ok(_) => {}
        }
    }

    /// [`InvalidReporter::check`] for an invalid annotation a review already found: the
    /// Event, when it is news, is published in the background.
    pub fn report(&self, level: Level, reference: ObjectReference, error: &InvalidAnnotation) {
        if let Some(event) = self.newly_invalid(level, &reference, error) {
            let reporter = self.clone();
            tokio::spawn(async move { reporter.publish(&event, &reference).await });
        }
    }

    /// Counts and logs `error` of the object `reference` when it is news, and makes the Event
    /// that reports it.
    fn newly_invalid(
        &self,
        level: Level,
        reference: &ObjectReference,
        error: &InvalidAnnotation,
    ) -> Option<Event> {
        if !self.news(&key_of(reference), Some(error)) {
            return None;
        }
        self.metrics.invalid_annotation_seen(level);
        tracing::warn!(
            level = level.label(),
            object = reference.name.as_deref().unwrap_or_default(),
            namespace = reference.namespace.as_deref().unwrap_or_default(),
            error = %error,
            "invalid restatus policy annotation; that level is ignored"
        );
        self.recorder.as_ref()?;
        Some(Event {
            type_: EventType::Warning,
            reason: "InvalidPolicyAnnotation".into(),
            note: Some(format!(
                "{error}; restatus ignores this {level}'s restatus.io annotations until it is fixed"
            )),
            action: "ResolvePolicy".into(),
            secondary: None,
        })
    }

    async fn publish(&self, event: &Event, reference: &ObjectReference) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        if let Err(e) = recorder.publish(event, reference).await {
            tracing::warn!(error = %error_chain(&e), "could not publish the InvalidPolicyAnnotation event");
        }
    }
}

/// Which object, and which incarnation, a report is about.
fn key_of(reference: &ObjectReference) -> String {
    format!(
        "{}/{}/{}/{}",
        reference.kind.as_deref().unwrap_or_default(),
        reference.namespace.as_deref().unwrap_or_default(),
        reference.name.as_deref().unwrap_or_default(),
        reference.uid.as_deref().unwrap_or_default(),
    )
}

/// Runs `stream` into the reflector `writer` until `shutdown`, checking the policy
/// annotations of every object it sees at `level`. A failing watch is retried with backoff
/// and logged, never fatal.
pub async fn run_reflector<K, S>(
    what: &'static str,
    stream: S,
    writer: Writer<K>,
    level: Level,
    reporter: InvalidReporter,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
{
    let stream = reflector::reflector(writer, stream.default_backoff())
        .touched_objects()
        .for_each(|event| {
            let reporter = reporter.clone();
            async move {
                match event {
                    Ok(obj) => {
                        let reference = obj.object_ref(&K::DynamicType::default());
                        reporter
                            .check(level, &reference, obj.meta().annotations.as_ref())
                            .await;
                    }
                    Err(error) => tracing::warn!(%error, "{what} watch failed; retrying"),
                }
            }
        });
    tokio::select! {
        () = stream => {},
        () = shutdown.cancelled() => {},
    }
}

/// What a [`Cache`] can hold: a cluster-wide kind of the API.
pub trait Cached:
    Resource<DynamicType = ()> + Clone + Debug + Send + Sync + serde::de::DeserializeOwned + 'static
{
}

impl<K> Cached for K where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static
{
}

/// A reflector store the admission path reads, filled by a [`Watch`]; empty without a
/// Kubernetes API.
pub struct Cache<K: Resource<DynamicType = ()> + 'static> {
    store: Option<Store<K>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Default for Cache<K> {
    fn default() -> Self {
        Self { store: None }
    }
}

/// The watch that fills a [`Cache`]: one of restatus's tasks.
pub struct Watch<K: Resource<DynamicType = ()> + Clone + 'static> {
    what: &'static str,
    level: Level,
    api: Api<K>,
    writer: Writer<K>,
    reporter: InvalidReporter,
}

impl<K: Cached> Cache<K> {
    /// A cache of every `K` in the cluster, empty until its watch syncs. `what` names `K` in
    /// logs; objects with invalid policy annotations are reported at `level`.
    pub fn new(
        client: Client,
        what: &'static str,
        level: Level,
        reporter: InvalidReporter,
    ) -> (Self, Watch<K>) {
        let (reader, writer) = reflector::store();
        let watch = Watch {
            what,
            level,
            api: Api::all(client),
            writer,
            reporter,
        };
        (
            Self {
                store: Some(reader),
            },
            watch,
        )
    }

    /// Waits until the first list is in the cache.
    pub async fn synced(&self) {
        if let Some(store) = &self.store {
            let _ = store.wait_until_ready().await;
        }
    }

    /// The cached object named `name` (cluster-scoped, or a namespace).
    pub fn get(&self, name: &str) -> Option<Arc<K>> {
        self.store.as_ref()?.get(&ObjectRef::new(name))
    }

    /// The policy annotations of the cached object `name`, if it is known and has any.
    pub fn overrides(&self, name: &str) -> Option<LevelAnnotations> {
        let obj = self.get(name)?;
        match Overrides::parse(obj.meta().annotations.as_ref()) {
            Ok(o) if o.is_empty() => None,
            other => Some(other),
        }
    }
}

impl<K: Cached> Watch<K> {
    /// Keeps the cache in step with the API server until `shutdown`; a failing watch is
    /// retried with backoff and logged, never fatal.
    pub async fn run(self, shutdown: CancellationToken) {
        let stream = watcher(self.api, watcher::Config::default());
        run_reflector(
            self.what,
            stream,
            self.writer,
            self.level,
            self.reporter,
            shutdown,
        )
        .await;
    }
}
