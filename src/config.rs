//! Command line and environment configuration.
//!
//! Every `serve` flag is also an environment variable `RESTATUS_<FLAG>` (dashes become
//! underscores), so the Helm chart and local scripts configure the same way.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    duration,
    policy::{Enablement, FieldPatterns, RestoreFor, RestoreMode, TypePolicy},
    resync::TrackedType,
    telemetry::LogFormat,
};

#[derive(Parser, Debug)]
#[command(
    name = "restatus",
    version,
    about = "Records the .status of Kubernetes objects in Redis and restores it when an object is recreated"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the admission webhook, the restore worker and the admin server.
    Serve(Box<ServeArgs>),
    /// Write a CA and a serving certificate (ca.crt, tls.crt, tls.key) for local use.
    Certs(CertsArgs),
    /// Seal every record with the keyring's first key: records written before encryption was
    /// turned on, and records sealed with an older key. Run it before --require-sealed, and
    /// after a key rotation to retire the old key.
    #[command(
        after_help = "Example:\n  restatus reseal --redis-url redis://redis:6379 --encryption-key-file /etc/restatus/keyring --dry-run"
    )]
    Reseal(Box<ResealArgs>),
}

#[derive(Args, Debug, Clone)]
pub struct ResealArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Only count what would be sealed; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Seal the records stored in clear too: those written before encryption was turned on.
    /// Anyone who can write Redis may have planted one, so sealing them makes them trusted;
    /// use it once, when turning encryption on, and look at what is there first.
    #[arg(long)]
    pub seal_plaintext: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub record: RecordArgs,
    #[command(flatten)]
    pub restore: RestoreArgs,
    #[command(flatten)]
    pub resync: ResyncArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Resync")]
pub struct ResyncArgs {
    /// The tracked types to resync, comma-separated `resource.group` (`resource` for the core
    /// group), e.g. `services,kubernetesclusters.infra.example.com`: the types the webhook
    /// configuration sends. Empty turns resync off.
    #[arg(long, env = "RESTATUS_RESYNC_RESOURCES", value_delimiter = ',')]
    pub resync_resources: Vec<TrackedType>,

    /// Time between resync passes; a pass also runs at start and as soon as Redis answers
    /// again after reviews failed open for want of it.
    #[arg(long, env = "RESTATUS_RESYNC_INTERVAL", default_value = "10m", value_parser = parse_interval)]
    pub resync_interval: Duration,

    /// Objects per list request of a resync pass: what a pass holds in memory at once.
    #[arg(long, env = "RESTATUS_RESYNC_PAGE_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub resync_page_size: u32,

    /// Namespaces resync leaves alone, comma-separated: those the webhook is not called for
    /// (the chart passes its namespaceSelector's). Namespaces labelled restatus.io/ignore=true
    /// are left alone too.
    #[arg(long, env = "RESTATUS_RESYNC_SKIP_NAMESPACES", value_delimiter = ',')]
    pub resync_skip_namespaces: Vec<String>,

    /// Objects a resync pass goes through per second at most, so a big cluster is not
    /// hammered.
    #[arg(long, env = "RESTATUS_RESYNC_RATE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub resync_rate: u32,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Listeners")]
pub struct ServerArgs {
    /// Address of the HTTPS webhook listener (POST /mutate).
    #[arg(long, env = "RESTATUS_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP admin listener (/livez, /readyz, /metrics).
    #[arg(long, env = "RESTATUS_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,

    /// Largest AdmissionReview body accepted, in bytes (suffixes Ki and Mi allowed).
    /// Larger bodies are answered 413. The API server's largest review carries an object
    /// twice (an update's object and oldObject), and etcd keeps objects under 1.5 MiB by
    /// default: raise this to twice etcd's --max-request-bytes plus 1 MiB if it is raised.
    #[arg(long, env = "RESTATUS_MAX_REQUEST_BYTES", default_value = "4Mi", value_parser = parse_size)]
    pub max_request_bytes: usize,

    /// How long in-flight reviews and restores may take to finish after SIGTERM.
    #[arg(long, env = "RESTATUS_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How long a new webhook connection may take to finish its TLS handshake, and an
    /// HTTP/1.1 request to send its headers (from the connection's start or the end of its
    /// previous request). Slower clients are disconnected.
    #[arg(long, env = "RESTATUS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_interval)]
    pub header_read_timeout: Duration,

    /// How long a whole request body may take to arrive. Slower requests are answered 408.
    #[arg(long, env = "RESTATUS_BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_interval)]
    pub body_read_timeout: Duration,

    /// How long a webhook connection may stay open without a request in flight before it is
    /// closed (HTTP/2 with GOAWAY).
    #[arg(long, env = "RESTATUS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_interval)]
    pub idle_timeout: Duration,

    /// How often an HTTP/2 connection is pinged; one whose peer does not answer within the
    /// same time is closed.
    #[arg(long, env = "RESTATUS_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_interval)]
    pub http2_keepalive_interval: Duration,

