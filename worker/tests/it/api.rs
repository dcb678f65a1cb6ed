//! End-to-end tests of the worker's scoring API: a real worker on port 0, the
//! TEST MODEL (random weights, MedImageInsight's exact I/O; its embeddings mean
//! nothing) under real ONNX Runtime, real HTTP, and an independent Python
//! reference (PIL + onnxruntime + transformers' CLIPTokenizer) for parity.

#![allow(clippy::unwrap_used)]

use std::io::Cursor;

use crate::common::*;
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};
use medembed_testsupport::repo;
use serde_json::{json, Value};

const BRIEF_TEXT_ONLY: &str = r#"{
  "input_data": {
    "columns": [
      "image",
      "text"
    ],
    "index":[0],
    "data": [
      ["", "a quick brown fox jumps over the lazy dog"]
    ]
  },
  "params": {}
}"#;

const BRIEF_IMAGE_AND_TEXT: &str = r#"{
    "input_data": {
        "columns": ["image", "text"],
        "index": [0],
        "data": [
            [
                "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAAXNSR0IArs4c6QAAAARnQU1BAACx\njwv8YQUAAAAJcEhZcwAAFiUAABYlAUlSJPAAAAAbSURBVBhXY/gUoPS/fhfDfwaGJe///9/J8B8A\nVGwJ5VDvPeYAAAAASUVORK5CYII=\n",
                "x-ray chest anteroposterior Pleural Effusion"
            ]
        ]
    },
    "params": {
        "get_scaling_factor": "true"
    }
}"#;

/// A deterministic pseudo-random sequence (no RNG crate needed).
fn noise(seed: u32) -> impl FnMut() -> u32 {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    }
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// Test images of every kind the parity test covers: (name, bytes).
fn test_images() -> Vec<(&'static str, Vec<u8>)> {
    let mut n = noise(7);
    let gray = DynamicImage::ImageLuma8(ImageBuffer::from_fn(300, 200, |x, y| {
        Luma([((x + 2 * y) % 256) as u8 ^ (n() % 32) as u8])
    }));
    let mut n = noise(8);
    let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_fn(640, 480, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, (n() % 256) as u8])
    }));
    let mut n = noise(9);
    let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_fn(100, 150, |x, y| {
        Rgba([
            (x * 2) as u8,
            (y + 40) as u8,
            (n() % 200) as u8,
            (n() % 256) as u8,
        ])
    }));
    let mut n = noise(10);
    let gray16 = DynamicImage::ImageLuma16(ImageBuffer::from_fn(512, 384, |x, y| {
        // A radiograph-like range in the thousands, plus a few hot pixels.
        let v = 1000 + (x * 3 + y * 2) as u16 + (n() % 500) as u16;
        Luma([if (x * y) % 997 == 0 { 65000 } else { v }])
    }));
    let mut n = noise(11);
    let rgb16 = DynamicImage::ImageRgb16(ImageBuffer::from_fn(96, 64, |x, y| {
        Rgb([(x * 300) as u16, (y * 500) as u16, (n() % 40000) as u16])
    }));
    vec![
        ("gray8.png", encode(&gray, ImageFormat::Png)),
        ("rgb8.png", encode(&rgb, ImageFormat::Png)),
        ("rgba8.png", encode(&rgba, ImageFormat::Png)),
        ("gray16.png", encode(&gray16, ImageFormat::Png)),
        ("rgb16.png", encode(&rgb16, ImageFormat::Png)),
    ]
}

fn request(rows: &[(&str, &str)]) -> Value {
    json!({
        "input_data": {
            "columns": ["image", "text"],
            "index": (0..rows.len()).collect::<Vec<_>>(),
            "data": rows.iter().map(|(i, t)| vec![*i, *t]).collect::<Vec<_>>(),
        },
        "params": {"get_scaling_factor": true}
    })
}

