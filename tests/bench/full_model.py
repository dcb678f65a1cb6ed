#!/usr/bin/env python3
"""Throughput of the FULL-SIZE MedImageInsight architecture on this machine's CPUs.

Run by scripts/bench-full-model.sh (which builds and caches everything). In one
run, one after the other, never at the same time:

  worker    the medembed worker release binary (CPU provider, dynamic batching)
  baseline  the managed service's serving stack: azmlinfsrv (PyPI
            azureml-inference-server-http, gunicorn sync workers + Flask) with
            tests/bench/baseline/score.py (the same script bench-worker uses)
  bare      one ONNX Runtime session in this process (the same library the
            worker loads), fed preprocessed tensors / token ids: the floor

each with an image-only and a text-only workload at 1, 8 and 64 closed-loop
clients. It writes a Markdown report, a JSON file and a PNG plot.

Why not bench-worker as it is: with this model one image costs seconds of CPU
here, so (1) its window counts only requests that start after the warm-up and
end inside the window, which at 64 clients is none; (2) it waits for every
in-flight request after the window, which at 64 clients is minutes per server;
(3) it has no text-only workload. Here the window opens at the first answer,
throughput is measured between answers (whole batches: items answered after the
first answer divided by the time from the first to the last answer in the
window), and at the window's end the clients disconnect: the worker drops
queued work whose client is gone; a server still busy after --idle-cap-s is
restarted, so no run pays for the previous one's backlog.

It is a benchmark, not a test: it prints figures and asserts nothing about them.
"""

import argparse
import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

PROMPTS = [
    "x-ray chest anteroposterior Pleural Effusion",
    "x-ray chest anteroposterior Pneumonia",
    "x-ray chest anteroposterior No Finding",
    "x-ray chest posteroanterior Cardiomegaly",
    "CT abdomen axial: hepatic lesion with arterial enhancement",
    "MRI brain T2 FLAIR periventricular white matter hyperintensities",
    "x-ray left hand: distal radius fracture",
    "x-ray chest anteroposterior Atelectasis",
]
CLK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[bench-full] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- inputs

def xray_png(size, seed):
    """An 8-bit grayscale X-ray-like PNG (smooth anatomy plus noise), fixed seed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.35 + 0.25 * np.cos(3.0 * (x - 0.5)) * np.cos(2.0 * (y - 0.5))
    for cx in (0.33, 0.67):
        img -= 0.25 * np.exp(-(((x - cx) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2))
    img += 0.15 * np.sin(40 * y + 5 * seed) * np.exp(-((x - 0.5) / 0.4) ** 2)
    img += rng.normal(0.0, 0.03, img.shape)
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def score_body(image_b64, text):
    return json.dumps({
        "input_data": {"columns": ["image", "text"], "index": [0], "data": [[image_b64, text]]},
        "params": {},
    }).encode()


# ---------------------------------------------------------------- processes

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_pids(root):
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_s(root):
    total = 0
    for p in tree_pids(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK


def tree_mem(root):
    rss = hwm = 0
    for p in tree_pids(root):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, hwm


def machine_busy_s():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / CLK


def http_get(port, path, timeout=5.0):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body
    except OSError:
        return None, b""


class Server:
    def __init__(self, name, argv, env, cwd, log_path, ready_path, ready_check):
        self.name, self.argv, self.env, self.cwd = name, argv, env, cwd
        self.log_path, self.ready_path, self.ready_check = log_path, ready_path, ready_check
        self.proc = None
        self.port = None
        self.starts = 0

    def start(self, limit_s=600):
        self.port = free_port()
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env=self.env, cwd=self.cwd, stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.starts += 1
        t0 = time.time()
        while time.time() - t0 < limit_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}")
            status, _ = http_get(self.port, self.ready_path)
            if status == 200 and self.ready_check():
                return time.time() - t0
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {limit_s} s; see {self.log_path}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def wait_idle(self, cap_s):
        """True once the server's processes use under 0.15 cores for a second."""
        t0 = time.time()
        last = tree_cpu_s(self.proc.pid)
        while time.time() - t0 < cap_s:
            time.sleep(1.0)
            now = tree_cpu_s(self.proc.pid)
            if now - last < 0.15:
                return True
            last = now
        return False


