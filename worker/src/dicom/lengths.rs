//! The length guard: every declared element length of the file is checked
//! against the bytes actually present before the parser sees it.
//!
//! The dicom-rs parser reserves and zero-fills a declared length before
//! reading it, so a few hundred bytes declaring a 4 GB element would make it
//! allocate gigabytes. This module walks the element headers the way the
//! parser will (the file meta group, then the data set's sequences, items,
//! delimiters and encapsulated fragments) and refuses such a file first. It
//! is only a guard: it refuses nothing that fits, and leaves malformed
//! structure to the parser, which fails on its own.

use dicom_core::Tag;

use super::corrupt;
use super::transfer::Syntax;
use crate::raster::DecodeError;

/// The length value meaning "undefined, ends at a delimiter".
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Where the file meta group (group 0002, always explicit VR little endian)
/// ends, relative to the "DICM" marker.
pub(super) fn meta_group_end(body: &[u8]) -> Option<usize> {
    let mut i = 4;
    loop {
        let group = u16::from_le_bytes([*body.get(i)?, *body.get(i + 1)?]);
        if group != 0x0002 {
            return Some(i);
        }
        let vr = body.get(i + 4..i + 6)?;
        dicom_core::VR::from_binary([vr[0], vr[1]])?;
        let (len, header) = if long_length_vr(vr) {
            (
                u32::from_le_bytes(body.get(i + 8..i + 12)?.try_into().ok()?),
                12,
            )
        } else {
            (
                u32::from(u16::from_le_bytes(body.get(i + 6..i + 8)?.try_into().ok()?)),
                8,
            )
        };
        if len == UNDEFINED {
            return None;
        }
        i = i.checked_add(header)?.checked_add(len as usize)?;
        if i > body.len() {
            return None;
        }
    }
}

