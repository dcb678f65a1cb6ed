//! The scoring request parser, in both of its forms: the worker's
//! (`parse_request`, keeping the rows) and the gateway's (`count_request`,
//! counting them). Any body must be accepted or refused by both alike, with
//! the same counts, and nothing past the row limit may be kept.
#![no_main]

use medembed_api::{count_request, parse_request, RequestLimits};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits { max_rows: 16 };
    let full = parse_request(data, &limits);
    let counted = count_request(data, &limits);
    match (&full, &counted) {
        (Ok(r), Ok(c)) => {
            assert!(r.rows.len() <= limits.max_rows);
            assert_eq!(r.rows.len(), c.rows, "the parsers count rows differently");
            assert_eq!(r.image_count(), c.images);
            assert_eq!(r.text_count(), c.texts);
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "different errors"),
        _ => panic!("the worker's and the gateway's parsers disagree: {full:?} / {counted:?}"),
    }
});