def scrape(port):
    status, body = http_get(port, "/metrics")
    out = {}
    if status != 200:
        return out
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        try:
            out[series] = float(value)
        except ValueError:
            pass
    return out


def metric_delta(before, after, name, tower):
    key = f'medembed_worker_{name}{{tower="{tower}"}}'
    return after.get(key, 0.0) - before.get(key, 0.0)


# ---------------------------------------------------------------- load

def closed_loop(port, bodies, kind, concurrency, window_s, first_cap_s, dim):
    """Runs `concurrency` clients until `window_s` after the first answer, then
    disconnects them. Returns answer end times, latencies and errors."""
    stop = threading.Event()
    lock = threading.Lock()
    answers = []  # (t_start, t_end)
    errors = {}
    conns = [None] * concurrency
    key = "image_features" if kind == "image" else "text_features"

    def client(i):
        k = i
        while not stop.is_set():
            body = bodies[k % len(bodies)]
            k += concurrency
            t0 = time.time()
            try:
                if conns[i] is None:
                    conns[i] = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
                c = conns[i]
                c.request("POST", "/score", body, {"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                t1 = time.time()
                ok = r.status == 200
                if ok:
                    # The live shape: a list with one object per row (one here).
                    answer = json.loads(data)
                    rows = (answer[0].get(key) or []) if len(answer) == 1 else []
                    ok = len(rows) == 1 and len(rows[0]) == dim and all(np.isfinite(rows[0]))
                with lock:
                    if ok:
                        answers.append((t0, t1))
                    elif not stop.is_set():
                        kind_ = f"status {r.status}" if r.status != 200 else "bad answer"
                        errors[kind_] = errors.get(kind_, 0) + 1
            except (OSError, http.client.HTTPException, ValueError):
                try:
                    conns[i].close()
                except Exception:
                    pass
                conns[i] = None
                with lock:
                    if not stop.is_set():
                        errors["connection"] = errors.get("connection", 0) + 1
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    t_begin = time.time()
    for t in threads:
        t.start()
    while not answers and time.time() - t_begin < first_cap_s:
        time.sleep(0.05)
    t_first = answers[0][1] if answers else time.time()
    close = t_first + window_s
    while time.time() < close:
        time.sleep(0.05)
    stop.set()
    with lock:
        done = list(answers)
    # Disconnect: in-flight requests are abandoned.
    for c in conns:
        try:
            if c is not None and c.sock is not None:
                c.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    for t in threads:
        t.join(5)
    return t_begin, t_first, close, done, errors


def summarise(t_first, close, done):
    ends = sorted(t1 for _, t1 in done if t_first <= t1 <= close)
    lat = sorted(t1 - t0 for t0, t1 in done if t_first <= t1 <= close)
    n = len(ends)
    if n >= 2 and ends[-1] > ends[0]:
        later = sum(1 for e in ends if e > ends[0])
        rate = later / (ends[-1] - ends[0])
    else:
        rate = n / (close - t_first) if close > t_first else float("nan")

    def q(p):
        if not lat:
            return float("nan")
        return lat[min(len(lat), max(1, int(np.ceil(p * len(lat))))) - 1]

    return {"answers": n, "per_s": rate, "p50_s": q(0.5), "p99_s": q(0.99),
            "span_s": (ends[-1] - ends[0]) if n >= 2 else 0.0}


def measure(server, kind, bodies, c, args, dim):
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    pid = server.proc.pid
    m0 = scrape(server.port) if server.name == "worker" else None
    cpu0, busy0 = tree_cpu_s(pid), machine_busy_s()
    window = args.image_window_s if kind == "image" else args.text_window_s
    t_begin, t_first, close, done, errors = closed_loop(server.port, bodies, kind, c, window,
                                                        args.first_answer_cap_s, dim)
    elapsed = time.time() - t_begin
    cpu = tree_cpu_s(pid) - cpu0
    other = max(0.0, (machine_busy_s() - busy0) - cpu) / elapsed
    m1 = scrape(server.port) if server.name == "worker" else None
    res = summarise(t_first, close, done)
    res.update(server=server.name, workload=kind, clients=c, errors=errors,
               server_cores=cpu / elapsed, other_cores=other, load_avg=os.getloadavg()[0],
               cpu_s_per_item=cpu / max(1, len(done)), first_answer_s=t_first - t_begin,
               rss=tree_mem(pid)[0])
    if m0 is not None:
        tower = kind
        n = metric_delta(m0, m1, "batch_size_count", tower)
        if n > 0:
            res["mean_batch"] = metric_delta(m0, m1, "batch_size_sum", tower) / n
            res["infer_s_per_batch"] = metric_delta(m0, m1, "inference_duration_seconds_sum", tower) / max(
                1, metric_delta(m0, m1, "inference_duration_seconds_count", tower))
    idle = server.wait_idle(args.idle_cap_s)
    res["restarted_after"] = not idle
    if not idle:
        log(f"{server.name} still busy {args.idle_cap_s:.0f} s after the window: restarting it")
        server.stop()
    log(f"{server.name} {kind} x{c}: {res['per_s']:.3f}/s over {res['answers']} answers, "
        f"p50 {res['p50_s']:.1f} s, errors {errors or 0}, other cores {other:.2f}")
    return res


# ---------------------------------------------------------------- bare

def bare_runs(args, cfg, pngs, image_batches, text_batches):
    import onnxruntime as ort
    from PIL import Image
    from transformers import CLIPTokenizer

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = os.cpu_count()
    md = args.model_dir
    icfg, tcfg = cfg["image"], cfg["text"]
    size = icfg["size"]
    mean = np.asarray(icfg["mean"], np.float32)
    std = np.asarray(icfg["std"], np.float32)
    pixels = []
    for p in pngs:
        img = Image.open(io.BytesIO(p)).convert("RGB").resize((size, size), Image.BICUBIC)
        pixels.append(((np.asarray(img, np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
    tok = CLIPTokenizer(vocab_file=os.path.join(md, "clip_tokenizer", "vocab.json"),
                        merges_file=os.path.join(md, "clip_tokenizer", "merges.txt"), pad_token="<|endoftext|>")
    enc = tok(PROMPTS, padding="max_length", max_length=tcfg["context_length"], truncation=True, return_tensors="np")
    out = []
    sess = ort.InferenceSession(os.path.join(md, icfg["onnx"]), opts, providers=["CPUExecutionProvider"])
    for b in image_batches:
        x = np.ascontiguousarray(np.stack([pixels[i % len(pixels)] for i in range(b)]))
        sess.run(None, {icfg["input"]: x})
        lat, t0 = [], time.time()
        while time.time() - t0 < args.bare_image_s or len(lat) < 2:
            t = time.time()
            sess.run(None, {icfg["input"]: x})
            lat.append(time.time() - t)
        out.append({"server": "bare", "workload": "image", "batch": b, "per_s": b * len(lat) / sum(lat),
                    "p50_s": float(np.median(lat)), "runs": len(lat)})
        log(f"bare image batch {b}: {out[-1]['per_s']:.3f}/s")
    del sess
    sess = ort.InferenceSession(os.path.join(md, tcfg["onnx"]), opts, providers=["CPUExecutionProvider"])
    for b in text_batches:
        idx = [i % len(PROMPTS) for i in range(b)]
        feed = {tcfg["input_ids"]: enc["input_ids"][idx].astype(np.int64),
                tcfg["attention_mask"]: enc["attention_mask"][idx].astype(np.int64)}
        sess.run(None, feed)
        lat, t0 = [], time.time()
        while time.time() - t0 < args.bare_text_s or len(lat) < 2:
            t = time.time()
            sess.run(None, feed)
            lat.append(time.time() - t)
        out.append({"server": "bare", "workload": "text", "batch": b, "per_s": b * len(lat) / sum(lat),
                    "p50_s": float(np.median(lat)), "runs": len(lat)})
        log(f"bare text batch {b}: {out[-1]['per_s']:.2f}/s")
    del sess
    return out


# ---------------------------------------------------------------- report

def plot(results, bare, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind, unit in ((axes[0], "image", "images/s"), (axes[1], "text", "texts/s")):
        for name, style in (("worker", "o-"), ("baseline", "s--")):
            rows = sorted((r for r in results if r["server"] == name and r["workload"] == kind),
                          key=lambda r: r["clients"])
            ax.plot([r["clients"] for r in rows], [r["per_s"] for r in rows], style, label=name)
        best = max((b["per_s"] for b in bare if b["workload"] == kind), default=None)
        if best:
            ax.axhline(best, color="gray", linestyle=":", label="bare session (best batch)")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 8, 64])
        ax.set_xticklabels(["1", "8", "64"])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        tops = [r["per_s"] for r in results if r["workload"] == kind] + ([best] if best else [])
        ax.set_ylim(0, 1.15 * max(tops, default=1.0))
        ax.set_title(f"{kind} requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results, bare, meta):
    L = []
    w = L.append
    w("## Throughput\n")
    w("| workload | clients | server | items/s | answers in window | p50 s | p99 s | errors | mean batch | "
      "server CPU s/item | server cores | other cores (not ours) | load avg | restarted after |")
    w("|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        errs = ", ".join(f"{v} {k}" for k, v in r["errors"].items()) or "0"
        w(f"| {r['workload']} | {r['clients']} | {r['server']} | {r['per_s']:.3f} | {r['answers']} | "
          f"{r['p50_s']:.2f} | {r['p99_s']:.2f} | {errs} | {r.get('mean_batch', float('nan')):.1f} | "
          f"{r['cpu_s_per_item']:.2f} | {r['server_cores']:.2f} | {r['other_cores']:.2f} | {r['load_avg']:.1f} | "
          f"{'yes' if r['restarted_after'] else 'no'} |")
    w("\n## Bare ONNX Runtime session (the floor)\n")
    w("| tower | batch | items/s | p50 s per batch | runs |")
    w("|---|---:|---:|---:|---:|")
    for b in bare:
        w(f"| {b['workload']} | {b['batch']} | {b['per_s']:.3f} | {b['p50_s']:.2f} | {b['runs']} |")
    w("\n## Ratios\n")
    w("| workload | clients | worker / baseline | worker / best bare |")
    w("|---|---:|---:|---:|")
    for kind in ("image", "text"):
        best = max((b["per_s"] for b in bare if b["workload"] == kind), default=float("nan"))
        for c in meta["concurrency"]:
            wr = next((r for r in results if r["server"] == "worker" and r["workload"] == kind and r["clients"] == c), None)
            br = next((r for r in results if r["server"] == "baseline" and r["workload"] == kind and r["clients"] == c), None)
            if wr and br:
                w(f"| {kind} | {c} | {wr['per_s'] / br['per_s']:.2f}x | {100 * wr['per_s'] / best:.0f}% |")
    w("\n## Memory\n")
    w(f"- worker: {meta['worker_ready_rss'] / 2**20:.0f} MiB resident once ready, peak {meta['worker_hwm'] / 2**20:.0f} MiB (VmHWM)")
    w(f"- baseline (gunicorn master + {meta['baseline_workers']} workers, summed): "
      f"{meta['baseline_ready_rss'] / 2**20:.0f} MiB once ready")
    w(f"- the two ONNX graphs: {meta['weights_bytes'] / 2**20:.0f} MiB")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker-bin", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--ort-library", required=True)
    ap.add_argument("--azmlinfsrv", required=True)
    ap.add_argument("--baseline-script", required=True)
    ap.add_argument("--baseline-workers", type=int, default=2)
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--workloads", default="image,text")
    ap.add_argument("--image-window-s", type=float, default=45.0)
    ap.add_argument("--text-window-s", type=float, default=15.0)
    ap.add_argument("--first-answer-cap-s", type=float, default=240.0)
    ap.add_argument("--idle-cap-s", type=float, default=15.0)
    ap.add_argument("--bare-image-s", type=float, default=20.0)
    ap.add_argument("--bare-text-s", type=float, default=6.0)
    ap.add_argument("--bare-image-batches", default="1,4")
    ap.add_argument("--bare-text-batches", default="1,16")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--worker-arg", action="append", default=[])
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-png", required=True)
    args = ap.parse_args()

    conc = [int(x) for x in args.concurrency.split(",")]
    kinds = args.workloads.split(",")
    os.makedirs(args.log_dir, exist_ok=True)
    with open(os.path.join(args.model_dir, "medembed-model.json")) as f:
        cfg = json.load(f)
    dim = cfg["embedding_dim"]
    pngs = [xray_png(args.image_size, i + 1) for i in range(8)]
    b64 = [base64.encodebytes(p).decode() for p in pngs]  # MIME line breaks, as the documented client
    bodies = {"image": [score_body(b, "") for b in b64], "text": [score_body("", t) for t in PROMPTS]}

    env = dict(os.environ)
    env["ORT_DYLIB_PATH"] = args.ort_library
    env["MEDEMBED_TERMINATION_LOG"] = os.path.join(args.log_dir, "worker.termination")
    env["MEDEMBED_LOG_FORMAT"] = "text"
    worker = Server("worker", [args.worker_bin, "--model-dir", args.model_dir, "--listen", "127.0.0.1:{port}",
                               "--execution-provider", "cpu", *args.worker_arg],
                    env, None, os.path.join(args.log_dir, "worker.log"), "/readyz", lambda: True)
    script = os.path.abspath(args.baseline_script)
    benv = dict(os.environ)
    benv["AML_APP_ROOT"] = os.path.dirname(script)
    benv["MEDEMBED_BASELINE_ORT_THREADS"] = "1"
    blog = os.path.join(args.log_dir, "baseline.log")
    open(blog, "w").close()

    def baseline_ready():
        with open(blog, errors="replace") as f:
            return f.read().count("medembed-bench baseline ready") >= args.baseline_workers * baseline.starts

    baseline = Server("baseline", [args.azmlinfsrv, "--entry_script", script, "--model_dir", args.model_dir,
                                   "--port", "{port}", "--worker_count", str(args.baseline_workers)],
                      benv, os.path.dirname(script), blog, "/", baseline_ready)

    started = time.time()
    results = []
    meta = {"concurrency": conc, "baseline_workers": args.baseline_workers}
    try:
        # One server at a time, so that neither takes cores from the other.
        for name, server in (("worker", worker), ("baseline", baseline)):
            log(f"starting the {name}")
            meta[f"{name}_start_s"] = server.start()
            meta[f"{name}_ready_rss"] = tree_mem(server.proc.pid)[0]
            for kind in kinds:
                for c in conc:
                    results.append(measure(server, kind, bodies[kind], c, args, dim))
            meta[f"{name}_hwm"] = tree_mem(server.proc.pid)[1] if server.proc else 0
            meta[f"{name}_restarts"] = server.starts - 1
            server.stop()
    finally:
        worker.stop()
        baseline.stop()
    bare = bare_runs(args, cfg, pngs, [int(x) for x in args.bare_image_batches.split(",")],
                     [int(x) for x in args.bare_text_batches.split(",")])
    meta["weights_bytes"] = sum(os.path.getsize(os.path.join(args.model_dir, cfg[t]["onnx"])) for t in ("image", "text"))
    meta["total_s"] = time.time() - started
    meta["args"] = vars(args)
    with open(args.out_json, "w") as f:
        json.dump({"results": results, "bare": bare, "meta": meta}, f, indent=2)
    md = markdown(results, bare, meta)
    with open(args.out_md, "w") as f:
        f.write(md)
    try:
        with open(os.path.join(args.model_dir, "export-report.json")) as f:
            rep = json.load(f)
        what = f"{'REDUCED' if rep['reduced'] else 'full size'}, {rep['dtype']}, weights {rep['weights']}"
    except (OSError, KeyError, ValueError):
        what = os.path.basename(os.path.normpath(args.model_dir))
    plot(results, bare, args.out_png, f"MedImageInsight architecture ({what}); CPU, {os.cpu_count()} cores")
    print(md)
    log(f"done in {meta['total_s']:.0f} s")


if __name__ == "__main__":
    main()
