//! Replies of the shared quota store: the RESP parser of the `redis` crate
//! the gateway uses, fed any bytes (a garbled, truncated or hostile reply),
//! must return a value or an error, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = redis::parse_redis_value(data);
});
