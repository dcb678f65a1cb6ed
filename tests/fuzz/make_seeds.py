"""Writes the seed corpora under corpus/<target>/ (committed; rerun to
regenerate): small valid inputs of every kind each target reads, from the
test fixtures and the API brief's request shapes. Needs Pillow (the repo's
Python environment: scripts/python-env.sh) and the openssl command.

    "$MEDEMBED_PYTHON" tests/fuzz/make_seeds.py
"""

import base64
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CORPUS = HERE / "corpus"


def write(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def image(mode: str, size=(8, 6), fmt="PNG", **kw) -> bytes:
    img = Image.new(mode, size)
    px = img.load()
    for y in range(size[1]):
        for x in range(size[0]):
            v = (x * 37 + y * 91) % 256
            if mode in ("RGB", "YCbCr"):
                px[x, y] = (v, 255 - v, (v * 7) % 256)
            elif mode == "RGBA":
                px[x, y] = (v, 255 - v, (v * 7) % 256, 128)
            elif mode == "LA":
                px[x, y] = (v, 200)
            elif mode == "I;16":
                px[x, y] = v * 257
            elif mode == "P":
                px[x, y] = v % 16
            else:
                px[x, y] = v
    if mode == "P":
        img.putpalette([i % 256 for i in range(768)])
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def es256_token(claims: dict) -> str:
    """An ES256 JWT signed with the gateway's test key (kid test-1)."""
    head = b64url(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "test-1"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing = f"{head}.{body}".encode()
    der = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(REPO / "gateway/tests/fixtures/jwt-es256.pem")],
        input=signing, capture_output=True, check=True).stdout
    # DER SEQUENCE { INTEGER r, INTEGER s } to the JWS form r || s.
    i = 2 if der[1] < 0x80 else 3
    ints = []
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        ints.append(int.from_bytes(der[i + 2:i + 2 + n], "big"))
        i += 2 + n
    sig = b"".join(v.to_bytes(32, "big") for v in ints)
    return f"{head}.{body}.{b64url(sig)}"


