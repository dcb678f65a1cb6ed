//! `medembed-operator`: runs the operator (default), or prints the generated
//! CRD and RBAC YAML (`crdgen`), or fetches a model archive (`fetch-model`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use medembed_api::serve::{init_logging, shutdown_signal};
use medembed_operator::OperatorConfig;

#[derive(Parser)]
#[command(name = "medembed-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: OperatorConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRD and RBAC YAML generated from the types, or write one file
    /// per kind (and rbac.yaml) into a directory.
    Crdgen {
        /// Write the files here instead of printing them.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Download a model archive, verify its SHA-256 and unpack it (the init
    /// container of URL model sources).
    FetchModel {
        /// The archive's http(s) URL.
        #[arg(long)]
        url: String,
        /// Its expected SHA-256 (hex).
        #[arg(long)]
        sha256: String,
        /// The directory to unpack into.
        #[arg(long)]
        dest: PathBuf,
        /// Seconds the whole download may take.
        #[arg(long, default_value_t = 3600)]
        timeout_seconds: u64,
        /// Most bytes downloaded.
        #[arg(long, default_value_t = 50 << 30)]
        max_bytes: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crdgen { out_dir }) => {
            let files = medembed_operator::crdgen::generate()?;
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    for (name, content) in files {
                        std::fs::write(dir.join(name), content)?;
                    }
                }
                None => {
                    for (_, content) in files {
                        print!("{content}");
                    }
                }
            }
            Ok(())
        }
        Some(Command::FetchModel {
            url,
            sha256,
            dest,
            timeout_seconds,
            max_bytes,
        }) => {
            let limits = medembed_operator::fetch::Limits {
                timeout: std::time::Duration::from_secs(timeout_seconds),
                max_bytes,
            };
            init_logging(cli.config.log_format, "info");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            if let Err(e) = rt.block_on(medembed_operator::fetch::fetch_with(
                &url, &sha256, &dest, limits,
            )) {
                tracing::error!(error = %e, "fetching the model failed");
                // Shown as the init container's termination message.
                let _ = std::fs::write("/dev/termination-log", e.to_string());
                std::process::exit(2);
            }
            Ok(())
        }
        None => {
            init_logging(cli.config.log_format, "info");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(medembed_operator::run(cli.config, shutdown_signal()))?;
            Ok(())
        }
    }
}
