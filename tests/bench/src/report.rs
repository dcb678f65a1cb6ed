//! The benchmark's figures as Markdown: what was measured, on which servers,
//! the ratios the targets are stated in, and each target's verdict.

use std::fmt::Write;

use crate::bare::BareResult;
use crate::load::{quantile, LoadResult};
use crate::procs::Memory;
use crate::promtext::Stages;

/// Throughput target: worker images/s over the baseline's, at every concurrency.
pub const TARGET_THROUGHPUT_RATIO: f64 = 2.0;
/// Latency target: worker p50 over the baseline's at concurrency 1.
pub const TARGET_P50_RATIO: f64 = 0.5;
/// Memory target: worker peak resident memory beyond the weights, bytes.
pub const TARGET_EXTRA_MEMORY: u64 = 300 * 1024 * 1024;

/// One server's run at one concurrency.
#[derive(Debug, Clone)]
pub struct ServerRun {
    /// What the clients measured.
    pub load: LoadResult,
    /// Server CPU time per image answered, ms (whole run, warm-up included).
    pub cpu_ms_per_image: f64,
    /// Cores the server used on average.
    pub server_cores: f64,
    /// Cores the load generator used on average.
    pub client_cores: f64,
    /// Cores used by everything else on the machine (other people's work).
    pub other_cores: f64,
    /// One-minute load average at the end of the run.
    pub load_average: f64,
    /// Resident memory of the server's processes after the run.
    pub memory: Memory,
    /// The worker's stage figures (None for the baseline).
    pub stages: Option<Stages>,
}

