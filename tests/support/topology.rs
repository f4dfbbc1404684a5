//! Real Redis topologies on loopback: a master with a replica watched by three sentinels, and
//! a Redis Cluster of three masters and three replicas. Ports are picked free, data lives in
//! temporary directories, and every process is killed when its owner is dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use redis::aio::MultiplexedConnection;
use restatus::store::{ObjectIdentity, RecordWrite, Source};
use serde_json::json;

fn binary(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// One `redis-server` process (a data node or, with `--sentinel`, a sentinel).
pub struct Node {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The configuration file, for a sentinel (it rewrites it).
    conf: Option<PathBuf>,
    args: Vec<String>,
}

impl Node {
    /// Starts a data node with these extra arguments, and waits until it answers PING.
    pub async fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let mut node = Self {
            port,
            dir,
            child: None,
            conf: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        node.spawn().await;
        node
    }

    /// Starts a sentinel watching the master `name` at `master_port`.
    pub async fn start_sentinel(name: &str, master_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut node = Self {
            port,
            dir,
            child: None,
            conf: Some(conf),
            args: Vec::new(),
        };
        node.spawn().await;
        node
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn spawn(&mut self) {
        let log = self.dir().join("redis.log").display().to_string();
        let mut cmd = Command::new(binary("redis-server"));
        match &self.conf {
            Some(conf) => {
                cmd.arg(conf).args(["--sentinel", "--logfile", &log]);
            }
            None => {
                cmd.args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--dir",
                    &self.dir().display().to_string(),
                    "--logfile",
                    &log,
                ])
                .args(&self.args);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start redis-server: install Debian's redis-server package");
        self.child = Some(child);
        let port = self.port;
        super::eventually(
            Duration::from_secs(20),
            "redis-server to answer PING",
            || async move {
                let mut conn = connect(port).await?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            },
        )
        .await;
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection of the test's own to this node.
    pub async fn conn(&self) -> MultiplexedConnection {
        connect(self.port).await.expect("connect to a test node")
    }

    /// A connection of the test's own to the node on `port`.
    pub async fn conn_to(port: u16) -> MultiplexedConnection {
        connect(port).await.expect("connect to a test node")
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of its log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn connect(port: u16) -> Option<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()
}

/// The `field:value` lines of an INFO section.
pub async fn info(conn: &mut MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap_or_default()
}

fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// A master, one replica and three sentinels that watch them as `mymaster`.
pub struct SentinelSet {
    pub name: String,
    /// Data nodes: the first starts as master.
    pub nodes: Vec<Node>,
    pub sentinels: Vec<Node>,
}

impl SentinelSet {
    pub async fn start() -> Self {
        let name = "mymaster".to_owned();
        let master = Node::start(&[]).await;
        let replica_of = master.port.to_string();
        let replica = Node::start(&["--replicaof", "127.0.0.1", &replica_of]).await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(Node::start_sentinel(&name, master.port).await);
        }
        let set = Self {
            name,
            nodes: vec![master, replica],
            sentinels,
        };
        set.wait_until_watched().await;
        set
    }

    /// `host:port,...` of the sentinels, for `--redis-sentinels`.
    pub fn sentinel_list(&self) -> Vec<String> {
        self.sentinels.iter().map(Node::addr).collect()
    }

    /// The port of the master the sentinels name now.
    pub async fn master_port(&self) -> Option<u16> {
        for sentinel in &self.sentinels {
            let Some(mut conn) = connect(sentinel.port).await else {
                continue;
            };
            let addr: Option<(String, String)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.name)
                .query_async(&mut conn)
                .await
                .ok()
                .flatten();
            if let Some((_, port)) = addr {
                return port.parse().ok();
            }
        }
        None
    }

    /// Waits until every sentinel knows the others and the replica, and the replica is in
    /// sync: a failover can then happen.
    pub async fn wait_until_watched(&self) {
        let name = self.name.clone();
        let ports: Vec<u16> = self.sentinels.iter().map(|s| s.port).collect();
        super::eventually(
            Duration::from_secs(60),
            "the sentinels to know each other and the replica",
            || {
                let name = name.clone();
                let ports = ports.clone();
                async move {
                    for port in ports {
                        let mut conn = connect(port).await?;
                        let master: std::collections::HashMap<String, String> =
                            redis::cmd("SENTINEL")
                                .arg("MASTER")
                                .arg(&name)
                                .query_async(&mut conn)
                                .await
                                .ok()?;
                        let others: u32 = master.get("num-other-sentinels")?.parse().ok()?;
                        let replicas: u32 = master.get("num-slaves")?.parse().ok()?;
                        if others < 2 || replicas < 1 {
                            return None;
                        }
                        let replicas: Vec<std::collections::HashMap<String, String>> =
                            redis::cmd("SENTINEL")
                                .arg("REPLICAS")
                                .arg(&name)
                                .query_async(&mut conn)
                                .await
                                .ok()?;
                        let healthy = replicas.iter().any(|r| {
                            r.get("flags").is_some_and(|f| f == "slave")
                                && r.get("master-link-status").is_some_and(|s| s == "ok")
                        });
                        if !healthy {
                            return None;
                        }
                    }
                    Some(())
                }
            },
        )
        .await;
    }

    /// Asks a sentinel to fail over now (the replica becomes master).
    pub async fn failover(&self) {
        let mut conn = self.sentinels[0].conn().await;
        let () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(&self.name)
            .query_async(&mut conn)
            .await
            .expect("SENTINEL FAILOVER");
    }
}

/// A Redis Cluster of three masters and three replicas.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
}

/// A node as `CLUSTER NODES` lists it.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(
                Node::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "3000",
                ])
                .await,
            );
        }
        let mut create = Command::new(binary("redis-cli"));
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(node.addr());
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_until_ok().await;
        cluster
    }

    /// Seed URLs, for `--redis-cluster-nodes`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Waits until every node says the cluster is ok, sees three masters serving every slot
    /// and each with a replica in sync.
    pub async fn wait_until_ok(&self) {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        super::eventually(Duration::from_secs(90), "the cluster to be ok", || {
            let ports = ports.clone();
            async move {
                for port in &ports {
                    let mut conn = connect(*port).await?;
                    let text: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    if info_field(&text, "cluster_state") != Some("ok")
                        || info_field(&text, "cluster_slots_ok") != Some("16384")
                    {
                        return None;
                    }
                    let replication = info(&mut conn, "replication").await;
                    if info_field(&replication, "role") == Some("slave")
                        && info_field(&replication, "master_link_status") != Some("up")
                    {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }

    /// The nodes as the node on `port` sees them.
    pub async fn topology(&self) -> Vec<ClusterNode> {
        let mut conn = self.any_conn().await;
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER NODES");
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = f.get(1)?.split(['@', ',']).next()?.rsplit_once(':')?.1;
                Some(ClusterNode {
                    id: f.first()?.to_string(),
                    port: port.parse().ok()?,
                    master: f.get(2)?.split(',').any(|x| x == "master"),
                    master_id: f.get(3).filter(|m| **m != "-").map(|m| m.to_string()),
                })
            })
            .collect()
    }

    /// A connection to any node that answers.
    pub async fn any_conn(&self) -> MultiplexedConnection {
        for node in &self.nodes {
            if let Some(conn) = connect(node.port).await {
                return conn;
            }
        }
        panic!("no cluster node answers");
    }

    /// The slot of `key`.
    pub async fn slot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut self.any_conn().await)
            .await
            .expect("CLUSTER KEYSLOT")
    }

    /// The master that serves `slot`, as the node on any port sees it.
    pub async fn owner(&self, slot: u16) -> ClusterNode {
        let mut conn = self.any_conn().await;
        let shards: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER SLOTS");
        for shard in shards {
            let redis::Value::Array(items) = shard else {
                continue;
            };
            let start: u16 = redis::from_redis_value(items[0].clone()).unwrap();
            let end: u16 = redis::from_redis_value(items[1].clone()).unwrap();
            if (start..=end).contains(&slot) {
                let redis::Value::Array(master) = &items[2] else {
                    panic!("CLUSTER SLOTS answered {items:?}");
                };
                let port: u16 = redis::from_redis_value(master[1].clone()).unwrap();
                let id: String = redis::from_redis_value(master[2].clone()).unwrap();
                return ClusterNode {
                    id,
                    port,
                    master: true,
                    master_id: None,
                };
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Moves `slot` from its master to another master, keys and all, the way `redis-cli
    /// --cluster reshard` does: IMPORTING and MIGRATING, MIGRATE of its keys in batches,
    /// then the new owner announced to every master.
    /// Between batches (of one key each) it waits for `between`, so that writes to the slot
    /// land while its keys are split across the two nodes.
    pub async fn migrate_slot<F, Fut>(&self, slot: u16, between: F) -> (ClusterNode, ClusterNode)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let from = self.owner(slot).await;
        let to = self
            .topology()
            .await
            .into_iter()
            .find(|n| n.master && n.id != from.id)
            .expect("another master");
        let mut src = connect(from.port).await.expect("source");
        let mut dst = connect(to.port).await.expect("target");
        let setslot = |state: &str, id: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .clone()
        };
        let () = setslot("IMPORTING", &from.id)
            .query_async(&mut dst)
            .await
            .expect("IMPORTING");
        let () = setslot("MIGRATING", &to.id)
            .query_async(&mut src)
            .await
            .expect("MIGRATING");
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(1)
                .query_async(&mut src)
                .await
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to.port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("REPLACE")
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut src)
                .await
                .expect("MIGRATE");
            between().await;
        }
        // The new owner first, then the old one, then the others (as redis-cli does).
        let mut masters: Vec<ClusterNode> = self
            .topology()
            .await
            .into_iter()
            .filter(|n| n.master)
            .collect();
        masters.sort_by_key(|n| (n.id != to.id, n.id != from.id));
        for node in masters {
            if let Some(mut conn) = connect(node.port).await {
                let () = setslot("NODE", &to.id)
                    .query_async(&mut conn)
                    .await
                    .expect("SETSLOT NODE");
            }
        }
        (from, to)
    }

    /// Fails the master of `slot` over to its replica with `CLUSTER FAILOVER` (a manual
    /// failover: the replica catches up first), and waits until the replica serves the slot.
    pub async fn failover(&self, slot: u16) -> (ClusterNode, ClusterNode) {
        let master = self.owner(slot).await;
        let replica = self
            .topology()
            .await
            .into_iter()
            .find(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .expect("a replica of the master");
        let mut conn = connect(replica.port).await.expect("replica");
        let () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER FAILOVER");
        let id = replica.id.clone();
        super::eventually(
            Duration::from_secs(60),
            "the replica to serve the slot",
            || {
                let id = id.clone();
                async move { (self.owner(slot).await.id == id).then_some(()) }
            },
        )
        .await;
        (master, replica)
    }
}

/// The KubernetesCluster `team-a/<name>` the topology tests record.
pub fn id(name: &str) -> ObjectIdentity {
    ObjectIdentity {
        group: "infra.example.com".into(),
        resource: "kubernetesclusters".into(),
        namespace: Some("team-a".into()),
        name: name.into(),
    }
}

/// A status write of `name` at resourceVersion `rv`, its status naming `rv` too.
pub fn write(name: &str, uid: &str, rv: u64) -> RecordWrite {
    RecordWrite {
        identity: id(name),
        status: json!({"phase": "Running", "rv": rv}),
        api_version: "infra.example.com/v1alpha1".into(),
        kind: "KubernetesCluster".into(),
        uid: uid.into(),
        resource_version: rv.to_string(),
        generation: None,
        source: Source::Written,
        deleting: false,
        retention: Duration::from_secs(3600),
        restored_by: None,
        catch_up: None,
        listed_at: None,
    }
}