    /// Webhook connections open at once, TLS handshakes included. At the cap a new
    /// connection evicts the oldest one that has not been answered; only when every one has
    /// been answered is it closed as soon as it is accepted.
    #[arg(long, env = "RESTATUS_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Requests in flight at once on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "RESTATUS_MAX_CONCURRENT_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Request body bytes held at once across all webhook connections (suffixes Ki and Mi
    /// allowed); at least --max-request-bytes. A request that cannot get room for its body
    /// soon is answered 503.
    #[arg(long, env = "RESTATUS_MAX_INFLIGHT_BODY_BYTES", default_value = "32Mi", value_parser = parse_size)]
    pub max_inflight_body_bytes: usize,
}

/// The environment variable the Redis password may come from (never a flag).
pub const REDIS_PASSWORD_ENV: &str = "RESTATUS_REDIS_PASSWORD";

/// Why the Redis connection settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RedisArgsError {
    #[error("could not read --redis-password-file {path}")]
    PasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the Redis password is given twice: in --redis-password-file and in {REDIS_PASSWORD_ENV}"
    )]
    PasswordTwice,
    #[error("could not read --redis-sentinel-password-file {path}")]
    SentinelPasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The first line of a password file.
fn read_password(path: &std::path::Path) -> Result<String, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// A comma-separated list, without empty items.
fn list(items: &[String]) -> Vec<String> {
    items
        .iter()
        .flat_map(|item| item.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

impl StoreArgs {
    /// How to reach Redis, with the password from its file or the environment.
    pub fn redis_options(&self) -> Result<crate::store::RedisOptions, RedisArgsError> {
        let from_env = std::env::var(REDIS_PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty());
        let from_file = match &self.redis_password_file {
            Some(path) => {
                Some(
                    read_password(path).map_err(|source| RedisArgsError::PasswordFile {
                        path: path.display().to_string(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let sentinel_password = match &self.redis_sentinel_password_file {
            Some(path) => Some(read_password(path).map_err(|source| {
                RedisArgsError::SentinelPasswordFile {
                    path: path.display().to_string(),
                    source,
                }
            })?),
            None => None,
        };
        let password = match (from_file, from_env) {
            (Some(_), Some(_)) => return Err(RedisArgsError::PasswordTwice),
            (file, env) => file.or(env),
        };
        Ok(crate::store::RedisOptions {
            url: self.redis_url.clone(),
            ca_file: self.redis_ca_file.clone(),
            client_cert_file: self.redis_client_cert_file.clone(),
            client_key_file: self.redis_client_key_file.clone(),
            username: self.redis_username.clone(),
            password,
            keepalive: self.redis_keepalive,
            topology: self.redis_topology,
            sentinels: list(&self.redis_sentinels),
            sentinel_master: self.redis_sentinel_master.clone(),
            sentinel_password,
            cluster_nodes: list(&self.redis_cluster_nodes),
        })
    }
}

/// Listener flags that do not fit together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServerArgsError {
    #[error(
        "--max-inflight-body-bytes ({total}) is below --max-request-bytes ({one}): a review of the largest accepted size could never be read"
    )]
    InflightBelowRequest { total: usize, one: usize },
    #[error("--max-inflight-body-bytes ({0}) is out of range")]
    InflightTooLarge(usize),
}

impl ServerArgs {
    /// The largest --max-inflight-body-bytes: what a semaphore can count.
    pub const MAX_INFLIGHT_BODY_BYTES: usize = tokio::sync::Semaphore::MAX_PERMITS;

    /// Checks what single flags cannot: the total body budget holds at least one request of
    /// the largest accepted size.
    pub fn check(&self) -> Result<(), ServerArgsError> {
        if self.max_inflight_body_bytes < self.max_request_bytes {
            return Err(ServerArgsError::InflightBelowRequest {
                total: self.max_inflight_body_bytes,
                one: self.max_request_bytes,
            });
        }
        if self.max_inflight_body_bytes > Self::MAX_INFLIGHT_BODY_BYTES {
            return Err(ServerArgsError::InflightTooLarge(
                self.max_inflight_body_bytes,
            ));
        }
        Ok(())
    }
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// Where the serving certificate comes from: `files` (--tls-cert-file/--tls-key-file,
    /// e.g. from cert-manager) or `self-managed` (a CA shared through --ca-secret, the
    /// webhook's caBundle kept in step).
    #[arg(long, env = "RESTATUS_CERT_MODE", value_enum, default_value_t = CertMode::Files)]
    pub cert_mode: CertMode,

    /// PEM certificate chain served by the webhook listener (files mode).
    #[arg(long, env = "RESTATUS_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the serving certificate (files mode).
    #[arg(long, env = "RESTATUS_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// How often the certificate files are re-read (the serving pair in files mode, and
    /// --client-ca-file); a changed file is used without a restart.
    #[arg(long, env = "RESTATUS_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_interval)]
    pub tls_reload_interval: Duration,

    /// PEM CA certificates a webhook caller's client certificate must chain to. When set, a
    /// connection without such a certificate is refused during the TLS handshake; give the
    /// CA of the certificate kube-apiserver presents (its AdmissionConfiguration). Re-read
    /// every --tls-reload-interval.
    #[arg(long, env = "RESTATUS_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// Names a caller's client certificate must carry, comma-separated (requires
    /// --client-ca-file): a certificate that chains to the client CA is accepted only if its
    /// subject common name, or one of its subjectAltNames (DNS name, URI, email address), is
    /// one of them. Like kube-apiserver's --requestheader-allowed-names; set it whenever the
    /// client CA also signs certificates of others (a cluster CA signs every kubelet's).
    /// Empty: any certificate from the client CA.
    #[arg(
        long,
        env = "RESTATUS_CLIENT_ALLOWED_NAMES",
        value_delimiter = ',',
        requires = "client_ca_file"
    )]
    pub client_allowed_names: Vec<String>,

    /// The namespace restatus runs in, where its CA Secret is (self-managed mode; default:
    /// the service account's namespace when in a cluster).
    #[arg(long, env = "RESTATUS_NAMESPACE")]
    pub namespace: Option<String>,

    /// The Secret holding the CA every replica shares (self-managed mode).
    #[arg(long, env = "RESTATUS_CA_SECRET", default_value = "restatus-ca")]
    pub ca_secret: String,

    /// restatus's own MutatingWebhookConfiguration, whose caBundle it keeps equal to its CA
    /// (self-managed mode).
    #[arg(
        long,
        env = "RESTATUS_WEBHOOK_CONFIGURATION",
        default_value = "restatus"
    )]
    pub webhook_configuration: String,

    /// DNS names and IP addresses of the serving certificate, comma-separated
    /// (self-managed mode), e.g. `restatus.restatus.svc,restatus.restatus.svc.cluster.local`.
    #[arg(long, env = "RESTATUS_CERT_HOSTS", value_delimiter = ',')]
    pub cert_hosts: Vec<String>,

    /// Validity of the self-managed CA; it is rotated with a third of it left.
    #[arg(long, env = "RESTATUS_CA_VALIDITY", default_value = "1825d", value_parser = parse_interval)]
    pub ca_validity: Duration,

    /// Validity of a serving certificate; it is renewed with a third of it left.
    #[arg(long, env = "RESTATUS_CERT_VALIDITY", default_value = "30d", value_parser = parse_interval)]
    pub cert_validity: Duration,

    /// How often the CA Secret, the caBundle and the expiries are checked (self-managed
    /// mode); after a CA rotation, replicas wait this long before serving from the new CA.
    #[arg(long, env = "RESTATUS_CERT_CHECK_INTERVAL", default_value = "1m", value_parser = parse_interval)]
    pub cert_check_interval: Duration,
}

/// Self-managed certificate flags that do not fit together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsArgsError {
    #[error(
        "--cert-mode self-managed needs --cert-hosts, the names the API server calls the webhook by"
    )]
    NoCertHosts,
    #[error("--cert-mode self-managed needs --cert-validity shorter than --ca-validity")]
    CertOutlivesCa,
    #[error(
        "--cert-mode self-managed needs --cert-check-interval under a third of --cert-validity, or renewals come too late"
    )]
    CheckTooRare,
    #[error(
        "--client-allowed-names has an empty name (a comma too many?); no certificate carries it"
    )]
    EmptyAllowedName,
    #[error(
        "--client-allowed-names has a name with spaces around it ({0:?}); names are compared exactly"
    )]
    SpacedAllowedName(String),
}

