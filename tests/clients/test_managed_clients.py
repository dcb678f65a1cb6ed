"""The scoring API as the managed endpoint's published clients use it.

Each test below calls a medembed scoring URL the way one of Microsoft's public
MedImageInsight clients (microsoft/healthcareai-examples) calls the managed
endpoint, and reads the answer the way that client reads it: the toolkit's
client and its parallel submitter, the MCP server's zero-shot classifier, the
batched "advanced call" notebook and the zero-shot / adapter notebooks. The
code is ours; only the access patterns are theirs.

Environment:
  MEDEMBED_SCORE_URL       a scoring URL answering in the live (PerRow) shape
  MEDEMBED_DOCUMENTED_URL  optional: a URL of the same model answering in the
                           documented shape (endpoint responseFormat Documented)
  MEDEMBED_KEY             optional: the key, sent as "Authorization: Bearer KEY"

Run: python tests/clients/test_managed_clients.py
"""

import base64
import io
import itertools
import os
import unittest
import uuid

import numpy as np
import requests
from PIL import Image

SCORE_URL = os.environ["MEDEMBED_SCORE_URL"]
DOCUMENTED_URL = os.environ.get("MEDEMBED_DOCUMENTED_URL")
KEY = os.environ.get("MEDEMBED_KEY")
TIMEOUT = 120
DIM = 1024


def headers(**extra):
    h = {"Content-Type": "application/json"}
    if KEY:
        h["Authorization"] = f"Bearer {KEY}"
    h.update(extra)
    return h


def post(payload, url=SCORE_URL, **extra_headers):
    return requests.post(url, json=payload, headers=headers(**extra_headers), timeout=TIMEOUT)


def score(payload, url=SCORE_URL):
    """POST and return the decoded answer; raises on an HTTP error, as the clients do."""
    r = post(payload, url)
    r.raise_for_status()
    return r.json()


def payload(rows, params=None):
    """The request body every client builds: split orientation, columns image and text."""
    return {
        "input_data": {
            "columns": ["image", "text"],
            "index": list(range(len(rows))),
            "data": [list(r) for r in rows],
        },
        "params": {} if params is None else params,
    }


def rng_image(seed, size, mode):
    """A deterministic 8-bit test image (gray 'L' or 'RGB')."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    base = np.linspace(0, 255, size, dtype=np.float32)[None, :]
    if mode == "RGB":
        base = base[..., None]
    noise = rng.integers(0, 64, size=shape).astype(np.float32)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), mode)


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(img, quality=75):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_with_line_breaks(data):
    """base64 with a line break every 76 characters and at the end (base64.encodebytes)."""
    return base64.encodebytes(data).decode("utf-8")


def encode_plain(data):
    return base64.b64encode(data).decode("ascii")


def client_preprocessed_png(seed, size=480, mode="L"):
    """What the toolkit's client sends: an 8-bit PNG resized on the client."""
    return encode_with_line_breaks(png_bytes(rng_image(seed, size, mode)))


def assert_unit_vector(tc, v):
    v = np.asarray(v, dtype=np.float64)
    tc.assertEqual(v.shape, (DIM,))
    tc.assertAlmostEqual(float(np.linalg.norm(v)), 1.0, places=3)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


class ToolkitClient(unittest.TestCase):
    """The toolkit's client: rows zipped from an image list and a text list
    (padded with None), params {}, base64 with line breaks; the answer is read
    as one result per submitted row."""

    def submit(self, images, texts):
        rows = list(itertools.zip_longest(images, texts))
        result = score(payload(rows, params={}))
        self.assertIsInstance(result, list)
        self.assertEqual(len(result), len(rows))
        return result

    def test_more_images_than_texts(self):
        images = [client_preprocessed_png(i) for i in range(4)]
        texts = ["x-ray chest anteroposterior Pneumonia", "x-ray chest anteroposterior No Finding"]
        result = self.submit(images, texts)
        for i, row in enumerate(result):
            self.assertEqual(len(row["image_features"]), 1)
            assert_unit_vector(self, row["image_features"][0])
            if i < 2:
                assert_unit_vector(self, row["text_features"][0])
            else:
                self.assertNotIn("text_features", row)
            self.assertIsInstance(row["scaling_factor"], float)

    def test_more_texts_than_images(self):
        images = [client_preprocessed_png(10, mode="RGB")]
        texts = ["ct abdomen axial normal", "mri brain axial normal", "x-ray hand pediatric bone age"]
        result = self.submit(images, texts)
        self.assertIn("image_features", result[0])
        for row in result[1:]:
            self.assertNotIn("image_features", row)
            assert_unit_vector(self, row["text_features"][0])

    def test_parallel_submitter_reads_one_result_per_row(self):
        # The submitter sends batches of rows and numbers each result by its
        # row: batch_index * batch_size + position in the answer.
        images = [client_preprocessed_png(20 + i) for i in range(5)]
        batch_size = 2
        indexed = {}
        for b, start in enumerate(range(0, len(images), batch_size)):
            batch = images[start:start + batch_size]
            for i, result in enumerate(self.submit(batch, [])):
                indexed[b * batch_size + i] = np.squeeze(np.array(result["image_features"]))
        self.assertEqual(sorted(indexed), list(range(len(images))))
        # Row order holds: each image alone gives the vector of its row.
        alone = score(payload([[images[3], None]]))
        np.testing.assert_allclose(indexed[3], np.squeeze(alone[0]["image_features"]), atol=1e-5)


