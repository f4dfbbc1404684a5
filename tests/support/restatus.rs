//! `restatus serve` as a child process with generated certificates.

use std::{
    collections::HashMap,
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct Options {
    /// Name used for the log file in `target/test-logs/`.
    pub name: String,
    /// Extra `serve` flags.
    pub args: Vec<String>,
    pub redis_url: String,
    pub key_prefix: String,
    pub kubeconfig: Option<PathBuf>,
    /// The webhook port, when a test must know it before restatus starts; else a free one.
    pub port: Option<u16>,
    /// Wait for `/readyz` (else only for `/livez`) before returning.
    pub wait_ready: bool,
    /// Serve the certificates of this directory (`ca.crt`, `tls.crt`, `tls.key`, as
    /// `restatus certs` writes them) instead of new ones: a restart keeps the CA the webhook
    /// configuration trusts.
    pub certs_from: Option<PathBuf>,
}

impl Options {
    pub fn new(redis_url: String) -> Self {
        Self {
            name: super::unique("restatus"),
            args: Vec::new(),
            redis_url,
            key_prefix: super::unique("t"),
            kubeconfig: None,
            port: None,
            wait_ready: true,
            certs_from: None,
        }
    }
}

pub struct Restatus {
    pub port: u16,
    pub admin_port: u16,
    pub key_prefix: String,
    pub certs: tempfile::TempDir,
    pub log: PathBuf,
    child: Option<Child>,
}

/// A `restatus` process to start: its arguments, environment and where it listens.
pub struct Launch {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub port: u16,
    pub admin_port: u16,
    pub key_prefix: String,
    /// Name used for the log file in `target/test-logs/`.
    pub name: String,
    /// Wait for `/readyz` (else only for `/livez`).
    pub wait_ready: bool,
}

impl Restatus {
    /// Starts `restatus serve` with generated certificates and waits until `/readyz` answers
    /// 200.
    pub async fn start(opts: Options) -> Self {
        super::init_crypto();
        let certs = tempfile::tempdir().expect("tempdir");
        match &opts.certs_from {
            Some(dir) => {
                for file in ["ca.crt", "tls.crt", "tls.key"] {
                    std::fs::copy(dir.join(file), certs.path().join(file)).expect("copy certs");
                }
            }
            None => {
                let generated = restatus::certs::generate(
                    &["127.0.0.1".to_owned(), "localhost".to_owned()],
                    Duration::from_secs(86_400),
                )
                .expect("generate certs");
                restatus::certs::write(certs.path(), &generated).expect("write certs");
            }
        }
        let port = opts.port.unwrap_or_else(super::free_port);
        let admin_port = super::free_port();
        let mut args: Vec<String> = vec![
            "serve".into(),
            format!("--listen=127.0.0.1:{port}"),
            format!("--admin-listen=127.0.0.1:{admin_port}"),
            format!("--redis-url={}", opts.redis_url),
            format!("--key-prefix={}", opts.key_prefix),
            format!("--tls-cert-file={}", certs.path().join("tls.crt").display()),
            format!("--tls-key-file={}", certs.path().join("tls.key").display()),
        ];
        if !opts.args.iter().any(|a| a.starts_with("--log-level")) {
            args.push("--log-level=info,restatus=debug".into());
        }
        if let Some(kubeconfig) = &opts.kubeconfig {
            args.push(format!("--kubeconfig={}", kubeconfig.display()));
        }
        args.extend(opts.args);
        let launch = Launch {
            args,
            env: Vec::new(),
            port,
            admin_port,
            key_prefix: opts.key_prefix,
            name: opts.name,
            wait_ready: opts.wait_ready,
        };
        Self::launch(launch, Some(certs)).await
    }

    /// Starts `restatus` with exactly `launch.args` and `launch.env` (nothing of this
    /// process's environment but `PATH`) and waits until `/readyz` answers 200.
    pub async fn launch(launch: Launch, certs: Option<tempfile::TempDir>) -> Self {
        let home = match certs {
            Some(dir) => dir,
            None => tempfile::tempdir().expect("tempdir"),
        };
        let log = super::log_dir().join(format!("{}.log", launch.name));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_restatus"));
        cmd.args(&launch.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // Never pick up the developer's own cluster.
            .env("HOME", home.path())
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("log file"))
            .stderr(File::options().append(true).open(&log).expect("log file"));
        let child = cmd.spawn().expect("start restatus");
        let mut me = Self {
            port: launch.port,
            admin_port: launch.admin_port,
            key_prefix: launch.key_prefix,
            certs: home,
            log,
            child: Some(child),
        };
        let url = me.admin_url(if launch.wait_ready {
            "/readyz"
        } else {
            "/livez"
        });
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(r) = super::http::get(&url).await
                    && r.status == 200
                {
                    return;
                }
                if let Some(child) = me.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!("restatus exited with {status}:\n{}", me.log_text());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "restatus not ready in 30s:\n{}",
            me.log_text()
        );
        me
    }

    pub fn ca_file(&self) -> PathBuf {
        self.certs.path().join("ca.crt")
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_file()).expect("read ca.crt")
    }

    pub fn mutate_url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.port)
    }

    /// POSTs `review` to `/mutate` with `client` and asserts that it is answered `allowed`,
    /// for its uid.
    pub async fn review_allowed(
        &self,
        client: &super::http::TlsClient,
        review: &serde_json::Value,
    ) -> super::http::Response {
        let resp = client
            .post(&self.mutate_url(), review.to_string())
            .await
            .expect("POST /mutate");
        assert_eq!(resp.status, 200, "{}", resp.body);
        let answer: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{}", resp.body);
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        resp
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Samples of the Prometheus text, keyed by `name{labels}`.
    pub async fn metrics(&self) -> HashMap<String, f64> {
        let body = super::http::get(&self.admin_url("/metrics"))
            .await
            .expect("GET /metrics")
            .body;
        parse_metrics(&body)
    }

    /// One sample, 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        self.metrics().await.get(sample).copied().unwrap_or(0.0)
    }

    /// The sum of metric `name` over all its label sets (0 when it has no sample).
    pub async fn metric_total(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident memory of the process so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.memory_field("VmHWM:")
    }

    /// Resident memory of the process now (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        self.memory_field("VmRSS:")
    }

    fn memory_field(&self, field: &str) -> u64 {
        let pid = self.pid().expect("restatus runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
        kib * 1024
    }

    /// Stops the process at once, as an OOM kill or a lost node would (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn send_sigterm(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.wait().ok();
        self.child = None;
        status
    }
}

/// Parses Prometheus text into `name{labels} -> value`.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

impl Drop for Restatus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of {} ---\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
