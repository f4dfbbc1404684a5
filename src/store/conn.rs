//! The connection to Redis: how to reach it (TLS, ACL user, keepalive; one server, a master
//! named by Sentinel, or a Redis Cluster), and one multiplexed connection shared by every
//! caller, made again when it broke.
//!
//! A failed attempt to connect is never kept: the next call tries again, so once Redis
//! accepts connections the next call succeeds. A connection that broke (an I/O error, a call
//! that ran out of its budget, which may be a Redis that vanished without a reset, or a
//! master that became a replica) is dropped, and the next call makes a new one: with Sentinel
//! that asks the sentinels for the master again, so calls after a failover reach the new
//! master. A Redis Cluster connection follows MOVED and ASK redirections and slot changes on
//! its own. TCP keepalive and `TCP_USER_TIMEOUT` find a peer that stopped answering without a
//! reset, on every topology (the sentinels' connections too).

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo,
    IntoConnectionInfo, RedisError, RedisFuture, TlsCertificates, TlsMode, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
    io::tcp::{TcpSettings, socket2::TcpKeepalive},
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};
use tokio::sync::Mutex;

/// How Redis is deployed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Topology {
    /// One server (perhaps behind a proxy or a managed endpoint): `--redis-url`.
    #[default]
    Standalone,
    /// A master found through Redis Sentinel: `--redis-sentinels` and
    /// `--redis-sentinel-master`.
    Sentinel,
    /// A Redis Cluster: `--redis-cluster-nodes`, or `--redis-url` as the one seed.
    Cluster,
}

impl std::str::FromStr for Topology {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standalone" => Ok(Topology::Standalone),
            "sentinel" => Ok(Topology::Sentinel),
            "cluster" => Ok(Topology::Cluster),
            other => Err(format!(
                "{other:?} is not a Redis topology: standalone, sentinel or cluster"
            )),
        }
    }
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Topology::Standalone => "standalone",
            Topology::Sentinel => "sentinel",
            Topology::Cluster => "cluster",
        })
    }
}

/// How restatus reaches Redis.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` (TLS) URL; a user and password in it are used too, but the
    /// flags keep them off the command line. With Sentinel, only its scheme, user, password
    /// and database are used (the sentinels name the master's address).
    pub url: String,
    /// PEM CA certificates that Redis's certificate must chain to (else the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key for Redis's TLS client authentication.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// ACL user and password (the password only from a file or the environment).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Idle time before TCP keepalive probes start; a peer that does not answer them, or does
    /// not acknowledge data within three times this, is taken for gone.
    pub keepalive: Duration,
    /// One server, Sentinel or Cluster.
    pub topology: Topology,
    /// `host:port` of each sentinel (Sentinel only).
    pub sentinels: Vec<String>,
    /// The name the sentinels know the master by (Sentinel only).
    pub sentinel_master: Option<String>,
    /// The sentinels' own password (`requirepass` of the sentinels), if they have one.
    pub sentinel_password: Option<String>,
    /// Seed node URLs of a Redis Cluster (Cluster only; else `url` is the one seed).
    pub cluster_nodes: Vec<String>,
}

/// A URL with any password in it hidden.
fn redacted(url: &str) -> String {
    // The last `@`: a password may hold one, the host never does.
    match url.rsplit_once('@') {
        Some((scheme_and_user, host)) => {
            let scheme = scheme_and_user.split("://").next().unwrap_or("redis");
            format!("{scheme}://<redacted>@{host}")
        }
        None => url.to_owned(),
    }
}

