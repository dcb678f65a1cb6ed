//! `medembed-gateway`: parses the configuration, sets up logging, and runs
//! the gateway until SIGTERM or SIGINT (see the library for everything else).

use clap::Parser;
use medembed_api::serve::{init_logging, shutdown_signal};
use medembed_gateway::GatewayConfig;

fn main() {
    let cfg = GatewayConfig::parse();
    // Standard output carries the audit log; logs go to standard error.
    init_logging(cfg.log_format, "info");
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
