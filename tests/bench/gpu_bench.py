#!/usr/bin/env python3
"""GPU figures for the full-size MedImageInsight architecture (run by scripts/gpu-bench.sh).

For each execution provider (CUDA, TensorRT fp32, TensorRT fp16):
  bare    one onnxruntime-gpu session in this process, fed preprocessed
          tensors: images/s and latency at batch 1, 2, 4, ..., 64, and the GPU
          memory the process holds (nvidia-smi)
  worker  the medembed worker release binary with that provider
          (--max-batch-images 64), closed-loop clients 1, 2, 4, ..., 64 sending
          one image each (tests/bench/full_model.py's load loop): images/s,
          p50, the mean batch the worker formed, and the GPU memory it holds
  limit   the compute limit: FLOPs per image (export-report.json, fvcore's
          count) x the GPU's peak for that precision (--peak-tflops-*),
          i.e. the images/s no implementation can beat
Writes a Markdown report and a JSON file. Asserts nothing about the figures.

--cpu-check runs the same code with the CPU provider (and whatever model is
given, e.g. the reduced export) so the script can be checked without a GPU; its
figures are not GPU figures and the report says so.
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import full_model as fm  # noqa: E402  (servers, load loop, test images)


def log(msg):
    print(f"[gpu-bench] {msg}", file=sys.stderr, flush=True)


def gpu_info():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
        return out.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "no nvidia-smi"


def gpu_mem_of(pids):
    """MiB of GPU memory held by these processes (nvidia-smi compute apps)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return float("nan")
    total, seen = 0.0, False
    for line in out.splitlines():
        try:
            pid, mib = (x.strip() for x in line.split(","))
            if int(pid) in pids:
                total += float(mib)
                seen = True
        except ValueError:
            pass
    if not seen:  # some containers hide per-process figures: the device's used memory instead
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20).stdout
            return float(out.split()[0])
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            return float("nan")
    return total


def providers_for(name, args, graph_dir):
    if name == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": 0})
    if name == "cuda":
        return [cuda]
    fp16 = name == "tensorrt-fp16"
    cache = os.path.join(args.trt_cache, "bare-" + ("fp16" if fp16 else "fp32"))
    os.makedirs(cache, exist_ok=True)
    size = args.image_size_model
    trt = ("TensorrtExecutionProvider", {
        "device_id": 0, "trt_fp16_enable": fp16, "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache, "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
        # One engine for every batch 1..max: no rebuild when the batch changes.
        "trt_profile_min_shapes": f"pixel_values:1x3x{size}x{size}",
        "trt_profile_opt_shapes": f"pixel_values:{args.opt_batch}x3x{size}x{size}",
        "trt_profile_max_shapes": f"pixel_values:{max(args.batches)}x3x{size}x{size}",
    })
    return [trt, cuda]


def bare(args, cfg, pixels, provider):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    path = os.path.join(args.model_dir, cfg["image"]["onnx"])
    t0 = time.time()
    sess = ort.InferenceSession(path, opts, providers=providers_for(provider, args, args.model_dir))
    used = sess.get_providers()[0]
    want = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}.get(provider, "TensorrtExecutionProvider")
    if used != want:
        raise RuntimeError(f"{provider}: ONNX Runtime fell back to {used}")
    rows = []
    name = cfg["image"]["input"]
    for b in sorted(args.batches, reverse=True):  # largest first: the engine/arena is sized once
        x = np.ascontiguousarray(np.stack([pixels[i % len(pixels)] for i in range(b)]))
        for _ in range(args.warmup_runs):
            sess.run(None, {name: x})
        lat, t1 = [], time.time()
        while (time.time() - t1 < args.bare_s and len(lat) < args.max_runs) or len(lat) < 3:
            t = time.time()
            sess.run(None, {name: x})
            lat.append(time.time() - t)
        rows.append({"provider": provider, "batch": b, "images_per_s": b * len(lat) / sum(lat),
                     "p50_ms": 1e3 * float(np.median(lat)), "runs": len(lat)})
        log(f"bare {provider} batch {b}: {rows[-1]['images_per_s']:.1f} images/s")
    mem = gpu_mem_of({os.getpid()})
    setup = time.time() - t0
    del sess
    return sorted(rows, key=lambda r: r["batch"]), mem, setup


