//! How restatus reaches Redis, against real `redis-server` processes: TLS with a CA and client
//! certificates, ACL users with a password from a file or the environment, and a connection
//! made again as soon as Redis is back, with no failure kept from while it was away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use restatus::certs::issue_client;
use serde_json::{Value, json};
use support::{
    fixture,
    http::{Alpn, TlsClient},
    redis::RedisServer,
    restatus::{Launch, Options, Restatus},
};

const RECORDED: &str =
    "restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"recorded\"}";
const FAILED: &str = "restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"error\"}";

/// A status write review of the fixture's object with its own uid and phase.
fn write(uid: &str, phase: &str) -> Value {
    let mut review = fixture("reviews/kc-update-status.json");
    review["request"]["uid"] = json!(uid);
    review["request"]["object"]["status"]["phase"] = json!(phase);
    review
}

#[tokio::test]
async fn once_redis_is_back_the_next_review_is_recorded() {
    let mut redis = RedisServer::start().await;
    let r = Restatus::start(Options::new(redis.url())).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    r.review_allowed(&client, &write("before", "a")).await;
    assert_eq!(r.metric(RECORDED).await, 1.0);

    // Load the machine the way a busy node is: every core spinning.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |p| p.get()))
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();

    for round in 0..5 {
        redis.stop();
        // Reviews while Redis is away fail open, and make restatus try to reconnect.
        for i in 0..3 {
            r.review_allowed(&client, &write(&format!("away-{round}-{i}"), "x"))
                .await;
        }
        let failed = r.metric(FAILED).await;
        assert!(failed >= f64::from(3 * (round + 1)), "{failed}");
        redis.start_again().await;
        // Redis accepts connections: the very next review is recorded.
        let before = r.metric(RECORDED).await;
        r.review_allowed(
            &client,
            &write(&format!("back-{round}"), &format!("p{round}")),
        )
        .await;
        assert_eq!(
            r.metric(RECORDED).await,
            before + 1.0,
            "round {round}: the first review after Redis came back was not recorded"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
}

/// `restatus serve` on the TLS Redis with `args` and `env`; its first status write is
/// recorded (`true`) or fails open (`false`).
async fn records_over_tls(redis: &RedisServer, args: &[String], env: &[(&str, &str)]) -> bool {
    let mut opts = Options::new(redis.tls_url());
    opts.args = args.to_vec();
    let certs = tempfile::tempdir().unwrap();
    let generated =
        restatus::certs::generate(&["127.0.0.1".to_owned()], Duration::from_secs(3600)).unwrap();
    restatus::certs::write(certs.path(), &generated).unwrap();
    let (port, admin_port) = (support::free_port(), support::free_port());
    let mut launch_args = vec![
        "serve".to_owned(),
        format!("--listen=127.0.0.1:{port}"),
        format!("--admin-listen=127.0.0.1:{admin_port}"),
        format!("--redis-url={}", redis.tls_url()),
        format!("--key-prefix={}", opts.key_prefix),
        format!("--tls-cert-file={}", certs.path().join("tls.crt").display()),
        format!("--tls-key-file={}", certs.path().join("tls.key").display()),
    ];
    launch_args.extend(opts.args.clone());
    let r = Restatus::launch(
        Launch {
            args: launch_args,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            port,
            admin_port,
            key_prefix: opts.key_prefix.clone(),
            name: support::unique("restatus-tls"),
            wait_ready: true,
        },
        Some(certs),
    )
    .await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    r.review_allowed(&client, &write(&support::unique("tls"), "over-tls"))
        .await;
    let recorded = r.metric(RECORDED).await == 1.0;
    let failed = r.metric(FAILED).await == 1.0;
    assert!(recorded != failed, "recorded={recorded} failed={failed}");
    recorded
}

#[tokio::test]
async fn rediss_with_a_ca_and_a_client_certificate() {
    let (redis, tls) = RedisServer::start_tls(true).await;
    let dir = tempfile::tempdir().unwrap();
    let client = issue_client(&tls.ca, "restatus", Duration::from_secs(3600)).unwrap();
    let (cert, key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    std::fs::write(&cert, &client.cert_pem).unwrap();
    std::fs::write(&key, &client.key_pem).unwrap();
    let ca = format!("--redis-ca-file={}", tls.ca_file.display());
    let with_cert = [
        ca.clone(),
        format!("--redis-client-cert-file={}", cert.display()),
        format!("--redis-client-key-file={}", key.display()),
    ];
    assert!(
        records_over_tls(&redis, &with_cert, &[]).await,
        "with the client certificate"
    );
    // Without the client certificate the TLS handshake is refused: reviews fail open.
    assert!(
        !records_over_tls(&redis, std::slice::from_ref(&ca), &[]).await,
        "without a client certificate"
    );
    // Without the CA, Redis's certificate is not trusted.
    assert!(
        !records_over_tls(&redis, &with_cert[1..], &[]).await,
        "without the CA"
    );
}

#[tokio::test]
async fn an_acl_user_with_its_password_from_a_file_or_the_environment() {
    let (redis, tls) = RedisServer::start_tls(false).await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "restatus",
            "on",
            ">s3cr3t-pw",
            "~*",
            "&*",
            "+@all",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "off"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cr3t-pw\n").unwrap();
    let ca = format!("--redis-ca-file={}", tls.ca_file.display());
    let user = "--redis-username=restatus".to_owned();
    let from_file = [
        ca.clone(),
        user.clone(),
        format!("--redis-password-file={}", file.display()),
    ];
    assert!(
        records_over_tls(&redis, &from_file, &[]).await,
        "password from a file"
    );
    let from_env = [ca.clone(), user.clone()];
    assert!(
        records_over_tls(
            &redis,
            &from_env,
            &[("RESTATUS_REDIS_PASSWORD", "s3cr3t-pw")]
        )
        .await,
        "password from the environment"
    );
    assert!(
        !records_over_tls(&redis, &from_env, &[("RESTATUS_REDIS_PASSWORD", "wrong")]).await,
        "a wrong password"
    );
    // The password never shows in the process's arguments.
    let cmdline_has_password = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .any(|c| c.windows(9).any(|w| w == b"s3cr3t-pw"));
    assert!(!cmdline_has_password);
}
