//! The gateway's static configuration file (YAML): any text is parsed and
//! built into a routing table or refused with an error, never a panic.
#![no_main]

use medembed_gateway::balance::Registry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = medembed_gateway::file::parse(text) {
        let _ = medembed_gateway::file::build(cfg, &Registry::default());
    }
});
