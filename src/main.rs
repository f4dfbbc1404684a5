#![forbid(unsafe_code)]
#![deny(warnings)]

use std::process::ExitCode;

use clap::Parser;
use restatus::{
    app::App,
    certs, cli,
    config::{Cli, Command, ResealArgs, ServeArgs},
    error::error_chain,
    store::{Keyring, Store, StoreMetrics},
    telemetry,
};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    // One crypto provider for every TLS user in the process (listener and Kubernetes client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Serve(args) => serve(*args).await,
        Command::Reseal(args) => reseal(*args).await,
        Command::Certs(args) => {
            let written = certs::generate(&args.hosts, args.validity)
                .and_then(|generated| certs::write(&args.out, &generated));
            match written {
                Ok(()) => {
                    for file in ["ca.crt", "tls.crt", "tls.key"] {
                        println!("{}", args.out.join(file).display());
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("restatus certs: {}", error_chain(&error));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    if let Err(error) = telemetry::init_logging(args.log.log_format, &args.log.log_level) {
        eprintln!("restatus: {}", error_chain(&error));
        return ExitCode::FAILURE;
    }
    let app = match App::build(args).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "restatus could not start");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match app.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "restatus failed");
            ExitCode::FAILURE
        }
    }
}

async fn reseal(args: ResealArgs) -> ExitCode {
    let fail = |error: &dyn std::error::Error| {
        eprintln!("restatus reseal: {}", error_chain(error));
        ExitCode::FAILURE
    };
    let Some(path) = &args.store.encryption_key_file else {
        eprintln!("restatus reseal: --encryption-key-file is required: the keyring to seal with");
        return ExitCode::FAILURE;
    };
    let keyring = match Keyring::load(path) {
        Ok(keyring) => keyring,
        Err(error) => return fail(&error),
    };
    let mut registry = telemetry::registry();
    let options = match args.store.redis_options() {
        Ok(options) => options,
        Err(error) => return fail(&error),
    };
    let store = match Store::connect_with(
        &options,
        &args.store.key_prefix,
        &args.store.cluster_name,
        StoreMetrics::register(&mut registry),
        Some(std::sync::Arc::new(keyring)),
    ) {
        Ok(store) => store,
        Err(error) => return fail(&error),
    };
    match cli::reseal(
        &store,
        args.dry_run,
        args.seal_plaintext,
        &mut std::io::stderr(),
    )
    .await
    {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("could not install signal handlers; stop restatus with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
    }
    shutdown.cancel();
}
