#!/usr/bin/env python3
"""Independent Python reference for the Rust worker's integration tests.

It shares no code with the Rust side: images go through PIL + numpy exactly as
MedImageInsight's own transform (and Microsoft's client windowing) does, text goes
through transformers' SLOW CLIPTokenizer with the model's own vocab/merges, and the
ONNX graphs run in onnxruntime's Python API on the CPU. JSON on stdout.

  reference.py images --model DIR [--window-low 1 --window-high 99] FILE...
        -> {"embeddings": [[1024 floats], ...]}            (one per file, in order)
  reference.py preprocess --model DIR [--window-low .. --window-high ..] FILE... --out X.npy
        -> writes the float32 NCHW pixel_values batch (for debugging pixel parity)
  echo '["a chest x-ray", ""]' | reference.py tokens --tokenizer-dir DIR
        -> {"input_ids": [[77 ints], ...], "attention_mask": [[77 ints], ...]}
  echo '["a chest x-ray"]' | reference.py texts --model DIR
        -> {"embeddings": [[1024 floats], ...]}

Image preprocessing, step by step:
  1. Open with PIL (no EXIF orientation is applied: the model's transform applies none).
  2. High bit depth (PIL modes I;16, I;16L, I;16B, I;16N, I, and 16-bit PNGs of colour
     types RGB / RGBA / gray+alpha, which PIL would silently cut to their high byte and
     which are therefore decoded here with numpy + zlib) is windowed to 8 bits like
     Microsoft's client: lo, hi = numpy.percentile(all colour samples, [low, high])
     (default linear interpolation; alpha excluded), clip to [lo, hi],
     (x - lo) / (hi - lo) * 255 in float64, truncated to uint8; all zeros if hi <= lo.
  3. .convert("RGB"): L / LA replicated, RGBA alpha dropped (no compositing), P expanded.
  4. Resize to size x size with Image.BICUBIC (a plain stretch, no crop, no padding).
  5. float32 / 255, (x - mean) / std per channel, NCHW.
"""

import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # no 'PyTorch not found' banner
from PIL import Image

HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
TOKENIZER_FILES = ("vocab.json", "merges.txt")
CONTEXT = 77
PAD_ID = 49407


# ---------------------------------------------------------------------------- config

def load_config(model_dir):
    with open(os.path.join(model_dir, "medembed-model.json")) as f:
        cfg = json.load(f)
    if cfg.get("format") != "medembed-model/v1":
        sys.exit(f"unsupported model format {cfg.get('format')!r}")
    return cfg


# ---------------------------------------------------------------------------- images

def _png_16bit_color(path):
    """For a 16-bit PNG of colour type 2 (RGB), 4 (gray+alpha) or 6 (RGBA), return the
    colour samples as uint16 [H, W, C] (alpha dropped). Return None for any other file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos, idat, ihdr = 8, [], None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
        pos += 12 + length
    if ihdr is None:
        return None
    width, height, depth, color, _comp, _filt, interlace = ihdr
    if depth != 16 or color not in (2, 4, 6):
        return None
    if interlace:
        sys.exit(f"{path}: interlaced 16-bit colour PNG is not supported by the reference")
    channels = {2: 3, 4: 2, 6: 4}[color]
    bpp = 2 * channels
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    rows = raw[: height * (stride + 1)].reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        ftype, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if ftype == 0:
            cur = line
        elif ftype == 1:  # Sub: a running sum per byte lane, mod 256
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) & 0xFF
        elif ftype == 2:  # Up
            cur = (line + prev) & 0xFF
        elif ftype in (3, 4):  # Average, Paeth: sequential
            cur = np.zeros(stride, dtype=np.int32)
            for i in range(stride):
                a = int(cur[i - bpp]) if i >= bpp else 0
                b = int(prev[i])
                if ftype == 3:
                    pred = (a + b) >> 1
                else:
                    c = int(prev[i - bpp]) if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                cur[i] = (int(line[i]) + pred) & 0xFF
        else:
            sys.exit(f"{path}: bad PNG filter type {ftype}")
        out[y] = cur
        prev = cur
    samples = out.reshape(height, width, channels, 2)
    values = (samples[..., 0].astype(np.uint16) << 8) | samples[..., 1]
    colour = {2: 3, 4: 1, 6: 3}[color]
    return values[..., :colour]


def window_to_u8(values, low, high):
    """Microsoft's client windowing: percentiles over the whole image, clip, scale, truncate."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(x, [low, high])
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.uint8)
    x = np.clip(x, lo, hi)
    return ((x - lo) / (hi - lo) * 255.0).astype(np.uint8)


