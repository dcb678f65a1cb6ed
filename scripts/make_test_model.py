#!/usr/bin/env python3
"""Build the TEST MODEL: random weights, MedImageInsight's exact I/O contract.

    make_test_model.py OUTDIR --tokenizer-dir DIR

THIS IS A TEST MODEL WITH RANDOM WEIGHTS. Its embeddings mean nothing. It exists
so that the real loading, preprocessing, tokenising, batching and serving code
can be tested end to end without the real (unreachable) weights. Do not use it
for any performance figure either: it is tiny, unlike the real 0.6 B model.

Everything is drawn from numpy.random.default_rng(20240927), so the output is
the same on every machine. Only the `onnx` helper API and numpy are used.

OUTDIR receives:
  image.onnx   pixel_values f32 [batch,3,480,480] -> image_embeds f32 [batch,1024]
  text.onnx    input_ids, attention_mask i64 [batch,77] -> text_embeds f32 [batch,1024]
  tokenizer.json          for the Rust `tokenizers` crate (CLIP BPE; see make_normalizer)
  clip_tokenizer/         the model's own vocab.json, merges.txt, tokenizer_config.json,
                          special_tokens_map.json (copied from --tokenizer-dir if elsewhere)
  medembed-model.json     the model config the worker reads
  README.txt
Both outputs are L2-normalised per row. Only the batch axis is symbolic.
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # no 'PyTorch not found' banner
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240927
OPSET = 17
IR_VERSION = 8  # accepted by every ONNX Runtime from 1.10 on, 1.32 included

IMAGE_SIZE = 480
POOL = 16  # 480 / 16 = 30
GRID = IMAGE_SIZE // POOL
IMAGE_HIDDEN = 64
EMBED_DIM = 1024

CONTEXT = 77
TEXT_BUCKETS = 4099  # ids are folded with Mod so the embedding table stays small
TEXT_DIM = 32
EOT_ID = 49407

TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]

MODEL_CONFIG = {
    "format": "medembed-model/v1",
    "name": "medimageinsight-test-random",
    "version": "1",
    "description": "TEST MODEL with random weights and MedImageInsight's exact I/O; its embeddings mean nothing.",
    "embedding_dim": EMBED_DIM,
    "logit_scale": 4.5134,
    "image": {
        "onnx": "image.onnx",
        "input": "pixel_values",
        "output": "image_embeds",
        "size": IMAGE_SIZE,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "text": {
        "onnx": "text.onnx",
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "output": "text_embeds",
        "context_length": CONTEXT,
        "tokenizer": "tokenizer.json",
    },
    "preprocess": {"window": {"mode": "percentile", "low": 1.0, "high": 99.0}},
}

README = """\
TEST MODEL WITH RANDOM WEIGHTS. ITS EMBEDDINGS MEAN NOTHING.

Name: medimageinsight-test-random (version 1)
Built by scripts/make_test_model.py from numpy.random.default_rng(20240927).

It has MedImageInsight's exact input/output contract and nothing else of it:
  image.onnx  pixel_values f32 [batch,3,480,480] -> image_embeds f32 [batch,1024], L2-normalised
              (16x16 average pooling, a 2700->64 tanh layer, a 64->1024 projection)
  text.onnx   input_ids, attention_mask i64 [batch,77] -> text_embeds f32 [batch,1024], L2-normalised
              (an embedding table over id mod 4099 plus positions; masked mean pooling and
               the hidden state at the first end-of-text token, argmax(input_ids); 64->1024)
  tokenizer.json  the model's real CLIP BPE tokenizer (vocab.json/merges.txt from the
              medimageinsights 0.1.1 source distribution, kept in clip_tokenizer/),
              normalizer: control-character cleanup, spaces around CJK ideographs, NFC,
              whitespace collapse, lowercase (what the slow CLIPTokenizer does without ftfy)
  medembed-model.json  the config the worker reads (sizes, mean/std, windowing, logit_scale)