impl TlsArgs {
    /// Checks what single flags cannot: allowed client names that can match, and for `--cert-mode
    /// self-managed` names to issue for, a serving certificate that does not outlive its CA,
    /// and checks often enough to renew it in time.
    pub fn check(&self) -> Result<(), TlsArgsError> {
        for name in &self.client_allowed_names {
            if name.trim().is_empty() {
                return Err(TlsArgsError::EmptyAllowedName);
            }
            if name.trim() != name {
                return Err(TlsArgsError::SpacedAllowedName(name.clone()));
            }
        }
        if self.cert_mode != CertMode::SelfManaged {
            return Ok(());
        }
        if self.cert_hosts.is_empty() {
            return Err(TlsArgsError::NoCertHosts);
        }
        if self.cert_validity >= self.ca_validity {
            return Err(TlsArgsError::CertOutlivesCa);
        }
        if self
            .cert_check_interval
            .checked_mul(3)
            .is_none_or(|thrice| thrice > self.cert_validity)
        {
            return Err(TlsArgsError::CheckTooRare);
        }
        Ok(())
    }
}

/// Where the serving certificate comes from.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertMode {
    Files,
    SelfManaged,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Store")]
pub struct StoreArgs {
    /// Redis URL (redis://[user:password@]host:port[/db]).
    #[arg(
        long,
        env = "RESTATUS_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// PEM CA certificates Redis's TLS certificate must chain to (with a rediss:// URL);
    /// without it, the system's roots.
    #[arg(long, env = "RESTATUS_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate for Redis's TLS client authentication (with
    /// --redis-client-key-file).
    #[arg(
        long,
        env = "RESTATUS_REDIS_CLIENT_CERT_FILE",
        requires = "redis_client_key_file"
    )]
    pub redis_client_cert_file: Option<PathBuf>,

    /// PEM key of --redis-client-cert-file.
    #[arg(
        long,
        env = "RESTATUS_REDIS_CLIENT_KEY_FILE",
        requires = "redis_client_cert_file"
    )]
    pub redis_client_key_file: Option<PathBuf>,

    /// Redis ACL user. The password comes from --redis-password-file or the environment
    /// variable RESTATUS_REDIS_PASSWORD (a Secret), never from the command line.
    #[arg(long, env = "RESTATUS_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// A file holding the Redis password (its first line), e.g. a mounted Secret.
    #[arg(long, env = "RESTATUS_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// Idle time before TCP keepalive probes start on Redis connections; a Redis that does not
    /// answer them, or does not acknowledge data within three times this, is taken for gone
    /// and connected to again (a network path that drops packets, not only one that resets).
    #[arg(long, env = "RESTATUS_REDIS_KEEPALIVE", default_value = "10s", value_parser = parse_interval)]
    pub redis_keepalive: Duration,

    /// How Redis is deployed: standalone (one server, --redis-url), sentinel (a master
    /// found through --redis-sentinels) or cluster (a Redis Cluster, seeded by
    /// --redis-cluster-nodes or --redis-url).
    #[arg(long, env = "RESTATUS_REDIS_TOPOLOGY", default_value = "standalone", value_parser = clap::value_parser!(crate::store::Topology))]
    pub redis_topology: crate::store::Topology,

    /// The sentinels, host:port[,host:port...] (with --redis-topology sentinel). They are
    /// reached over TLS when --redis-url is rediss://, with the same CA and client
    /// certificate.
    #[arg(long, env = "RESTATUS_REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,

    /// The name the sentinels know the master by (with --redis-topology sentinel).
    #[arg(long, env = "RESTATUS_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// A file holding the sentinels' own password (their requirepass), if they have one.
    #[arg(long, env = "RESTATUS_REDIS_SENTINEL_PASSWORD_FILE")]
    pub redis_sentinel_password_file: Option<PathBuf>,

    /// Seed nodes of a Redis Cluster, url[,url...] (with --redis-topology cluster); without
    /// them, --redis-url is the one seed. Each uses --redis-url's scheme and the same TLS and
    /// ACL settings.
    #[arg(
        long,
        env = "RESTATUS_REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_cluster_nodes: Vec<String>,

    /// Prefix of every key restatus writes.
    #[arg(long, env = "RESTATUS_KEY_PREFIX", default_value = "restatus", value_parser = parse_key_prefix)]
    pub key_prefix: String,

    /// Name of this cluster in the store; clusters sharing one Redis need distinct names, and a
    /// new cluster restores an old one's records by taking its name.
    #[arg(long, env = "RESTATUS_CLUSTER_NAME", default_value = "default", value_parser = parse_cluster_name)]
    pub cluster_name: String,

    /// Time budget of each Redis call made while answering an admission review.
    #[arg(long, env = "RESTATUS_REDIS_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// Redis calls of the admission path that run out of --redis-timeout in a row before the
    /// circuit breaker opens (a refused connection fails at once and does not count): reviews then stop calling Redis and are
    /// allowed unrecorded at once, until Redis answers a probe. 0 turns the breaker off.
    #[arg(long, env = "RESTATUS_REDIS_BREAKER_FAILURES", default_value_t = crate::store::DEFAULT_FAILURES)]
    pub redis_breaker_failures: u32,

    /// Time between probes of Redis (PING, within --redis-worker-timeout) while the circuit breaker
    /// is open; the first answer closes it.
    #[arg(long, env = "RESTATUS_REDIS_BREAKER_PROBE_INTERVAL", default_value = "250ms", value_parser = parse_interval)]
    pub redis_breaker_probe_interval: Duration,

    /// A keyring file that turns on encryption at rest of saved statuses (AES-256-GCM): one
    /// key per line, `<id>:<base64 of 32 bytes>`; the first key seals, every key opens. Put
    /// a new key first to rotate; keep old keys until no record needs them.
    #[arg(long, env = "RESTATUS_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,

    /// Time budget of each Redis call made by the restore worker.
    #[arg(long, env = "RESTATUS_REDIS_WORKER_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_worker_timeout: Duration,

    /// Refuse a stored status that is not sealed, so that no one who can write Redis plants a
    /// status: its object is not restored, and the refusal is counted. Needs
    /// --encryption-key-file; turn it on once `restatus reseal` has sealed every record.
    #[arg(long, env = "RESTATUS_REQUIRE_SEALED", default_value_t = false, action = clap::ArgAction::Set, requires = "encryption_key_file")]
    pub require_sealed: bool,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Recording")]