class ZeroShotMcpClient(unittest.TestCase):
    """The MCP server's classifier: one request for a 512x512 JPEG (quality 75,
    base64 without line breaks), one request with a row per label, then
    exp(scaling_factor) * cosine and a softmax on the client."""

    LABELS = [
        "x-ray chest anteroposterior Pneumonia",
        "x-ray chest anteroposterior No Finding",
        "computed tomography chest axial Pneumonia",
        "magnetic resonance imaging brain sagittal normal",
    ]

    def test_classify(self):
        jpeg = encode_plain(jpeg_bytes(rng_image(30, 512, "RGB")))
        img_result = score(payload(list(itertools.zip_longest([jpeg], []))))
        img_feats = np.squeeze(np.array(img_result[0]["image_features"]))
        self.assertEqual(img_feats.shape, (DIM,))

        text_result = score(payload(list(itertools.zip_longest([], self.LABELS))))
        self.assertEqual(len(text_result), len(self.LABELS))
        text_feats = np.stack([np.squeeze(np.array(row["text_features"])) for row in text_result])
        self.assertEqual(text_feats.shape, (len(self.LABELS), DIM))
        scaling = np.exp(float(text_result[0]["scaling_factor"]))
        probs = softmax(scaling * (img_feats @ text_feats.T))
        self.assertAlmostEqual(float(probs.sum()), 1.0, places=6)
        self.assertTrue(np.all(probs > 0))

        # Row order: each label's row carries that label's vector.
        for i, label in enumerate(self.LABELS):
            alone = score(payload([[None, label]]))
            np.testing.assert_allclose(
                text_feats[i], np.squeeze(alone[0]["text_features"]), atol=1e-5)


class AdvancedCallNotebook(unittest.TestCase):
    """Batches of 10 rows [image, ""], read as [r["image_features"] for r in answer]."""

    def test_batches_of_ten(self):
        images = [encode_plain(png_bytes(rng_image(40 + i, 512, "L"))) for i in range(10)]
        response_json = score(payload([[img, ""] for img in images],
                                      params={"get_scaling_factor": "True"}))
        features = [r["image_features"] for r in response_json]
        self.assertEqual(len(features), 10)
        stacked = np.array(features).squeeze()
        self.assertEqual(stacked.shape, (10, DIM))
        for r in response_json:
            self.assertNotIn("text_features", r)


class ZeroShotAndAdapterNotebooks(unittest.TestCase):
    """np.squeeze(np.array(v["image_features"])), v["image_features"][0] and
    image_results[0]["scaling_factor"]."""

    def test_reads(self):
        images = [client_preprocessed_png(50 + i, size=512, mode="RGB") for i in range(3)]
        image_results = score(payload([[img, None] for img in images]))
        for v in image_results:
            assert_unit_vector(self, np.squeeze(np.array(v["image_features"])))
            self.assertEqual(len(v["image_features"][0]), DIM)
        self.assertGreater(float(image_results[0]["scaling_factor"]), 0.0)

    def test_scaling_factor_can_be_left_out(self):
        result = score(payload([[None, "x-ray chest"]], params={"get_scaling_factor": False}))
        self.assertEqual(list(result[0]), ["text_features"])


