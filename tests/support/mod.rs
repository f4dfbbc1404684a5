//! Test support: real `redis-server` and `restatus serve` processes, the local control plane,
//! HTTP clients, and polling with deadlines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod helm;
pub mod http;
pub mod identity;
pub mod redis;
pub mod restatus;
pub mod router;
pub mod topology;

use std::{
    future::Future,
    net::TcpListener,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Runs a build script of the repository (`tests/cluster/build.sh`, `hack/tools/build.sh`),
/// which is cached and cheap when its outputs are up to date.
pub fn run_build_script(script: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script);
    let status = std::process::Command::new("bash")
        .arg(&path)
        .status()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(status.success(), "{script} failed");
}

/// Installs the process-wide rustls crypto provider (once).
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Raises this process's soft limit of open files to at least `wanted` (never above the hard
/// limit), so that a test really holds that many sockets; processes it starts afterwards
/// inherit the limit.
pub fn raise_fd_limit(wanted: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|current| current >= wanted) {
        return;
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= wanted,
        "this test holds {wanted} open files, above the hard limit of {hard} (ulimit -Hn)"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(wanted),
            maximum: limit.maximum,
        },
    )
    .expect("raise the soft limit of open files");
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A name unique within this test run: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Directory for logs of processes started by tests: `target/test-logs`.
pub fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
    std::fs::create_dir_all(&dir).expect("cannot create target/test-logs");
    dir
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// The object of the KubernetesCluster review fixtures: `team-a/prod-eu-1`.
pub fn fixture_cluster() -> ::restatus::store::ObjectIdentity {
    ::restatus::store::ObjectIdentity {
        group: "infra.example.com".into(),
        resource: "kubernetesclusters".into(),
        namespace: Some("team-a".into()),
        name: "prod-eu-1".into(),
    }
}

/// Reads a JSON fixture from `tests/fixtures/`.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}
