//! A real `redis-server` on a free loopback port, stopped when dropped.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use redis::AsyncCommands;

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Keeps its data across a restart (an append-only file, fsynced on every write).
    persistent: bool,
    /// A TLS port besides the plain one, and whether it requires client certificates.
    tls: Option<(u16, bool)>,
}

/// The certificates a TLS Redis serves with and trusts, written into its directory.
pub struct RedisTls {
    /// The CA that signed the server's certificate and the client certificates it accepts.
    pub ca: restatus::certs::Pair,
    pub ca_file: PathBuf,
}

fn redis_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("REDIS_SERVER") {
        return PathBuf::from(path);
    }
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = PathBuf::from(dir).join("redis-server");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("redis-server")
}

impl RedisServer {
    /// Starts a throwaway Redis (no persistence) and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Starts a Redis that keeps its data across [`RedisServer::restart`] and
    /// [`RedisServer::stop`] then [`RedisServer::start_again`], as a production Redis with AOF
    /// does.
    pub async fn start_persistent() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Self {
            port: super::free_port(),
            dir,
            child: None,
            persistent,
            tls: None,
        };
        server.spawn().await;
        server
    }

    /// Starts a Redis that also serves TLS (on [`RedisServer::tls_url`]), with a serving
    /// certificate for 127.0.0.1 from a CA of its own, requiring client certificates from that
    /// CA when `client_auth`. The plain port stays for the test's own looks.
    pub async fn start_tls(client_auth: bool) -> (Self, RedisTls) {
        let dir = tempfile::tempdir().expect("tempdir");
        let hour = Duration::from_secs(3600);
        let ca = restatus::certs::generate_ca(hour).expect("CA");
        let serving = restatus::certs::issue_serving(&ca, &["127.0.0.1".to_owned()], hour)
            .expect("serving certificate");
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &serving.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &serving.key_pem).unwrap();
        let mut server = Self {
            port: super::free_port(),
            dir,
            child: None,
            persistent: false,
            tls: Some((super::free_port(), client_auth)),
        };
        server.spawn().await;
        (server, RedisTls { ca, ca_file })
    }

    /// The URL of the TLS port.
    pub fn tls_url(&self) -> String {
        let (port, _) = self.tls.expect("a TLS Redis");
        format!("rediss://127.0.0.1:{port}")
    }

    /// Starts it again on the same port after [`RedisServer::stop`].
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let log = self.dir.path().join("redis.log");
        let (appendonly, fsync) = if self.persistent {
            ("yes", "always")
        } else {
            ("no", "everysec")
        };
        let mut tls_args: Vec<String> = Vec::new();
        if let Some((port, client_auth)) = self.tls {
            let file = |name: &str| self.dir.path().join(name).display().to_string();
            tls_args = vec![
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                file("tls.crt"),
                "--tls-key-file".into(),
                file("tls.key"),
                "--tls-ca-cert-file".into(),
                file("ca.crt"),
                "--tls-auth-clients".into(),
                (if client_auth { "yes" } else { "no" }).into(),
            ];
        }
        let child = Command::new(redis_server_binary())
            .args(&tls_args)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                appendonly,
                "--appendfsync",
                fsync,
                "--dir",
                &self.dir.path().display().to_string(),
                "--logfile",
                &log.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "cannot start redis-server: install Debian's redis-server package (bash .ci/run does)",
            );
        self.child = Some(child);
        let url = self.url();
        super::eventually(
            Duration::from_secs(10),
            "redis-server to answer PING",
            || {
                let url = url.clone();
                async move {
                    let client = redis::Client::open(url).ok()?;
                    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .ok()
                }
            },
        )
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("redis-server is not running")
            .id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// All fields of a hash.
    pub async fn hgetall(&self, key: &str) -> std::collections::HashMap<String, String> {
        self.conn().await.hgetall(key).await.unwrap()
    }

    /// Time to live in ms (-1: none, -2: no key).
    pub async fn pttl(&self, key: &str) -> i64 {
        self.conn().await.pttl(key).await.unwrap()
    }

    /// Keys whose value holds `needle` anywhere: in a string, a hash field or value, a list,
    /// set or sorted set member, or a stream entry.
    pub async fn keys_holding(&self, needle: &str) -> Vec<String> {
        let mut conn = self.conn().await;
        let mut holding = Vec::new();
        for key in self.keys("*").await {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            let read = match kind.as_str() {
                "string" => vec!["GET"],
                "hash" => vec!["HGETALL"],
                "list" => vec!["LRANGE", "0", "-1"],
                "set" => vec!["SMEMBERS"],
                "zset" => vec!["ZRANGE", "0", "-1"],
                "stream" => vec!["XRANGE", "-", "+"],
                _ => continue,
            };
            let mut cmd = redis::cmd(read[0]);
            cmd.arg(&key).arg(&read[1..]);
            let value: redis::Value = cmd.query_async(&mut conn).await.unwrap();
            if holds(&value, needle.as_bytes()) {
                holding.push(key);
            }
        }
        holding
    }

    /// Keys matching a pattern.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        self.conn().await.keys(pattern).await.unwrap()
    }
}

/// True when some string within `value` contains `needle`.
fn holds(value: &redis::Value, needle: &[u8]) -> bool {
    use redis::Value as V;
    match value {
        V::BulkString(bytes) => bytes.windows(needle.len()).any(|w| w == needle),
        V::SimpleString(text) | V::VerbatimString { text, .. } => {
            text.as_bytes().windows(needle.len()).any(|w| w == needle)
        }
        V::Array(items) | V::Set(items) => items.iter().any(|v| holds(v, needle)),
        V::Map(pairs) => pairs
            .iter()
            .any(|(k, v)| holds(k, needle) || holds(v, needle)),
        _ => false,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server would ignore SIGKILL only until resumed; resume first.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
    }
}
