//! Live writes without I/O. One writer per index (a Durable Object in the worker) keeps the
//! latest [`Row`] of every id written since the index's base version, numbered by `seq`; every
//! isolate mirrors those rows as a [`Delta`] and serves it beside the compiled shards: exact
//! search over the written passages, and the written ids excluded from the shards' answers
//! (a replaced or deleted passage is never returned from a shard).
//!
//! Submodules: [`log`] (the writer's decisions: seqs, id kinds, the backlog limit; and the wire
//! types between writer and isolate), [`segment`] (the log's spans sealed into blobs in every
//! region's bucket, which isolates read instead of asking the writer), [`delta`] (the isolate's
//! view of one index), [`export`]
//! (every live passage as NDJSON, what a compaction rebuilds from), [`views`]
//! (every index's view in an isolate, within a byte budget, caught up as requests need).
pub mod delta;
pub mod export;
pub mod log;
pub mod segment;
pub mod views;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::shard::DocId;

pub use delta::Delta;
pub use log::{Applied, LogMeta, Refused, SealPlan, Since, WriteBatch, WriteState};
pub use segment::Sealed;
pub use views::{ViewError, Views, Wanted, Writer};

/// A written passage: its vector (as sent), text and metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Put {
    #[serde(with = "f32_base64")]
    pub vector: Vec<f32>,
    #[serde(default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// What one write does to one id: put a passage (insert or replace it whole) or delete it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub id: DocId,
    /// `None`: delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub put: Option<Put>,
}

/// The newest change of an id, and the seq of the write that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub seq: u64,
    #[serde(flatten)]
    pub change: Change,
}

/// The id's text as the writer's table keys it: its JSON (`5` and `"5"` are different ids).
pub fn id_key(id: &DocId) -> String {
    serde_json::to_string(id).unwrap_or_default()
}

/// Vectors cross between worker, writer and isolates as base64 of little-endian f32s: exact,
/// and a third of the size of JSON numbers.
mod f32_base64 {
    use serde::{Deserialize, Deserializer, Serializer};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn serialize<S: Serializer>(vector: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        serializer.serialize_str(&encode(&bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = decode(&text).ok_or_else(|| serde::de::Error::custom("invalid base64"))?;
        if bytes.len() % 4 != 0 {
            return Err(serde::de::Error::custom("not a whole number of f32s"));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    pub(super) fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub(super) fn decode(text: &str) -> Option<Vec<u8>> {
        let text = text.trim_end_matches('=');
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let (mut n, mut bits) = (0u32, 0);
        for c in text.bytes() {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            n = n << 6 | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((n >> bits) as u8);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_cross_as_exact_base64() {
        for bytes in [&b""[..], b"f", b"fo", b"foo", b"foob"] {
            assert_eq!(
                f32_base64::decode(&f32_base64::encode(bytes)).unwrap(),
                bytes
            );
        }
        assert_eq!(f32_base64::encode(b"foob"), "Zm9vYg==");
        let put = Put {
            vector: vec![1.5, -0.0, f32::MIN_POSITIVE, 3.0e38],
            text: "t".into(),
            metadata: Map::new(),
        };
        let json = serde_json::to_string(&put).unwrap();
        assert_eq!(serde_json::from_str::<Put>(&json).unwrap(), put);
        assert!(serde_json::from_str::<Put>(r#"{"vector":"AAA"}"#).is_err());
    }

    #[test]
    fn id_keys_tell_integers_from_strings() {
        assert_eq!(id_key(&DocId::Int(5)), "5");
        assert_eq!(id_key(&DocId::Str("5".into())), "\"5\"");
    }
}
