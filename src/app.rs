//! `restatus serve`: [`App::build`] reads the flags, connects and loads everything the parts
//! need; [`App::run`] runs the parts as tasks until shutdown, or until the first one fails.
//!
//! This is the only module that reads [`crate::config`]; it hands plain values down.

use std::{
    collections::HashMap,
    future::Future,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::Router;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{
    Api, Client,
    api::PostParams,
    config::KubeConfigOptions,
    runtime::events::{Recorder, Reporter},
};
use prometheus_client::registry::Registry;
use tokio::{
    net::TcpListener,
    task::{Id, JoinSet},
};
use tokio_util::sync::CancellationToken;

use crate::{
    admission::{self, Admission, AdmissionMetrics},
    certs::{
        self, CertError, CertMetrics, FileSource, ManagerError, SelfManaged, SelfManagedSettings,
    },
    config::{
        CertMode, RestoreArgs, ServeArgs, ServerArgs, ServerArgsError, TlsArgs, TlsArgsError,
    },
    error::error_chain,
    policy::{
        self, AccessChecker, CrdCache, CrdWatch, Defaults, GlobalPolicy, InvalidReporter,
        NamespaceCache, NamespaceWatch, PolicyMetrics,
    },
    restore::{self, RestoreMetrics, Worker},
    resync::{self, Resync, ResyncMetrics},
    server::{self, BindError, Readiness},
    store::{
        Breaker, BreakerMetrics, BreakerSettings, Keyring, KeyringError, Store, StoreError,
        StoreMetrics,
    },
    telemetry,
};

/// Why restatus could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "no serving certificate: pass --tls-cert-file and --tls-key-file (`restatus certs` writes a pair for local use)"
    )]
    NoCertificate,
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error("could not set up self-managed certificates")]
    SelfManaged(#[from] ManagerError),
    #[error("--cert-mode self-managed {0}")]
    SelfManagedConfig(&'static str),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Listener(#[from] ServerArgsError),
    #[error(transparent)]
    Tls(#[from] TlsArgsError),
    #[error("could not set up the Redis store")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Redis(#[from] crate::config::RedisArgsError),
    #[error("could not load the kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("could not build a Kubernetes client")]
    Kube(#[source] kube::Error),
}

/// Why restatus stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("the admin listener failed")]
    Admin(#[source] std::io::Error),
    #[error("{task} stopped on its own")]
    Stopped { task: &'static str },
    #[error("{task} panicked")]
    Panicked {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Everything `serve` runs, built and ready.
pub struct App {
    webhook_listener: TcpListener,
    admin_listener: TcpListener,
    webhook: server::Webhook,
    /// The listener's TLS, when its client CA file is to be reloaded.
    client_ca: Option<Arc<certs::ListenerTls>>,
    admin: Router,
    ready: Arc<Readiness>,
    /// Set once the policy caches have synced: until then reviews are allowed unrecorded.
    synced: Arc<AtomicBool>,
    /// The same, for parts that wait for it (only one task may wait on the caches' own
    /// readiness: their stores wake one waiter).
    synced_tx: tokio::sync::watch::Sender<bool>,
    certificates: Certificates,
    caches: Caches,
    worker: Option<Arc<Worker>>,
    resync: Option<Arc<Resync>>,
    /// The admission path's circuit breaker, and the store its probe asks Redis through.
    breaker: (Arc<Breaker>, Store),
    grace: Duration,
    /// The status line's registry and interval (`--status-log-interval`), when it is on.
    status_line: Option<(Arc<Registry>, Duration)>,
}

/// How long the start waits for Redis to answer before serving without it.
const WARM_UP_BUDGET: Duration = Duration::from_secs(2);

/// While the policy caches have not synced, how often that is logged.
const CACHE_SYNC_WARN_EVERY: Duration = Duration::from_secs(30);

/// The watch caches the admission path reads, and the watches that fill them.
struct Caches {
    crds: CrdCache,
    namespaces: NamespaceCache,
    watches: Option<(CrdWatch, NamespaceWatch)>,
}

/// The global policy from the flags.
fn global_policy(args: &ServeArgs) -> GlobalPolicy {
    let restore = &args.restore;
    GlobalPolicy {
        defaults: Defaults {
            policy: restore.default_policy,
            mode: restore.restore_mode,
            fields: restore.restore_fields.0.clone(),
            exclude_fields: restore.restore_exclude_fields.0.clone(),
            retention: args.record.retention,
            restore_for: restore.restore_for,
        },
        types: restore
            .resource_policy
            .iter()
            .map(|t| ((t.group.clone(), t.resource.clone()), t.policy))
            .collect(),
    }
}

/// The user restatus's requests come as, from a SelfSubjectReview (every authenticated user
/// may ask who they are). Without it, restatus cannot tell its own status writes apart and
/// merges them too, which is harmless.
async fn own_username(client: &Client) -> Option<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    match api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
    {
        Ok(review) => {
            let user = review.status?.user_info?.username;
            tracing::info!(
                user = user.as_deref().unwrap_or_default(),
                "restatus runs as"
            );
            user
        }
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "could not learn which user restatus runs as");
            None
        }
    }
}

/// Where the serving certificate comes from, and the task that keeps it fresh.
enum Certificates {
    Files {
        source: FileSource,
        reload_interval: Duration,
    },
    SelfManaged(Arc<SelfManaged>),
}

/// The namespace of the in-cluster service account, when running in a pod.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl Certificates {
    async fn build(
        tls: &TlsArgs,
        client: Option<&Client>,
        instance: &str,
        field_manager: &str,
        metrics: CertMetrics,
    ) -> Result<Self, BuildError> {
        if tls.cert_mode == CertMode::Files {
            let (Some(cert), Some(key)) = (&tls.tls_cert_file, &tls.tls_key_file) else {
                return Err(BuildError::NoCertificate);
            };
            return Ok(Certificates::Files {
                source: FileSource::load(cert, key, metrics)?,
                reload_interval: tls.tls_reload_interval,
            });
        }
        let client = client.ok_or(BuildError::SelfManagedConfig(
            "needs the Kubernetes API: pass --kubeconfig or run in a cluster",
        ))?;
        let namespace = tls
            .namespace
            .clone()
            .or_else(|| {
                std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                    .ok()
                    .map(|ns| ns.trim().to_owned())
            })
            .filter(|ns| !ns.is_empty())
            .ok_or(BuildError::SelfManagedConfig(
                "needs --namespace outside a cluster",
            ))?;
        let settings = SelfManagedSettings {
            namespace,
            ca_secret: tls.ca_secret.clone(),
            webhook_configuration: tls.webhook_configuration.clone(),
            hosts: tls.cert_hosts.clone(),
            ca_validity: tls.ca_validity,
            cert_validity: tls.cert_validity,
            check_interval: tls.cert_check_interval,
            field_manager: field_manager.to_owned(),
            instance: instance.to_owned(),
        };
        let manager = SelfManaged::start(client.clone(), settings, metrics).await?;
        Ok(Certificates::SelfManaged(manager))
    }

    fn serving(&self) -> Arc<certs::ServingCert> {
        match self {
            Certificates::Files { source, .. } => source.serving(),
            Certificates::SelfManaged(manager) => manager.serving(),
        }
    }

    /// Who may call the webhook: with --client-ca-file, callers with a certificate from it
    /// (that carries one of --client-allowed-names, when given).
    fn client_auth(tls: &TlsArgs) -> Option<certs::ClientAuth> {
        tls.client_ca_file.clone().map(|ca_file| certs::ClientAuth {
            ca_file,
            reload_interval: tls.tls_reload_interval,
            allowed_names: tls.client_allowed_names.clone(),
        })
    }
}

/// The largest status recorded, by the webhook and by resync alike.
fn status_limits(args: &ServeArgs) -> admission::StatusLimits {
    admission::StatusLimits {
        max_values: usize::try_from(args.record.max_status_values).unwrap_or(usize::MAX),
        ..admission::StatusLimits::default()
    }
}

/// How long a queued restore job stays its object's live job at most: long enough for its
/// CREATE to land and for every delivery the worker may make, so that a marker is believed
/// while its job may still run, and not long after.
fn job_ttl(restore: &RestoreArgs) -> Duration {
    let deliveries = u32::try_from(restore.restore_max_deliveries).unwrap_or(u32::MAX);
    restore
        .restore_deadline
        .saturating_add(restore.restore_claim_min_idle.saturating_mul(deliveries))
        .saturating_add(JOB_TTL_MARGIN)
}

/// What a job's lifetime allows beyond its deadline and deliveries.
const JOB_TTL_MARGIN: Duration = Duration::from_secs(300);

/// How the webhook listener bounds its clients.
fn listener_limits(server: &ServerArgs) -> server::Limits {
    server::Limits {
        header_read_timeout: server.header_read_timeout,
        body_read_timeout: server.body_read_timeout,
        idle_timeout: server.idle_timeout,
        http2_keepalive_interval: server.http2_keepalive_interval,
        max_connections: server.max_connections as usize,
        max_concurrent_streams: server.max_concurrent_streams,
        max_request_bytes: server.max_request_bytes,
        max_inflight_body_bytes: server.max_inflight_body_bytes,
    }
}

impl App {
    /// Loads the serving certificate, prepares the store and the Kubernetes client, binds
    /// both listeners and builds the webhook, the worker and the caches. Nothing runs yet.
    pub async fn build(args: ServeArgs) -> Result<Self, BuildError> {
        args.server.check()?;
        args.tls.check()?;
        let mut registry = telemetry::registry();
        let store_metrics = StoreMetrics::register(&mut registry);
        let admission_metrics = AdmissionMetrics::register(&mut registry);
        let restore_metrics = RestoreMetrics::register(&mut registry);
        let cert_metrics = CertMetrics::register(&mut registry);
        let server_metrics = server::ServerMetrics::register(&mut registry);
        let policy_metrics = PolicyMetrics::register(&mut registry);
        let instance = consumer_name(args.restore.consumer_name.as_deref());

        let client = kube_client(args.kube.kubeconfig.as_deref()).await?;
        let certificates = Certificates::build(
            &args.tls,
            client.as_ref(),
            &instance,
            &args.kube.field_manager,
            cert_metrics.clone(),
        )
        .await?;
        let tls = certs::ListenerTls::new(
            certificates.serving(),
            Certificates::client_auth(&args.tls),
            cert_metrics,
        )?;

        let keyring = match &args.store.encryption_key_file {
            Some(path) => {
                let keyring = Keyring::load(path)?;
                tracing::info!(
                    sealing_key = keyring.sealing_id(),
                    "saved statuses are encrypted at rest"
                );
                Some(Arc::new(keyring))
            }
            None => None,
        };
        let redis_options = args.store.redis_options()?;
        let store = Store::connect_with(
            &redis_options,
            &args.store.key_prefix,
            &args.store.cluster_name,
            store_metrics,
            keyring,
        )?
        .require_sealed(args.store.require_sealed)
        .keep_history(usize::try_from(args.record.history).unwrap_or(usize::MAX))
        .cap_queue(args.restore.restore_queue_max_length);
        store.warm_up(WARM_UP_BUDGET).await;
        let breaker = Arc::new(Breaker::new(
            BreakerSettings {
                failures: args.store.redis_breaker_failures,
                probe_every: args.store.redis_breaker_probe_interval,
                probe_budget: args.store.redis_worker_timeout,
            },
            BreakerMetrics::register(&mut registry),
        ));

        let global = global_policy(&args);
        // Jobs queued by versions that did not carry their policy restore with the global one.
        let policy = policy::resolve(&global.defaults, None, None, None)
            .policy
            .restore;

        let webhook_listener = server::bind(args.server.listen).await?;
        let admin_listener = server::bind(args.server.admin_listen).await?;

        let recorder = client.as_ref().map(|client| {
            let reporter = Reporter {
                controller: "restatus".into(),
                instance: Some(instance.clone()),
            };
            Recorder::new(client.clone(), reporter)
        });
        let reporter = InvalidReporter::new(recorder, policy_metrics.clone());
        let caches = match &client {
            Some(client) => {
                let (crds, crd_watch) = CrdCache::new(client.clone(), reporter.clone());
                let (namespaces, ns_watch) =
                    NamespaceCache::namespaces(client.clone(), reporter.clone());
                Caches {
                    crds,
                    namespaces,
                    watches: Some((crd_watch, ns_watch)),
                }
            }
            None => Caches {
                crds: CrdCache::empty(),
                namespaces: NamespaceCache::default(),
                watches: None,
            },
        };
        // Without a Kubernetes API there are no caches to wait for.
        let synced = Arc::new(AtomicBool::new(caches.watches.is_none()));
        let failed_open = Arc::new(crate::store::FailedOpen::default());
        let resync = client
            .as_ref()
            .filter(|_| !args.resync.resync_resources.is_empty())
            .map(|client| -> Result<_, StoreError> {
                // Only a replica that resyncs says when it last did.
                let resync_metrics = ResyncMetrics::register(&mut registry);
                // A connection of its own: a pass's pipelines never queue ahead of a review's
                // call within its budget.
                Ok(Resync::new(
                    client.clone(),
                    store.with_own_connection(&redis_options)?,
                    policy::Caches {
                        crds: caches.crds.clone(),
                        namespaces: caches.namespaces.clone(),
                    },
                    global.clone(),
                    resync::Settings {
                        types: args.resync.resync_resources.clone(),
                        interval: args.resync.resync_interval,
                        page_size: args.resync.resync_page_size,
                        rate: args.resync.resync_rate,
                        redis_timeout: args.store.redis_worker_timeout,
                        catch_up_hold: job_ttl(&args.restore),
                        skip_namespaces: args.resync.resync_skip_namespaces.clone(),
                        status_limits: status_limits(&args),
                    },
                    resync_metrics,
                    instance.clone(),
                    failed_open.clone(),
                ))
            })
            .transpose()?;
        let own_user = match &client {
            Some(client) => own_username(client).await,
            None => None,
        };
        let access = client.as_ref().map(|client| {
            AccessChecker::new(
                client.clone(),
                args.restore.access_check_timeout,
                args.restore.access_check_cache_ttl,
                policy_metrics.clone(),
            )
        });

        let admission = Arc::new(Admission::new(
            store.guarded_by(breaker.clone()),
            admission::Sources {
                caches: policy::Caches {
                    crds: caches.crds.clone(),
                    namespaces: caches.namespaces.clone(),
                },
                synced: synced.clone(),
                failed_open: failed_open.clone(),
                access,
                reporter,
                metrics: policy_metrics,
            },
            admission_metrics,
            admission::Settings {
                redis_timeout: args.store.redis_timeout,
                restore_deadline: args.restore.restore_deadline,
                job_ttl: job_ttl(&args.restore),
                global,
                own_user,
                limits: status_limits(&args),
                max_inflight_values: usize::try_from(args.record.max_inflight_status_values)
                    .unwrap_or(usize::MAX),
            },
        ));

        let store_for_probe = store.unguarded();
        let worker = client
            .filter(|_| args.restore.restore_worker)
            .map(|client| {
                Worker::new(
                    store,
                    client,
                    restore_metrics,
                    restore::Settings {
                        consumer: instance,
                        concurrency: args.restore.restore_concurrency as usize,
                        max_deliveries: args.restore.restore_max_deliveries,
                        claim_min_idle: args.restore.restore_claim_min_idle,
                        conflict_retries: args.restore.restore_conflict_retries,
                        redis_timeout: args.store.redis_worker_timeout,
                        policy,
                        field_manager: args.kube.field_manager.clone(),
                        consumer_idle_timeout: args.restore.restore_consumer_idle_timeout,
                    },
                )
            });

        let ready = Arc::new(Readiness::default());
        let client_ca = Some(tls.clone()).filter(|tls| tls.requires_client_certificates());
        let webhook = server::Webhook {
            tls: Arc::new(move || tls.config()),
            router: admission::router(admission, args.server.max_request_bytes),
            limits: listener_limits(&args.server),
            metrics: server_metrics,
        };
        let registry = Arc::new(registry);
        let status_line = (!args.log.status_log_interval.is_zero())
            .then(|| (registry.clone(), args.log.status_log_interval));
        Ok(Self {
            webhook_listener,
            admin_listener,
            webhook,
            client_ca,
            admin: server::admin_router(
                registry,
                vec![
                    ("the webhook listener is not serving", {
                        let ready = ready.clone();
                        Arc::new(move || ready.get())
                    }),
                    ("the CRD and namespace caches have not synced", {
                        let synced = synced.clone();
                        Arc::new(move || synced.load(Ordering::SeqCst))
                    }),
                ],
            ),
            ready,
            synced_tx: tokio::sync::watch::Sender::new(synced.load(Ordering::SeqCst)),
            synced,
            certificates,
            caches,
            worker,
            resync,
            breaker: (breaker, store_for_probe),
            grace: args.server.shutdown_grace,
            status_line,
        })
    }

    /// Runs every part until `shutdown` is cancelled, then lets them drain. The first part to
    /// fail (or to stop on its own) cancels `shutdown` for the others, and its error is the
    /// result.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), TaskError> {
        let mut tasks = Tasks::new(shutdown.clone());
        let grace = self.grace;
        tracing::info!(
            listen = %local_addr(&self.webhook_listener),
            admin_listen = %local_addr(&self.admin_listener),
            worker = self.worker.is_some(),
            "restatus serving"
        );

        let (crds, namespaces) = (self.caches.crds.clone(), self.caches.namespaces.clone());
        if let Some((crd_watch, ns_watch)) = self.caches.watches {
            tasks.spawn_until_shutdown("the CRD watch", |stop| crd_watch.run(stop));
            tasks.spawn_until_shutdown("the namespace watch", |stop| ns_watch.run(stop));
        }
        if let Some(worker) = self.worker {
            tasks.spawn_until_shutdown("the restore worker", |stop| worker.run(stop, grace));
        }
        let (breaker, store) = self.breaker;
        tasks.spawn_until_shutdown("the Redis breaker probe", |stop| async move {
            tokio::select! {
                () = breaker.probe(&store) => {},
                () = stop.cancelled() => {},
            }
        });
        if let Some(resync) = self.resync {
            let synced = self.synced_tx.subscribe();
            tasks.spawn_until_shutdown("resync", |stop| resync.run(synced, stop));
        }
        match self.certificates {
            Certificates::Files {
                source,
                reload_interval,
            } => tasks.spawn_until_shutdown("the certificate reloader", |stop| {
                source.watch(reload_interval, stop)
            }),
            Certificates::SelfManaged(manager) => {
                tasks.spawn_until_shutdown("the certificate manager", |stop| manager.run(stop));
            }
        }
        if let Some((registry, every)) = self.status_line {
            tasks.spawn_until_shutdown("the status line", |stop| {
                telemetry::status_lines(registry, every, stop)
            });
        }
        if let Some(tls) = self.client_ca {
            tasks.spawn_until_shutdown("the client CA reloader", |stop| tls.watch(stop));
        }
        let (listener, admin, stop) = (self.admin_listener, self.admin, shutdown.clone());
        tasks.spawn("the admin listener", async move {
            server::serve_admin(listener, admin, stop)
                .await
                .map_err(TaskError::Admin)
        });
        let (synced, synced_tx) = (self.synced, self.synced_tx);
        tasks.spawn_until_shutdown("the policy cache sync", |stop| async move {
            // Reviews are answered, and restatus is ready, only once the policy caches hold
            // the cluster's CRDs and namespaces: a review answered before would miss their
            // annotations (a namespace's `policy: disabled`, `exclude-fields`,
            // `restore-for`). Until then reviews are allowed unrecorded. This is the only
            // task that waits on the caches themselves: their readiness wakes one waiter.
            let both = async { tokio::join!(crds.synced(), namespaces.synced()) };
            tokio::pin!(both);
            let waiting = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = &mut both => break,
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(CACHE_SYNC_WARN_EVERY) => tracing::warn!(
                        waited_s = waiting.elapsed().as_secs(),
                        "not ready: the CRD and namespace caches have not synced (can restatus list and watch customresourcedefinitions and namespaces? see the watch errors above); reviews are allowed unrecorded until they do"
                    ),
                }
            }
            synced.store(true, Ordering::SeqCst);
            synced_tx.send_replace(true);
            tracing::info!("the CRD and namespace caches have synced");
            stop.cancelled().await;
        });
        let (listener, webhook, ready, stop) =
            (self.webhook_listener, self.webhook, self.ready, shutdown);
        tasks.spawn("the webhook listener", async move {
            server::serve_tls(listener, webhook, ready, stop, grace).await;
            Ok(())
        });

        let result = tasks.join().await;
        tracing::info!("restatus stopped");
        result
    }
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
}

