//! `bench-worker`: the worker's benchmark. In one run it measures, side by side
//! on the same machine, model and requests:
//!
//! - the medembed worker (its release binary, a separate process);
//! - the baseline: the managed service's own serving stack, PyPI
//!   `azureml-inference-server-http` (gunicorn + Flask) running a scoring
//!   script with PIL preprocessing and onnxruntime (`tests/bench/baseline/`);
//! - a bare ONNX Runtime session in this process, fed preprocessed tensors at
//!   the batch sizes the worker formed (the floor: what serving costs on top).
//!
//! It prints images/s and p50/p99 latency at each concurrency, the ratios
//! against the baseline, where the worker's time went (its own `/metrics`),
//! CPU time per image, and the worker's memory, as Markdown. It is a
//! benchmark, not a test: it prints figures, and asserts nothing about them.
//! `scripts/bench-worker.sh` builds and installs everything and runs it.

mod bare;
mod promtext;
mod report;

use medembed_bench::{images, load, procs};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::Uri;
use http_body_util::{BodyExt, Full};

use crate::load::HttpClient;
use crate::procs::Server;
use crate::report::{Report, Row, ServerRun};

/// What each request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// One image per request.
    Image,
    /// One image and one text per request.
    ImageText,
}

impl Workload {
    /// Name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Workload::Image => "image",
            Workload::ImageText => "image+text",
        }
    }
}

