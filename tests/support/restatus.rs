//! `restatus serve` as a child process with generated certificates.

use std::{
    collections::HashMap,
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct Options {
    pub redis_url: String,
    pub key_prefix: String,
    pub kubeconfig: Option<PathBuf>,
    /// Extra `serve` flags.
    pub args: Vec<String>,
    /// Name used for the log file in `target/test-logs/`.
    pub name: String,
}

impl Options {
    pub fn new(redis_url: String) -> Self {
        Self {
            redis_url,
            key_prefix: super::unique("t"),
            kubeconfig: None,
            args: Vec::new(),
            name: super::unique("restatus"),
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

impl Restatus {
    /// Starts `restatus serve` and waits until `/readyz` answers 200.
    pub async fn start(opts: Options) -> Self {
        super::init_crypto();
        let certs = tempfile::tempdir().expect("tempdir");
        let generated = restatus::certs::generate(
            &["127.0.0.1".to_owned(), "localhost".to_owned()],
            Duration::from_secs(86_400),
        )
        .expect("generate certs");
        restatus::certs::write(certs.path(), &generated).expect("write certs");
        let port = super::free_port();
        let admin_port = super::free_port();
        let log = super::log_dir().join(format!("{}.log", opts.name));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_restatus"));
        cmd.arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--redis-url", &opts.redis_url])
            .args(["--key-prefix", &opts.key_prefix])
            .args([
                "--tls-cert-file",
                &certs.path().join("tls.crt").display().to_string(),
            ])
            .args([
                "--tls-key-file",
                &certs.path().join("tls.key").display().to_string(),
            ])
            .args(["--log-level", "info,restatus=debug"])
            .args(&opts.args)
            // Never pick up the developer's own cluster.
            .env_remove("KUBECONFIG")
            .env("HOME", certs.path())
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("log file"))
            .stderr(File::options().append(true).open(&log).expect("log file"));
        if let Some(kubeconfig) = &opts.kubeconfig {
            cmd.args(["--kubeconfig", &kubeconfig.display().to_string()]);
        }
        let child = cmd.spawn().expect("start restatus");
        let mut me = Self {
            port,
            admin_port,
            key_prefix: opts.key_prefix,
            certs,
            log,
            child: Some(child),
        };
        let url = me.admin_url("/readyz");
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
