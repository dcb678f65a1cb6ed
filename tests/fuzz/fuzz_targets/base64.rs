//! The worker's base64 decoding: any text decodes or fails cleanly, and any
//! bytes encoded by a client (plain, or with MIME line breaks, padded or
//! not) decode back to themselves.
#![no_main]

use base64::Engine;
use medembed_worker::decode::decode_base64;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_base64(text);
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    assert_eq!(decode_base64(&encoded).expect("valid base64"), data);
    let unpadded = encoded.trim_end_matches('=');
    assert_eq!(decode_base64(unpadded).expect("unpadded base64"), data);
    let mime: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    assert_eq!(decode_base64(&mime.join("\n")).expect("MIME base64"), data);
});