/// One workload at one concurrency, all three measurements.
#[derive(Debug, Clone)]
pub struct Row {
    /// Workload name.
    pub workload: &'static str,
    /// Concurrent clients.
    pub concurrency: usize,
    /// The medembed worker.
    pub worker: ServerRun,
    /// azureml-inference-server-http.
    pub baseline: ServerRun,
    /// Bare ONNX Runtime session.
    pub bare: BareResult,
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// Test image side, px.
    pub image_size: u32,
    /// Distinct images.
    pub images: usize,
    /// Mean PNG size, bytes.
    pub png_bytes: usize,
    /// Warm-up per run, s.
    pub warmup_s: f64,
    /// Window per run, s.
    pub duration_s: f64,
    /// Bare run length, s.
    pub bare_s: f64,
    /// Bare intra-op threads.
    pub bare_threads: usize,
    /// Baseline gunicorn workers.
    pub baseline_workers: usize,
    /// Baseline onnxruntime threads per worker.
    pub baseline_ort_threads: usize,
    /// Extra worker flags.
    pub worker_args: Vec<String>,
    /// CPUs of this machine.
    pub cpus: usize,
    /// Cosine between the two servers' image embeddings of one image.
    pub agree_image: f64,
    /// Cosine between the two servers' text embeddings of one text.
    pub agree_text: f64,
    /// Bytes of the two ONNX graphs.
    pub weights: u64,
    /// Worker memory once ready (loaded and warmed up), before any load.
    pub worker_ready_mem: Memory,
    /// Worker memory after every run (`hwm` is the peak, saturation included).
    pub worker_end_mem: Memory,
    /// Baseline memory once ready (all processes summed).
    pub baseline_ready_mem: Memory,
    /// Baseline memory after every run (all processes summed).
    pub baseline_end_mem: Memory,
    /// Per workload and concurrency.
    pub rows: Vec<Row>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn errors(l: &LoadResult) -> String {
    if l.errors.is_empty() {
        return "0".into();
    }
    l.errors
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

impl Report {
    /// Renders the report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = self.write(&mut s);
        s
    }

    fn write(&self, s: &mut String) -> std::fmt::Result {
        writeln!(s, "## Workload\n")?;
        writeln!(
            s,
            "Each request is one row of the managed endpoint's scoring API: one {0}x{0} 8-bit \
             grayscale PNG (X-ray-like, drawn from a fixed seed; {1} distinct images sent \
             round-robin, {2:.0} KiB each on average, base64 with line breaks as the documented \
             client sends them), plus one short prompt in the `image+text` workload. Closed loop: \
             each of N clients sends its next request when the previous one is answered. Every \
             answer is checked (200, one 1024-d finite embedding per image and text). {3:.0} s \
             warm-up, then a {4:.0} s window per run; servers run one after the other, never at \
             the same time, on all {5} CPUs of the machine, shared with the load generator.\n",
            self.image_size,
            self.images,
            self.png_bytes as f64 / 1024.0,
            self.warmup_s,
            self.duration_s,
            self.cpus,
        )?;
        writeln!(s, "- **worker**: the medembed worker release binary, `--execution-provider cpu`{}, defaults otherwise (decode threads and ONNX Runtime intra-op threads = number of CPUs, dynamic batching).",
            if self.worker_args.is_empty() { String::new() } else { format!(" `{}`", self.worker_args.join(" ")) })?;
        writeln!(s, "- **baseline**: the managed service's serving stack, `azmlinfsrv` (PyPI `azureml-inference-server-http`, gunicorn sync workers + Flask) with `tests/bench/baseline/score.py` (base64 + PIL decode, PIL bicubic resize, numpy normalise, onnxruntime CPU; transformers' CLIPTokenizer for text), {} gunicorn worker processes x {} onnxruntime thread each, so one request per core at a time and no oversubscription.",
            self.baseline_workers, self.baseline_ort_threads)?;
        writeln!(s, "- **bare**: one ONNX Runtime session in the benchmark process, same library, {} intra-op threads, fed already preprocessed tensors (and token ids) at the worker's mean batch size for that run, for {:.0} s; latency is per batch.",
            self.bare_threads, self.bare_s)?;
        writeln!(
            s,
            "- Same job check: one image and one text sent to both servers gave embeddings with \
             cosine similarity {:.7} (image; 1 - cos = {:.1e}) and {:.7} (text; 1 - cos = {:.1e}).\n",
            self.agree_image,
            1.0 - self.agree_image,
            self.agree_text,
            1.0 - self.agree_text
        )?;

        writeln!(s, "## Throughput and latency\n")?;
        writeln!(s, "| workload | clients | server | images/s | p50 ms | p99 ms | errors | server CPU ms/image | server cores | load-gen cores | other cores (not ours) | load avg | server RSS after, MiB |")?;
        writeln!(
            s,
            "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
        )?;
        for r in &self.rows {
            for (name, run) in [("worker", &r.worker), ("baseline", &r.baseline)] {
                writeln!(
                    s,
                    "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
                    r.workload,
                    r.concurrency,
                    name,
                    run.load.images_per_s(),
                    run.load.quantile_ms(0.5),
                    run.load.quantile_ms(0.99),
                    errors(&run.load),
                    run.cpu_ms_per_image,
                    run.server_cores,
                    run.client_cores,
                    run.other_cores,
                    run.load_average,
                    mib(run.memory.rss),
                )?;
            }
            writeln!(
                s,
                "| {} | {} | bare (batch {}{}) | {:.1} | {:.1} | {:.1} | 0 | | | | | | |",
                r.workload,
                r.concurrency,
                r.bare.image_batch,
                if r.bare.text_batch > 0 {
                    format!(" + {} texts", r.bare.text_batch)
                } else {
                    String::new()
                },
                r.bare.images_per_s,
                quantile(&r.bare.latencies, 0.5) * 1e3,
                quantile(&r.bare.latencies, 0.99) * 1e3,
            )?;
        }

        writeln!(s, "\n## Worker against baseline\n")?;
        writeln!(s, "| workload | clients | throughput worker/baseline (target >= {TARGET_THROUGHPUT_RATIO}) | p50 worker/baseline (target <= {TARGET_P50_RATIO} at 1 client) | p99 worker/baseline | CPU per image worker/baseline |")?;
        writeln!(s, "|---|---:|---:|---:|---:|---:|")?;
        for r in &self.rows {
            writeln!(
                s,
                "| {} | {} | {:.2}x | {:.2} | {:.2} | {:.2} |",
                r.workload,
                r.concurrency,
                r.worker.load.images_per_s() / r.baseline.load.images_per_s(),
                r.worker.load.quantile_ms(0.5) / r.baseline.load.quantile_ms(0.5),
                r.worker.load.quantile_ms(0.99) / r.baseline.load.quantile_ms(0.99),
                r.worker.cpu_ms_per_image / r.baseline.cpu_ms_per_image,
            )?;
        }

        writeln!(
            s,
            "\n## Serving overhead (worker against the bare session)\n"
        )?;
        writeln!(s, "| workload | clients | worker mean image batch | bare images/s | worker images/s | worker share of bare throughput | bare p50 ms/batch | worker p50 ms | worker p50 minus bare p50, ms |")?;
        writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for r in &self.rows {
            let st = r.worker.stages.unwrap_or_default();
            let bare_p50 = quantile(&r.bare.latencies, 0.5) * 1e3;
            writeln!(
                s,
                "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1}% | {:.2} | {:.1} | {:.1} |",
                r.workload,
                r.concurrency,
                st.image_batch,
                r.bare.images_per_s,
                r.worker.load.images_per_s(),
                100.0 * r.worker.load.images_per_s() / r.bare.images_per_s,
                bare_p50,
                r.worker.load.quantile_ms(0.5),
                r.worker.load.quantile_ms(0.5) - bare_p50,
            )?;
        }

        writeln!(
            s,
            "\n## Where the worker's time went (its own /metrics, means over the run)\n"
        )?;
        writeln!(s, "| workload | clients | request ms (server side) | decode + preprocess ms/image | admission to image inference ms (decode included) | image inference ms/batch | image batch | text inference ms/batch | text batch |")?;
        writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for r in &self.rows {
            let st = r.worker.stages.unwrap_or_default();
            writeln!(
                s,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.workload,
                r.concurrency,
                st.request_ms,
                st.decode_ms,
                st.image_queue_ms,
                st.image_infer_ms,
                st.image_batch,
                st.text_infer_ms,
                st.text_batch,
            )?;
        }

        let extra = self.worker_end_mem.hwm.saturating_sub(self.weights);
        writeln!(s, "\n## Memory\n")?;
        writeln!(
            s,
            "| process | ready (loaded, warmed), MiB | after the runs, MiB | peak (VmHWM), MiB |"
        )?;
        writeln!(s, "|---|---:|---:|---:|")?;
        writeln!(
            s,
            "| worker | {:.1} | {:.1} | {:.1} |",
            mib(self.worker_ready_mem.rss),
            mib(self.worker_end_mem.rss),
            mib(self.worker_end_mem.hwm)
        )?;
        writeln!(
            s,
            "| baseline (gunicorn master + {} workers, summed) | {:.1} | {:.1} | {:.1} |",
            self.baseline_workers,
            mib(self.baseline_ready_mem.rss),
            mib(self.baseline_end_mem.rss),
            mib(self.baseline_end_mem.hwm)
        )?;
        writeln!(
            s,
            "\nModel weights (the two ONNX files): {:.1} MiB. Worker peak beyond the weights: \
             {:.1} MiB; growth from ready to peak: {:.1} MiB.\n",
            mib(self.weights),
            mib(extra),
            mib(self
                .worker_end_mem
                .hwm
                .saturating_sub(self.worker_ready_mem.rss)),
        )?;

        writeln!(s, "## Targets\n")?;
        writeln!(s, "| target | measured | verdict |")?;
        writeln!(s, "|---|---|---|")?;
        for r in &self.rows {
            let ratio = r.worker.load.images_per_s() / r.baseline.load.images_per_s();
            writeln!(
                s,
                "| {} x{}: throughput >= {TARGET_THROUGHPUT_RATIO}x baseline | {ratio:.2}x | {} |",
                r.workload,
                r.concurrency,
                verdict(ratio >= TARGET_THROUGHPUT_RATIO)
            )?;
        }
        for r in self.rows.iter().filter(|r| r.concurrency == 1) {
            let ratio = r.worker.load.quantile_ms(0.5) / r.baseline.load.quantile_ms(0.5);
            writeln!(
                s,
                "| {} x1: p50 <= {TARGET_P50_RATIO} x baseline | {ratio:.2} ({:.1} ms against {:.1} ms) | {} |",
                r.workload,
                r.worker.load.quantile_ms(0.5),
                r.baseline.load.quantile_ms(0.5),
                verdict(ratio <= TARGET_P50_RATIO)
            )?;
        }
        writeln!(
            s,
            "| worker memory beyond the weights at saturation <= {:.0} MiB | {:.1} MiB | {} |",
            mib(TARGET_EXTRA_MEMORY),
            mib(extra),
            verdict(extra <= TARGET_EXTRA_MEMORY)
        )?;
        Ok(())
    }
}
