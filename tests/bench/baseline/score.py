"""Scoring script for the benchmark's baseline: the managed service's serving stack.

`azmlinfsrv` (PyPI azureml-inference-server-http, the server the managed online
endpoints run: gunicorn sync workers + Flask) loads this script in each worker
process, calls init() once, then run(raw_json) for every POST /score.

It does what MedImageInsight's own code does for a request (its
`decode_base64_image` and transform), with onnxruntime in place of torch:
  image: base64 decode (MIME line breaks allowed) -> PIL open -> RGB (L/LA
         replicated) -> resize to 480x480 with PIL BICUBIC (a plain stretch)
         -> float32 / 255 -> (x - mean) / std -> NCHW -> image graph
  text:  transformers' slow CLIPTokenizer (the model's TOKENIZER: clip) with the
         model's own vocab/merges, 77 tokens padded with <|endoftext|> -> text graph
and answers in the managed API's live shape, a list with one object per row:
  [{"image_features": [[...]], "text_features": [[...]], "scaling_factor": s}]

Settings (environment):
  AZUREML_MODEL_DIR              the model directory (azmlinfsrv --model_dir sets it)
  MEDEMBED_BASELINE_ORT_THREADS  onnxruntime intra-op threads per process (default 1:
                                 with one gunicorn worker per core, more oversubscribes)

16-bit images are not windowed here (PIL keeps the high byte), as in the
managed service, whose client windows before sending; the benchmark sends 8-bit.
"""

import base64
import io
import json
import os

import numpy as np
import onnxruntime as ort
from PIL import Image

_state = {}


def _config(model_dir):
    with open(os.path.join(model_dir, "medembed-model.json")) as f:
        return json.load(f)


def init():
    model_dir = os.environ["AZUREML_MODEL_DIR"]
    cfg = _config(model_dir)
    threads = int(os.environ.get("MEDEMBED_BASELINE_ORT_THREADS", "1"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    icfg, tcfg = cfg["image"], cfg["text"]
    image = ort.InferenceSession(os.path.join(model_dir, icfg["onnx"]), opts, providers=providers)
    text = ort.InferenceSession(os.path.join(model_dir, tcfg["onnx"]), opts, providers=providers)

    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers import CLIPTokenizer

    tok_dir = os.path.join(model_dir, "clip_tokenizer")
    tokenizer = CLIPTokenizer(
        vocab_file=os.path.join(tok_dir, "vocab.json"),
        merges_file=os.path.join(tok_dir, "merges.txt"),
        pad_token="<|endoftext|>",
    )
    _state.update(
        cfg=cfg,
        image=image,
        text=text,
        tokenizer=tokenizer,
        size=int(icfg["size"]),
        mean=np.asarray(icfg["mean"], dtype=np.float32),
        std=np.asarray(icfg["std"], dtype=np.float32),
        context=int(tcfg.get("context_length", 77)),
    )
    # One inference of each tower, so the first request is not the slow one.
    size = _state["size"]
    image.run([icfg["output"]], {icfg["input"]: np.zeros((1, 3, size, size), np.float32)})
    _embed_texts(["warm-up"])
    print("medembed-bench baseline ready", flush=True)


def _decode_image(b64):
    # As MedImageInsight's decode_base64_image: drop a data-URL header, decode.
    if "," in b64:
        b64 = b64.split(",")[1]
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    if img.mode in ("L", "LA"):
        img = img.convert("RGB")
    return img.convert("RGB")


def _embed_images(b64s):
    s = _state
    batch = []
    for b64 in b64s:
        img = _decode_image(b64).resize((s["size"], s["size"]), Image.BICUBIC)
        x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        x = (x - s["mean"]) / s["std"]
        batch.append(x.transpose(2, 0, 1))
    icfg = s["cfg"]["image"]
    (y,) = s["image"].run([icfg["output"]], {icfg["input"]: np.ascontiguousarray(np.stack(batch))})
    return y


def _embed_texts(texts):
    s = _state
    enc = s["tokenizer"](
        list(texts), padding="max_length", max_length=s["context"], truncation=True, return_tensors="np"
    )
    tcfg = s["cfg"]["text"]
    (y,) = s["text"].run(
        [tcfg["output"]],
        {
            tcfg["input_ids"]: enc["input_ids"].astype(np.int64),
            tcfg["attention_mask"]: enc["attention_mask"].astype(np.int64),
        },
    )
    return y


def _truthy(v):
    if isinstance(v, str):
        return v.strip().lower() == "true"
    return bool(v)


def run(raw_data):
    req = json.loads(raw_data)
    inp = req["input_data"]
    columns = inp["columns"]
    images, texts = [], []  # (row, value)
    rows = inp["data"]
    for i, row in enumerate(rows):
        cells = dict(zip(columns, row))
        if cells.get("image"):
            images.append((i, cells["image"]))
        if cells.get("text"):
            texts.append((i, cells["text"]))
    if not images and not texts:
        raise ValueError("request has no image and no text to embed")
    out = [{} for _ in rows]
    if images:
        for (i, _), v in zip(images, _embed_images([b for _, b in images]).tolist()):
            out[i]["image_features"] = [v]
    if texts:
        for (i, _), v in zip(texts, _embed_texts([t for _, t in texts]).tolist()):
            out[i]["text_features"] = [v]
    params = req.get("params") or {}
    if _truthy(params.get("get_scaling_factor", True)):
        for o in out:
            o["scaling_factor"] = float(_state["cfg"]["logit_scale"])
    return out
