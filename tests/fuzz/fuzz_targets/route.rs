//! The gateway's routing of a request (Host header and path) to an
//! endpoint, over a table with host names, path prefixes and a wildcard-like
//! mix of cases: any host and path give an endpoint only for exactly
//! `/score` on a known host or `PREFIX/score` of a known endpoint.
#![no_main]

use std::sync::OnceLock;

use medembed_gateway::balance::Registry;
use medembed_gateway::table::{normalize_host, Table};

const CONFIG: &str = r#"
endpoints:
  - name: chest
    hosts: [chest.hospital.example, "CT.Hospital.Example"]
    auth: {mode: Unauthenticated}
    deployments: {blue: {workers: ["127.0.0.1:9"]}}
  - name: radiology/chest
    auth: {mode: Unauthenticated}
    deployments: {blue: {workers: ["127.0.0.1:9"]}}
"#;

fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| {
        let cfg = medembed_gateway::file::parse(CONFIG).expect("the table's config");
        medembed_gateway::file::build(cfg, &Registry::default()).expect("the table")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (host, path) = medembed_fuzz::split_nul(data);
    let (Ok(host), Ok(path)) = (std::str::from_utf8(host), std::str::from_utf8(path)) else {
        return;
    };
    let host = (!host.is_empty()).then_some(host);
    let _ = host.map(normalize_host);
    if let Some(e) = table().route(host, path) {
        let by_prefix = path == format!("{}/score", e.path_prefix);
        assert!(by_prefix || path == "/score", "{path:?} routed to {}", e.id);
        if !by_prefix {
            let h = normalize_host(host.expect("a host routed"));
            assert!(e.hosts.iter().any(|k| normalize_host(k) == h));
        }
    }
});