def worker(args, provider, bodies, dim):
    env = dict(os.environ)
    env["ORT_DYLIB_PATH"] = args.ort_library
    env["MEDEMBED_LOG_FORMAT"] = "text"
    env["MEDEMBED_TERMINATION_LOG"] = os.path.join(args.log_dir, f"worker-{provider}.termination")
    ep = {"cpu": "cpu", "cuda": "cuda"}.get(provider, "tensorrt")
    argv = [args.worker_bin, "--model-dir", args.model_dir, "--listen", "127.0.0.1:{port}",
            "--execution-provider", ep, "--max-batch-images", str(max(args.batches)),
            # Engines depend on precision and profiles: one cache per variant.
            "--trt-cache-dir", os.path.join(args.trt_cache, f"worker-{provider}")]
    if provider == "tensorrt-fp16":
        argv.append("--trt-fp16")
    srv = fm.Server("worker", argv, env, None, os.path.join(args.log_dir, f"worker-{provider}.log"),
                    "/readyz", lambda: True)
    t0 = time.time()
    srv.start(limit_s=args.worker_start_cap_s)
    ready_s = time.time() - t0
    rows = []
    try:
        # TensorRT builds an engine for the shapes it has seen: largest batch
        # first, then one image, so later batches fall inside the built range.
        for c in (max(args.batches), 1):
            fm.closed_loop(srv.port, bodies, "image", c, 1.0, args.worker_start_cap_s, dim)
            srv.wait_idle(120)
        warm_s = time.time() - t0 - ready_s
        for c in args.batches:
            m0 = fm.scrape(srv.port)
            t_begin, t_first, close, done, errors = fm.closed_loop(srv.port, bodies, "image", c, args.worker_s,
                                                                   120, dim)
            m1 = fm.scrape(srv.port)
            r = fm.summarise(t_first, close, done)
            n = fm.metric_delta(m0, m1, "batch_size_count", "image")
            rows.append({"provider": provider, "clients": c, "images_per_s": r["per_s"], "answers": r["answers"],
                         "p50_ms": 1e3 * r["p50_s"], "errors": errors,
                         "mean_batch": fm.metric_delta(m0, m1, "batch_size_sum", "image") / n if n else float("nan")})
            log(f"worker {provider} x{c}: {r['per_s']:.1f} images/s, mean batch {rows[-1]['mean_batch']:.1f}")
            srv.wait_idle(30)
        mem = gpu_mem_of(set(fm.tree_pids(srv.proc.pid)))
        host_rss = fm.tree_mem(srv.proc.pid)[0]
    finally:
        srv.stop()
    return rows, mem, ready_s, warm_s, host_rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--worker-bin", required=True)
    ap.add_argument("--ort-library", required=True, help="onnxruntime-gpu's libonnxruntime.so")
    ap.add_argument("--providers", default="cuda,tensorrt-fp32,tensorrt-fp16")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--opt-batch", type=int, default=32)
    ap.add_argument("--bare-s", type=float, default=3.0)
    ap.add_argument("--max-runs", type=int, default=200)
    ap.add_argument("--warmup-runs", type=int, default=2)
    ap.add_argument("--worker-s", type=float, default=6.0)
    ap.add_argument("--worker-start-cap-s", type=float, default=420.0)
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--peak-tflops-fp32", type=float, default=67.0, help="H200 SXM, dense FP32 (no tensor cores)")
    ap.add_argument("--peak-tflops-tf32", type=float, default=494.7, help="H200 SXM, dense TF32 tensor cores")
    ap.add_argument("--peak-tflops-fp16", type=float, default=989.4, help="H200 SXM, dense FP16 tensor cores")
    ap.add_argument("--trt-cache", required=True)
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--cpu-check", action="store_true")
    args = ap.parse_args()
    args.batches = [int(x) for x in args.batches.split(",")]
    providers = ["cpu"] if args.cpu_check else args.providers.split(",")
    os.makedirs(args.log_dir, exist_ok=True)

    with open(os.path.join(args.model_dir, "medembed-model.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(args.model_dir, "export-report.json")) as f:
        export = json.load(f)
    args.image_size_model = cfg["image"]["size"]
    gflops = export["gflops_per_image"]
    pngs = [fm.xray_png(args.image_size, i + 1) for i in range(8)]
    bodies = [fm.score_body(base64.encodebytes(p).decode(), "") for p in pngs]
    from PIL import Image
    import io

    size = cfg["image"]["size"]
    mean = np.asarray(cfg["image"]["mean"], np.float32)
    std = np.asarray(cfg["image"]["std"], np.float32)
    pixels = []
    for p in pngs:
        img = Image.open(io.BytesIO(p)).convert("RGB").resize((size, size), Image.BICUBIC)
        pixels.append(((np.asarray(img, np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))

    started = time.time()
    out = {"gpu": gpu_info(), "cpu_check": args.cpu_check, "model": {k: export[k] for k in
           ("architecture", "reduced", "weights", "dtype", "parameters", "gflops_per_image")},
           "bare": [], "worker": [], "memory": {}, "seconds": {}}
    for p in providers:
        t0 = time.time()
        rows, mem, setup = bare(args, cfg, pixels, p)
        out["bare"] += rows
        out["memory"][f"bare {p}"] = mem
        out["seconds"][f"bare {p}"] = round(time.time() - t0, 1)
        t0 = time.time()
        rows, mem, ready, warm, rss = worker(args, p, bodies, cfg["embedding_dim"])
        out["worker"] += rows
        out["memory"][f"worker {p}"] = mem
        out["memory"][f"worker {p} host RSS MiB"] = rss / 2**20
        out["seconds"][f"worker {p}"] = {"ready": round(ready, 1), "engine warm-up": round(warm, 1),
                                         "total": round(time.time() - t0, 1)}
    out["seconds"]["total"] = round(time.time() - started, 1)
    with open(args.out_json, "w") as f:
        json.dump(out, f, indent=2)

    peak = {"cpu": float("nan"), "cuda": args.peak_tflops_tf32, "tensorrt-fp32": args.peak_tflops_tf32,
            "tensorrt-fp16": args.peak_tflops_fp16}
    L = [f"GPU: {out['gpu']}" + ("  \n**CPU CHECK RUN: these are not GPU figures.**" if args.cpu_check else ""), "",
         f"Model: {export['architecture']}, {'REDUCED' if export['reduced'] else 'full size'}, {export['weights']}, "
         f"graphs {export['dtype']}; {gflops:.0f} GFLOPs per image (fvcore, 2 x MACs).", "",
         "Compute limit = peak / FLOPs per image, with the dense tensor-core peak the provider can use "
         f"(CUDA and TensorRT fp32: TF32 {args.peak_tflops_tf32:.0f} TFLOP/s; TensorRT fp16: "
         f"{args.peak_tflops_fp16:.0f} TFLOP/s; plain FP32 would be {args.peak_tflops_fp32:.0f}).", "",
         "| provider | batch / clients | bare images/s | bare p50 ms/batch | worker images/s | worker mean batch | "
         "worker p50 ms | worker / bare | compute limit images/s | bare share of limit |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in providers:
        limit = peak[p] * 1e12 / (gflops * 1e9)
        for b in args.batches:
            br = next((r for r in out["bare"] if r["provider"] == p and r["batch"] == b), None)
            wr = next((r for r in out["worker"] if r["provider"] == p and r["clients"] == b), None)
            if not br or not wr:
                continue
            L.append(f"| {p} | {b} | {br['images_per_s']:.1f} | {br['p50_ms']:.1f} | {wr['images_per_s']:.1f} | "
                     f"{wr['mean_batch']:.1f} | {wr['p50_ms']:.1f} | {wr['images_per_s'] / br['images_per_s']:.2f} | "
                     f"{limit:.0f} | {100 * br['images_per_s'] / limit:.0f}% |")
    L += ["", "| process | GPU memory MiB |", "|---|---:|"]
    L += [f"| {k} | {v:.0f} |" for k, v in out["memory"].items()]
    L += ["", f"Seconds: `{json.dumps(out['seconds'])}`"]
    md = "\n".join(L) + "\n"
    with open(args.out_md, "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