class WhatClientsSend(unittest.TestCase):
    """Client-side pre-processed images of every kind the clients send, both
    base64 forms, null cells and "" as "no text"."""

    def test_every_image_kind_embeds(self):
        kinds = {
            "png 480 gray": png_bytes(rng_image(60, 480, "L")),
            "png 480 rgb": png_bytes(rng_image(61, 480, "RGB")),
            "png 512 gray": png_bytes(rng_image(62, 512, "L")),
            "png 512 rgb": png_bytes(rng_image(63, 512, "RGB")),
            "jpeg 512 q75": jpeg_bytes(rng_image(64, 512, "RGB")),
        }
        rows = [[encode_with_line_breaks(b), ""] for b in kinds.values()]
        result = score(payload(rows))
        self.assertEqual(len(result), len(kinds))
        for name, row in zip(kinds, result):
            with self.subTest(name):
                assert_unit_vector(self, row["image_features"][0])
        # Different images, different vectors.
        vecs = np.array([r["image_features"][0] for r in result])
        for i in range(1, len(vecs)):
            self.assertFalse(np.allclose(vecs[0], vecs[i]))

    def test_base64_with_and_without_line_breaks_agree(self):
        data = png_bytes(rng_image(70, 480, "L"))
        a = score(payload([[encode_with_line_breaks(data), None]]))
        b = score(payload([[encode_plain(data), None]]))
        np.testing.assert_array_equal(np.array(a[0]["image_features"]),
                                      np.array(b[0]["image_features"]))

    def test_null_and_empty_cells(self):
        img = client_preprocessed_png(71)
        result = score(payload([[img, None], [None, "x-ray chest"], [img, ""], ["", "ct head"]]))
        self.assertEqual([sorted(r) for r in result], [
            ["image_features", "scaling_factor"],
            ["scaling_factor", "text_features"],
            ["image_features", "scaling_factor"],
            ["scaling_factor", "text_features"],
        ])


class RequestIds(unittest.TestCase):
    """x-request-id on every answer (the client's own when sent), and
    x-ms-client-request-id echoed, on success and on errors."""

    def test_ids(self):
        body = payload([[None, "x-ray chest"]])
        r = post(body)
        self.assertEqual(r.status_code, 200)
        uuid.UUID(r.headers["x-request-id"])

        own, azure = str(uuid.uuid4()), str(uuid.uuid4())
        for b, want in [(body, 200), ({"input_data": {}}, 400)]:
            r = post(b, **{"x-request-id": own, "x-ms-client-request-id": azure})
            self.assertEqual(r.status_code, want)
            self.assertEqual(r.headers["x-request-id"], own)
            self.assertEqual(r.headers["x-ms-client-request-id"], azure)


class BadInput(unittest.TestCase):
    """Errors stay JSON with the right status, so the clients' retry logic
    (429 and 5xx only) does not retry a bad request."""

    def check(self, rows, fragment):
        r = post(payload(rows))
        self.assertEqual(r.status_code, 400, r.text)
        err = r.json()["error"]
        self.assertIsInstance(err["code"], str)
        self.assertIn(fragment, err["message"])
        with self.assertRaises(requests.HTTPError):
            r.raise_for_status()

    def test_malformed_base64(self):
        self.check([[None, "x"], ["not base64 !!", None]], "row 1")

    def test_truncated_png(self):
        data = png_bytes(rng_image(80, 480, "RGB"))
        self.check([[encode_plain(data[: len(data) // 3]), None]], "row 0")


@unittest.skipUnless(DOCUMENTED_URL, "MEDEMBED_DOCUMENTED_URL not set")
class DocumentedShape(unittest.TestCase):
    """Clients written against the documentation: one object, one list of
    vectors per field, the same vectors as the live shape."""

    def test_same_vectors_in_the_documented_shape(self):
        img = client_preprocessed_png(90)
        rows = [[img, "x-ray chest anteroposterior Pleural Effusion"], [None, "ct head"], [img, None]]
        doc = score(payload(rows), url=DOCUMENTED_URL)
        self.assertIsInstance(doc, dict)
        self.assertEqual(len(doc["image_features"]), 2)
        self.assertEqual(len(doc["text_features"]), 2)
        self.assertIsInstance(doc["scaling_factor"], float)
        live = score(payload(rows))
        # Two servers may batch the rows differently: equal to float rounding.
        np.testing.assert_allclose(
            np.array(doc["image_features"]),
            np.array([r["image_features"][0] for r in live if "image_features" in r]),
            atol=1e-6)
        np.testing.assert_allclose(
            np.array(doc["text_features"]),
            np.array([r["text_features"][0] for r in live if "text_features" in r]),
            atol=1e-6)
        self.assertEqual(doc["scaling_factor"], live[0]["scaling_factor"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
