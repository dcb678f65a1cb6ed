//! `soak`: a long, steady load through the gateway, watching every server
//! process for leaks and the latency for drift.
//!
//! `scripts/soak.sh` starts the gateway and two workers as separate processes
//! and runs this with their process ids. It drives a closed-loop mix of
//! scoring requests through the gateway (image rows of mixed sizes, text
//! rows, image+text rows, and about 5% bad inputs that must get their
//! documented JSON error), checks every answer, and every interval samples
//! each process's resident memory, open file descriptors and threads, and
//! the latency of the good requests that finished in that interval.
//!
//! A leak shows up as memory, descriptors or threads that keep growing after
//! the warm-up (allocator arenas, caches and pools fill during it), so the
//! report fits a least-squares slope to the samples after the warm-up, and
//! compares the p99 latency of the first and the last warm-up-long windows.
//! It writes the raw samples as JSON and the report as Markdown; it is a
//! benchmark run by hand, and asserts nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http::{StatusCode, Uri};
use medembed_bench::images::{base64_lines, encode_png, xray_pixels, PROMPTS};
use medembed_bench::load::{self, check_answer, quantile, HttpClient};
use medembed_bench::procs;
use serde_json::{json, Value};

/// Runs a steady mixed load through the gateway and samples its processes.
#[derive(Debug, Parser)]
#[command(name = "soak", version, about)]
struct Args {
    /// The gateway's scoring URL (`http://127.0.0.1:PORT/endpoints/NAME/score`).
    #[arg(long)]
    url: Uri,
    /// The client key the gateway accepts (sent as `Authorization: Bearer`).
    #[arg(long, env = "SOAK_KEY", hide_env_values = true)]
    key: String,
    /// A process to sample, as NAME=PID (repeatable).
    #[arg(long = "process", value_parser = parse_process, required = true)]
    processes: Vec<(String, u32)>,
    /// Length of the run, minutes.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Warm-up, minutes: the RSS slope uses the samples after it, and the
    /// p99 drift compares the first and the last windows this long.
    #[arg(long, default_value_t = 5.0)]
    warmup_minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    interval_s: f64,
    /// Concurrent clients (closed loop).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The endpoint's body limit (`maxBodyBytes`): the oversized bad request
    /// is just over it, and every good one must be under it.
    #[arg(long)]
    max_body_bytes: usize,
    /// One request in this many is a bad input.
    #[arg(long, default_value_t = 20)]
    bad_every: u64,
    /// Embedding size the answers must have.
    #[arg(long, default_value_t = 1024)]
    dim: usize,
    /// Longest one request may take, seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout_s: f64,
    /// Where the raw samples go (JSON).
    #[arg(long)]
    json: PathBuf,
    /// Where the report goes (Markdown).
    #[arg(long)]
    markdown: PathBuf,
    /// A line of the report's set-up section (repeatable).
    #[arg(long = "setup")]
    setup: Vec<String>,
}

fn parse_process(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|_| format!("bad pid in {s}"))?;
    Ok((name.to_string(), pid))
}

/// What an answer must be.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 200 with this many image and text embeddings.
    Good { images: usize, texts: usize },
    /// This status with a JSON error body.
    Error(u16),
    /// This status with a JSON error body, or the connection closed while
    /// the body was still being sent: a server that refuses a declared
    /// length at once closes without reading the rest, and the client may
    /// see the close before the answer.
    Refused(u16),
}

/// One request of the mix.
#[derive(Debug, Clone)]
struct Case {
    kind: &'static str,
    body: Bytes,
    bad_key: bool,
    expect: Expect,
}