impl std::fmt::Debug for RedisOptions {
    /// Never a password, nor a password in a URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redacted(&self.url))
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field(
                "client_key_file",
                &self.client_key_file.as_ref().map(|_| "<set>"),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keepalive", &self.keepalive)
            .field("topology", &self.topology)
            .field("sentinels", &self.sentinels)
            .field("sentinel_master", &self.sentinel_master)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .iter()
                    .map(|u| redacted(u))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why Redis cannot be reached as configured.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid Redis URL")]
    Url(#[source] RedisError),
    #[error("could not read {what} {path}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is set, but the Redis URL is not rediss:// (TLS)")]
    TlsWithoutRediss(&'static str),
    #[error("a Redis client certificate needs its key, and the key its certificate")]
    HalfAPair,
    #[error("the Redis TLS settings cannot be used")]
    Tls(#[source] RedisError),
    #[error("{flag} is set, but --redis-topology is {topology}, not {needs}")]
    NotThisTopology {
        flag: &'static str,
        topology: Topology,
        needs: Topology,
    },
    #[error("--redis-topology sentinel needs {0}")]
    SentinelNeeds(&'static str),
    #[error("invalid sentinel address {0:?}: expected host:port")]
    SentinelAddress(String),
    #[error("invalid Redis Cluster node URL {url}")]
    ClusterNode {
        url: String,
        #[source]
        source: RedisError,
    },
    #[error("Redis Cluster has database 0 only, but a URL names database {0}")]
    ClusterDatabase(i64),
    #[error("the Redis Sentinel settings cannot be used")]
    Sentinel(#[source] RedisError),
    #[error("the Redis Cluster settings cannot be used")]
    Cluster(#[source] RedisError),
}

/// A connection to Redis, whichever the topology. Cheap to clone; clones share it.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server, or the master Sentinel named.
    Single(MultiplexedConnection),
    /// Every node of a Redis Cluster; each command goes to the node of its key's slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A node to scan: `None` for the one server.
pub(super) type ScanNode = Option<(String, u16)>;

impl Conn {
    /// Where a SCAN must run to see every key: the one server, or each primary of a cluster
    /// (a SCAN sees the keys of the node it runs on only).
    pub(super) async fn scan_nodes(&mut self) -> Result<Vec<ScanNode>, RedisError> {
        let Conn::Cluster(conn) = self else {
            return Ok(vec![None]);
        };
        let nodes = conn
            .route_command(
                redis::cmd("CLUSTER").arg("NODES").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await?;
        let text: String = redis::from_redis_value(nodes)?;
        Ok(primaries(&text).into_iter().map(Some).collect())
    }

    /// One SCAN page on `node` from `cursor`: the next cursor (0 at the end) and the keys.
    pub(super) async fn scan(
        &mut self,
        node: &ScanNode,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), RedisError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        match (self, node) {
            (Conn::Cluster(conn), Some((host, port))) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let page = conn.route_command(scan, routing).await?;
                Ok(redis::from_redis_value(page)?)
            }
            (conn, _) => scan.query_async(conn).await,
        }
    }
}

/// The primaries that serve slots, from a `CLUSTER NODES` answer: lines of `id
/// host:port@cport[,hostname] flags master ping pong epoch state slot...`.
fn primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let serves = fields.len() > 8;
            let usable = flags.split(',').any(|f| f == "master")
                && !flags
                    .split(',')
                    .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"));
            if !usable || !serves {
                return None;
            }
            let addr = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// Where the client goes.
enum Target {
    Standalone(redis::Client),
    /// Asks the sentinels for the master at every new connection.
    Sentinel(Mutex<SentinelClient>),
    Cluster(ClusterClient),
}

/// How often the sentinels are asked which master they name, so that the shared connection
/// leaves a master that was failed over even while it still accepts writes.
pub(super) const SENTINEL_CHECK: Duration = Duration::from_secs(1);

/// Where the client goes, and how it connects.
pub(super) struct Connection {
    target: Target,
    config: AsyncConnectionConfig,
    /// The shared connection and its number, once made.
    current: Mutex<Option<(u64, Conn)>>,
    /// With Sentinel, the `host:port` of the master the shared connection goes to.
    master: std::sync::Mutex<Option<String>>,
    made: AtomicU64,
}

fn read(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// The TLS files of `options`, read; `None` without TLS (and then none may be set).
fn tls_certificates(
    options: &RedisOptions,
    tls: bool,
) -> Result<Option<TlsCertificates>, ConnectError> {
    let (cert, key) = (&options.client_cert_file, &options.client_key_file);
    if !tls {
        if options.ca_file.is_some() {
            return Err(ConnectError::TlsWithoutRediss("--redis-ca-file"));
        }
        if cert.is_some() || key.is_some() {
            return Err(ConnectError::TlsWithoutRediss("--redis-client-cert-file"));
        }
        return Ok(None);
    }
    let client_tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("the Redis client certificate", cert)?,
            client_key: read("the Redis client key", key)?,
        }),
        (None, None) => None,
        _ => return Err(ConnectError::HalfAPair),
    };
    let root_cert = match &options.ca_file {
        Some(ca) => Some(read("the Redis CA", ca)?),
        None => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Refuses the flags of other topologies.
fn check_topology(options: &RedisOptions) -> Result<(), ConnectError> {
    let topology = options.topology;
    let refuse = |flag, needs| ConnectError::NotThisTopology {
        flag,
        topology,
        needs,
    };
    if topology != Topology::Sentinel {
        if !options.sentinels.is_empty() {
            return Err(refuse("--redis-sentinels", Topology::Sentinel));
        }
        if options.sentinel_master.is_some() {
            return Err(refuse("--redis-sentinel-master", Topology::Sentinel));
        }
        if options.sentinel_password.is_some() {
            return Err(refuse("--redis-sentinel-password-file", Topology::Sentinel));
        }
    }
    if topology != Topology::Cluster && !options.cluster_nodes.is_empty() {
        return Err(refuse("--redis-cluster-nodes", Topology::Cluster));
    }
    if topology == Topology::Sentinel {
        if options.sentinels.is_empty() {
            return Err(ConnectError::SentinelNeeds("--redis-sentinels"));
        }
        if options.sentinel_master.as_deref().unwrap_or("").is_empty() {
            return Err(ConnectError::SentinelNeeds("--redis-sentinel-master"));
        }
    }
    Ok(())
}

/// `host:port` of a sentinel.
fn sentinel_addr(addr: &str, tls: bool) -> Result<ConnectionAddr, ConnectError> {
    let bad = || ConnectError::SentinelAddress(addr.to_owned());
    let (host, port) = addr.trim().rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok(if tls {
        ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    })
}

impl Connection {
    pub(super) fn new(options: &RedisOptions) -> Result<Self, ConnectError> {
        check_topology(options)?;
        let keepalive = options.keepalive.max(Duration::from_secs(1));
        // Without TCP_NODELAY a small command can wait for a delayed ACK (40 ms on Linux).
        let tcp = TcpSettings::default().set_nodelay(true).set_keepalive(
            TcpKeepalive::new()
                .with_time(keepalive)
                .with_interval(keepalive)
                .with_retries(3),
        );
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        let tcp = tcp.set_user_timeout(keepalive * 3);
        let with_user = |info: ConnectionInfo| {
            let mut redis_info = info.redis_settings().clone();
            if let Some(user) = &options.username {
                redis_info = redis_info.set_username(user);
            }
            if let Some(password) = &options.password {
                redis_info = redis_info.set_password(password);
            }
            info.set_redis_settings(redis_info)
                .set_tcp_settings(tcp.clone())
        };
        let info = with_user(
            options
                .url
                .as_str()
                .into_connection_info()
                .map_err(ConnectError::Url)?,
        );
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let certs = tls_certificates(options, tls)?;
        let target = match options.topology {
            Topology::Standalone => Target::Standalone(match certs {
                Some(certs) => {
                    redis::Client::build_with_tls(info, certs).map_err(ConnectError::Tls)?
                }
                None => redis::Client::open(info).map_err(ConnectError::Url)?,
            }),
            Topology::Sentinel => {
                let sentinels = options
                    .sentinels
                    .iter()
                    .map(|addr| sentinel_addr(addr, tls))
                    .collect::<Result<Vec<_>, _>>()?;
                let master = options.sentinel_master.clone().unwrap_or_default();
                let redis_info = info.redis_settings();
                let mut builder =
                    SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)
                        .map_err(ConnectError::Sentinel)?
                        .set_client_to_redis_db(redis_info.db())
                        .set_client_to_redis_tcp_settings(tcp.clone())
                        .set_client_to_sentinel_tcp_settings(tcp.clone());
                if let Some(user) = redis_info.username() {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = redis_info.password() {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(password) = &options.sentinel_password {
                    builder = builder.set_client_to_sentinel_password(password);
                }
                if let Some(certs) = certs {
                    builder = builder
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_redis_certificates(certs.clone())
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_certificates(certs);
                }
                Target::Sentinel(Mutex::new(builder.build().map_err(ConnectError::Sentinel)?))
            }
            Topology::Cluster => {
                let mut nodes = Vec::new();
                let urls: Vec<&String> = if options.cluster_nodes.is_empty() {
                    vec![&options.url]
                } else {
                    options.cluster_nodes.iter().collect()
                };
                for url in urls {
                    let node =
                        with_user(url.as_str().into_connection_info().map_err(|source| {
                            ConnectError::ClusterNode {
                                url: redacted(url),
                                source,
                            }
                        })?);
                    let node_tls = matches!(node.addr(), ConnectionAddr::TcpTls { .. });
                    if node_tls != tls {
                        return Err(ConnectError::ClusterNode {
                            url: redacted(url),
                            source: RedisError::from((
                                redis::ErrorKind::InvalidClientConfig,
                                "every node must use the scheme of --redis-url",
                            )),
                        });
                    }
                    let db = node.redis_settings().db();
                    if db != 0 {
                        return Err(ConnectError::ClusterDatabase(db));
                    }
                    nodes.push(node);
                }
                let mut builder = ClusterClientBuilder::new(nodes)
                    .connection_timeout(Duration::from_secs(1))
                    .tcp_settings(tcp.clone())
                    // Callers bound each call with their own budget.
                    .overall_response_timeout(None);
                if let Some(user) = info.redis_settings().username() {
                    builder = builder.username(user);
                }
                if let Some(password) = info.redis_settings().password() {
                    builder = builder.password(password);
                }
                if let Some(certs) = certs {
                    builder = builder.tls(TlsMode::Secure).certs(certs);
                }
                Target::Cluster(builder.build().map_err(ConnectError::Cluster)?)
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            // Callers bound each call with their own budget.
            .set_response_timeout(None);
        Ok(Self {
            target,
            config,
            current: Mutex::new(None),
            master: std::sync::Mutex::new(None),
            made: AtomicU64::new(0),
        })
    }

    /// Whether this is a Redis Cluster: a pipeline or script must then keep to one slot.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// With Sentinel, watches which master the sentinels name, every [`SENTINEL_CHECK`], for
    /// as long as the connection lives; a shared connection to another master is dropped, so
    /// the next call connects to the one they name. Without a Tokio runtime, or with another
    /// topology, it does nothing.
    pub(super) fn watch(this: &std::sync::Arc<Self>) {
        if !matches!(this.target, Target::Sentinel(_)) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = std::sync::Arc::downgrade(this);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(SENTINEL_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(conn) = weak.upgrade() else {
                    return;
                };
                // Bounded, so that a sentinel that stopped answering delays only this check.
                let _ = tokio::time::timeout(SENTINEL_CHECK * 5, conn.check_master()).await;
            }
        });
    }

    /// Drops the shared connection if it goes to another master than the sentinels name.
    async fn check_master(&self) {
        let Target::Sentinel(client) = &self.target else {
            return;
        };
        let named = match client.lock().await.async_get_client().await {
            Ok(client) => client.get_connection_info().addr().to_string(),
            Err(error) => {
                tracing::debug!(%error, "could not ask the sentinels for the master");
                return;
            }
        };
        let used = self.master.lock().map(|m| m.clone()).unwrap_or(None);
        if used.is_some_and(|used| used != named) {
            tracing::info!(master = %named, "the sentinels name another master; reconnecting");
            let mut current = self.current.lock().await;
            *current = None;
        }
    }

    /// A new connection, connected within `connect_timeout` (per node), and with Sentinel
    /// the `host:port` of the master it goes to.
    async fn open(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<(Conn, Option<String>), RedisError> {
        match &self.target {
            Target::Standalone(client) => client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .map(|conn| (Conn::Single(conn), None)),
            Target::Sentinel(client) => {
                // Asks the sentinels for the master now: after a failover, the new one.
                let master = client.lock().await.async_get_client().await?;
                let conn = master
                    .get_multiplexed_async_connection_with_config(config)
                    .await?;
                let addr = master.get_connection_info().addr().to_string();
                Ok((Conn::Single(conn), Some(addr)))
            }
            Target::Cluster(client) => client
                .get_async_connection_with_config(
                    ClusterConfig::new().set_connection_timeout(Duration::from_secs(1)),
                )
                .await
                .map(|conn| (Conn::Cluster(conn), None)),
        }
    }

    /// A connection of its own (blocking stream reads), connected within `connect_timeout`.
    pub(super) async fn dedicated(&self, connect_timeout: Duration) -> Result<Conn, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None);
        self.open(&config).await.map(|(conn, _)| conn)
    }

    /// The shared connection and its number, made now if there is none. A failed attempt is
    /// not kept: the next caller tries again.
    pub(super) async fn get(&self) -> Result<(u64, Conn), RedisError> {
        let mut current = self.current.lock().await;
        if let Some((id, conn)) = &*current {
            return Ok((*id, conn.clone()));
        }
        let (conn, master) = self.open(&self.config).await?;
        if let Ok(mut used) = self.master.lock() {
            *used = master;
        }
        let id = self.made.fetch_add(1, Ordering::SeqCst) + 1;
        *current = Some((id, conn.clone()));
        Ok((id, conn))
    }

    /// Drops the connection number `id` (it broke, or a call on it ran out of time), unless
    /// another has taken its place: the next call connects again.
    pub(super) async fn forget(&self, id: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(current, _)| *current == id) {
            *current = None;
        }
    }
}

/// Whether an error says the connection is no longer usable, or no longer goes to the
/// master (a master demoted by a failover answers READONLY).
pub(super) fn broken(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        || error.code() == Some("READONLY")
        || error.code() == Some("MASTERDOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_shown_even_with_an_at_sign() {
        assert_eq!(
            redacted("rediss://user:p@ss@redis.example:6380/0"),
            "rediss://<redacted>@redis.example:6380/0"
        );
        assert_eq!(redacted("redis://redis:6379"), "redis://redis:6379");
    }

    #[test]
    fn options_never_show_a_password() {
        let options = RedisOptions {
            url: "rediss://restatus:s3cr3t@redis.example:6380/0".into(),
            password: Some("an0ther".into()),
            ..RedisOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("an0ther"),
            "{shown}"
        );
        assert!(
            shown.contains("rediss://<redacted>@redis.example:6380/0"),
            "{shown}"
        );
    }

    #[test]
    fn each_topology_refuses_the_flags_of_the_others_and_needs_its_own() {
        let base = RedisOptions {
            url: "redis://127.0.0.1:6379".into(),
            ..RedisOptions::default()
        };
        let err = |options: RedisOptions| {
            Connection::new(&options)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let sentinel = RedisOptions {
            topology: Topology::Sentinel,
            sentinels: vec!["127.0.0.1:26379".into()],
            sentinel_master: Some("mymaster".into()),
            ..base.clone()
        };
        assert!(Connection::new(&sentinel).is_ok());
        assert!(
            err(RedisOptions {
                sentinel_master: None,
                ..sentinel.clone()
            })
            .contains("--redis-sentinel-master"),
        );
        assert!(
            err(RedisOptions {
                sentinels: Vec::new(),
                ..sentinel.clone()
            })
            .contains("--redis-sentinels"),
        );
        assert!(
            err(RedisOptions {
                sentinels: vec!["no-port".into()],
                ..sentinel.clone()
            })
            .contains("no-port"),
        );
        let cluster = RedisOptions {
            topology: Topology::Cluster,
            cluster_nodes: vec!["redis://127.0.0.1:7000".into()],
            ..base.clone()
        };
        assert!(Connection::new(&cluster).is_ok());
        let e = err(RedisOptions {
            sentinels: vec!["127.0.0.1:26379".into()],
            ..cluster.clone()
        });
        assert!(
            e.contains("--redis-sentinels") && e.contains("cluster"),
            "{e}"
        );
        assert!(
            err(RedisOptions {
                cluster_nodes: vec!["redis://127.0.0.1:7000/2".into()],
                ..cluster.clone()
            })
            .contains("database 0 only"),
        );
        assert!(
            err(RedisOptions {
                cluster_nodes: vec!["rediss://127.0.0.1:7000".into()],
                ..cluster
            })
            .contains("rediss://127.0.0.1:7000"),
        );
        assert!(
            err(RedisOptions {
                cluster_nodes: vec!["redis://127.0.0.1:7000".into()],
                ..base.clone()
            })
            .contains("--redis-cluster-nodes"),
        );
        assert!(
            err(RedisOptions {
                sentinel_master: Some("m".into()),
                ..base
            })
            .contains("--redis-sentinel-master"),
        );
        assert_eq!("cluster".parse::<Topology>(), Ok(Topology::Cluster));
        assert!("clustered".parse::<Topology>().is_err());
    }

    #[test]
    fn a_scan_covers_the_primaries_that_serve_slots() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host-b master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected
e5 127.0.0.1:7004@17004 master - 0 0 5 connected
";
        assert_eq!(
            primaries(nodes),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001)
            ]
        );
    }

    #[test]
    fn tls_files_need_rediss_and_a_whole_pair() {
        let plain = RedisOptions {
            url: "redis://127.0.0.1:6379".into(),
            ca_file: Some("/nonexistent/ca.crt".into()),
            ..RedisOptions::default()
        };
        assert!(matches!(
            Connection::new(&plain),
            Err(ConnectError::TlsWithoutRediss("--redis-ca-file"))
        ));
        let half = RedisOptions {
            url: "rediss://127.0.0.1:6380".into(),
            client_cert_file: Some("/nonexistent/tls.crt".into()),
            ..RedisOptions::default()
        };
        assert!(matches!(
            Connection::new(&half),
            Err(ConnectError::HalfAPair)
        ));
        let missing = RedisOptions {
            url: "rediss://127.0.0.1:6380".into(),
            ca_file: Some("/nonexistent/ca.crt".into()),
            ..RedisOptions::default()
        };
        let err = Connection::new(&missing).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
    }
}
