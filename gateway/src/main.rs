//! `medembed-gateway`: parses the configuration, sets up logging, and runs
//! the gateway until SIGTERM or SIGINT (see the library for everything else).

use clap::Parser;
use medembed_gateway::config::LogFormat;
use medembed_gateway::GatewayConfig;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MEDEMBED_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to standard error; standard output carries the audit log.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
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

fn main() {
    let cfg = GatewayConfig::parse();
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
    if let Err(e) = runtime.block_on(medembed_gateway::run(cfg, shutdown_signal())) {
        tracing::error!(error = %format!("{e:#}"), "gateway failed");
        std::process::exit(1);
    }
}