/// A scoring body with one row per `(image, text)`; `""` for "none".
fn rows_body(rows: &[(&str, &str)]) -> Bytes {
    let data: Vec<Value> = rows.iter().map(|(i, t)| json!([i, t])).collect();
    let body = json!({
        "input_data": {
            "columns": ["image", "text"],
            "index": (0..rows.len()).collect::<Vec<_>>(),
            "data": data,
        },
        "params": {},
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The request mix: good requests by kind, and the bad ones.
struct Mix {
    good: Vec<(&'static str, Vec<Case>)>,
    bad: Vec<Case>,
    bad_every: u64,
}

/// Image sizes of the mix, pixels per side.
const SIZES: [u32; 3] = [256, 512, 1024];

impl Mix {
    fn build(max_body_bytes: usize, bad_every: u64) -> anyhow::Result<Mix> {
        let mut pngs = Vec::new();
        for (k, &size) in SIZES.iter().enumerate() {
            for seed in 0..2u64 {
                let png = encode_png(&xray_pixels(size, 100 + 10 * k as u64 + seed), size)?;
                pngs.push(png);
            }
        }
        let b64: Vec<String> = pngs.iter().map(|p| base64_lines(p)).collect();
        let img = |i: usize| b64[i % b64.len()].as_str();
        let text = |i: usize| PROMPTS[i % PROMPTS.len()];

        // Image rows: 1-4 per request, sizes mixed within and across requests.
        let mut image = Vec::new();
        for n in 1..=4usize {
            for start in 0..b64.len() {
                let rows: Vec<(&str, &str)> = (0..n).map(|j| (img(start + 3 * j), "")).collect();
                image.push(Case {
                    kind: "image",
                    body: rows_body(&rows),
                    bad_key: false,
                    expect: Expect::Good {
                        images: n,
                        texts: 0,
                    },
                });
            }
        }
        let mut texts = Vec::new();
        for n in 1..=4usize {
            for start in 0..PROMPTS.len() {
                let rows: Vec<(&str, &str)> = (0..n).map(|j| ("", text(start + j))).collect();
                texts.push(Case {
                    kind: "text",
                    body: rows_body(&rows),
                    bad_key: false,
                    expect: Expect::Good {
                        images: 0,
                        texts: n,
                    },
                });
            }
        }
        let mut both = Vec::new();
        for n in 1..=2usize {
            for start in 0..b64.len() {
                let rows: Vec<(&str, &str)> = (0..n)
                    .map(|j| (img(start + 2 * j), text(start + j)))
                    .collect();
                both.push(Case {
                    kind: "image+text",
                    body: rows_body(&rows),
                    bad_key: false,
                    expect: Expect::Good {
                        images: n,
                        texts: n,
                    },
                });
            }
        }
        let largest = image
            .iter()
            .chain(&both)
            .map(|c| c.body.len())
            .max()
            .unwrap_or(0);
        if largest >= max_body_bytes {
            bail!("the largest good body ({largest} bytes) is not under --max-body-bytes ({max_body_bytes})");
        }

        // Bad inputs: each must get its documented status and a JSON error.
        let truncated = base64_lines(&pngs[2][..pngs[2].len() / 2]);
        let padding = "x".repeat(max_body_bytes + 4096);
        let bad = vec![
            Case {
                kind: "bad: malformed base64",
                body: rows_body(&[("@@not*base64##", "")]),
                bad_key: false,
                expect: Expect::Error(400),
            },
            Case {
                kind: "bad: truncated PNG",
                body: rows_body(&[(truncated.as_str(), "")]),
                bad_key: false,
                expect: Expect::Error(400),
            },
            Case {
                kind: "bad: body over the limit",
                body: rows_body(&[("", padding.as_str())]),
                bad_key: false,
                expect: Expect::Refused(413),
            },
            Case {
                kind: "bad: wrong key",
                body: rows_body(&[("", text(0))]),
                bad_key: true,
                expect: Expect::Error(401),
            },
        ];
        Ok(Mix {
            good: vec![("image", image), ("text", texts), ("image+text", both)],
            bad,
            bad_every: bad_every.max(2),
        })
    }

    /// The `i`th request: every `bad_every`th is bad (kinds in turn); the
    /// rest are half image, a quarter text, a quarter image+text, with the
    /// body drawn from a fixed hash of `i` (the same sequence every run).
    fn pick(&self, i: u64) -> &Case {
        if i % self.bad_every == self.bad_every - 1 {
            return &self.bad[(i / self.bad_every) as usize % self.bad.len()];
        }
        let h = mix64(i);
        let kind = match h % 4 {
            0 | 1 => 0,
            2 => 1,
            _ => 2,
        };
        let cases = &self.good[kind].1;
        &cases[(h >> 8) as usize % cases.len()]
    }

    /// The kinds, in report order, with what each expects.
    fn kinds(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = self
            .good
            .iter()
            .map(|(k, _)| (*k, "200".to_string()))
            .collect();
        for c in &self.bad {
            if let Expect::Error(s) | Expect::Refused(s) = c.expect {
                out.push((c.kind, s.to_string()));
            }
        }
        out
    }
}

/// splitmix64: a fixed, well-spread hash of the request index.
fn mix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Checks an answer against what its case expects: `Ok(None)` for a good
/// answer, `Ok(Some(code))` for the expected error, else what went wrong.
fn judge(
    case: &Case,
    answer: Result<(StatusCode, Bytes), String>,
    dim: usize,
) -> Result<Option<String>, String> {
    let (status, body) = match (answer, &case.expect) {
        (Ok(a), _) => a,
        (Err(_), Expect::Refused(_)) => {
            return Ok(Some("closed while sending (refused on its length)".into()))
        }
        (Err(e), _) => return Err(e),
    };
    match case.expect {
        Expect::Good { images, texts } => {
            if status != StatusCode::OK {
                return Err(format!("status {}", status.as_u16()));
            }
            check_answer(&body, images, texts, dim).map(|()| None)
        }
        Expect::Error(want) | Expect::Refused(want) => {
            if status.as_u16() != want {
                return Err(format!("status {} (want {want})", status.as_u16()));
            }
            let v: Value = serde_json::from_slice(&body).map_err(|_| "not a JSON error")?;
            v.pointer("/error/code")
                .and_then(Value::as_str)
                .map(|c| Some(c.to_string()))
                .ok_or_else(|| "no error code".to_string())
        }
    }
}

/// What the clients saw since the last sample.
#[derive(Debug, Default)]
struct Window {
    /// Seconds, of the good requests answered correctly.
    latencies: Vec<f64>,
    /// Requests sent, by kind.
    sent: BTreeMap<String, u64>,
    /// Failed requests (wrong status, wrong answer, no answer), by kind and what.
    errors: BTreeMap<String, u64>,
    /// Error codes the bad inputs got, by kind.
    codes: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Window {
    fn merge(&mut self, o: Window) {
        self.latencies.extend(o.latencies);
        for (k, v) in o.sent {
            *self.sent.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, m) in o.codes {
            let e = self.codes.entry(k).or_default();
            for (c, v) in m {
                *e.entry(c).or_default() += v;
            }
        }
    }
}

fn lock(w: &Mutex<Window>) -> MutexGuard<'_, Window> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// One process's figures at one sample; `None` once it is gone.
#[derive(Debug, Clone, Copy)]
struct ProcSample {
    rss_kb: u64,
    fds: usize,
    threads: u64,
}

fn read_proc(pid: u32) -> Option<ProcSample> {
    let m = procs::memory(pid).ok()?;
    Some(ProcSample {
        rss_kb: m.rss / 1024,
        fds: procs::open_fds(pid)?,
        threads: procs::threads(pid)?,
    })
}

/// One sample: the processes at `t_s`, and the requests of the interval that
/// ended then.
#[derive(Debug)]
struct Sample {
    t_s: f64,
    procs: Vec<Option<ProcSample>>,
    window: Window,
}

/// Least-squares slope of `y` against `t` (seconds), per hour. `None` with
/// fewer than three points or under a minute between the first and last.
fn slope_per_hour(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let (st, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, y)| (a + t, b + y));
    let (mt, my) = (st / n, sy / n);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (t, y) in points {
        sxy += (t - mt) * (y - my);
        sxx += (t - mt) * (t - mt);
    }
    let span = points.last()?.0 - points.first()?.0;
    if span < 60.0 || sxx == 0.0 {
        return None;
    }
    Some(sxy / sxx * 3600.0)
}

/// Pooled latencies (sorted, seconds) of the samples whose interval ended in `(from, to]`.
fn pooled(samples: &[Sample], from: f64, to: f64) -> Vec<f64> {
    let mut v: Vec<f64> = samples
        .iter()
        .filter(|s| s.t_s > from && s.t_s <= to)
        .flat_map(|s| s.window.latencies.iter().copied())
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Relative change of `last` over `first`, percent; `None` without both.
fn drift_pct(first: Option<f64>, last: Option<f64>) -> Option<f64> {
    match (first, last) {
        (Some(a), Some(b)) if a > 0.0 => Some((b - a) / a * 100.0),
        _ => None,
    }
}

fn ms(sorted: &[f64], q: f64) -> Option<f64> {
    (!sorted.is_empty()).then(|| quantile(sorted, q) * 1e3)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.digits$}"))
}

/// Bytes in a MB, as the targets count them.
const MB: f64 = 1e6;
/// The RSS slope target, MB per hour.
const RSS_SLOPE_TARGET: f64 = 1.0;
/// The p99 drift target, percent.
const P99_DRIFT_TARGET: f64 = 20.0;

/// What every client task shares.
#[derive(Clone)]
struct Load {
    client: HttpClient,
    url: Uri,
    mix: Arc<Mix>,
    /// Index of the next request of the mix.
    next: Arc<AtomicU64>,
    window: Arc<Mutex<Window>>,
    end: Instant,
    /// `Authorization` values: the good key and a wrong one.
    auth: (String, String),
    dim: usize,
    timeout: Duration,
}

/// One closed-loop client: the next request as soon as the last is answered.
async fn client_loop(load: Load) {
    let Load {
        client,
        url,
        mix,
        next,
        window,
        end,
        auth,
        dim,
        timeout,
    } = load;
    while Instant::now() < end {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let case = mix.pick(i);
        let key = if case.bad_key { &auth.1 } else { &auth.0 };
        let headers = [("authorization", key.as_str())];
        let t0 = Instant::now();
        let answer = load::send(&client, &url, case.body.clone(), &headers, timeout).await;
        let took = t0.elapsed().as_secs_f64();
        let verdict = judge(case, answer, dim);
        let failed = verdict.is_err();
        {
            let mut w = lock(&window);
            *w.sent.entry(case.kind.to_string()).or_default() += 1;
            match verdict {
                Ok(None) => w.latencies.push(took),
                Ok(Some(code)) => {
                    *w.codes
                        .entry(case.kind.to_string())
                        .or_default()
                        .entry(code)
                        .or_default() += 1;
                }
                Err(what) => {
                    *w.errors
                        .entry(format!("{}: {what}", case.kind))
                        .or_default() += 1
                }
            }
        }
        if failed {
            // Do not spin on a server that fails instantly.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.interval_s <= 0.0 || args.minutes <= 0.0 {
        bail!("--concurrency, --interval-s and --minutes must be positive");
    }
    eprintln!("soak: drawing the test images");
    let mix = Arc::new(Mix::build(args.max_body_bytes, args.bad_every)?);
    let names: Vec<String> = args.processes.iter().map(|(n, _)| n.clone()).collect();
    let client = load::client();
    let window = Arc::new(Mutex::new(Window::default()));
    let next = Arc::new(AtomicU64::new(0));
    let auth = (
        format!("Bearer {}", args.key),
        "Bearer not-a-key-this-gateway-knows".to_string(),
    );
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let interval = Duration::from_secs_f64(args.interval_s);

    let sample_procs = || {
        args.processes
            .iter()
            .map(|(_, pid)| read_proc(*pid))
            .collect::<Vec<_>>()
    };
    let mut samples = vec![Sample {
        t_s: 0.0,
        procs: sample_procs(),
        window: Window::default(),
    }];
    if samples[0].procs.iter().any(Option::is_none) {
        bail!("a process to sample is not running (or /proc/PID is not readable)");
    }
    let start = Instant::now();
    let end = start + total;
    eprintln!(
        "soak: {} minutes, {} clients, a sample every {} s",
        args.minutes, args.concurrency, args.interval_s
    );
    let shared = Load {
        client,
        url: args.url.clone(),
        mix: mix.clone(),
        next,
        window: window.clone(),
        end,
        auth,
        dim: args.dim,
        timeout,
    };
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        tasks.push(tokio::spawn(client_loop(shared.clone())));
    }
    let mut k = 1u32;
    loop {
        let due = (start + interval * k).min(end);
        tokio::time::sleep_until(due.into()).await;
        let w = std::mem::take(&mut *lock(&window));
        let s = Sample {
            t_s: (due - start).as_secs_f64(),
            procs: sample_procs(),
            window: w,
        };
        let lat = {
            let mut l = s.window.latencies.clone();
            l.sort_by(f64::total_cmp);
            l
        };
        let mut line = format!(
            "soak: {:>6.0} s  good {:>4}  p99 {:>7} ms  errors {:>3}",
            s.t_s,
            lat.len(),
            fmt_opt(ms(&lat, 0.99), 1),
            s.window.errors.values().sum::<u64>()
        );
        for (name, p) in names.iter().zip(&s.procs) {
            match p {
                Some(p) => {
                    let _ = write!(
                        line,
                        "  {name} {:.1} MB/{} fd/{} thr",
                        p.rss_kb as f64 * 1024.0 / MB,
                        p.fds,
                        p.threads
                    );
                }
                None => {
                    let _ = write!(line, "  {name} GONE");
                }
            }
        }
        eprintln!("{line}");
        samples.push(s);
        if due >= end {
            break;
        }
        k += 1;
    }
    for t in tasks {
        t.await.context("a client task failed")?;
    }
    // Requests in flight at the end finished after the last sample: count them there.
    let tail = std::mem::take(&mut *lock(&window));
    if let Some(last) = samples.last_mut() {
        last.window.merge(tail);
    }

    let (json, md) = report(&args, &names, &mix, &samples);
    for p in [&args.json, &args.markdown] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(&args.json, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    std::fs::write(&args.markdown, &md)
        .with_context(|| format!("writing {}", args.markdown.display()))?;
    println!("{md}");
    Ok(())
}

/// Per-process figures of the report.
#[derive(Debug)]
struct ProcSummary {
    rss_start_mb: Option<f64>,
    rss_warm_mb: Option<f64>,
    rss_end_mb: Option<f64>,
    slope_mb_h: Option<f64>,
    fds: Option<(usize, usize)>,
    threads: Option<(u64, u64)>,
    gone_at_s: Option<f64>,
}

fn summarise(samples: &[Sample], p: usize, warmup_s: f64) -> ProcSummary {
    let rss = |s: &Sample| s.procs[p].map(|x| x.rss_kb as f64 * 1024.0 / MB);
    let after: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t_s >= warmup_s)
        .filter_map(|s| Some((s.t_s, rss(s)?)))
        .collect();
    let live: Vec<ProcSample> = samples.iter().filter_map(|s| s.procs[p]).collect();
    let min_max = |f: &dyn Fn(&ProcSample) -> u64| {
        let v = live.iter().map(f);
        Some((v.clone().min()?, v.max()?))
    };
    ProcSummary {
        rss_start_mb: samples.first().and_then(rss),
        rss_warm_mb: samples.iter().find(|s| s.t_s >= warmup_s).and_then(rss),
        rss_end_mb: samples.last().and_then(rss),
        slope_mb_h: slope_per_hour(&after),
        fds: min_max(&|x| x.fds as u64).map(|(a, b)| (a as usize, b as usize)),
        threads: min_max(&|x| x.threads),
        gone_at_s: samples.iter().find(|s| s.procs[p].is_none()).map(|s| s.t_s),
    }
}

fn verdict(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "**met**",
        Some(false) => "**NOT met**",
        None => "n/a (run too short)",
    }
}

/// The raw samples (JSON) and the report (Markdown).
fn report(args: &Args, names: &[String], mix: &Mix, samples: &[Sample]) -> (Value, String) {
    let warmup_s = args.warmup_minutes * 60.0;
    let end_s = samples.last().map_or(0.0, |s| s.t_s);
    let sums: Vec<ProcSummary> = (0..names.len())
        .map(|p| summarise(samples, p, warmup_s))
        .collect();
    let mut all = Window::default();
    for s in samples {
        all.merge(Window {
            latencies: s.window.latencies.clone(),
            sent: s.window.sent.clone(),
            errors: s.window.errors.clone(),
            codes: s.window.codes.clone(),
        });
    }
    all.latencies.sort_by(f64::total_cmp);
    // The two windows must not overlap, or the drift compares a window with itself.
    let long_enough = end_s >= 2.0 * warmup_s;
    let first = pooled(samples, 0.0, warmup_s.min(end_s));
    let last = pooled(samples, (end_s - warmup_s).max(0.0), end_s);
    let (p99_first, p99_last) = if long_enough {
        (ms(&first, 0.99), ms(&last, 0.99))
    } else {
        (None, None)
    };
    let drift = drift_pct(p99_first, p99_last);
    let sent: u64 = all.sent.values().sum();
    let errors: u64 = all.errors.values().sum();

    // JSON: every sample, as measured.
    let json_samples: Vec<Value> = samples
        .iter()
        .map(|s| {
            let mut l = s.window.latencies.clone();
            l.sort_by(f64::total_cmp);
            let procs: serde_json::Map<String, Value> = names
                .iter()
                .zip(&s.procs)
                .map(|(n, p)| {
                    let v = p.map_or(
                        Value::Null,
                        |p| json!({"rss_kb": p.rss_kb, "fds": p.fds, "threads": p.threads}),
                    );
                    (n.clone(), v)
                })
                .collect();
            json!({
                "t_s": s.t_s,
                "processes": procs,
                "good": l.len(),
                "p50_ms": ms(&l, 0.5),
                "p99_ms": ms(&l, 0.99),
                "requests": s.window.sent,
                "errors": s.window.errors,
            })
        })
        .collect();
    let json_procs: serde_json::Map<String, Value> = names
        .iter()
        .zip(&sums)
        .map(|(n, s)| {
            (
                n.clone(),
                json!({
                    "rss_start_mb": s.rss_start_mb,
                    "rss_after_warmup_mb": s.rss_warm_mb,
                    "rss_end_mb": s.rss_end_mb,
                    "rss_slope_mb_per_h_after_warmup": s.slope_mb_h,
                    "fds_min_max": s.fds,
                    "threads_min_max": s.threads,
                    "gone_at_s": s.gone_at_s,
                }),
            )
        })
        .collect();
    let json = json!({
        "setup": args.setup,
        "minutes": args.minutes,
        "warmup_minutes": args.warmup_minutes,
        "interval_s": args.interval_s,
        "concurrency": args.concurrency,
        "bad_every": args.bad_every,
        "summary": {
            "processes": json_procs,
            "p99_first_ms": p99_first,
            "p99_last_ms": p99_last,
            "p99_drift_pct": drift,
            "requests": all.sent,
            "errors": all.errors,
            "error_codes": all.codes,
        },
        "samples": json_samples,
    });

    // Markdown.
    let wm = args.warmup_minutes;
    let mut md = String::new();
    let _ = writeln!(md, "# Soak\n");
    let _ = writeln!(
        md,
        "{:.0} minutes of steady, closed-loop load through the gateway to two workers; every \
         process sampled every {} s. Targets: no growth after a {wm}-minute warm-up (RSS \
         least-squares slope under {RSS_SLOPE_TARGET} MB/hour over the samples after it), and the \
         p99 latency of the last {wm} minutes within {P99_DRIFT_TARGET}% of the first {wm} \
         minutes'. MB = 10^6 bytes.\n",
        end_s / 60.0,
        args.interval_s
    );
    let _ = writeln!(md, "## Set-up\n");
    for line in &args.setup {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(
        md,
        "- Load: {} clients, closed loop, through the gateway's `/score`. Of every {} requests \
         one is a bad input (in turn: malformed base64 -> 400, truncated PNG -> 400, a body just \
         over the endpoint's {} byte limit -> 413, a wrong key -> 401), which must get its status \
         and a JSON error; of the rest, half carry 1-4 image rows ({} px PNGs, X-ray-like, sizes \
         mixed), a quarter 1-4 text rows, a quarter 1-2 image+text rows. Every good answer is \
         checked (200, one finite {}-d vector per image and per text). Latency counts good \
         requests only.",
        args.concurrency,
        mix.bad_every,
        args.max_body_bytes,
        SIZES.map(|s| format!("{s}²")).join(", "),
        args.dim
    );
    let _ = writeln!(md, "\n## Processes\n");
    let _ = writeln!(
        md,
        "| process | RSS at start | RSS at {wm} min | RSS at end | RSS slope after {wm} min | open fds min-max | threads min-max |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for (n, s) in names.iter().zip(&sums) {
        let _ = writeln!(
            md,
            "| {n}{} | {} MB | {} MB | {} MB | {} MB/h | {} | {} |",
            s.gone_at_s
                .map_or_else(String::new, |t| format!(" (**gone at {t:.0} s**)")),
            fmt_opt(s.rss_start_mb, 1),
            fmt_opt(s.rss_warm_mb, 1),
            fmt_opt(s.rss_end_mb, 1),
            fmt_opt(s.slope_mb_h, 2),
            s.fds.map_or("n/a".into(), |(a, b)| format!("{a}-{b}")),
            s.threads.map_or("n/a".into(), |(a, b)| format!("{a}-{b}")),
        );
    }
    let _ = writeln!(md, "\n## Latency (good requests)\n");
    let _ = writeln!(md, "| window | requests | p50 | p99 |");
    let _ = writeln!(md, "|---|---|---|---|");
    let _ = writeln!(
        md,
        "| first {wm} min | {} | {} ms | {} ms |",
        first.len(),
        fmt_opt(ms(&first, 0.5), 1),
        fmt_opt(ms(&first, 0.99), 1)
    );
    let _ = writeln!(
        md,
        "| last {wm} min | {} | {} ms | {} ms |",
        last.len(),
        fmt_opt(ms(&last, 0.5), 1),
        fmt_opt(ms(&last, 0.99), 1)
    );
    let _ = writeln!(
        md,
        "| whole run | {} | {} ms | {} ms |",
        all.latencies.len(),
        fmt_opt(ms(&all.latencies, 0.5), 1),
        fmt_opt(ms(&all.latencies, 0.99), 1)
    );
    let _ = writeln!(
        md,
        "\np99 drift (last {wm} min against first {wm} min): {}{}",
        fmt_opt(drift, 1),
        if drift.is_some() {
            "%"
        } else {
            " (needs at least twice the warm-up)"
        }
    );
    let _ = writeln!(md, "\n## Requests\n");
    let _ = writeln!(
        md,
        "{sent} requests, {errors} errors (a wrong status, a wrong answer or none), {:.1} requests/s.\n",
        sent as f64 / end_s.max(1.0)
    );
    let _ = writeln!(md, "| kind | expected | sent | error codes seen | errors |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (kind, expected) in mix.kinds() {
        let codes = all.codes.get(kind).map_or_else(
            || "-".to_string(),
            |m| {
                m.iter()
                    .map(|(c, v)| format!("{c} ({v})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        let errs: u64 = all
            .errors
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{kind}: ")))
            .map(|(_, v)| v)
            .sum();
        let _ = writeln!(
            md,
            "| {kind} | {expected} | {} | {codes} | {errs} |",
            all.sent.get(kind).copied().unwrap_or(0)
        );
    }
    if !all.errors.is_empty() {
        let _ = writeln!(md, "\nErrors:\n");
        for (k, v) in &all.errors {
            let _ = writeln!(md, "- {k}: {v}");
        }
    }
    let _ = writeln!(md, "\n## Verdict\n");
    for (n, s) in names.iter().zip(&sums) {
        let ok = s
            .slope_mb_h
            .map(|x| x < RSS_SLOPE_TARGET && s.gone_at_s.is_none());
        let _ = writeln!(
            md,
            "- {n}: RSS slope after {wm} min {} MB/h < {RSS_SLOPE_TARGET} MB/h: {}",
            fmt_opt(s.slope_mb_h, 2),
            verdict(ok)
        );
    }
    let _ = writeln!(
        md,
        "- p99 drift {}% within ±{P99_DRIFT_TARGET}%: {}",
        fmt_opt(drift, 1),
        verdict(drift.map(|d| d.abs() <= P99_DRIFT_TARGET))
    );
    let _ = writeln!(
        md,
        "- errors (requests without their expected answer): {errors}: {}",
        if errors == 0 { "**none**" } else { "**some**" }
    );
    let _ = writeln!(
        md,
        "\n![RSS per process and latency over time](soak.png)\n\nRaw samples: `soak.json`."
    );
    (json, md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_per_hour_and_needs_a_span() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 60.0, 100.0 + i as f64))
            .collect();
        let s = slope_per_hour(&pts).unwrap();
        assert!((s - 60.0).abs() < 1e-9, "{s}");
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64 * 10.0, 5.0)).collect();
        assert_eq!(slope_per_hour(&flat), Some(0.0));
        assert_eq!(slope_per_hour(&pts[..2]), None);
        assert_eq!(slope_per_hour(&[]), None);
        // Three samples 10 s apart: too short a span to fit.
        let short = [(0.0, 1.0), (10.0, 2.0), (20.0, 3.0)];
        assert_eq!(slope_per_hour(&short), None);
    }

    #[test]
    fn drift_needs_both_windows() {
        assert_eq!(drift_pct(Some(10.0), Some(12.0)), Some(20.0));
        assert_eq!(drift_pct(None, Some(12.0)), None);
        assert_eq!(drift_pct(Some(0.0), Some(12.0)), None);
    }

    fn sample(t_s: f64, rss_kb: u64, lat: &[f64]) -> Sample {
        Sample {
            t_s,
            procs: vec![Some(ProcSample {
                rss_kb,
                fds: 10,
                threads: 4,
            })],
            window: Window {
                latencies: lat.to_vec(),
                ..Window::default()
            },
        }
    }

    #[test]
    fn a_run_shorter_than_the_warmup_reports_na() {
        let samples: Vec<Sample> = (0..19)
            .map(|i| sample(i as f64 * 10.0, 1000, &[0.01]))
            .collect();
        let s = summarise(&samples, 0, 300.0);
        assert!(s.slope_mb_h.is_none() && s.rss_warm_mb.is_none());
        assert_eq!(s.fds, Some((10, 10)));
        let args = Args::parse_from([
            "soak",
            "--url",
            "http://127.0.0.1:1/score",
            "--key",
            "k",
            "--process",
            "gw=1",
            "--max-body-bytes",
            "1000000",
            "--json",
            "x",
            "--markdown",
            "y",
            "--minutes",
            "3",
        ]);
        let mix = Mix {
            good: vec![("image", vec![])],
            bad: vec![],
            bad_every: 20,
        };
        let (json, md) = report(&args, &["gw".into()], &mix, &samples);
        assert!(md.contains("n/a (run too short)"), "{md}");
        assert!(json["summary"]["p99_drift_pct"].is_null());
    }

    #[test]
    fn the_mix_is_mostly_good_with_every_bad_kind() {
        let mix = Mix::build(8 << 20, 20).unwrap();
        let picks: Vec<&Case> = (0..400).map(|i| mix.pick(i)).collect();
        let bad = picks
            .iter()
            .filter(|c| matches!(c.expect, Expect::Error(_) | Expect::Refused(_)))
            .count();
        assert_eq!(bad, 20);
        for kind in [
            "image",
            "text",
            "image+text",
            "bad: wrong key",
            "bad: body over the limit",
        ] {
            assert!(picks.iter().any(|c| c.kind == kind), "{kind}");
        }
        let over = mix
            .bad
            .iter()
            .find(|c| c.kind == "bad: body over the limit")
            .unwrap();
        assert!(over.body.len() > 8 << 20);
    }
}