async fn post(
    client: &reqwest::Client,
    w: &medembed_worker::RunningWorker,
    body: impl Into<reqwest::Body>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = client
        .post(url(w, "/score"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brief_examples_verbatim() {
    let w = start(config()).await;
    let c = client();

    // The live service's shape: a list with one object per row, each vector
    // a list of one vector, scaling_factor in every row's object.
    let (status, v, _) = post(&c, &w, BRIEF_TEXT_ONLY).await;
    assert_eq!(status, 200, "{v}");
    let row = &v.as_array().expect("a list of rows")[0];
    assert!(
        row.get("image_features").is_none(),
        "no images were sent: {v}"
    );
    assert_eq!(row["text_features"].as_array().unwrap().len(), 1);
    let v = by_field(&v, 1);
    let texts = vectors(&v["text_features"]);
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0].len(), 1024);
    assert!((norm(&texts[0]) - 1.0).abs() < 1e-4);
    // get_scaling_factor defaults to true.
    assert!(
        (v["scaling_factor"].as_f64().unwrap() - 4.5134).abs() < 1e-5,
        "{}",
        v["scaling_factor"]
    );

    let (status, v, _) = post(&c, &w, BRIEF_IMAGE_AND_TEXT).await;
    assert_eq!(status, 200, "{v}");
    let v = by_field(&v, 1);
    let images = vectors(&v["image_features"]);
    let texts = vectors(&v["text_features"]);
    assert_eq!((images.len(), texts.len()), (1, 1));
    assert_eq!(images[0].len(), 1024);
    assert!((norm(&images[0]) - 1.0).abs() < 1e-4);
    assert!((norm(&texts[0]) - 1.0).abs() < 1e-4);
    assert!(v["scaling_factor"].is_number());
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_fields_follow_the_request() {
    let w = start(config()).await;
    let c = client();
    let png = b64(&test_images()[0].1);

    // Columns in the other order, images only, scaling factor off (string form).
    let body = json!({
        "input_data": {"columns": ["text", "image"], "index": [5, 9], "data": [["", png], ["", png]]},
        "params": {"get_scaling_factor": "FALSE"}
    });
    let (status, v, _) = post(&c, &w, body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let v = by_field(&v, 2);
    assert_eq!(vectors(&v["image_features"]).len(), 2);
    assert!(v.get("text_features").is_none());
    assert!(v.get("scaling_factor").is_none());

    // Mixed rows: one object per row, in row order, holding what the row had;
    // a row with neither image nor text gets an object with only the
    // scaling factor.
    let body = request(&[
        ("", "first text"),
        (&png, ""),
        (&png, "third text"),
        ("", "fourth text"),
        ("", ""),
    ]);
    let (status, v, _) = post(&c, &w, body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let rows = v.as_array().unwrap();
    let fields = |i: usize| -> Vec<&str> {
        let mut k: Vec<&str> = rows[i]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        k
    };
    assert_eq!(fields(0), ["scaling_factor", "text_features"]);
    assert_eq!(fields(1), ["image_features", "scaling_factor"]);
    assert_eq!(
        fields(2),
        ["image_features", "scaling_factor", "text_features"]
    );
    assert_eq!(fields(3), ["scaling_factor", "text_features"]);
    assert_eq!(fields(4), ["scaling_factor"]);
    let v = by_field(&v, 5);
    let texts = vectors(&v["text_features"]);
    assert_eq!(texts.len(), 3);
    assert_eq!(vectors(&v["image_features"]).len(), 2);
    let single = request(&[("", "third text")]);
    let (_, s, _) = post(&c, &w, single.to_string()).await;
    assert!(max_abs_diff(&texts[1..2], &vectors(&by_field(&s, 1)["text_features"])) < 1e-5);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_shape_when_configured_or_asked_for() {
    let mut cfg = config();
    cfg.response_format = medembed_api::ResponseFormat::Documented;
    let w = start(cfg).await;
    let c = client();
    let png = b64(&test_images()[0].1);
    let body = request(&[("", "first text"), (&png, ""), (&png, "third text")]).to_string();

    // Configured: one object, one list of vectors per field.
    let (status, documented, _) = post(&c, &w, body.clone()).await;
    assert_eq!(status, 200, "{documented}");
    assert!(documented.is_object(), "{documented}");
    assert_eq!(vectors(&documented["image_features"]).len(), 2);
    assert_eq!(vectors(&documented["text_features"]).len(), 2);
    assert!(documented["scaling_factor"].is_number());

    // The gateway's header takes precedence, either way.
    let ask = |format: &'static str| {
        c.post(url(&w, "/score"))
            .header(medembed_api::RESPONSE_FORMAT_HEADER, format)
            .body(body.clone())
            .send()
    };
    let per_row: Value = ask("PerRow").await.unwrap().json().await.unwrap();
    assert_eq!(
        by_field(&per_row, 3),
        documented,
        "the shapes carry the same vectors"
    );
    let again: Value = ask("Documented").await.unwrap().json().await.unwrap();
    assert_eq!(again, documented);

    // A header naming no format is refused, in the JSON error shape.
    let r = ask("Columns").await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_request");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains(medembed_api::RESPONSE_FORMAT_HEADER));
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id() {
    let w = start(config()).await;
    let c = client();
    let id = |h: &reqwest::header::HeaderMap| {
        h.get(medembed_api::REQUEST_ID_HEADER)
            .expect("x-request-id on every answer")
            .to_str()
            .unwrap()
            .to_string()
    };
    let is_uuid = |s: &str| {
        s.len() == 36
            && s.chars()
                .enumerate()
                .all(|(i, ch)| matches!(i, 8 | 13 | 18 | 23) == (ch == '-'))
    };

    // None sent: a new UUID each time.
    let (status, _, h1) = post(&c, &w, BRIEF_TEXT_ONLY).await;
    assert_eq!(status, 200);
    let (_, _, h2) = post(&c, &w, BRIEF_TEXT_ONLY).await;
    assert!(is_uuid(&id(&h1)), "{}", id(&h1));
    assert_ne!(id(&h1), id(&h2));

    // The client's own is kept, and x-ms-client-request-id is echoed, on
    // success and on errors alike.
    let cases: [(&str, reqwest::Method, &str, &str, u16); 4] = [
        ("ok", reqwest::Method::POST, "/score", BRIEF_TEXT_ONLY, 200),
        ("bad", reqwest::Method::POST, "/score", "{nope", 400),
        ("nf", reqwest::Method::POST, "/nope", "{}", 404),
        ("ready", reqwest::Method::GET, "/readyz", "", 200),
    ];
    for (name, method, path, body, want) in cases {
        let own = format!("4b1d7c0e-client-{name}");
        let r = c
            .request(method, url(&w, path))
            .header(medembed_api::REQUEST_ID_HEADER, &own)
            .header(medembed_api::CLIENT_REQUEST_ID_HEADER, "azure-sdk-123")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{name}");
        assert_eq!(id(r.headers()), own, "{name}");
        assert_eq!(
            r.headers()[medembed_api::CLIENT_REQUEST_ID_HEADER],
            "azure-sdk-123",
            "{name}"
        );
    }

    // An id that is not a plain token (it could carry anything into logs)
    // is replaced.
    let r = c
        .post(url(&w, "/score"))
        .header(medembed_api::REQUEST_ID_HEADER, "Doe^Jane MRN 1234567")
        .body(BRIEF_TEXT_ONLY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = id(r.headers());
    assert!(is_uuid(&got) && !got.contains("1234567"), "{got}");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_embeddings_match_the_python_reference() {
    let w = start(config()).await;
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let images = test_images();
    let mut paths = Vec::new();
    for (name, bytes) in &images {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        paths.push(p.display().to_string());
    }
    let model = repo::setup().model_dir.display().to_string();
    let mut args = vec!["images", "--model", model.as_str()];
    args.extend(paths.iter().map(String::as_str));
    let want = vectors(&reference(&args, None)["embeddings"]);

    let encoded: Vec<String> = images.iter().map(|(_, b)| b64(b)).collect();
    let rows: Vec<(&str, &str)> = encoded.iter().map(|e| (e.as_str(), "")).collect();
    let (status, v, _) = post(&c, &w, request(&rows).to_string()).await;
    assert_eq!(status, 200, "{v}");
    let got = vectors(&by_field(&v, rows.len())["image_features"]);
    for (i, (name, _)) in images.iter().enumerate() {
        let d = max_abs_diff(&got[i..=i], &want[i..=i]);
        eprintln!("{name}: max |rust - python| = {d:.2e}");
        assert!(
            d <= 1e-4,
            "{name}: embeddings differ from the reference by {d}"
        );
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_and_text_embeddings_match_the_python_reference() {
    let long = "x-ray chest anteroposterior pleural effusion with cardiomegaly and ".repeat(20);
    let texts = vec![
        "x-ray chest anteroposterior Pneumonia",
        "a quick brown fox jumps over the lazy dog",
        "CT Abdomen Axial Hepatic Steatosis.",
        long.as_str(),
        "café résumé naïve Ångström",
        "ｘ－ｒａｙ ｃｈｅｓｔ （full-width）",
        "",
        "MRI   brain\tT2\nFLAIR   white-matter hyperintensities",
        "dermoscopy: melanoma vs. nevus <|endoftext|> trailing",
        "病理 組織 histopathology",
    ];
    let e = repo::setup();
    let tokenizer_dir = e.model_dir.join("clip_tokenizer").display().to_string();
    let want = reference(
        &["tokens", "--tokenizer-dir", &tokenizer_dir],
        Some(&serde_json::to_string(&texts).unwrap()),
    );
    let tok =
        medembed_worker::tokenize::TextTokenizer::load(&e.model_dir.join("tokenizer.json"), 77)
            .unwrap();
    for (i, t) in texts.iter().enumerate() {
        let got = tok.encode_batch([*t]).unwrap();
        let want_ids: Vec<i64> = serde_json::from_value(want["input_ids"][i].clone()).unwrap();
        let want_mask: Vec<i64> =
            serde_json::from_value(want["attention_mask"][i].clone()).unwrap();
        assert_eq!(got.input_ids, want_ids, "ids differ for text #{i}");
        assert_eq!(got.attention_mask, want_mask, "mask differs for text #{i}");
    }
    // The long text is cut at 77 tokens, ending with the end-of-text token.
    let long_ids = tok.encode_batch([long.as_str()]).unwrap().input_ids;
    assert_eq!(long_ids.len(), 77);
    assert_eq!(long_ids[76], 49407);
    assert!(long_ids[..76].iter().all(|&id| id != 49407));

    // And the served text embeddings equal the reference's, end to end.
    let non_empty: Vec<&str> = texts.iter().copied().filter(|t| !t.is_empty()).collect();
    let model = e.model_dir.display().to_string();
    let want = vectors(
        &reference(
            &["texts", "--model", &model],
            Some(&serde_json::to_string(&non_empty).unwrap()),
        )["embeddings"],
    );
    let w = start(config()).await;
    let rows: Vec<(&str, &str)> = non_empty.iter().map(|t| ("", *t)).collect();
    let (status, v, _) = post(&client(), &w, request(&rows).to_string()).await;
    assert_eq!(status, 200, "{v}");
    let d = max_abs_diff(&vectors(&by_field(&v, rows.len())["text_features"]), &want);
    eprintln!("text embeddings: max |rust - python| = {d:.2e}");
    assert!(d <= 1e-4);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_equal_sequential_answers() {
    let mut cfg = config();
    cfg.max_batch_images = 16;
    cfg.max_batch_texts = 64;
    let w = start(cfg).await;
    let c = client();
    let images = test_images();
    let bodies: Vec<String> = (0..64)
        .map(|i| {
            let img = b64(&images[i % images.len()].1);
            let text = format!("x-ray chest case {i}");
            request(&[(img.as_str(), text.as_str())]).to_string()
        })
        .collect();

    let mut sequential = Vec::new();
    for b in &bodies {
        let (status, v, _) = post(&c, &w, b.clone()).await;
        assert_eq!(status, 200);
        sequential.push(by_field(&v, 1));
    }
    let before = metrics_text(&w).await;

    let tasks: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|b| {
            let c = c.clone();
            let u = url(&w, "/score");
            tokio::spawn(async move {
                let r = c.post(u).body(b).send().await.unwrap();
                assert_eq!(r.status(), 200);
                by_field(&r.json::<Value>().await.unwrap(), 1)
            })
        })
        .collect();
    let mut concurrent = Vec::new();
    for t in tasks {
        concurrent.push(t.await.unwrap());
    }
    for (s, p) in sequential.iter().zip(&concurrent) {
        assert!(
            max_abs_diff(
                &vectors(&s["image_features"]),
                &vectors(&p["image_features"])
            ) < 1e-5
        );
        assert!(max_abs_diff(&vectors(&s["text_features"]), &vectors(&p["text_features"])) < 1e-5);
    }

    let after = metrics_text(&w).await;
    for tower in ["image", "text"] {
        let label = format!("tower=\"{tower}\"");
        let calls = metric(&after, "medembed_worker_batch_size_count", &[&label])
            - metric(&before, "medembed_worker_batch_size_count", &[&label]);
        let items = metric(&after, "medembed_worker_batch_size_sum", &[&label])
            - metric(&before, "medembed_worker_batch_size_sum", &[&label]);
        eprintln!(
            "{tower}: 64 concurrent items in {calls} inference calls (mean batch {:.1})",
            items / calls
        );
        assert_eq!(items, 64.0);
        assert!(
            calls < 64.0,
            "{tower}: no batch formed ({calls} calls for 64 items)"
        );
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_and_the_server_keeps_serving() {
    let w = start(config()).await;
    let c = client();

    // A PNG whose header declares 100000x100000 pixels (valid CRC).
    let bomb = {
        let mut png = encode(
            &DynamicImage::ImageLuma8(ImageBuffer::from_pixel(1, 1, Luma([0u8]))),
            ImageFormat::Png,
        );
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        b64(&png)
    };
    let truncated = {
        let png = &test_images()[1].1;
        b64(&png[..png.len() / 3])
    };
    let too_many: Vec<(&str, &str)> = (0..1025).map(|_| ("", "t")).collect();
    let huge = format!(
        r#"{{"input_data":{{"columns":["text"],"index":[0],"data":[["{}"]]}}}}"#,
        "a".repeat(50 * 1024 * 1024)
    );

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("decompression bomb header", request(&[(&bomb, "")]).to_string(), 400, "row 0"),
        ("truncated PNG", request(&[("", "ok"), (&truncated, "")]).to_string(), 400, "row 1"),
        ("garbage base64", request(&[("@@@ not base64 @@@", "")]).to_string(), 400, "row 0"),
        ("1025 rows", request(&too_many).to_string(), 400, "1025 rows"),
        ("50 MB body", huge, 413, "exceeds"),
        (
            "unknown column",
            r#"{"input_data":{"columns":["image","caption"],"index":[0],"data":[["","x"]]}}"#.into(),
            400,
            "columns[1]",
        ),
        (
            "index and data lengths differ",
            r#"{"input_data":{"columns":["text"],"index":[0,1,2],"data":[["x"]]}}"#.into(),
            400,
            "index",
        ),
        ("non-object JSON", "[1, 2, 3]".into(), 400, "object"),
        ("not JSON", "{\"input_data\": ".into(), 400, "JSON"),
        (
            "wrong type in params",
            r#"{"input_data":{"columns":["text"],"index":[0],"data":[["x"]]},"params":{"get_scaling_factor":7}}"#.into(),
            400,
            "get_scaling_factor",
        ),
        (
            "params not an object",
            r#"{"input_data":{"columns":["text"],"index":[0],"data":[["x"]]},"params":"yes"}"#.into(),
            400,
            "params",
        ),
    ];
    for (name, body, want_status, want_in_message) in cases {
        let (status, v, _) = post(&c, &w, body).await;
        assert_eq!(status, want_status, "{name}: {v}");
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no error body: {v}"));
        assert!(v["error"]["code"].is_string(), "{name}: {v}");
        assert!(
            msg.contains(want_in_message),
            "{name}: message {msg:?} lacks {want_in_message:?}"
        );
        // Still serving.
        let (status, _, _) = post(&c, &w, BRIEF_TEXT_ONLY).await;
        assert_eq!(status, 200, "after {name}");
    }

    // Wrong method and path.
    let r = c.get(url(&w, "/score")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = c.post(url(&w, "/nope")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_never_echo_patient_data() {
    let w = start(config()).await;
    let c = client();
    let secret = "Doe^Jane MRN-1234567";
    let bodies = [
        format!(
            r#"{{"input_data":{{"columns":["image","text"],"index":[0],"data":[["{secret}","x"]]}}}}"#
        ),
        format!(r#"{{"input_data":{{"columns":["{secret}"],"index":[0],"data":[["x"]]}}}}"#),
        format!(
            r#"{{"input_data":{{"columns":["text"],"index":[0],"data":[["x"]]}},"params":{{"get_scaling_factor":"{secret}"}}}}"#
        ),
        format!(
            r#"{{"input_data":{{"columns":["text"],"index":["{secret}"],"data":[["x"],["y"]]}}}}"#
        ),
    ];
    for b in bodies {
        let resp = c.post(url(&w, "/score")).body(b).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        let text = resp.text().await.unwrap();
        assert!(!text.contains("Doe") && !text.contains("1234567"), "{text}");
    }
    let metrics = metrics_text(&w).await;
    assert!(!metrics.contains("Doe") && !metrics.contains("1234567"));
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_deadline_and_readiness() {
    let mut cfg = config();
    cfg.max_queued_images = 4;
    cfg.max_rows = 4;
    let w = start(cfg).await;
    let c = client();
    assert_eq!(
        c.get(url(&w, "/readyz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(c.get(url(&w, "/livez")).send().await.unwrap().status(), 200);

    // A deadline that has passed before the work reaches the model: 408.
    let img = b64(&test_images()[1].1);
    let body = request(&[
        (img.as_str(), ""),
        (img.as_str(), ""),
        (img.as_str(), ""),
        (img.as_str(), ""),
    ])
    .to_string();
    let resp = c
        .post(url(&w, "/score"))
        .header(medembed_api::TIMEOUT_HEADER, "1")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 408);

    // Over the queue capacity: 429 with Retry-After while the queue is full.
    // The queue is filled in-process (as four images in flight would fill
    // it), so the test does not race the model's speed.
    let queue = w
        .state
        .scorer
        .get()
        .unwrap()
        .pipeline
        .image_admission
        .clone();
    let held = queue.try_acquire(queue.capacity()).unwrap();
    let (status, v, headers) = post(&c, &w, request(&[(img.as_str(), "")]).to_string()).await;
    assert_eq!(status, 429, "{v}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(v["error"]["code"], "too_many_requests");
    // Texts have their own queue and are still served.
    let (status, _, _) = post(&c, &w, request(&[("", "still served")]).to_string()).await;
    assert_eq!(status, 200);
    drop(held);
    let (status, v, _) = post(&c, &w, body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(queue.used(), 0, "admission units leaked");

    // No room in the body byte budget: the request waits, unread, and is
    // answered once room frees; past its deadline it times out (408).
    let budget = &w.state.body_budget;
    let all = u32::try_from(budget.available_permits()).unwrap();
    let held = budget.try_acquire_many(all).unwrap();
    let waiting = tokio::spawn({
        let (c, u) = (c.clone(), url(&w, "/score"));
        let b = request(&[("", "waits for room")]).to_string();
        async move { c.post(u).body(b).send().await.unwrap().status().as_u16() }
    });
    let resp = c
        .post(url(&w, "/score"))
        .header(medembed_api::TIMEOUT_HEADER, "300")
        .body(request(&[("", "gives up")]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 408);
    assert!(
        !waiting.is_finished(),
        "answered without room in the budget"
    );
    drop(held);
    assert_eq!(waiting.await.unwrap(), 200);
    let m = metrics_text(&w).await;
    assert!(metric(&m, "medembed_worker_body_wait_seconds_count", &[]) >= 1.0);
    assert_eq!(budget.available_permits(), all as usize, "budget leaked");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_accepted_requests() {
    let w = start(config()).await;
    let c = client();
    let img = b64(&test_images()[1].1);
    let rows: Vec<(&str, &str)> = (0..32).map(|_| (img.as_str(), "text")).collect();
    let body = request(&rows).to_string();
    let inflight = {
        let (c, u) = (c.clone(), url(&w, "/score"));
        tokio::spawn(async move { c.post(u).body(body).send().await.unwrap().status() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let addr = w.addr;
    w.shutdown().await;
    assert_eq!(
        inflight.await.unwrap(),
        200,
        "an accepted request was lost on shutdown"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_directory_that_does_not_match_its_graphs_is_refused() {
    let src = &repo::setup().model_dir;
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "image.onnx",
        "text.onnx",
        "tokenizer.json",
        "medembed-model.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let cfg_path = dir.path().join("medembed-model.json");
    let original: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();

    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("image size", Box::new(|c| c["image"]["size"] = json!(224))),
        (
            "input name",
            Box::new(|c| c["image"]["input"] = json!("pixels")),
        ),
        (
            "embedding size",
            Box::new(|c| c["embedding_dim"] = json!(512)),
        ),
        (
            "context length",
            Box::new(|c| c["text"]["context_length"] = json!(64)),
        ),
    ];
    for (name, mutate) in cases {
        let mut c = original.clone();
        mutate(&mut c);
        std::fs::write(&cfg_path, serde_json::to_vec(&c).unwrap()).unwrap();
        let mut cfg = config();
        cfg.model_dir = dir.path().to_path_buf();
        let err = medembed_worker::load_scorer(&cfg, &medembed_worker::metrics::Metrics::new())
            .expect_err(name)
            .to_string();
        eprintln!("{name}: {err}");
        assert!(err.contains("does not match"), "{name}: {err}");
    }
}

/// CRC-32 (PNG's), to forge a header that passes the chunk checksum.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