/// The running parts: each a named task that returns `Result<(), TaskError>`.
struct Tasks {
    set: JoinSet<Result<(), TaskError>>,
    names: HashMap<Id, &'static str>,
    shutdown: CancellationToken,
}

impl Tasks {
    fn new(shutdown: CancellationToken) -> Self {
        Self {
            set: JoinSet::new(),
            names: HashMap::new(),
            shutdown,
        }
    }

    /// Runs `part` as the task `name`. A part that returns before shutdown was asked for has
    /// stopped on its own, which is a failure too: restatus would run without it.
    fn spawn(
        &mut self,
        name: &'static str,
        part: impl Future<Output = Result<(), TaskError>> + Send + 'static,
    ) {
        let shutdown = self.shutdown.clone();
        let handle = self.set.spawn(async move {
            match part.await {
                Ok(()) if !shutdown.is_cancelled() => Err(TaskError::Stopped { task: name }),
                result => result,
            }
        });
        self.names.insert(handle.id(), name);
    }

    /// Runs a part that cannot fail and stops when the shutdown token it is given is
    /// cancelled (a watch, a reloader, the worker) as the task `name`.
    fn spawn_until_shutdown<F>(
        &mut self,
        name: &'static str,
        part: impl FnOnce(CancellationToken) -> F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let part = part(self.shutdown.clone());
        self.spawn(name, async move {
            part.await;
            Ok(())
        });
    }