Use it to test loading, preprocessing, tokenising, batching and serving. Do not use it
for retrieval or classification results, nor for speed or memory figures (the real
model is about 0.6 B parameters; this one is under a million).
"""


def named_arrays(**arrays):
    """Initializers from arrays, each named by its keyword (in order)."""
    return [numpy_helper.from_array(a, name) for name, a in arrays.items()]


def l2_normalise_nodes(inp, out, prefix):
    """Nodes computing out = inp / max(||inp||_2 over axis 1, 1e-12)."""
    return [
        helper.make_node("ReduceL2", [inp], [f"{prefix}_norm"], axes=[1], keepdims=1),
        helper.make_node("Max", [f"{prefix}_norm", f"{prefix}_eps"], [f"{prefix}_norm_safe"]),
        helper.make_node("Div", [inp, f"{prefix}_norm_safe"], [out]),
    ], [numpy_helper.from_array(np.array(1e-12, dtype=np.float32), f"{prefix}_eps")]


def finish(graph, path):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="medembed make_test_model.py (TEST MODEL, random weights)",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    model.doc_string = "TEST MODEL with random weights and MedImageInsight's exact I/O; its embeddings mean nothing."
    helper.set_model_props(model, {"medembed.test_model": "true", "medembed.seed": str(SEED)})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def build_image(rng):
    n_in = 3 * GRID * GRID  # 2700
    # Scale so that tanh pre-activations have a standard deviation around 0.6-1.3 on
    # ordinary normalised images (values roughly in [-2.1, 2.6]): spread, not saturated.
    w1 = (rng.standard_normal((n_in, IMAGE_HIDDEN)) * (0.6 / np.sqrt(n_in))).astype(np.float32)
    b1 = (rng.standard_normal(IMAGE_HIDDEN) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((IMAGE_HIDDEN, EMBED_DIM)) / np.sqrt(IMAGE_HIDDEN)).astype(np.float32)
    b2 = (rng.standard_normal(EMBED_DIM) * 0.01).astype(np.float32)

    norm_nodes, norm_inits = l2_normalise_nodes("img_proj", "image_embeds", "img")
    nodes = [
        helper.make_node("AveragePool", ["pixel_values"], ["img_pooled"],
                         kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        helper.make_node("Flatten", ["img_pooled"], ["img_flat"], axis=1),
        helper.make_node("MatMul", ["img_flat", "img_w1"], ["img_h_mm"]),
        helper.make_node("Add", ["img_h_mm", "img_b1"], ["img_h_pre"]),
        helper.make_node("Tanh", ["img_h_pre"], ["img_h"]),
        helper.make_node("MatMul", ["img_h", "img_w2"], ["img_proj_mm"]),
        helper.make_node("Add", ["img_proj_mm", "img_b2"], ["img_proj"]),
    ] + norm_nodes
    inits = named_arrays(img_w1=w1, img_b1=b1, img_w2=w2, img_b2=b2) + norm_inits
    graph = helper.make_graph(
        nodes,
        "medimageinsight_test_random_image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", EMBED_DIM])],
        initializer=inits,
        doc_string="TEST MODEL image tower (random weights).",
    )
    return graph


def build_text(rng):
    emb = rng.standard_normal((TEXT_BUCKETS, TEXT_DIM)).astype(np.float32)
    # The start and end tokens are in every text: zero their rows so that they do not
    # pull all embeddings together (the end token's hidden state is then its position
    # embedding alone, which still tells which end-of-text position was pooled).
    emb[49406 % TEXT_BUCKETS] = 0.0
    emb[EOT_ID % TEXT_BUCKETS] = 0.0
    pos = (rng.standard_normal((CONTEXT, TEXT_DIM)) * 0.3).astype(np.float32)
    w = (rng.standard_normal((2 * TEXT_DIM, EMBED_DIM)) / np.sqrt(2 * TEXT_DIM)).astype(np.float32)
    b = (rng.standard_normal(EMBED_DIM) * 0.01).astype(np.float32)

    def c64(name, values):
        return numpy_helper.from_array(np.array(values, dtype=np.int64), name)

    norm_nodes, norm_inits = l2_normalise_nodes("txt_proj", "text_embeds", "txt")
    nodes = [
        # hidden[b, t] = E[input_ids[b, t] mod 4099] + P[t]      -> [B,77,32]
        helper.make_node("Mod", ["input_ids", "txt_buckets"], ["txt_ids_mod"], fmod=0),
        helper.make_node("Gather", ["txt_emb", "txt_ids_mod"], ["txt_tok"], axis=0),
        helper.make_node("Add", ["txt_tok", "txt_pos"], ["txt_hidden"]),
        # masked mean over positions                               -> [B,32]
        helper.make_node("Cast", ["attention_mask"], ["txt_maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["txt_maskf", "txt_axis2"], ["txt_mask3"]),
        helper.make_node("Mul", ["txt_hidden", "txt_mask3"], ["txt_masked"]),
        helper.make_node("ReduceSum", ["txt_masked", "txt_axis1"], ["txt_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["txt_maskf", "txt_axis1"], ["txt_count"], keepdims=1),
        helper.make_node("Max", ["txt_count", "txt_one"], ["txt_count_safe"]),
        helper.make_node("Div", ["txt_sum", "txt_count_safe"], ["txt_mean"]),
        # hidden state at the first end-of-text token (argmax of ids, 49407 is the largest)
        helper.make_node("ArgMax", ["input_ids"], ["txt_eot"], axis=1, keepdims=1),       # [B,1]
        helper.make_node("Unsqueeze", ["txt_eot", "txt_axis2"], ["txt_eot3"]),              # [B,1,1]
        helper.make_node("Expand", ["txt_eot3", "txt_expand_shape"], ["txt_eot_idx"]),      # [B,1,32]
        helper.make_node("GatherElements", ["txt_hidden", "txt_eot_idx"], ["txt_eot_h3"], axis=1),
        helper.make_node("Squeeze", ["txt_eot_h3", "txt_axis1"], ["txt_eot_h"]),            # [B,32]
        # project and normalise
        helper.make_node("Concat", ["txt_mean", "txt_eot_h"], ["txt_feat"], axis=1),        # [B,64]
        helper.make_node("MatMul", ["txt_feat", "txt_w"], ["txt_proj_mm"]),
        helper.make_node("Add", ["txt_proj_mm", "txt_b"], ["txt_proj"]),
    ] + norm_nodes
    inits = named_arrays(txt_emb=emb, txt_pos=pos, txt_w=w, txt_b=b) + [
        c64("txt_buckets", TEXT_BUCKETS),
        c64("txt_axis1", [1]),
        c64("txt_axis2", [2]),
        c64("txt_expand_shape", [1, 1, TEXT_DIM]),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "txt_one"),
    ] + norm_inits
    graph = helper.make_graph(
        nodes,
        "medimageinsight_test_random_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", CONTEXT]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", CONTEXT]),
        ],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", EMBED_DIM])],
        initializer=inits,
        doc_string="TEST MODEL text tower (random weights).",
    )
    return graph


def make_normalizer(kind):
    """The tokenizer.json normalizer.

    "bert-nfc" (default) reproduces what the model's own code does: MedImageInsight
    builds transformers' SLOW CLIPTokenizer, and without `ftfy` installed (it is not
    among the package's dependencies, nor ours) that tokenizer cleans text with
    BasicTokenizer(strip_accents=False, do_split_on_punc=False): drop control characters,
    map whitespace to spaces, put spaces around CJK ideographs, NFC, lowercase. Measured
    against that slow tokenizer (transformers 4.57.6): 31 of 32 test strings agree (the
    one miss is a word-final Greek capital sigma, which Python lowercases to "ς" and the
    Rust Lowercase normalizer, character by character, to "σ").

    "nfkc" folds full-width forms and ligatures (ｘ -> x, ﬁ -> fi) like the slow
    tokenizer does only when `ftfy` is installed; against the slow tokenizer without
    ftfy it agrees on 18 of the same 32 strings (27 of 32 against slow + ftfy 6.3.1).
    """
    from tokenizers import Regex, normalizers as N

    tail = [N.Replace(Regex(r"\s+"), " "), N.Lowercase()]
    if kind == "bert-nfc":
        return N.Sequence(
            [N.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False),
             N.NFC()] + tail
        )
    if kind == "nfkc":
        return N.Sequence([N.NFKC()] + tail)
    raise ValueError(f"unknown normalizer {kind!r}")


def build_tokenizer_json(tokenizer_dir, path, normalizer="bert-nfc"):
    # transformers 4.x: the fast tokenizer converted from the model's own vocab/merges.
    # (transformers 5.x silently writes an empty tokenizer.json from this constructor.)
    import transformers
    from transformers import CLIPTokenizerFast

    if int(transformers.__version__.split(".")[0]) >= 5:
        sys.exit("make_test_model.py needs transformers 4.x (5.x writes an empty tokenizer.json)")
    fast = CLIPTokenizerFast(
        vocab_file=os.path.join(tokenizer_dir, "vocab.json"),
        merges_file=os.path.join(tokenizer_dir, "merges.txt"),
    )
    tok = fast.backend_tokenizer
    tok.normalizer = make_normalizer(normalizer)
    # The Rust side pads and truncates itself; these settings are only a convenience.
    tok.enable_truncation(max_length=CONTEXT)
    tok.enable_padding(length=CONTEXT, pad_id=EOT_ID, pad_token="<|endoftext|>")
    if tok.get_vocab_size(with_added_tokens=True) != 49408:
        sys.exit(f"unexpected vocabulary size {tok.get_vocab_size(with_added_tokens=True)}")
    enc = tok.encode("a chest x-ray")
    if enc.ids[0] != 49406 or EOT_ID not in enc.ids or len(enc.ids) != CONTEXT:
        sys.exit(f"tokenizer sanity check failed: {enc.ids[:8]}")
    tok.save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--tokenizer-dir", required=True,
                    help="directory with the model's vocab.json, merges.txt, tokenizer_config.json, "
                         "special_tokens_map.json (from the medimageinsights 0.1.1 sdist)")
    ap.add_argument("--normalizer", choices=["bert-nfc", "nfkc"], default="bert-nfc",
                    help="tokenizer.json normalizer (default bert-nfc: matches the slow CLIPTokenizer "
                         "without ftfy, i.e. the model's own code in its declared environment)")
    args = ap.parse_args()

    for name in TOKENIZER_FILES:
        if not os.path.isfile(os.path.join(args.tokenizer_dir, name)):
            sys.exit(f"missing {name} in {args.tokenizer_dir}")
    os.makedirs(args.outdir, exist_ok=True)

    rng = np.random.default_rng(SEED)
    finish(build_image(rng), os.path.join(args.outdir, "image.onnx"))
    finish(build_text(rng), os.path.join(args.outdir, "text.onnx"))

    build_tokenizer_json(args.tokenizer_dir, os.path.join(args.outdir, "tokenizer.json"), args.normalizer)
    keep = os.path.join(args.outdir, "clip_tokenizer")
    if os.path.realpath(keep) != os.path.realpath(args.tokenizer_dir):
        os.makedirs(keep, exist_ok=True)
        for name in TOKENIZER_FILES:
            shutil.copyfile(os.path.join(args.tokenizer_dir, name), os.path.join(keep, name))

    with open(os.path.join(args.outdir, "medembed-model.json"), "w") as f:
        json.dump(MODEL_CONFIG, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.outdir, "README.txt"), "w") as f:
        f.write(README)


if __name__ == "__main__":
    main()
