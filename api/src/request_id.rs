//! Request ids, as Azure clients expect them.
//!
//! Every answer, success or error, carries `x-request-id`: the client's own
//! when it sent a usable one, else a new random UUID. The gateway passes the
//! id to the worker it calls, so one id names a request in the gateway's
//! audit line, the worker's logs and the client's records. A client id is
//! usable when it is 1 to 128 characters of `A-Z a-z 0-9 . _ : -` (UUIDs,
//! ULIDs, W3C trace ids): anything else is replaced, so a log line never
//! carries arbitrary client text. `x-ms-client-request-id`, which Azure SDKs
//! send, is echoed back unchanged and is not logged.

/// The request id header, on requests and answers.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The Azure SDKs' client request id, echoed on answers.
pub const CLIENT_REQUEST_ID_HEADER: &str = "x-ms-client-request-id";

/// Longest client request id kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether `id` may be used as a request id as sent.
pub fn is_usable(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The request's id: the one sent, when usable, else a new random UUID.
pub fn accept_or_new(sent: Option<&[u8]>) -> String {
    match sent {
        // `is_usable` admits only ASCII, so this conversion cannot fail.
        Some(id) if is_usable(id) => String::from_utf8_lossy(id).into_owned(),
        _ => new_id(),
    }
}

/// A new random (version 4) UUID in its hyphenated lowercase form.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_id_is_kept() {
        for id in [
            "3f2a1c9e-8d41-4d1b-9b7e-0c5f6a7b8c9d",
            "01HZX3K5Q8W9R2T4Y6U8I0O2P4",
            "req.42_a:b-c",
        ] {
            assert_eq!(accept_or_new(Some(id.as_bytes())), id);
        }
    }

    #[test]
    fn anything_else_gets_a_new_uuid() {
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for sent in [
            None,
            Some(&b""[..]),
            Some(long.as_bytes()),
            Some(&b"Doe Jane"[..]),
            Some(&b"id\"injected"[..]),
            Some("caf\u{e9}".as_bytes()),
        ] {
            let id = accept_or_new(sent);
            assert_eq!(id.len(), 36, "{id}");
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
            assert_ne!(Some(id.as_bytes()), sent);
        }
        assert_ne!(new_id(), new_id());
    }
}