pub struct RecordArgs {
    /// How long the record of a deleted object is kept (e.g. 30d, 720h).
    #[arg(long, env = "RESTATUS_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,

    /// Values a status may hold to be recorded: scalars, list items, object keys, and the
    /// lists and objects themselves, each counted once. A larger status is not parsed,
    /// recorded or merged: the write is allowed with a warning, and counted. Bounds the memory
    /// one review takes.
    #[arg(long, env = "RESTATUS_MAX_STATUS_VALUES", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_status_values: u64,

    /// Status values parsed at once across all reviews (at least --max-status-values): bounds
    /// the memory of reviews in flight, about 60 bytes per value. A review that finds no room
    /// within 200 ms is allowed unrecorded, with a warning, and counted (outcome `busy`).
    #[arg(long, env = "RESTATUS_MAX_INFLIGHT_STATUS_VALUES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_inflight_status_values: u64,

    /// How many of an object's last statuses are kept beside its record, newest first, so
    /// that a status overwritten by a bad write can be brought back (0 keeps none).
    #[arg(long, env = "RESTATUS_HISTORY", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub history: u64,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Restore")]
pub struct RestoreArgs {
    /// Run the restore worker in this process (`--restore-worker=false` makes a webhook-only
    /// replica; restores then need at least one other replica with a worker).
    #[arg(long, env = "RESTATUS_RESTORE_WORKER", default_value_t = true, action = clap::ArgAction::Set)]
    pub restore_worker: bool,