def main() -> None:
    shutil.rmtree(CORPUS, ignore_errors=True)
    png = image("L")
    # request: the brief's shapes, and what clients send besides.
    req = lambda data, cols=("image", "text"), idx=None: json.dumps({  # noqa: E731
        "input_data": {"columns": list(cols), "index": idx if idx is not None else list(range(len(data))),
                       "data": data}, "params": {"get_scaling_factor": True}}).encode()
    b = base64.b64encode(png).decode()
    write("request", "image_and_text.json", req([[b, "x-ray chest anteroposterior Pneumonia."]]))
    write("request", "text_only.json", req([["", "a CT of the abdomen"], [None, "MRI"]]))
    write("request", "image_only.json", req([[b, ""]]))
    write("request", "columns_swapped.json", req([["a text", b]], cols=("text", "image")))
    write("request", "mime_base64.json", req([[base64.encodebytes(png).decode(), None]]))
    write("request", "no_params.json", b'{"input_data": {"columns": ["image", "text"], "index": [0], "data": [["", "t"]]}}')
    write("request", "bad_index.json", req([["", "t"]], idx=[0, 0, 0]))
    write("request", "empty.json", b"{}")
    # base64
    write("base64", "png", b.encode())
    write("base64", "mime", base64.encodebytes(png))
    write("base64", "raw", bytes(range(64)))
    # decoders
    write("decode_png", "gray8.png", png)
    write("decode_png", "rgb.png", image("RGB"))
    write("decode_png", "rgba.png", image("RGBA"))
    write("decode_png", "gray_alpha.png", image("LA"))
    write("decode_png", "gray16.png", image("I;16"))
    write("decode_png", "palette.png", image("P"))
    write("decode_png", "interlaced.png", image("RGB", interlace=1))
    write("decode_png", "one_pixel.png", image("L", size=(1, 1)))
    write("decode_jpeg", "gray.jpg", image("L", size=(16, 16), fmt="JPEG", quality=75))
    write("decode_jpeg", "rgb.jpg", image("RGB", size=(16, 16), fmt="JPEG", quality=75))
    write("decode_jpeg", "progressive.jpg", image("RGB", size=(16, 16), fmt="JPEG", progressive=True))
    write("decode_jpeg", "subsampled.jpg", image("RGB", size=(17, 9), fmt="JPEG", subsampling=2))
    for f in sorted((REPO / "worker/tests/fixtures/dicom").glob("*.dcm")):
        write("decode_dicom", f.name, f.read_bytes())
    # window: [mode, low, high, samples...]
    write("window", "percentile", bytes([0, 3, 252]) + bytes(range(256)) * 2)
    write("window", "minmax", bytes([1, 0, 0]) + bytes([0, 0, 255, 255, 1, 2, 3, 4]) * 8)
    # tokenize
    for i, t in enumerate(["x-ray chest anteroposterior Pneumonia.",
                           "Findings: no acute cardiopulmonary process.\nImpression: normal.",
                           "CT abdomen w/ contrast, 5 mm; HU -1000..3000",
                           "Lungenentzündung — pneumonie — 肺炎 — 🫁", "", " " * 10 + "a"]):
        write("tokenize", f"text{i}", t.encode())
    # route: host NUL path
    for i, (h, p) in enumerate([("chest.hospital.example", "/score"), ("ct.hospital.example:443", "/score"),
                                ("", "/endpoints/chest/score"), ("", "/endpoints/radiology/chest/score"),
                                ("other.example", "/endpoints/chest/score/")]):
        write("route", f"r{i}", f"{h}\0{p}".encode())
    # token: JWKS NUL token
    jwks = (REPO / "gateway/tests/fixtures/jwks.json").read_bytes()
    now = int(time.time())
    good = es256_token({"sub": "svc", "aud": "medembed", "iss": "https://idp.hospital.example",
                        "exp": now + 10 * 365 * 86400, "nbf": now - 60, "iat": now})
    expired = es256_token({"sub": "svc", "aud": "medembed", "iss": "https://idp.hospital.example", "exp": 1})
    write("token", "valid", jwks + b"\0" + good.encode())
    write("token", "expired", jwks + b"\0" + expired.encode())
    write("token", "empty_set", b'{"keys": []}\0' + good.encode())
    # config_file: the gateway's static configuration.
    write("config_file", "full.yaml", b"""endpoints:
  - name: keyed
    hosts: [chest.hospital.example]
    auth: {mode: Key}
    traffic: {blue: 90, green: 10}
    mirrorTraffic: {deployment: shadow, percent: 5}
    deployments:
      blue: {workers: ["10.0.0.1:8080", "10.0.0.2:8080"]}
      green: {workers: ["10.0.0.3:8080"]}
      shadow: {workers: ["10.0.0.4:8080"]}
  - name: tokened
    auth:
      mode: Token
      token: {issuer: "https://idp.example.org", audiences: ["medembed"], jwksFile: /etc/jwks.json}
    deployments: {blue: {workers: ["10.0.0.5:8080"]}}
clients:
  - name: radiology
    endpoints: [keyed, tokened]
    keys: {primarySha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    token: {subject: "svc-radiology"}
    quota: {requestsPerMinute: 60, concurrentRequests: 4}
""")
    write("config_file", "empty.yaml", b"endpoints: []\n")
    # redis_reply: RESP2 and RESP3 replies.
    for i, r in enumerate([b"+OK\r\n", b":42\r\n", b"-ERR wrong\r\n", b"$5\r\nhello\r\n", b"$-1\r\n",
                           b"*3\r\n:1\r\n:60000\r\n$2\r\nok\r\n", b"%1\r\n+a\r\n:1\r\n", b"_\r\n",
                           b",3.14\r\n", b"#t\r\n", b"~2\r\n:1\r\n:2\r\n", b">2\r\n+m\r\n+x\r\n"]):
        write("redis_reply", f"r{i}", r)


if __name__ == "__main__":
    main()
