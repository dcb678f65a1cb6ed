#!/usr/bin/env python3
"""Export MedImageInsight (the real architecture) to the worker's model directory.

    export_model.py OUTDIR --package-dir SRC [--checkpoint PATH] [--dtype fp32|fp16]
                    [--reduced] [--seed N]

SRC is the unpacked `medimageinsights` 0.1.1 source distribution (the directory
that holds `MedImageInsights/`); scripts/export-model.sh downloads, checks and
unpacks it. The model is built by the package's own code from its own
`v20240927/config.yaml`: the DaViT image tower (dims 256/512/1024/2048, depths
1/1/9/1, window 12, 480x480 input) and the 16-layer, width-1024 bidirectional
text transformer, both projected to 1024-d.

Weights:
  --checkpoint PATH   the real weights (the model's safetensors file, e.g.
                      medimageinsight-v1.0.0.pt, or a torch state dict); loaded
                      with the package's own key mapping, and every parameter
                      of the model must be found in it.
  (default)           RANDOM WEIGHTS from the package's own initialisation
                      under torch.manual_seed(--seed): the graphs cost exactly
                      what the real model costs (same operators, shapes and
                      parameter count), but the embeddings mean nothing. Use
                      them for speed and memory figures only.

--reduced shrinks depth and width (DaViT dims 32/64/128/256, one block per
stage; a 2-layer, width-64 text transformer) and keeps everything else,
inputs and outputs included, so that CI can run the whole path in seconds.

OUTDIR receives what the worker serves (see worker/src/model.rs):
  image.onnx   pixel_values f32 [batch,3,480,480] -> image_embeds f32 [batch,1024]
  text.onnx    input_ids, attention_mask i64 [batch,77] -> text_embeds f32 [batch,1024]
  tokenizer.json, clip_tokenizer/   the model's own CLIP BPE files (as the test model)
  medembed-model.json               the config, logit_scale included
and the export's own evidence:
  export-report.json   parameters, GFLOPs per image and text, torch vs ONNX
                       Runtime cosine similarities, timings
  export-reference.json, export-reference.png
                       a 480x480 image and texts with the torch model's
                       embeddings of them (fp32), for end-to-end checks of a
                       server that loads OUTDIR
Only the batch axis is dynamic. With --dtype fp16 the graphs compute in fp16
and keep f32 inputs and outputs (casts at the edges), so the worker serves both.

The check: torch (fp32, eval mode) and ONNX Runtime (the exported graph, CPU)
embed the same sample inputs, at batch 3 and at batch 1; the lowest cosine
similarity per tower is printed and must be at least --min-cosine (0.9999).
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import warnings  # noqa: E402

import torch  # noqa: E402

# The tracer's notes on the package's asserts and index ops (shapes are fixed
# but the batch; the checks below run the graph at two batch sizes).
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")

import make_test_model  # noqa: E402  (the tokenizer.json builder the test model uses)

OPSET = 17
IMAGE_SIZE = 480
CONTEXT = 77
TOKENIZER_SUBDIR = os.path.join("MedImageInsights", "v20240927", "language_model", "clip_tokenizer_v4162")
CONFIG_FILE = os.path.join("MedImageInsights", "v20240927", "config.yaml")
# The managed service's documented scaling_factor; a random-weights export
# carries it so that its answers look like the real model's.
DOCUMENTED_LOGIT_SCALE = 4.5134

REDUCED = {
    "IMAGE_ENCODER.SPEC.DIM_EMBED": [32, 64, 128, 256],
    "IMAGE_ENCODER.SPEC.NUM_HEADS": [1, 2, 4, 8],
    "IMAGE_ENCODER.SPEC.NUM_GROUPS": [1, 2, 4, 8],
    "IMAGE_ENCODER.SPEC.DEPTHS": [1, 1, 1, 1],
    "LANG_ENCODER.WIDTH": 64,
    "LANG_ENCODER.HEADS": 4,
    "LANG_ENCODER.LAYERS": 2,
}

SAMPLE_TEXTS = [
    "x-ray chest anteroposterior Pneumonia",
    "x-ray chest anteroposterior No Finding",
    "CT abdomen axial: hepatic lesion with arterial enhancement",
    "",
]


def log(msg):
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def set_path(cfg, dotted, value):
    keys = dotted.split(".")
    for k in keys[:-1]:
        cfg = cfg[k]
    cfg[keys[-1]] = value


def load_package(package_dir):
    """Imports the package's model code and reads its config (no network)."""
    if not os.path.isdir(os.path.join(package_dir, "MedImageInsights")):
        sys.exit(f"{package_dir} does not hold MedImageInsights/ (the unpacked medimageinsights sdist)")
    sys.path.insert(0, os.path.abspath(package_dir))
    import logging

    logging.getLogger("MedImageInsights").setLevel(logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import yaml

    from MedImageInsights.Models.UniCLModel import create_model

    with open(os.path.join(package_dir, CONFIG_FILE)) as f:
        config = yaml.safe_load(f)
    return create_model, config


def build_model(package_dir, reduced, seed, checkpoint):
    create_model, config = load_package(package_dir)
    config = copy.deepcopy(config)
    tok_dir = os.path.abspath(os.path.join(package_dir, TOKENIZER_SUBDIR))
    # As the package's MedImageInsight.load_model: the tokenizer from the shipped files.
    config["LANG_ENCODER"]["PRETRAINED_TOKENIZER"] = tok_dir
    # Nothing is downloaded: weights come from --checkpoint or the seed.
    config["UNICL_MODEL"]["LOAD_PRETRAINED"] = False
    config["IMAGE_ENCODER"]["LOAD_PRETRAINED"] = False
    config["LANG_ENCODER"]["LOAD_PRETRAINED"] = False
    # Activation checkpointing is a training device; the maths is the same.
    config["IMAGE_ENCODER"]["SPEC"]["ENABLE_CHECKPOINT"] = False
    config["VERBOSE"] = False
    if reduced:
        for k, v in REDUCED.items():
            set_path(config, k, v)

    torch.manual_seed(seed)
    model = create_model(config)
    # The package's build_unicl_model: projections initialised by custom_init_weights.
    model.custom_init_weights(use_original_init=True)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    else:
        with torch.no_grad():
            model.logit_scale.fill_(DOCUMENTED_LOGIT_SCALE)
    model.eval()
    return model, config, tok_dir


def load_checkpoint(model, path):
    """The package's UniCLModel.from_pretrained key mapping, strict about coverage."""
    try:
        from safetensors.torch import load_file

        state = load_file(path)
        fmt = "safetensors"
    except Exception:  # not a safetensors file: a torch state dict
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        fmt = "torch"
    state = model._convert_old_weights(state)
    image_state = {k: v for k, v in state.items() if k.startswith("image_encoder.")}
    other = {k: v for k, v in state.items() if not k.startswith("image_encoder.")}
    mapping = model.image_encoder._try_remap_keys(image_state)
    for k, v in image_state.items():
        new = mapping[k]
        if not new.startswith("image_encoder."):
            new = "image_encoder." + new
        other[new] = v
    own = model.state_dict()
    missing = sorted(k for k in own if k not in other)
    unexpected = sorted(k for k in other if k not in own)
    mismatched = sorted(k for k in own if k in other and tuple(other[k].shape) != tuple(own[k].shape))
    if missing or mismatched:
        sys.exit(
            f"checkpoint {path} does not fit the architecture: {len(missing)} missing "
            f"(first: {missing[:5]}), {len(mismatched)} with other shapes (first: {mismatched[:5]})"
        )
    model.load_state_dict({k: v.float() for k, v in other.items() if k in own}, strict=True)
    log(f"loaded {len(own)} tensors from {path} ({fmt}); {len(unexpected)} unused keys")


class ImageTower(torch.nn.Module):
    def __init__(self, model, dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, pixel_values):
        x = self.model.encode_image(pixel_values.to(self.dtype), norm=True)
        return x.float()


class TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        # The package's encode_text: the hidden state at argmax(input_ids) (the
        # first end-of-text token), projected and L2-normalised. The attention
        # is bidirectional; attention_mask == 0 masks the padding keys.
        x = self.model.encode_text({"input_ids": input_ids, "attention_mask": attention_mask}, norm=True)
        return x.float()


def count_flops(model, image, ids, mask):
    """Multiply-accumulates per image and per text (fvcore's count, which the
    package itself uses), reported as FLOPs = 2 x MACs."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return None, None
    import logging

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with torch.no_grad():
        img = FlopCountAnalysis(ImageTower(model, torch.float32), (image[:1],))
        img.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        txt = FlopCountAnalysis(TextTower(model), (ids[:1], mask[:1]))
        txt.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return 2.0 * img.total(), 2.0 * txt.total()


def sample_image(seed):
    """A deterministic 480x480 RGB 'radiograph': smooth structure plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE
    base = 0.5 + 0.3 * np.sin(6.0 * x + 2.0 * y) * np.cos(4.0 * y - 1.0)
    base -= 0.35 * np.exp(-(((x - 0.35) ** 2) + ((y - 0.5) ** 2)) / 0.02)
    base -= 0.35 * np.exp(-(((x - 0.65) ** 2) + ((y - 0.5) ** 2)) / 0.02)
    rgb = np.stack([base, base * 0.95 + 0.02, base * 0.9 + 0.05], axis=-1)
    rgb += rng.normal(0.0, 0.04, rgb.shape)
    return (np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def normalise(rgb_u8):
    """The model's transform for an image already 480x480: [0,1], ImageNet mean/std, CHW."""
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    x = rgb_u8.astype(np.float32) / np.float32(255.0)
    return ((x - mean) / std).transpose(2, 0, 1)


def tokenize(tok_dir, texts):
    """The package's own tokenizer (slow CLIPTokenizer, 77 tokens, end-of-text padding)."""
    from MedImageInsights.LangEncoder import build_tokenizer

    tok = build_tokenizer({"TOKENIZER": "clip", "PRETRAINED_TOKENIZER": tok_dir})
    enc = tok(texts, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")
    return enc["input_ids"].long(), enc["attention_mask"].long()


def export(module, args, path, input_names, output_name):
    dynamic = {name: {0: "batch"} for name in input_names}
    dynamic[output_name] = {0: "batch"}
    kwargs = dict(
        input_names=input_names,
        output_names=[output_name],
        dynamic_axes=dynamic,
        opset_version=OPSET,
        do_constant_folding=True,
    )
    if "dynamo" in torch.onnx.export.__code__.co_varnames:
        kwargs["dynamo"] = False  # the TorchScript exporter: stable for these graphs
    with torch.no_grad():
        torch.onnx.export(module, args, path, **kwargs)
    import onnx

    m = onnx.load(path)
    m.producer_name = "medembed export_model.py"
    onnx.save(m, path)  # one file: each graph is under protobuf's 2 GiB


def check_static_axes(path, names):
    """Only the batch axis may be symbolic."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name not in names:
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims[0].dim_param or any(d.dim_param or d.dim_value <= 0 for d in dims[1:]):
            sys.exit(f"{os.path.basename(path)}: {vi.name} has shape {[d.dim_param or d.dim_value for d in dims]}")


def ort_session(path, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def cosines(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def off_diagonal_max(e):
    e = np.asarray(e, dtype=np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    np.fill_diagonal(s, -1.0)
    return float(s.max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--package-dir", required=True, help="the unpacked medimageinsights 0.1.1 sdist")
    ap.add_argument("--checkpoint", help="real weights (safetensors or torch state dict); default: random")
    ap.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    ap.add_argument("--reduced", action="store_true", help="small depth and width (CI)")
    ap.add_argument("--seed", type=int, default=20240927)
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    ap.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: all)")
    ap.add_argument("--name", default=None, help="model name in medembed-model.json")
    ap.add_argument("--version", default=None, help="model version in medembed-model.json")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    os.makedirs(args.outdir, exist_ok=True)
    random_weights = not args.checkpoint

    log(f"building the model from {args.package_dir} ({'reduced' if args.reduced else 'full size'}, "
        f"{'random weights, seed %d' % args.seed if random_weights else 'checkpoint ' + args.checkpoint})")
    model, config, tok_dir = build_model(args.package_dir, args.reduced, args.seed, args.checkpoint)
    n_image = sum(p.numel() for p in model.image_encoder.parameters()) + model.image_projection.numel()
    n_text = sum(p.numel() for p in model.lang_encoder.parameters()) + model.lang_projection.numel()
    dim = model.image_projection.shape[1]
    log(f"parameters: image {n_image / 1e6:.1f} M, text {n_text / 1e6:.1f} M; embedding {dim}")

    # Sample inputs: three images (one the reference PNG) and four texts.
    ref_rgb = sample_image(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    imgs = np.stack([normalise(ref_rgb)] + [rng.normal(0.0, 1.0, (3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
                                            for _ in range(2)])
    images = torch.from_numpy(imgs)
    ids, mask = tokenize(tok_dir, SAMPLE_TEXTS[:3])
    ref_ids, ref_mask = tokenize(tok_dir, SAMPLE_TEXTS)

    t0 = time.time()
    with torch.no_grad():
        ref_image = ImageTower(model, torch.float32)(images).numpy()
        ref_text = TextTower(model)(ref_ids, ref_mask).numpy()
    torch_s = time.time() - t0
    log(f"torch fp32 forward (3 images, 4 texts): {torch_s:.1f} s")
    flops_image, flops_text = count_flops(model, images, ids, mask)
    if flops_image:
        log(f"GFLOPs (2 x MACs): image {flops_image / 1e9:.1f}, text {flops_text / 1e9:.2f}")

    # The config carries the fp32 value, whatever the graphs' precision.
    logit_scale = float(model.logit_scale.detach().float())
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    if dtype == torch.float16:
        model = model.half()
    image_path = os.path.join(args.outdir, "image.onnx")
    text_path = os.path.join(args.outdir, "text.onnx")
    t0 = time.time()
    export(ImageTower(model, dtype), (images[:1].clone(),), image_path, ["pixel_values"], "image_embeds")
    export(TextTower(model), (ids[:1].clone(), mask[:1].clone()), text_path,
           ["input_ids", "attention_mask"], "text_embeds")
    export_s = time.time() - t0
    check_static_axes(image_path, {"pixel_values", "image_embeds"})
    check_static_axes(text_path, {"input_ids", "attention_mask", "text_embeds"})
    log(f"exported {args.dtype} graphs in {export_s:.1f} s: image {os.path.getsize(image_path) / 2**20:.0f} MiB, "
        f"text {os.path.getsize(text_path) / 2**20:.0f} MiB")

    # torch vs ONNX Runtime: batch 3 (and 4 texts), then batch 1.
    t0 = time.time()
    img_sess = ort_session(image_path, args.threads)
    txt_sess = ort_session(text_path, args.threads)
    got_image = img_sess.run(["image_embeds"], {"pixel_values": imgs})[0]
    got_image1 = img_sess.run(["image_embeds"], {"pixel_values": imgs[:1]})[0]
    got_text = txt_sess.run(["text_embeds"], {"input_ids": ref_ids.numpy(), "attention_mask": ref_mask.numpy()})[0]
    got_text1 = txt_sess.run(["text_embeds"], {"input_ids": ref_ids[:1].numpy(),
                                              "attention_mask": ref_mask[:1].numpy()})[0]
    ort_s = time.time() - t0
    cos_image = np.concatenate([cosines(got_image, ref_image), cosines(got_image1, ref_image[:1])])
    cos_text = np.concatenate([cosines(got_text, ref_text), cosines(got_text1, ref_text[:1])])
    check = {
        "min_cosine_required": args.min_cosine,
        "image_min_cosine": float(cos_image.min()),
        "text_min_cosine": float(cos_text.min()),
        "image_max_abs_diff": float(np.abs(got_image - ref_image).max()),
        "text_max_abs_diff": float(np.abs(got_text - ref_text).max()),
        # How alike different inputs' embeddings are (the check means something
        # only when this is well below the agreement above).
        "image_distinct_inputs_max_cosine": off_diagonal_max(ref_image),
        "text_distinct_inputs_max_cosine": off_diagonal_max(ref_text),
        "batches_checked": [3, 1],
        "reference": "torch fp32, eval mode",
        "runtime": "onnxruntime " + __import__("onnxruntime").__version__ + " CPUExecutionProvider",
    }
    print(f"cosine(torch fp32, ONNX Runtime {args.dtype}): image min {check['image_min_cosine']:.6f}, "
          f"text min {check['text_min_cosine']:.6f} (required >= {args.min_cosine}); "
          f"max |diff| image {check['image_max_abs_diff']:.2e}, text {check['text_max_abs_diff']:.2e}; "
          f"distinct inputs max cosine image {check['image_distinct_inputs_max_cosine']:.4f}, "
          f"text {check['text_distinct_inputs_max_cosine']:.4f}", flush=True)

    # Tokenizer, config, reference, report.
    make_test_model.build_tokenizer_json(tok_dir, os.path.join(args.outdir, "tokenizer.json"))
    keep = os.path.join(args.outdir, "clip_tokenizer")
    os.makedirs(keep, exist_ok=True)
    for name in make_test_model.TOKENIZER_FILES:
        shutil.copyfile(os.path.join(tok_dir, name), os.path.join(keep, name))
    variant = ("reduced-" if args.reduced else "") + ("random" if random_weights else "checkpoint")
    name = args.name or ("medimageinsight" + ("" if not random_weights else f"-{variant}"))
    desc = ("MedImageInsight architecture ("
            + ("REDUCED depth and width, " if args.reduced else "full size, ")
            + ("RANDOM WEIGHTS (seed %d): its embeddings mean nothing; logit_scale is the managed "
               "service's documented value" % args.seed if random_weights else "weights from a checkpoint")
            + f"), {args.dtype}, exported by scripts/export_model.py from medimageinsights 0.1.1.")
    cfg = copy.deepcopy(make_test_model.MODEL_CONFIG)
    cfg.update(name=name, version=args.version or ("0.1.1-" + args.dtype), description=desc,
               embedding_dim=int(dim), logit_scale=logit_scale)
    with open(os.path.join(args.outdir, "medembed-model.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")

    from PIL import Image

    Image.fromarray(ref_rgb, "RGB").save(os.path.join(args.outdir, "export-reference.png"))
    with open(os.path.join(args.outdir, "export-reference.json"), "w") as f:
        json.dump({
            "about": "torch fp32 embeddings of export-reference.png (480x480 RGB, so resizing is the "
                     "identity) and of these texts, by the model exported here",
            "image": "export-reference.png",
            "image_embedding": [float(v) for v in ref_image[0]],
            "texts": SAMPLE_TEXTS,
            "text_embeddings": [[float(v) for v in row] for row in ref_text],
            "logit_scale": logit_scale,
        }, f)
        f.write("\n")
    report = {
        "architecture": "MedImageInsight (medimageinsights 0.1.1: DaViT image tower, bidirectional "
                        "transformer text tower, UniCL projections)",
        "reduced": args.reduced,
        "weights": "random (seed %d)" % args.seed if random_weights else "checkpoint " + os.path.basename(args.checkpoint),
        "dtype": args.dtype,
        "image_encoder": {k: config["IMAGE_ENCODER"]["SPEC"][k]
                          for k in ("DIM_EMBED", "NUM_HEADS", "NUM_GROUPS", "DEPTHS", "WINDOW_SIZE")},
        "lang_encoder": {k: config["LANG_ENCODER"][k] for k in ("WIDTH", "HEADS", "LAYERS", "CONTEXT_LENGTH")},
        "parameters": {"image": n_image, "text": n_text},
        "gflops_per_image": flops_image / 1e9 if flops_image else None,
        "gflops_per_text": flops_text / 1e9 if flops_text else None,
        "flops_note": "fvcore's count of multiply-accumulates (matmul, conv, linear, einsum) x 2; "
                      "softmax, norms and activations are not counted",
        "onnx_bytes": {"image": os.path.getsize(image_path), "text": os.path.getsize(text_path)},
        "opset": OPSET,
        "torch": torch.__version__,
        "check": check,
        "seconds": {"torch_forward": round(torch_s, 1), "export": round(export_s, 1),
                    "onnxruntime_check": round(ort_s, 1), "total": round(time.time() - t_start, 1)},
    }
    with open(os.path.join(args.outdir, "export-report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    ok = check["image_min_cosine"] >= args.min_cosine and check["text_min_cosine"] >= args.min_cosine
    if not ok:
        print(f"FAILED: cosine below {args.min_cosine}", file=sys.stderr)
        sys.exit(1)
    log(f"done in {time.time() - t_start:.0f} s: {args.outdir}")


if __name__ == "__main__":
    main()