    /// fill: restore only fields absent from the live status; replace: write the saved status as it was.
    #[arg(long, env = "RESTATUS_RESTORE_MODE", value_enum, default_value_t = RestoreMode::Fill)]
    pub restore_mode: RestoreMode,

    /// JSON pointers into .status to restore (comma-separated, `*` matches any key or index).
    /// Empty means the whole status.
    #[arg(long, env = "RESTATUS_RESTORE_FIELDS", default_value = "", value_parser = parse_patterns)]
    pub restore_fields: FieldPatterns,

    /// JSON pointers into .status never restored (comma-separated, `*` matches any key or
    /// index; an empty string excludes nothing).
    #[arg(
        long,
        env = "RESTATUS_RESTORE_EXCLUDE_FIELDS",
        value_parser = parse_patterns,
        default_value = "/observedGeneration,/conditions/*/observedGeneration"
    )]
    pub restore_exclude_fields: FieldPatterns,

    /// Who gets a saved status back when they create an object that has a record:
    /// `status-writers` (only a creator allowed to update `<resource>/status` of the object,
    /// asked with a SubjectAccessReview) or `creators` (anyone who may create it). Namespace
    /// and CRD annotations (`restatus.io/restore-for`) refine it.
    #[arg(long, env = "RESTATUS_RESTORE_FOR", value_enum, default_value_t = RestoreFor::StatusWriters)]
    pub restore_for: RestoreFor,

    /// Whether tracked types are recorded and restored unless an annotation says otherwise.
    #[arg(long, env = "RESTATUS_DEFAULT_POLICY", value_enum, default_value_t = Enablement::Enabled)]
    pub default_policy: Enablement,

    /// Types opted in or out, overriding --default-policy: comma-separated
    /// `resource.group=enabled|disabled` (`resource=...` for the core group), e.g.
    /// `services=disabled,kubernetesclusters.infra.example.com=enabled`.
    #[arg(long, env = "RESTATUS_RESOURCE_POLICY", value_delimiter = ',')]
    pub resource_policy: Vec<TypePolicy>,

    /// Time budget of the check that a creator may write an object's status; without an
    /// answer in time, nothing is restored.
    #[arg(long, env = "RESTATUS_ACCESS_CHECK_TIMEOUT", default_value = "500ms", value_parser = parse_interval)]
    pub access_check_timeout: Duration,

    /// How long an answer to that check is reused.
    #[arg(long, env = "RESTATUS_ACCESS_CHECK_CACHE_TTL", default_value = "10s", value_parser = parse_interval)]
    pub access_check_cache_ttl: Duration,

    /// How long a restore job waits for its CREATE to land before it is dropped.
    #[arg(long, env = "RESTATUS_RESTORE_DEADLINE", default_value = "60s", value_parser = parse_duration)]
    pub restore_deadline: Duration,

    /// Deliveries after which a failing restore job moves to the dead-letter stream.
    #[arg(long, env = "RESTATUS_RESTORE_MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub restore_max_deliveries: u64,

    /// How long a job may sit unacknowledged with a consumer before another replica reclaims it.
    #[arg(long, env = "RESTATUS_RESTORE_CLAIM_MIN_IDLE", default_value = "30s", value_parser = parse_duration)]
    pub restore_claim_min_idle: Duration,

    /// Restore jobs the queue holds at most (waiting or in progress; 0: no cap). A CREATE
    /// whose job the full queue refuses is allowed unmarked and counted
    /// (`restatus_restore_jobs_refused_total`); resync catches its object up where policy
    /// allows restores to an unknown creator.
    #[arg(long, env = "RESTATUS_RESTORE_QUEUE_MAX_LENGTH", default_value_t = crate::store::DEFAULT_QUEUE_CAP)]
    pub restore_queue_max_length: u64,

    /// Consumers of the restore queue's group idle this long, and without jobs, are removed:
    /// those of replicas that were killed and never left (their jobs are reclaimed first).
    #[arg(long, env = "RESTATUS_RESTORE_CONSUMER_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub restore_consumer_idle_timeout: Duration,

    /// Restore jobs processed at once by this replica.
    #[arg(long, env = "RESTATUS_RESTORE_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub restore_concurrency: u32,

    /// Retries of a status patch that meets a conflict (HTTP 409) before the job is retried later.
    #[arg(long, env = "RESTATUS_RESTORE_CONFLICT_RETRIES", default_value_t = 5)]
    pub restore_conflict_retries: u32,

    /// Name of this replica's consumer in the restore queue (default: POD_NAME, else the
    /// hostname, followed by `-<process id>`). A replica removes its consumer at shutdown
    /// when it holds no jobs.
    #[arg(long, env = "RESTATUS_CONSUMER_NAME")]
    pub consumer_name: Option<String>,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Kubernetes")]
