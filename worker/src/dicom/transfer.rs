//! Transfer syntaxes: which ones are decoded, how their pixel data is stored
//! ([`Codec`]) and how their data set is encoded ([`Syntax`]).
//!
//! The transfer syntax is read from the file meta group before the data set
//! is parsed, so an unsupported one is refused before any work is spent on
//! it. Its UID is the only file content an error may repeat, and only when it
//! looks like a UID.

/// How the pixel data of an accepted transfer syntax is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Codec {
    /// Native (uncompressed) pixel data.
    Native,
    /// Lossy JPEG (baseline / extended 8-bit): the decoder outputs RGB.
    JpegLossy,
    /// Lossless JPEG (process 14): samples as stored, no colour transform.
    JpegLossless,
    /// RLE Lossless: samples as stored.
    Rle,
}

impl Codec {
    /// The codec of a transfer syntax we decode; `None` for the others.
    pub(super) fn for_uid(ts: &str) -> Option<Codec> {
        Some(match ts {
            // Implicit VR LE, Explicit VR LE, Explicit VR BE (retired, still in archives).
            "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2" => Codec::Native,
            // JPEG Baseline (process 1), JPEG Extended (process 2 & 4; 8-bit only, checked later).
            "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51" => Codec::JpegLossy,
            // JPEG Lossless (process 14) and its first-order-prediction form (SV1).
            "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => Codec::JpegLossless,
            "1.2.840.10008.1.2.5" => Codec::Rle,
            _ => return None,
        })
    }
}

/// How the data set's element headers are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Syntax {
    /// Headers carry a VR (else it comes from the dictionary).
    pub(super) explicit_vr: bool,
    /// Numbers are big-endian.
    pub(super) big_endian: bool,
}

impl Syntax {
    /// The encoding of a transfer syntax: Implicit VR Little Endian, Explicit
    /// VR Big Endian, or (every other, including the encapsulated ones)
    /// Explicit VR Little Endian.
    pub(super) fn for_uid(ts: &str) -> Syntax {
        match ts {
            "1.2.840.10008.1.2" => Syntax {
                explicit_vr: false,
                big_endian: false,
            },
            "1.2.840.10008.1.2.2" => Syntax {
                explicit_vr: true,
                big_endian: true,
            },
            _ => Syntax {
                explicit_vr: true,
                big_endian: false,
            },
        }
    }
}

/// Names a transfer syntax in an error. A UID is digits and dots, at most 64
/// characters, and is never patient data; anything else in that field is not
/// repeated back.
pub(super) fn printable_uid(uid: &str) -> String {
    if !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        format!("transfer syntax {uid}")
    } else {
        "transfer syntax with a malformed UID".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_syntaxes_are_decoded() {
        assert_eq!(Codec::for_uid("1.2.840.10008.1.2.1"), Some(Codec::Native));
        assert_eq!(Codec::for_uid("1.2.840.10008.1.2.5"), Some(Codec::Rle));
        // JPEG 2000 and deflate are refused.
        assert_eq!(Codec::for_uid("1.2.840.10008.1.2.4.90"), None);
        assert_eq!(Codec::for_uid("1.2.840.10008.1.2.1.99"), None);
        assert!(!Syntax::for_uid("1.2.840.10008.1.2").explicit_vr);
        assert!(Syntax::for_uid("1.2.840.10008.1.2.2").big_endian);
    }

    #[test]
    fn a_uid_is_repeated_only_if_it_looks_like_one() {
        assert_eq!(
            printable_uid("1.2.840.10008.1.2.4.90"),
            "transfer syntax 1.2.840.10008.1.2.4.90"
        );
        assert_eq!(
            printable_uid("Doe^Jane"),
            "transfer syntax with a malformed UID"
        );
        assert_eq!(printable_uid(""), "transfer syntax with a malformed UID");
    }
}