/// Explicit VR: whether the length field is 4 bytes (after 2 reserved
/// bytes). As in dicom-rs, only the listed VRs have a 2-byte length; any
/// other, including unrecognised VR bytes (read as UN), has 4.
fn long_length_vr(vr: &[u8]) -> bool {
    !matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// An open container while walking the data set.
#[derive(Debug, Clone, Copy)]
enum Open {
    /// A sequence; `implicit` when its items are implicit VR (an
    /// undefined-length UN in an explicit VR data set).
    Sequence { end: Option<usize>, implicit: bool },
    /// A data set item of a sequence.
    Item { end: Option<usize> },
    /// Encapsulated pixel data: items are raw fragments.
    Fragments,
}

/// Walks the data set's element headers the way the parser will (sequences,
/// items, delimiters, encapsulated fragments, implicit VR inside
/// undefined-length UN) and refuses any defined length that runs past the end
/// of the data: the parser reserves and zero-fills a declared length before
/// reading it, so a few hundred bytes could otherwise make it allocate
/// gigabytes. The walk is only a guard: it refuses nothing that fits, and
/// leaves malformed structure to the parser, which fails on its own.
pub(super) fn check_lengths(data: &[u8], syntax: Syntax) -> Result<(), DecodeError> {
    let too_long = || corrupt("DICOM element length runs past the end of the file");
    let rd16 = |b: &[u8]| {
        if syntax.big_endian {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        }
    };
    let rd32 = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if syntax.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let mut stack: Vec<Open> = Vec::new();
    let mut i = 0usize;
    while i + 8 <= data.len() {
        // Close defined-length containers that end here.
        while let Some(&top) = stack.last() {
            match top {
                Open::Sequence { end: Some(e), .. } | Open::Item { end: Some(e) } if i >= e => {
                    stack.pop();
                }
                _ => break,
            }
        }
        if stack.len() > 256 {
            return Err(corrupt("DICOM sequences are nested too deeply"));
        }
        let explicit = syntax.explicit_vr
            && !stack
                .iter()
                .any(|o| matches!(o, Open::Sequence { implicit: true, .. }));
        let group = rd16(&data[i..]);
        let elem = rd16(&data[i + 2..]);
        if group == 0xFFFE {
            // Items and delimiters: tag + 4-byte length, never a VR.
            let len = rd32(&data[i + 4..]);
            i += 8;
            match elem {
                0xE000 if matches!(stack.last(), Some(Open::Fragments)) => {
                    if len == UNDEFINED || len as usize > data.len() - i {
                        return Err(too_long());
                    }
                    i += len as usize;
                }
                // An item belongs in a sequence; the parser's reading of one
                // anywhere else is not the guard's, so it is refused.
                0xE000 if !matches!(stack.last(), Some(Open::Sequence { .. })) => {
                    return Err(corrupt("DICOM item outside a sequence"));
                }
                0xE000 => {
                    if len == UNDEFINED {
                        stack.push(Open::Item { end: None });
                    } else if len as usize > data.len() - i {
                        return Err(too_long());
                    } else {
                        stack.push(Open::Item {
                            end: Some(i + len as usize),
                        });
                    }
                }
                0xE00D | 0xE0DD
                    if len != 0 && len != UNDEFINED && len as usize > data.len() - i =>
                {
                    return Err(too_long());
                }
                0xE00D => {
                    if let Some(at) = stack.iter().rposition(|o| matches!(o, Open::Item { .. })) {
                        stack.truncate(at);
                    }
                }
                0xE0DD => {
                    if let Some(at) = stack
                        .iter()
                        .rposition(|o| matches!(o, Open::Sequence { .. } | Open::Fragments))
                    {
                        stack.truncate(at);
                    }
                }
                // No other element of group FFFE exists; the parser would
                // read one as a value of its declared length (reserving it
                // first), so it is refused here.
                _ => return Err(corrupt("DICOM data set has an invalid item tag")),
            }
            continue;
        }
        let (vr, len) = if explicit {
            let vr = [data[i + 4], data[i + 5]];
            // The parser reads unrecognised VR bytes its own way; only the
            // standard's VRs are walked.
            if dicom_core::VR::from_binary(vr).is_none() {
                return Err(corrupt("DICOM element has an invalid VR"));
            }
            if long_length_vr(&vr) {
                if i + 12 > data.len() {
                    return Err(too_long());
                }
                let len = rd32(&data[i + 8..]);
                i += 12;
                (Some(vr), len)
            } else {
                let len = u32::from(rd16(&data[i + 6..]));
                i += 8;
                (Some(vr), len)
            }
        } else {
            let len = rd32(&data[i + 4..]);
            i += 8;
            (None, len)
        };
        let pixel_data = (group, elem) == (0x7FE0, 0x0010);
        let sequence = match vr {
            Some(vr) => &vr == b"SQ" || (&vr == b"UN" && len == UNDEFINED),
            None => is_sq_tag(Tag(group, elem)) || (len == UNDEFINED && !pixel_data),
        };
        if len == UNDEFINED {
            if sequence {
                let implicit = matches!(vr, Some(v) if &v == b"UN");
                stack.push(Open::Sequence {
                    end: None,
                    implicit,
                });
            } else if pixel_data {
                stack.push(Open::Fragments);
            }
            continue;
        }
        if len as usize > data.len() - i {
            return Err(too_long());
        }
        let size = match vr {
            Some(vr) => value_size(vr),
            None => implicit_value_size(Tag(group, elem)),
        };
        if !sequence && !(len as usize).is_multiple_of(size) {
            return Err(corrupt(
                "DICOM element length is not a whole number of its values",
            ));
        }
        if sequence {
            stack.push(Open::Sequence {
                end: Some(i + len as usize),
                implicit: false,
            });
        } else {
            i += len as usize;
        }
    }
    Ok(())
}

/// The size of one value of a VR that the parser reads as whole binary
/// numbers: it reads `length / size` of them and not the bytes left over, so
/// a length that is not a multiple of the size leaves it out of step with the
/// data (reading the next header from the middle of a value, where any
/// length may appear). 1 for every other VR.
fn value_size(vr: [u8; 2]) -> usize {
    match &vr {
        b"US" | b"SS" | b"OW" => 2,
        b"UL" | b"SL" | b"FL" | b"OF" | b"OL" | b"AT" => 4,
        b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => 8,
        _ => 1,
    }
}

/// [`value_size`] for implicit VR, where the parser takes the VR from the
/// standard dictionary (US or SS for `xs`; OB or OW for `ox`, `px` and `lt`,
/// so 2 to be safe).
fn implicit_value_size(tag: Tag) -> usize {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    match dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.vr())
    {
        Some(VirtualVr::Exact(vr)) => value_size(vr.to_bytes()),
        Some(VirtualVr::Xs | VirtualVr::Ox | VirtualVr::Px | VirtualVr::Lt) => 2,
        // Unknown tags are read as UN (bytes); the enum is non-exhaustive.
        _ => 1,
    }
}