pub struct KubeArgs {
    /// Kubeconfig to use; otherwise KUBECONFIG, ~/.kube/config, then the in-cluster service account.
    #[arg(long, env = "RESTATUS_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Field manager restatus uses for its writes (restatus tells its own writes by the user
    /// it runs as, not by this name).
    #[arg(long, env = "RESTATUS_FIELD_MANAGER", default_value = "restatus")]
    pub field_manager: String,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "RESTATUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax (e.g. `info`, `restatus=debug,info`).
    #[arg(long, env = "RESTATUS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Interval of the status line: reviews received, records written and restores done
    /// since the line before, logged whether or not restatus is ready. `0` turns it off.
    #[arg(long, env = "RESTATUS_STATUS_LOG_INTERVAL", default_value = "5m", value_parser = parse_optional_duration)]
    pub status_log_interval: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into (created if missing).
    #[arg(long)]
    pub out: PathBuf,

    /// DNS names or IP addresses the serving certificate is valid for.
    #[arg(long = "host", required = true, num_args = 1..)]
    pub hosts: Vec<String>,

    /// Validity of the generated certificates.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub validity: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s).map_err(|e| e.to_string())
}

/// A duration where `0` (with or without a unit) means off.
fn parse_optional_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// A duration that must not be zero: an interval or a validity.
fn parse_interval(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be longer than zero")),
        d => Ok(d),
    }
}

fn parse_patterns(s: &str) -> Result<FieldPatterns, String> {
    s.parse::<FieldPatterns>().map_err(|e| e.to_string())
}

/// Parses a byte size: a plain number, or a number with `Ki` or `Mi`.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (number, multiplier) = if let Some(n) = s.strip_suffix("Mi") {
        (n, 1024 * 1024)
    } else if let Some(n) = s.strip_suffix("Ki") {
        (n, 1024)
    } else {
        (s, 1)
    };
    let n: usize = number
        .parse()
        .map_err(|_| format!("size {s:?} is not a number of bytes (suffixes Ki and Mi allowed)"))?;
    n.checked_mul(multiplier)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("size {s:?} is out of range"))
}

/// Key prefixes must not contain braces (they would break the Redis Cluster hash tag) or spaces.
fn parse_key_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 {
        return Err("key prefix must be 1 to 64 characters".into());
    }
    if s.chars().any(|c| c == '{' || c == '}' || c.is_whitespace()) {
        return Err(format!(
            "key prefix {s:?} must not contain braces or whitespace"
        ));
    }
    Ok(s.to_owned())
}

