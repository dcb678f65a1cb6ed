//! `medembed-worker`: parses the configuration, sets up logging, and runs the
//! worker until SIGTERM or SIGINT (see the library for everything else).

use clap::Parser;
use medembed_worker::config::LogFormat;
use medembed_worker::WorkerConfig;
use tracing_subscriber::EnvFilter;

/// Exit code when the model cannot be loaded (the pod's termination message
/// carries the reason, for the operator to report as ModelLoadFailed).
const EXIT_MODEL_LOAD: i32 = 3;

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("MEDEMBED_LOG").unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() {
    let cfg = WorkerConfig::parse();
    init_logging(cfg.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(medembed_worker::run(cfg, shutdown_signal())) {
        let msg = format!("{e:#}");
        tracing::error!(error = %msg, "worker failed");
        // Kubernetes shows this file's content as the container's termination
        // message; the operator turns it into a status reason.
        let path = std::env::var("MEDEMBED_TERMINATION_LOG")
            .unwrap_or_else(|_| "/dev/termination-log".into());
        let _ = std::fs::write(path, &msg);
        std::process::exit(EXIT_MODEL_LOAD);
    }
}
