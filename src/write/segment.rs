//! Sealed segments: the rows of a span of seqs, written once by the index's writer into every
//! region's bucket, so that an isolate catching up reads the bulk of the log from R2 (once per
//! segment, like a shard) and asks the writer only for the list and the short unsealed tail.
//!
//! A segment's blob is a fixed header (magic, format version, the span, the row count, the
//! payload's length and xxh3 checksum) and a payload of the span's rows, one JSON [`Row`] per
//! line. [`decode`] checks every field against the [`Sealed`] record that named the blob, so a
//! truncated, corrupted or misplaced object is an error (the reader then takes the rows from the
//! writer itself), never a wrong view. The writer's table keeps every row until a compaction, so
//! a segment is only ever a faster copy of rows the writer can still send.
use serde::{Deserialize, Serialize};

use super::Row;

const MAGIC: &[u8; 8] = b"EDGWSEG\0";
/// Bump when the header or payload layout changes; older readers refuse newer blobs.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 4 + 8 + 8;

/// The top-level prefix of sealed segments in a bucket: index names may not start with `.`, so
/// it never reads as an index.
pub const SEGMENT_PREFIX: &str = ".writes/";

/// One sealed segment, as the writer lists it: the rows with `above < seq <= upto`, newest per
/// id at the time it was sealed (a later write of one of its ids is in a later segment or the
/// tail, and wins when applied after it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub key: String,
    pub above: u64,
    pub upto: u64,
    pub rows: u64,
}

impl Sealed {
    /// The object key of the segment over `(above, upto]` of the log `owner` (the writer's
    /// object id); `nonce` tells a reseal of the same span from the earlier one, so an object is
    /// never overwritten while listed.
    pub fn key_for(owner: &str, above: u64, upto: u64, nonce: u64) -> String {
        let owner_hex: String = owner.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{SEGMENT_PREFIX}{owner_hex}/{above:020}-{upto:020}-{nonce:x}.seg")
    }
}

/// Why a blob is not the segment its record names.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("segment {key}: {why}")]
pub struct SegmentError {
    pub key: String,
    pub why: String,
}

/// The blob of the rows of `sealed`'s span (`rows` in seq order).
pub fn encode(above: u64, upto: u64, rows: &[Row]) -> Result<Vec<u8>, String> {
    let mut payload = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut payload, row).map_err(|e| e.to_string())?;
        payload.push(b'\n');
    }
    let mut blob = Vec::with_capacity(HEADER_BYTES + payload.len());
    blob.extend_from_slice(MAGIC);
    blob.extend_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    blob.extend_from_slice(&above.to_le_bytes());
    blob.extend_from_slice(&upto.to_le_bytes());
    blob.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    blob.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    blob.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
    blob.extend_from_slice(&payload);
    Ok(blob)
}

/// The rows of the blob `bytes`, which must be the segment `sealed` names.
pub fn decode(sealed: &Sealed, bytes: &[u8]) -> Result<Vec<Row>, SegmentError> {
    let fail = |why: String| SegmentError {
        key: sealed.key.clone(),
        why,
    };
    if bytes.len() < HEADER_BYTES {
        return Err(fail(format!(
            "{} bytes, shorter than the {HEADER_BYTES}-byte header",
            bytes.len()
        )));
    }
    if &bytes[..8] != MAGIC {
        return Err(fail("not a sealed segment (bad magic)".into()));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let version = u32_at(8);
    if version != SEGMENT_FORMAT_VERSION {
        return Err(fail(format!(
            "format version {version}; this worker reads {SEGMENT_FORMAT_VERSION}"
        )));
    }
    let (above, upto, rows) = (u64_at(12), u64_at(20), u32_at(28) as u64);
    if (above, upto, rows) != (sealed.above, sealed.upto, sealed.rows) {
        return Err(fail(format!(
            "holds seqs ({above}, {upto}] in {rows} rows; the writer lists ({}, {}] in {} rows",
            sealed.above, sealed.upto, sealed.rows
        )));
    }
    let (length, checksum) = (u64_at(32), u64_at(40));
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() as u64 != length {
        return Err(fail(format!(
            "payload is {} bytes, the header says {length}",
            payload.len()
        )));
    }
    if xxhash_rust::xxh3::xxh3_64(payload) != checksum {
        return Err(fail("payload checksum mismatch".into()));
    }
    let mut decoded = Vec::with_capacity(rows as usize);
    for (line, text) in payload.split(|&b| b == b'\n').enumerate() {
        if text.is_empty() {
            continue;
        }
        let row: Row =
            serde_json::from_slice(text).map_err(|e| fail(format!("row {line}: {e}")))?;
        let previous = decoded.last().map_or(above, |r: &Row| r.seq);
        if row.seq <= above || row.seq > upto || row.seq < previous {
            return Err(fail(format!(
                "row {line} has seq {}, outside ({above}, {upto}] or out of order",
                row.seq
            )));
        }
        decoded.push(row);
    }
    if decoded.len() as u64 != rows {
        return Err(fail(format!(
            "{} rows, the header says {rows}",
            decoded.len()
        )));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::DocId;
    use crate::write::{Change, Put};

    fn rows() -> Vec<Row> {
        (1..=5u64)
            .map(|seq| Row {
                seq: seq + 10,
                change: Change {
                    id: DocId::Int(seq as i64),
                    put: (seq != 3).then(|| Put {
                        vector: vec![seq as f32, -0.5, 1e-7],
                        text: format!("passage {seq}\nwith a newline"),
                        metadata: Default::default(),
                    }),
                },
            })
            .collect()
    }

    fn sealed(blob_rows: u64) -> Sealed {
        Sealed {
            key: Sealed::key_for("docs", 10, 15, 1),
            above: 10,
            upto: 15,
            rows: blob_rows,
        }
    }

    #[test]
    fn a_segment_round_trips_its_rows_deletes_included() {
        let blob = encode(10, 15, &rows()).unwrap();
        assert_eq!(decode(&sealed(5), &blob).unwrap(), rows());
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let blob = encode(10, 15, &rows()).unwrap();
        for cut in 0..blob.len() {
            assert!(decode(&sealed(5), &blob[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..blob.len() {
            let mut bad = blob.clone();
            bad[at] ^= 0x20;
            assert!(decode(&sealed(5), &bad).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn a_blob_for_another_span_or_count_is_refused_with_both_named() {
        let blob = encode(10, 15, &rows()).unwrap();
        let error = decode(&sealed(4), &blob).unwrap_err();
        assert!(
            error.why.contains("(10, 15] in 5 rows") && error.why.contains("in 4 rows"),
            "{error}"
        );
        let outside = encode(10, 12, &rows()).unwrap();
        let record = Sealed {
            upto: 12,
            ..sealed(5)
        };
        assert!(decode(&record, &outside)
            .unwrap_err()
            .why
            .contains("outside (10, 12]"));
    }

    #[test]
    fn segment_keys_start_with_a_prefix_no_index_name_has() {
        let key = Sealed::key_for("a/b", 0, 42, 7);
        assert!(key.starts_with(".writes/612f62/"), "{key}");
        assert!(key.ends_with("-7.seg"), "{key}");
    }
}
