//! `medembed-worker`: parses the configuration, sets up logging, and runs the
//! worker until SIGTERM or SIGINT (see the library for everything else).

use clap::Parser;
use medembed_api::serve::{init_logging, shutdown_signal};
use medembed_worker::WorkerConfig;

/// Arenas of glibc's allocator. By default glibc gives each thread that
/// allocates concurrently an arena of its own (up to 8 per core) and an arena
/// keeps its high-water mark. The worker's big short-lived buffers (request
/// bodies, decoded images) pass through many threads, so with the default
/// the resident set at 64 clients was about twice the live data (270 MiB
/// against 190 MiB with one arena, at the same throughput: the allocations
/// are few and large, so sharing an arena costs no measurable contention).
const MALLOC_ARENAS: i32 = 2;

/// Applies [`MALLOC_ARENAS`] unless `MALLOC_ARENA_MAX` is set (glibc reads
/// that itself).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets an allocator parameter; it is called first
    // thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() {
    limit_malloc_arenas();
    let cfg = WorkerConfig::parse();
    init_logging(cfg.log_format, "info,ort=warn");
    // Large JSON bodies are parsed and serialised on blocking threads, at
    // most one per core at a time. A small pool keeps that work on a few
    // threads: every thread that allocates gets its own allocator arena,
    // which keeps its peak size, so many short-lived threads cost memory.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(2 * cfg.decode_threads() + 2)
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
        // message; with the exit code, the operator turns it into a status
        // reason (ModelLoadFailed).
        let path = std::env::var(medembed_api::workers::env::TERMINATION_LOG)
            .unwrap_or_else(|_| "/dev/termination-log".into());
        let _ = std::fs::write(path, &msg);
        std::process::exit(medembed_api::workers::EXIT_MODEL_LOAD);
    }
}