    /// Waits for every task. The first failure cancels the shutdown token (the others drain)
    /// and is returned; later ones are logged.
    async fn join(mut self) -> Result<(), TaskError> {
        let mut first = None;
        while let Some(joined) = self.set.join_next_with_id().await {
            let result = match joined {
                Ok((_, result)) => result,
                Err(source) => Err(TaskError::Panicked {
                    task: self.names.get(&source.id()).copied().unwrap_or("a task"),
                    source,
                }),
            };
            let Err(error) = result else { continue };
            if first.is_none() {
                tracing::error!(error = %error_chain(&error), "restatus is shutting down");
                self.shutdown.cancel();
                first = Some(error);
            } else {
                tracing::warn!(error = %error_chain(&error), "another task failed during the shutdown");
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// A Kubernetes client from `--kubeconfig`, or inferred (KUBECONFIG, ~/.kube/config,
/// in-cluster). Without an explicit kubeconfig, failing inference is not fatal: the webhook
/// still records, but no restores are applied here.
async fn kube_client(kubeconfig: Option<&Path>) -> Result<Option<Client>, BuildError> {
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
    let kubeconfig_err = |source| BuildError::Kubeconfig {
        path: path.display().to_string(),
        source,
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_err)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_err)?;
    Client::try_from(config).map(Some).map_err(BuildError::Kube)
}

/// This replica's consumer name in the restore queue: the flag, else `<pod or host>-<pid>`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_name_prefers_the_flag() {
        assert_eq!(consumer_name(Some("replica-a")), "replica-a");
        assert!(consumer_name(None).ends_with(&format!("-{}", std::process::id())));
        assert!(consumer_name(Some("")).ends_with(&format!("-{}", std::process::id())));
    }

    #[tokio::test]
    async fn the_first_failure_cancels_the_rest_and_is_returned() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        let stop = shutdown.clone();
        tasks.spawn("a long-running part", async move {
            stop.cancelled().await;
            Ok(())
        });
        tasks.spawn("a failing part", async {
            Err(TaskError::Admin(std::io::Error::other("boom")))
        });
        let error = tasks.join().await.unwrap_err();
        assert!(matches!(error, TaskError::Admin(_)), "{error:?}");
        assert_eq!(error_chain(&error), "the admin listener failed: boom");
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_part_that_stops_on_its_own_or_panics_is_a_failure() {
        let mut tasks = Tasks::new(CancellationToken::new());
        tasks.spawn("the quitter", async { Ok(()) });
        let error = tasks.join().await.unwrap_err();
        assert_eq!(error.to_string(), "the quitter stopped on its own");

        let mut tasks = Tasks::new(CancellationToken::new());
        tasks.spawn("the panicker", async { panic!("on purpose") });
        let error = tasks.join().await.unwrap_err();
        assert!(
            matches!(
                error,
                TaskError::Panicked {
                    task: "the panicker",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn parts_that_end_at_shutdown_are_a_clean_stop() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        for name in ["one", "two"] {
            let stop = shutdown.clone();
            tasks.spawn(name, async move {
                stop.cancelled().await;
                Ok(())
            });
        }
        shutdown.cancel();
        assert!(tasks.join().await.is_ok());
    }
}
