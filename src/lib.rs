//! restatus keeps the `.status` of Kubernetes objects in Redis and puts it back when an
//! object is deleted and created again.
//!
//! The program: [`serve`] builds the shared state and runs the parts (webhook listener,
//! admin listener, restore worker, watch caches) until the shutdown signal, then drains them.

pub mod admission;
pub mod certs;
pub mod config;
pub mod duration;
pub mod policy;
pub mod restore;
pub mod server;
pub mod store;
pub mod telemetry;

use std::{path::Path, sync::Arc};

use kube::{Client, config::KubeConfigOptions};
use tokio_util::sync::CancellationToken;

use crate::{
    admission::Admission,
    certs::{CertError, FileCertResolver},
    config::ServeArgs,
    policy::{CrdCache, RestorePolicy},
    restore::Worker,
    server::{BindError, Readiness},
    store::{Store, StoreError},
    telemetry::Metrics,
};

/// An error and its sources on one line: `could not read x: No such file or directory`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "no serving certificate: pass --tls-cert-file and --tls-key-file (`restatus certs` writes a pair for local use)"
    )]
    NoCertificate,
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("could not set up the Redis store")]
    Store(#[from] StoreError),
    #[error("could not load the kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("could not build a Kubernetes client")]
    Kube(#[source] kube::Error),
    #[error("stopped because {0}")]
    Failed(String),
}

/// A Kubernetes client from `--kubeconfig`, or inferred (KUBECONFIG, ~/.kube/config,
/// in-cluster). Without an explicit kubeconfig, failing inference is not fatal: the webhook
/// still records, but no restores are applied here.
async fn kube_client(kubeconfig: Option<&Path>) -> Result<Option<Client>, ServeError> {
    let Some(path) = kubeconfig else {
        return match Client::try_default().await {
            Ok(client) => Ok(Some(client)),
            Err(error) => {
                tracing::warn!(
                    error = %error_chain(&error),
                    "no Kubernetes API configured: status is recorded, but this process applies no restores"
                );
                Ok(None)
            }
        };
    };
    let kubeconfig_err = |source| ServeError::Kubeconfig {
        path: path.display().to_string(),
        source,
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_err)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_err)?;
    Client::try_from(config).map(Some).map_err(ServeError::Kube)
}

fn consumer_name(configured: Option<&str>) -> String {
    if let Some(name) = configured.filter(|n| !n.is_empty()) {
        return name.to_owned();
    }
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "restatus".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Runs `restatus serve` until `shutdown` is cancelled, then drains every part.
pub async fn serve(args: ServeArgs, shutdown: CancellationToken) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    let grace = args.server.shutdown_grace;

    let (Some(cert), Some(key)) = (&args.tls.tls_cert_file, &args.tls.tls_key_file) else {
        return Err(ServeError::NoCertificate);
    };
    let resolver = FileCertResolver::load(cert, key)?;
    let tls = Arc::new(certs::server_config(resolver.clone())?);

    let store = Store::connect(
        &args.store.redis_url,
        args.store.key_schema(),
        metrics.clone(),
    )?;
    let client = kube_client(args.kube.kubeconfig.as_deref()).await?;

    let policy = RestorePolicy {
        mode: args.restore.restore_mode,
        fields: args.restore.restore_fields.0.clone(),
        exclude_fields: args.restore.restore_exclude_fields.0.clone(),
    };

    let webhook_listener = server::bind(args.server.listen).await?;
    let admin_listener = server::bind(args.server.admin_listen).await?;

    let mut tasks = tokio::task::JoinSet::new();
    let failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let crds = match &client {
        Some(client) => {
            let (crds, watch) = CrdCache::start(client.clone(), shutdown.clone());
            tasks.spawn(watch);
            crds
        }
        None => CrdCache::empty(),
    };

    let admission = Arc::new(Admission::new(
        store.clone(),
        crds,
        metrics.clone(),
        admission::Settings {
            redis_timeout: args.store.redis_timeout,
            retention: args.record.retention,
            restore_deadline: args.restore.restore_deadline,
            policy: policy.clone(),
            field_manager: args.kube.field_manager.clone(),
        },
    ));

    if let Some(client) = client.filter(|_| args.restore.restore_worker) {
        let worker = Worker::new(
            store.clone(),
            client,
            metrics.clone(),
            restore::Settings {
                consumer: consumer_name(args.restore.consumer_name.as_deref()),
                concurrency: args.restore.restore_concurrency as usize,
                max_deliveries: args.restore.restore_max_deliveries,
                claim_min_idle: args.restore.restore_claim_min_idle,
                conflict_retries: args.restore.restore_conflict_retries,
                redis_timeout: args.store.redis_worker_timeout,
                policy,
                field_manager: args.kube.field_manager.clone(),
            },
        );
        tasks.spawn(worker.run(shutdown.clone(), grace));
    }

    tasks.spawn(
        resolver
            .clone()
            .watch(args.tls.tls_reload_interval, shutdown.clone()),
    );

    let ready = Arc::new(Readiness::default());
    let admin = server::admin_router(metrics.clone(), ready.clone());
    let admin_shutdown = shutdown.clone();
    let admin_failure = failure.clone();
    tasks.spawn(async move {
        if let Err(error) = server::serve_admin(admin_listener, admin, admin_shutdown.clone()).await
        {
            tracing::error!(%error, "admin listener failed; shutting down");
            record_failure(
                &admin_failure,
                format!("the admin listener failed: {error}"),
            );
            admin_shutdown.cancel();
        }
    });

    let webhook = admission::router(admission, args.server.max_request_bytes);
    tracing::info!(
        listen = %args.server.listen,
        admin_listen = %args.server.admin_listen,
        cluster = args.store.cluster_name,
        "restatus serving"
    );
    tasks.spawn(server::serve_tls(
        webhook_listener,
        tls,
        webhook,
        ready,
        shutdown.clone(),
        grace,
    ));

    while let Some(result) = tasks.join_next().await {
        if let Err(error) = result {
            tracing::error!(%error, "a restatus task failed; shutting down");
            record_failure(&failure, format!("a task failed: {error}"));
            shutdown.cancel();
        }
    }
    tracing::info!("restatus stopped");
    let failed = failure.lock().map(|mut f| f.take()).unwrap_or(None);
    match failed {
        Some(reason) => Err(ServeError::Failed(reason)),
        None => Ok(()),
    }
}

/// Keeps the first reason restatus had to stop on its own.
fn record_failure(failure: &std::sync::Mutex<Option<String>>, reason: String) {
    if let Ok(mut f) = failure.lock() {
        f.get_or_insert(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_joins_sources_on_one_line() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }

    #[test]
    fn consumer_name_prefers_the_flag() {
        assert_eq!(consumer_name(Some("replica-a")), "replica-a");
        assert!(consumer_name(None).ends_with(&format!("-{}", std::process::id())));
    }
}
