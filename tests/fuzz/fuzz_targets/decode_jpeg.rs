//! JPEG decoding through the worker's limits and memory budget, then
//! resizing as preprocessing does (see `medembed_fuzz::decode_as`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    medembed_fuzz::decode_as(data, medembed_worker::decode::Format::Jpeg);
});