def load_rgb(path, low, high):
    """The decoded, windowed, RGB (8-bit) PIL image, before resizing."""
    wide = _png_16bit_color(path)
    if wide is not None:
        u8 = window_to_u8(wide, low, high)
        if u8.shape[2] == 1:
            return Image.fromarray(u8[..., 0], "L").convert("RGB")
        return Image.fromarray(u8, "RGB")
    img = Image.open(path)
    img.load()
    if img.mode in HIGH_DEPTH_MODES:
        u8 = window_to_u8(np.array(img), low, high)
        img = Image.fromarray(u8, "L")
    return img.convert("RGB")


def preprocess(paths, cfg, low, high):
    icfg = cfg["image"]
    size = int(icfg["size"])
    mean = np.asarray(icfg["mean"], dtype=np.float32)
    std = np.asarray(icfg["std"], dtype=np.float32)
    batch = []
    for p in paths:
        img = load_rgb(p, low, high).resize((size, size), Image.BICUBIC)
        x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        x = (x - mean) / std
        batch.append(x.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(batch).astype(np.float32))


def session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def window_args(args, cfg):
    win = cfg.get("preprocess", {}).get("window", {})
    low = args.window_low if args.window_low is not None else float(win.get("low", 1.0))
    high = args.window_high if args.window_high is not None else float(win.get("high", 99.0))
    return low, high


def cmd_images(args):
    cfg = load_config(args.model)
    low, high = window_args(args, cfg)
    icfg = cfg["image"]
    sess = session(os.path.join(args.model, icfg["onnx"]))
    out = []
    for p in args.files:  # one at a time: batch composition cannot matter
        x = preprocess([p], cfg, low, high)
        (y,) = sess.run([icfg["output"]], {icfg["input"]: x})
        out.extend(y.astype(np.float64).tolist())
    return {"embeddings": out}


def cmd_preprocess(args):
    cfg = load_config(args.model)
    low, high = window_args(args, cfg)
    np.save(args.out, preprocess(args.files, cfg, low, high))
    return {"out": args.out, "files": len(args.files)}


# ---------------------------------------------------------------------------- text

def tokenize(texts, tokenizer_dir):
    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers import CLIPTokenizer  # the slow, pure-Python tokenizer

    for name in TOKENIZER_FILES:
        if not os.path.isfile(os.path.join(tokenizer_dir, name)):
            sys.exit(f"missing {name} in {tokenizer_dir}")
    tok = CLIPTokenizer(
        vocab_file=os.path.join(tokenizer_dir, "vocab.json"),
        merges_file=os.path.join(tokenizer_dir, "merges.txt"),
        pad_token="<|endoftext|>",
    )
    assert tok.pad_token_id == PAD_ID, tok.pad_token_id
    if not texts:
        return [], []
    enc = tok(list(texts), padding="max_length", max_length=CONTEXT, truncation=True)
    ids, mask = [list(map(int, r)) for r in enc["input_ids"]], [list(map(int, r)) for r in enc["attention_mask"]]
    for r, m in zip(ids, mask):
        assert len(r) == CONTEXT and len(m) == CONTEXT
    return ids, mask


def read_texts():
    texts = json.load(sys.stdin)
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        sys.exit("stdin must be a JSON list of strings")
    return texts


def cmd_tokens(args):
    ids, mask = tokenize(read_texts(), args.tokenizer_dir)
    return {"input_ids": ids, "attention_mask": mask}


def cmd_texts(args):
    cfg = load_config(args.model)
    tcfg = cfg["text"]
    tdir = args.tokenizer_dir or os.path.join(args.model, "clip_tokenizer")
    texts = read_texts()
    if not texts:
        return {"embeddings": []}
    ids, mask = tokenize(texts, tdir)
    sess = session(os.path.join(args.model, tcfg["onnx"]))
    (y,) = sess.run(
        [tcfg["output"]],
        {tcfg["input_ids"]: np.asarray(ids, dtype=np.int64), tcfg["attention_mask"]: np.asarray(mask, dtype=np.int64)},
    )
    return {"embeddings": y.astype(np.float64).tolist()}


# ---------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description="Independent reference for medembed's integration tests.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    for name in ("images", "preprocess"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--window-low", type=float, default=None, help="low percentile (default: config, 1)")
        p.add_argument("--window-high", type=float, default=None, help="high percentile (default: config, 99)")
        if name == "preprocess":
            p.add_argument("--out", required=True)
        p.add_argument("files", nargs="+")

    p = sub.add_parser("tokens")
    p.add_argument("--tokenizer-dir", required=True)

    p = sub.add_parser("texts")
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer-dir", default=None, help="default: MODEL/clip_tokenizer")

    args = ap.parse_args()
    result = {
        "images": cmd_images,
        "preprocess": cmd_preprocess,
        "tokens": cmd_tokens,
        "texts": cmd_texts,
    }[args.cmd](args)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