/// Cluster names are DNS labels: lowercase letters, digits and '-', 1 to 63 characters.
fn parse_cluster_name(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "cluster name {s:?} must be a DNS label (lowercase letters, digits and '-', 1-63 characters)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The arguments of `restatus serve` with `flags`, or clap's message.
    fn serve(flags: &[&str]) -> Result<ServeArgs, String> {
        let cli = Cli::try_parse_from(["restatus", "serve"].iter().chain(flags))
            .map_err(|e| e.to_string())?;
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        Ok(*args)
    }

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_status_line_runs_every_five_minutes_unless_turned_off() {
        let every = |flags: &[&str]| serve(flags).unwrap().log.status_log_interval;
        assert_eq!(every(&[]), Duration::from_secs(300));
        assert_eq!(
            every(&["--status-log-interval", "30s"]),
            Duration::from_secs(30)
        );
        assert_eq!(every(&["--status-log-interval", "0"]), Duration::ZERO);
        assert_eq!(every(&["--status-log-interval", "0s"]), Duration::ZERO);
        assert!(serve(&["--status-log-interval", "soon"]).is_err());
    }

    #[test]
    fn listeners_take_ipv6_and_dual_stack_addresses() {
        let args = serve(&["--listen", "[::]:10250", "--admin-listen", "[::1]:8080"]).unwrap();
        assert_eq!(args.server.listen.to_string(), "[::]:10250");
        assert_eq!(args.server.admin_listen.to_string(), "[::1]:8080");
        assert!(
            serve(&["--listen", ":::8443"]).is_err(),
            "an IPv6 address needs brackets"
        );
    }

    #[test]
    fn serve_defaults_match_the_documented_interface() {
        let args = serve(&[]).unwrap();
        assert_eq!(args.server.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(args.server.admin_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(args.store.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(args.store.redis_timeout, Duration::from_millis(100));
        assert_eq!(args.server.max_request_bytes, 4 * 1024 * 1024);
        assert_eq!(args.record.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(args.restore.restore_deadline, Duration::from_secs(60));
        assert_eq!(args.restore.restore_queue_max_length, 100_000);
        assert_eq!(
            args.restore.restore_consumer_idle_timeout,
            Duration::from_secs(600)
        );
        assert_eq!(args.restore.restore_mode, RestoreMode::Fill);
        assert_eq!(args.restore.restore_exclude_fields.0.len(), 2);
        assert!(args.restore.restore_fields.0.is_empty());
    }

    #[test]
    fn topology_flags_reach_the_redis_options() {
        let args = serve(&[]).unwrap();
        assert_eq!(
            args.store.redis_topology,
            crate::store::Topology::Standalone
        );
        let args = serve(&[
            "--redis-topology",
            "sentinel",
            "--redis-sentinels",
            "10.0.0.1:26379,10.0.0.2:26379",
            "--redis-sentinel-master",
            "mymaster",
        ])
        .unwrap();
        let options = args.store.redis_options().unwrap();
        assert_eq!(options.topology, crate::store::Topology::Sentinel);
        assert_eq!(options.sentinels, ["10.0.0.1:26379", "10.0.0.2:26379"]);
        assert_eq!(options.sentinel_master.as_deref(), Some("mymaster"));
        let args = serve(&[
            "--redis-topology=cluster",
            "--redis-cluster-nodes=redis://a:7000,redis://b:7001",
        ])
        .unwrap();
        let options = args.store.redis_options().unwrap();
        assert_eq!(options.cluster_nodes, ["redis://a:7000", "redis://b:7001"]);
        let refused = serve(&["--redis-topology", "ring"]).unwrap_err();
        assert!(
            refused.contains("standalone, sentinel or cluster"),
            "{refused}"
        );
    }

    #[test]
    fn sizes_and_names_are_validated() {
        assert_eq!(parse_size("8Mi"), Ok(8 * 1024 * 1024));
        assert_eq!(parse_size("512Ki"), Ok(512 * 1024));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_cluster_name("prod-eu-1").is_ok());
        assert!(parse_cluster_name("Prod").is_err());
        assert!(parse_cluster_name("-a").is_err());
        assert!(parse_key_prefix("restatus").is_ok());
        assert!(parse_key_prefix("a{b").is_err());
    }

    #[test]
    fn the_exclude_list_can_be_emptied() {
        let args = serve(&["--restore-exclude-fields", ""]).unwrap();
        assert!(args.restore.restore_exclude_fields.0.is_empty());
        assert!(
            serve(&["--restore-fields", "status"]).is_err(),
            "a pattern must be a pointer"
        );
    }

    #[test]
    fn self_managed_flags_and_their_defaults() {
        let args = serve(&[
            "--cert-mode",
            "self-managed",
            "--cert-hosts",
            "restatus.ns.svc,127.0.0.1",
        ])
        .unwrap();
        assert_eq!(args.tls.cert_mode, CertMode::SelfManaged);
        assert_eq!(args.tls.cert_hosts, ["restatus.ns.svc", "127.0.0.1"]);
        assert_eq!(args.tls.ca_secret, "restatus-ca");
        assert_eq!(args.tls.ca_validity, Duration::from_secs(1825 * 86_400));
        assert_eq!(args.tls.cert_validity, Duration::from_secs(30 * 86_400));
        assert_eq!(args.tls.cert_check_interval, Duration::from_secs(60));
        assert!(
            serve(&["--cert-check-interval", "0s"]).is_err(),
            "a zero interval is refused"
        );
    }

    #[test]
    fn policy_flags_and_their_defaults() {
        let args = serve(&[]).unwrap();
        assert_eq!(args.restore.restore_for, RestoreFor::StatusWriters);
        assert_eq!(args.restore.default_policy, Enablement::Enabled);
        assert!(args.restore.resource_policy.is_empty());
        let args = serve(&[
            "--restore-for",
            "creators",
            "--default-policy",
            "disabled",
            "--resource-policy",
            "services=enabled,kubernetesclusters.infra.example.com=disabled",
        ])
        .unwrap();
        assert_eq!(args.restore.restore_for, RestoreFor::Creators);
        assert_eq!(args.restore.resource_policy.len(), 2);
        assert_eq!(args.restore.resource_policy[1].group, "infra.example.com");
        assert!(serve(&["--resource-policy", "services=on"]).is_err());
    }

    #[test]
    fn self_managed_flags_must_fit_together() {
        let self_managed = |flags: &[&str]| {
            let mut all = vec!["--cert-mode", "self-managed", "--cert-hosts", "r.ns.svc"];
            all.extend_from_slice(flags);
            serve(&all).unwrap().tls.check()
        };
        assert_eq!(self_managed(&[]), Ok(()));
        assert_eq!(
            self_managed(&["--cert-validity", "10m", "--cert-check-interval", "200s"]),
            Ok(())
        );
        assert_eq!(
            self_managed(&["--cert-validity", "10m", "--cert-check-interval", "201s"]),
            Err(TlsArgsError::CheckTooRare)
        );
        assert_eq!(
            self_managed(&["--ca-validity", "30d"]),
            Err(TlsArgsError::CertOutlivesCa)
        );
        assert_eq!(
            serve(&["--cert-mode", "self-managed"]).unwrap().tls.check(),
            Err(TlsArgsError::NoCertHosts)
        );
        // Files mode has none of these.
        assert_eq!(serve(&["--ca-validity", "1d"]).unwrap().tls.check(), Ok(()));
    }

    #[test]
    fn tls_files_come_in_pairs() {
        assert!(serve(&["--tls-cert-file", "a.crt"]).is_err());
        assert!(serve(&["--tls-cert-file", "a.crt", "--tls-key-file", "a.key"]).is_ok());
    }

    /// `restatus serve` with `flags`, its listener flags checked as `App::build` does.
    fn server_args(flags: &[&str]) -> Result<ServerArgs, String> {
        let args = serve(flags)?;
        args.server.check().map_err(|e| e.to_string())?;
        Ok(args.server)
    }

    #[test]
    fn listener_bounds_and_their_defaults() {
        let server = server_args(&[]).unwrap();
        assert_eq!(server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(server.body_read_timeout, Duration::from_secs(10));
        assert_eq!(server.idle_timeout, Duration::from_secs(60));
        assert_eq!(server.http2_keepalive_interval, Duration::from_secs(30));
        assert_eq!(server.max_connections, 512);
        assert_eq!(server.max_concurrent_streams, 100);
        assert_eq!(server.max_inflight_body_bytes, 32 * 1024 * 1024);
        let args = serve(&[]).unwrap();
        assert_eq!(args.tls.client_ca_file, None);
        let args = serve(&["--client-ca-file", "ca.crt"]).unwrap();
        assert_eq!(args.tls.client_ca_file, Some(PathBuf::from("ca.crt")));
        assert!(args.tls.client_allowed_names.is_empty());
    }

    #[test]
    fn allowed_client_names_need_a_client_ca_and_no_empty_name() {
        let args = serve(&[
            "--client-ca-file",
            "ca.crt",
            "--client-allowed-names",
            "kube-apiserver,apiserver.example",
        ])
        .unwrap();
        assert_eq!(
            args.tls.client_allowed_names,
            ["kube-apiserver", "apiserver.example"]
        );
        assert_eq!(args.tls.check(), Ok(()));
        let err = serve(&["--client-allowed-names", "kube-apiserver"]).unwrap_err();
        assert!(err.contains("--client-ca-file"), "{err}");
        let spaced = serve(&[
            "--client-ca-file",
            "ca.crt",
            "--client-allowed-names",
            "kube-apiserver, apiserver.example",
        ]);
        assert_eq!(
            spaced.unwrap().tls.check(),
            Err(TlsArgsError::SpacedAllowedName(" apiserver.example".into()))
        );
        for empty in ["kube-apiserver,", ",", " "] {
            let args = serve(&[
                "--client-ca-file",
                "ca.crt",
                "--client-allowed-names",
                empty,
            ]);
            assert_eq!(
                args.unwrap().tls.check(),
                Err(TlsArgsError::EmptyAllowedName),
                "{empty:?}"
            );
        }
    }

    #[test]
    fn zero_listener_timeouts_and_counts_are_refused() {
        for (flag, zero, says) in [
            ("--header-read-timeout", "0s", "must be longer than zero"),
            ("--body-read-timeout", "0ms", "must be longer than zero"),
            ("--idle-timeout", "0s", "must be longer than zero"),
            (
                "--http2-keepalive-interval",
                "0s",
                "must be longer than zero",
            ),
            ("--max-connections", "0", "0 is not in 1.."),
            ("--max-concurrent-streams", "0", "0 is not in 1.."),
            ("--max-inflight-body-bytes", "0", "out of range"),
        ] {
            let err = server_args(&[flag, zero]).unwrap_err();
            assert!(err.contains(says), "{flag} {zero}: {err}");
        }
        assert_eq!(
            server_args(&["--max-connections", "1"])
                .unwrap()
                .max_connections,
            1
        );
    }

    #[test]
    fn an_inflight_body_budget_below_one_request_is_refused() {
        let err = server_args(&["--max-inflight-body-bytes", "2Mi"]).unwrap_err();
        assert_eq!(
            err,
            "--max-inflight-body-bytes (2097152) is below --max-request-bytes (4194304): a review of the largest accepted size could never be read"
        );
        let ok = server_args(&[
            "--max-inflight-body-bytes",
            "4Mi",
            "--max-request-bytes",
            "4Mi",
        ])
        .unwrap();
        assert_eq!(ok.max_inflight_body_bytes, ok.max_request_bytes);
    }

    #[test]
    fn an_inflight_body_budget_beyond_what_can_be_counted_is_refused() {
        let huge = (ServerArgs::MAX_INFLIGHT_BODY_BYTES + 1).to_string();
        let err = server_args(&["--max-inflight-body-bytes", &huge]).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }
}