/// Benchmarks the medembed worker against azureml-inference-server-http and a bare ONNX Runtime session.
#[derive(Debug, Parser)]
#[command(name = "bench-worker", version, about)]
struct Args {
    /// The worker's release binary.
    #[arg(long)]
    worker_bin: PathBuf,
    /// Model directory both servers load (the TEST MODEL in CI and by default).
    #[arg(long, env = "MEDEMBED_TEST_MODEL")]
    model_dir: PathBuf,
    /// ONNX Runtime's shared library (worker and bare session).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_library: PathBuf,
    /// The baseline's `azmlinfsrv` executable (in its own Python environment).
    #[arg(long)]
    azmlinfsrv: PathBuf,
    /// The baseline's scoring script.
    #[arg(long)]
    baseline_script: PathBuf,
    /// gunicorn worker processes of the baseline (`--worker_count`).
    #[arg(long, default_value_t = 2)]
    baseline_workers: usize,
    /// onnxruntime intra-op threads per baseline worker process.
    #[arg(long, default_value_t = 1)]
    baseline_ort_threads: usize,
    /// Concurrent clients, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 64])]
    concurrency: Vec<usize>,
    /// Workloads to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Workload::Image, Workload::ImageText])]
    workloads: Vec<Workload>,
    /// Warm-up before each measured window, seconds.
    #[arg(long, default_value_t = 3.0)]
    warmup_s: f64,
    /// Measured window of each run, seconds.
    #[arg(long, default_value_t = 20.0)]
    duration_s: f64,
    /// Duration of each bare-session run, seconds.
    #[arg(long, default_value_t = 5.0)]
    bare_s: f64,
    /// Intra-op threads of the bare session (0 = number of CPUs, the worker's default).
    #[arg(long, default_value_t = 0)]
    bare_threads: usize,
    /// Side of the square test images, pixels.
    #[arg(long, default_value_t = 1024)]
    image_size: u32,
    /// Distinct test images, sent round-robin.
    #[arg(long, default_value_t = 8)]
    images: usize,
    /// Longest one request may take, seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout_s: f64,
    /// Extra flag passed to the worker (repeatable), e.g. `--worker-arg=--max-batch-images=8`.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_args: Vec<String>,
    /// Directory for the servers' logs.
    #[arg(long, default_value = "target/bench-worker")]
    log_dir: PathBuf,
    /// Also write the report (Markdown) here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

async fn get(client: &HttpClient, url: &str) -> Option<(u16, Bytes)> {
    let req = http::Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// Waits until `path` answers 200 and `extra` holds.
async fn wait_ready(
    client: &HttpClient,
    server: &mut Server,
    path: &str,
    extra: impl Fn() -> bool,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let url = format!("{}{path}", server.base_url);
    loop {
        server.check_alive()?;
        if let Some((200, _)) = get(client, &url).await {
            if extra() {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() > limit {
            bail!(
                "the {} server was not ready after {limit:?}; see {}",
                server.name,
                server.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn start_worker(args: &Args, log_dir: &Path) -> anyhow::Result<Server> {
    let port = procs::free_port()?;
    let mut cmd = Command::new(&args.worker_bin);
    cmd.arg("--model-dir")
        .arg(&args.model_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--execution-provider")
        .arg("cpu")
        .args(&args.worker_args)
        .env("ORT_DYLIB_PATH", &args.ort_library)
        .env(
            "MEDEMBED_TERMINATION_LOG",
            log_dir.join("worker.termination"),
        );
    Server::spawn(
        "worker",
        cmd,
        port,
        &log_dir.join("worker.log"),
        "127.0.0.1",
    )
}

/// Line the baseline's scoring script prints once a gunicorn worker has
/// loaded the model and run one warm-up inference.
const BASELINE_READY: &str = "medembed-bench baseline ready";

fn start_baseline(args: &Args, log_dir: &Path) -> anyhow::Result<Server> {
    let port = procs::free_port()?;
    let script = std::fs::canonicalize(&args.baseline_script)
        .with_context(|| format!("{}", args.baseline_script.display()))?;
    let app_root = script.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut cmd = Command::new(&args.azmlinfsrv);
    cmd.arg("--entry_script")
        .arg(&script)
        .arg("--model_dir")
        .arg(&args.model_dir)
        .arg("--port")
        .arg(port.to_string())
        .arg("--worker_count")
        .arg(args.baseline_workers.to_string())
        .current_dir(&app_root)
        .env("AML_APP_ROOT", &app_root)
        .env(
            "MEDEMBED_BASELINE_ORT_THREADS",
            args.baseline_ort_threads.to_string(),
        );
    Server::spawn(
        "baseline",
        cmd,
        port,
        &log_dir.join("baseline.log"),
        "127.0.0.1",
    )
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Sends the same image+text request to both servers and compares the answers:
/// the two must be doing the same job for the comparison to mean anything.
async fn agreement(
    client: &HttpClient,
    worker: &Server,
    baseline: &Server,
    body: Bytes,
    timeout: Duration,
) -> anyhow::Result<(f64, f64)> {
    let features = |b: &Bytes, key: &str| -> anyhow::Result<Vec<f32>> {
        // The live shape: a list with one object per row (one here).
        let v: serde_json::Value = serde_json::from_slice(b)?;
        let row = v[0][key][0]
            .as_array()
            .with_context(|| format!("answer has no {key}"))?;
        Ok(row
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
            .collect())
    };
    let w = load::post(client, &worker.score_url.parse()?, body.clone(), timeout)
        .await
        .map_err(|e| anyhow::anyhow!("worker: {e}"))?;
    let b = load::post(client, &baseline.score_url.parse()?, body, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("baseline: {e}"))?;
    Ok((
        cosine(
            &features(&w, "image_features")?,
            &features(&b, "image_features")?,
        ),
        cosine(
            &features(&w, "text_features")?,
            &features(&b, "text_features")?,
        ),
    ))
}

/// One load run against one server, with CPU, machine and (for the worker)
/// metrics snapshots around it.
async fn measure(
    client: &HttpClient,
    server: &mut Server,
    spec: &load::LoadSpec,
    ticks: f64,
    with_metrics: bool,
) -> anyhow::Result<ServerRun> {
    server.check_alive()?;
    let metrics_url = format!("{}/metrics", server.base_url);
    let scrape = || async {
        get(client, &metrics_url)
            .await
            .map(|(_, b)| promtext::Scrape::parse(&String::from_utf8_lossy(&b)))
            .unwrap_or_default()
    };
    let before = if with_metrics {
        Some(scrape().await)
    } else {
        None
    };
    let pid = server.pid();
    let me = std::process::id();
    let cpu0 = procs::tree_cpu_seconds(pid, ticks);
    let self0 = procs::cpu_seconds(me, ticks);
    let (busy0, _) = procs::machine_cpu();
    let t0 = Instant::now();
    let result = load::run(client, spec).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = procs::tree_cpu_seconds(pid, ticks) - cpu0;
    let client_cpu = procs::cpu_seconds(me, ticks) - self0;
    let (busy1, _) = procs::machine_cpu();
    let machine = (busy1 - busy0) as f64 / ticks;
    let stages = match before {
        Some(b) => Some(promtext::Stages::between(&b, &scrape().await)),
        None => None,
    };
    server.check_alive()?;
    Ok(ServerRun {
        cpu_ms_per_image: if result.images_all_run > 0 {
            cpu * 1e3 / result.images_all_run as f64
        } else {
            f64::NAN
        },
        server_cores: cpu / elapsed,
        client_cores: client_cpu / elapsed,
        other_cores: ((machine - cpu - client_cpu) / elapsed).max(0.0),
        load_average: procs::load_average(),
        memory: procs::tree_memory(pid),
        stages,
        load: result,
    })
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.concurrency.contains(&0) {
        bail!("--concurrency values must be at least 1");
    }
    if args.images == 0 {
        bail!("--images must be at least 1");
    }
    let log_dir = args.log_dir.clone();
    std::fs::create_dir_all(&log_dir)?;
    let cfg = medembed_worker::model::ModelDir::open(&args.model_dir)?.config;
    let ticks = procs::clock_ticks();

    eprintln!(
        "bench-worker: drawing {} test images of {1}x{1}",
        args.images, args.image_size
    );
    let pngs: Vec<Vec<u8>> = (0..args.images)
        .map(|i| {
            images::encode_png(
                &images::xray_pixels(args.image_size, i as u64 + 1),
                args.image_size,
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let b64: Vec<String> = pngs.iter().map(|p| images::base64_lines(p)).collect();
    let bodies = |w: Workload| -> Vec<Bytes> {
        b64.iter()
            .enumerate()
            .map(|(i, b)| {
                let text = match w {
                    Workload::Image => None,
                    Workload::ImageText => Some(images::PROMPTS[i % images::PROMPTS.len()]),
                };
                Bytes::from(images::score_body(b, text))
            })
            .collect()
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = load::client();

    eprintln!("bench-worker: starting the worker and the baseline");
    let mut worker = start_worker(&args, &log_dir)?;
    let mut baseline = start_baseline(&args, &log_dir)?;
    let workers = args.baseline_workers;
    let baseline_log = baseline.log.clone();
    let (worker_start, baseline_start) = runtime.block_on(async {
        let w = wait_ready(
            &client,
            &mut worker,
            "/readyz",
            || true,
            Duration::from_secs(180),
        )
        .await?;
        let b = wait_ready(
            &client,
            &mut baseline,
            "/",
            || {
                std::fs::read_to_string(&baseline_log)
                    .map(|s| s.matches(BASELINE_READY).count() >= workers)
                    .unwrap_or(false)
            },
            Duration::from_secs(180),
        )
        .await?;
        anyhow::Ok((w, b))
    })?;
    let worker_ready_mem = procs::memory(worker.pid())?;
    let baseline_ready_mem = procs::tree_memory(baseline.pid());
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let (agree_image, agree_text) = runtime.block_on(agreement(
        &client,
        &worker,
        &baseline,
        bodies(Workload::ImageText)[0].clone(),
        timeout,
    ))?;
    eprintln!(
        "bench-worker: both ready (worker {worker_start:.1?}, baseline {baseline_start:.1?}); \
         cosine(worker, baseline) image {agree_image:.6}, text {agree_text:.6}"
    );

    let bare_threads = if args.bare_threads == 0 {
        cpus()
    } else {
        args.bare_threads
    };
    let mut bare = bare::Bare::load(
        &args.ort_library,
        &args.model_dir,
        bare_threads,
        &pngs,
        &images::PROMPTS,
    )?;

    let mut rows = Vec::new();
    for &workload in &args.workloads {
        let bodies = bodies(workload);
        for &c in &args.concurrency {
            let spec = |url: &str| -> anyhow::Result<load::LoadSpec> {
                Ok(load::LoadSpec {
                    url: url.parse::<Uri>()?,
                    bodies: bodies.clone(),
                    images_per_request: 1,
                    texts_per_request: usize::from(workload == Workload::ImageText),
                    dim: cfg.embedding_dim,
                    concurrency: c,
                    warmup: Duration::from_secs_f64(args.warmup_s),
                    duration: Duration::from_secs_f64(args.duration_s),
                    timeout,
                })
            };
            eprintln!("bench-worker: {} x{c}: worker", workload.label());
            let worker_spec = spec(&worker.score_url)?;
            let w = runtime.block_on(measure(&client, &mut worker, &worker_spec, ticks, true))?;
            eprintln!("  {}", w.load.summary());
            eprintln!("bench-worker: {} x{c}: baseline", workload.label());
            let baseline_spec = spec(&baseline.score_url)?;
            let b = runtime.block_on(measure(
                &client,
                &mut baseline,
                &baseline_spec,
                ticks,
                false,
            ))?;
            eprintln!("  {}", b.load.summary());
            let stages = w.stages.unwrap_or_default();
            let image_batch = stages.image_batch.round().max(1.0) as usize;
            let text_batch = if workload == Workload::ImageText {
                stages.text_batch.round().max(1.0) as usize
            } else {
                0
            };
            eprintln!(
                "bench-worker: {} x{c}: bare session at batch {image_batch}",
                workload.label()
            );
            let bare_run = bare.run(
                image_batch,
                text_batch,
                Duration::from_secs_f64(args.bare_s),
            )?;
            rows.push(Row {
                workload: workload.label(),
                concurrency: c,
                worker: w,
                baseline: b,
                bare: bare_run,
            });
        }
    }
    let worker_end_mem = procs::memory(worker.pid())?;
    let baseline_end_mem = procs::tree_memory(baseline.pid());
    worker.stop();
    baseline.stop();

    let weights = file_size(&args.model_dir.join(&cfg.image.onnx))
        + file_size(&args.model_dir.join(&cfg.text.onnx));
    let report = Report {
        image_size: args.image_size,
        images: args.images,
        png_bytes: pngs.iter().map(Vec::len).sum::<usize>() / pngs.len(),
        warmup_s: args.warmup_s,
        duration_s: args.duration_s,
        bare_s: args.bare_s,
        bare_threads,
        baseline_workers: args.baseline_workers,
        baseline_ort_threads: args.baseline_ort_threads,
        worker_args: args.worker_args.clone(),
        cpus: cpus(),
        agree_image,
        agree_text,
        weights,
        worker_ready_mem,
        worker_end_mem,
        baseline_ready_mem,
        baseline_end_mem,
        rows,
    };
    let md = report.markdown();
    println!("{md}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
