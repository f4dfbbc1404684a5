//! The connection to Redis: how to reach it (TLS, ACL user, keepalive), and one multiplexed
//! connection shared by every caller, made again when it broke.
//!
//! A failed attempt to connect is never kept: the next call tries again, so once Redis
//! accepts connections the next call succeeds. A connection that broke (an I/O error, a call
//! that ran out of its budget, which may be a Redis that vanished without a reset) is dropped,
//! and the next call makes a new one. TCP keepalive and `TCP_USER_TIMEOUT` find a peer that
//! stopped answering without a reset.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisError,
    TlsCertificates,
    aio::MultiplexedConnection,
    io::tcp::{TcpSettings, socket2::TcpKeepalive},
};
use tokio::sync::Mutex;

/// How restatus reaches Redis.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` (TLS) URL; a user and password in it are used too, but the
    /// flags keep them off the command line.
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
}

impl std::fmt::Debug for RedisOptions {
    /// Never the password, nor a password in the URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match self.url.split_once('@') {
            Some((scheme_and_user, host)) => {
                let scheme = scheme_and_user.split("://").next().unwrap_or("redis");
                format!("{scheme}://<redacted>@{host}")
            }
            None => self.url.clone(),
        };
        f.debug_struct("RedisOptions")
            .field("url", &url)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field(
                "client_key_file",
                &self.client_key_file.as_ref().map(|_| "<set>"),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keepalive", &self.keepalive)
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
}

/// Where the client goes, and how it connects.
pub(super) struct Connection {
    client: redis::Client,
    config: AsyncConnectionConfig,
    /// The shared connection and its number, once made.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    made: AtomicU64,
}

fn read(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

impl Connection {
    pub(super) fn new(options: &RedisOptions) -> Result<Self, ConnectError> {
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
        let mut info = options
            .url
            .as_str()
            .into_connection_info()
            .map_err(ConnectError::Url)?
            .set_tcp_settings(tcp);
        let mut redis_info = info.redis_settings().clone();
        if let Some(user) = &options.username {
            redis_info = redis_info.set_username(user);
        }
        if let Some(password) = &options.password {
            redis_info = redis_info.set_password(password);
        }
        info = info.set_redis_settings(redis_info);
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let (cert, key) = (&options.client_cert_file, &options.client_key_file);
        if !tls {
            if options.ca_file.is_some() {
                return Err(ConnectError::TlsWithoutRediss("--redis-ca-file"));
            }
            if cert.is_some() || key.is_some() {
                return Err(ConnectError::TlsWithoutRediss("--redis-client-cert-file"));
            }
        }
        let client = if tls {
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
            redis::Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
            .map_err(ConnectError::Tls)?
        } else {
            redis::Client::open(info).map_err(ConnectError::Url)?
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            // Callers bound each call with their own budget.
            .set_response_timeout(None);
        Ok(Self {
            client,
            config,
            current: Mutex::new(None),
            made: AtomicU64::new(0),
        })
    }

    /// The client, for connections of their own (blocking stream reads).
    pub(super) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The shared connection and its number, made now if there is none. A failed attempt is
    /// not kept: the next caller tries again.
    pub(super) async fn get(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        let mut current = self.current.lock().await;
        if let Some((id, conn)) = &*current {
            return Ok((*id, conn.clone()));
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
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

/// Whether an error says the connection is no longer usable.
pub(super) fn broken(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;

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
