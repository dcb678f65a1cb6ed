"""Plots a soak run (tests/bench/results/soak.json, written by the `soak`
binary): resident memory of every process, and the p50/p99 latency of good
requests, over time, with the end of the warm-up marked.

    python soak_plot.py soak.json soak.png

Run by scripts/soak.sh with the export environment's Python (matplotlib).
"""

import json
import sys


def main(src, dst):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = json.load(open(src))
    samples = run["samples"]
    warm = run["warmup_minutes"]
    fig, (mem, lat) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    names = list(samples[0]["processes"]) if samples else []
    for name in names:
        pts = [(s["t_s"] / 60, s["processes"][name]["rss_kb"] * 1024 / 1e6)
               for s in samples if s["processes"].get(name)]
        slope = run["summary"]["processes"][name]["rss_slope_mb_per_h_after_warmup"]
        label = name + (f" (slope after warm-up {slope:.2f} MB/h)" if slope is not None else "")
        mem.plot([p[0] for p in pts], [p[1] for p in pts], ".-", label=label)
    mem.set_ylabel("RSS (MB)")
    mem.set_ylim(bottom=0)
    mem.set_title("resident memory per process")
    for q, style in (("p99_ms", ".-"), ("p50_ms", ".--")):
        pts = [(s["t_s"] / 60, s[q]) for s in samples if s[q] is not None]
        lat.plot([p[0] for p in pts], [p[1] for p in pts], style, label=q.split("_")[0])
    lat.set_ylabel("latency per 10 s window (ms)" if run["interval_s"] == 10
                   else f"latency per {run['interval_s']} s window (ms)")
    lat.set_ylim(bottom=0)
    lat.set_xlabel("minutes")
    lat.set_title("good requests through the gateway")
    for ax in (mem, lat):
        ax.axvline(warm, color="gray", linestyle=":", label=f"end of warm-up ({warm:g} min)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"soak: {run['minutes']:g} minutes, {run['concurrency']} clients", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