/// Whether the standard dictionary says a tag is a sequence (implicit VR).
fn is_sq_tag(tag: Tag) -> bool {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    use dicom_core::VR;
    matches!(
        dicom_dictionary_std::StandardDataDictionary
            .by_tag(tag)
            .map(|e| e.vr()),
        Some(VirtualVr::Exact(VR::SQ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPLICIT_LE: Syntax = Syntax {
        explicit_vr: true,
        big_endian: false,
    };

    /// An explicit VR little endian element header (and `value`).
    fn explicit(group: u16, elem: u16, vr: &[u8; 2], len: u32, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&elem.to_le_bytes());
        out.extend_from_slice(vr);
        if long_length_vr(vr) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&len.to_le_bytes());
        } else {
            out.extend_from_slice(&(len as u16).to_le_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn lengths_that_fit_pass_and_overruns_are_refused() {
        let mut ok = explicit(0x0010, 0x0010, b"PN", 4, b"ABCD");
        ok.extend(explicit(0x7FE0, 0x0010, b"OB", 2, &[1, 2]));
        assert_eq!(check_lengths(&ok, EXPLICIT_LE), Ok(()));

        let mut long = explicit(0x0010, 0x0010, b"PN", 4, b"ABCD");
        long.extend(explicit(0x0009, 0x1010, b"OB", 100, &[1, 2]));
        assert!(check_lengths(&long, EXPLICIT_LE).is_err());

        // A sequence whose defined length runs past the end.
        let seq = explicit(0x0008, 0x1140, b"SQ", 1000, &[0; 16]);
        assert!(check_lengths(&seq, EXPLICIT_LE).is_err());

        // Implicit VR: a 4-byte length after the tag.
        let mut implicit = vec![0x10, 0x00, 0x10, 0x00];
        implicit.extend_from_slice(&0x00FF_FFFFu32.to_le_bytes());
        implicit.extend_from_slice(b"ABCD");
        let syntax = Syntax {
            explicit_vr: false,
            big_endian: false,
        };
        assert!(check_lengths(&implicit, syntax).is_err());
    }

    #[test]
    fn the_meta_group_ends_where_group_0002_does() {
        let mut body = b"DICM".to_vec();
        body.extend(explicit(0x0002, 0x0000, b"UL", 4, &[0; 4]));
        let end = body.len();
        body.extend(explicit(0x0008, 0x0016, b"UI", 2, b"1."));
        assert_eq!(meta_group_end(&body), Some(end));
        // A meta element that runs past the end, or a truncated header.
        let mut bad = b"DICM".to_vec();
        bad.extend(explicit(0x0002, 0x0001, b"OB", 64, &[0; 4]));
        assert_eq!(meta_group_end(&bad), None);
        assert_eq!(meta_group_end(b"DICM\x02\x00"), None);
    }
}
