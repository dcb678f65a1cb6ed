//! JWT and JWKS handling: a key set (as an inline `jwksConfigMap` set) and a
//! bearer token, separated by a NUL byte, through the gateway's own
//! verification. Nothing is accepted without a valid signature by a key of
//! the set, and no input panics.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use medembed_gateway::auth::JwksCache;
use medembed_gateway::table::{JwksSource, TokenSettings};

fn cache() -> &'static (tokio::runtime::Runtime, JwksCache) {
    static C: OnceLock<(tokio::runtime::Runtime, JwksCache)> = OnceLock::new();
    C.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let cache = JwksCache::new(Duration::from_secs(60), None).expect("key set cache");
        (rt, cache)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (jwks, token) = medembed_fuzz::split_nul(data);
    let (Ok(jwks), Ok(token)) = (std::str::from_utf8(jwks), std::str::from_utf8(token)) else {
        return;
    };
    let settings = TokenSettings {
        issuer: "https://idp.hospital.example".into(),
        audiences: vec!["medembed".into()],
        jwks: JwksSource::Inline(jwks.to_string()),
        algorithms: Vec::new(),
    };
    let (rt, cache) = cache();
    let _ = rt.block_on(cache.verify(&settings, token));
    assert!(cache.len() <= medembed_gateway::auth::JWKS_MAX_SOURCES);
});
