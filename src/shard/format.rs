//! The versioned shard blob: a fixed 32-byte header followed by an rkyv archive of flat primitive arrays.
//!
//! Header (little endian): magic `EDGRSHRD` (8) | format version u32 | flags u32 | payload length u64 |
//! xxh3-64 of the payload u64. The header length is a multiple of 16 so the archive that follows
//! stays 16-aligned inside an aligned buffer. Bump [`FORMAT_VERSION`] whenever [`ShardData`] changes.

use rkyv::rend::{f32_le, u16_le, u32_le};

use super::error::ShardError;

pub const MAGIC: [u8; 8] = *b"EDGRSHRD";
/// 2: layer 0 has a per-shard degree (`ShardData::degree`) instead of a fixed 64 slots.
/// 3: lexical postings (`ShardData::lexical`).
pub const FORMAT_VERSION: u32 = 3;
pub const HEADER_LEN: usize = 32;
/// No flags are defined yet; a reader rejects any it does not know.
pub const KNOWN_FLAGS: u32 = 0;
/// Neighbour slots per node on the upper layers (instant-distance's M); layer 0 has
/// [`ShardData::degree`] of them.
pub const UPPER_STRIDE: usize = 32;
/// Pads a neighbour list that has fewer than `stride` entries; the first one ends the list.
pub const NO_NEIGHBOUR: u32 = u32::MAX;
/// Marks a document that has no value for a metadata field.
pub const NO_VALUE: u32 = u32::MAX;

/// The fixed header in front of every shard archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format_version: u32,
    pub flags: u32,
    pub payload_len: u64,
    pub checksum: u64,
}

impl Header {
    pub fn for_payload(payload: &[u8]) -> Header {
        Header {
            format_version: FORMAT_VERSION,
            flags: 0,
            payload_len: payload.len() as u64,
            checksum: xxhash_rust::xxh3::xxh3_64(payload),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.payload_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// The payload checksum the header records, read without checking anything else: what an
    /// index manifest compares with its own record of the shard (`None` if the blob is too short).
    pub fn declared_checksum(blob: &[u8]) -> Option<u64> {
        let field: [u8; 8] = blob.get(24..32)?.try_into().ok()?;
        Some(u64::from_le_bytes(field))
    }

    /// Reads and checks magic, version and flags (not the payload; see [`verify_payload`]).
    pub fn parse(blob: &[u8]) -> Result<Header, ShardError> {
        let Some(bytes) = blob.get(..HEADER_LEN) else {
            return Err(ShardError::Truncated {
                len: blob.len(),
                needed: HEADER_LEN,
            });
        };
        if bytes[0..8] != MAGIC {
            return Err(ShardError::BadMagic);
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        let header = Header {
            format_version: u32_at(8),
            flags: u32_at(12),
            payload_len: u64_at(16),
            checksum: u64_at(24),
        };
        debug_assert_eq!(Header::declared_checksum(blob), Some(header.checksum));
        if header.format_version != FORMAT_VERSION {
            return Err(ShardError::UnsupportedVersion {
                found: header.format_version,
                supported: FORMAT_VERSION,
            });
        }
        if header.flags & !KNOWN_FLAGS != 0 {
            return Err(ShardError::UnknownFlags(header.flags));
        }
        Ok(header)
    }
}

/// Checks the header and the payload length, not the checksum (O(1)); returns header and payload.
pub fn payload(blob: &[u8]) -> Result<(Header, &[u8]), ShardError> {
    let header = Header::parse(blob)?;
    let payload = &blob[HEADER_LEN..];
    if header.payload_len != payload.len() as u64 {
        return Err(ShardError::LengthMismatch {
            declared: header.payload_len,
            actual: payload.len() as u64,
        });
    }
    Ok((header, payload))
}

/// Integrity: checks the header, the payload length and the payload checksum (hashes the whole
/// payload once). This belongs to the transfer, when a blob arrives from storage.
pub fn verify_payload(blob: &[u8]) -> Result<Header, ShardError> {
    let (header, payload) = self::payload(blob)?;
    let actual = xxhash_rust::xxh3::xxh3_64(payload);
    if actual != header.checksum {
        return Err(ShardError::ChecksumMismatch {
            declared: header.checksum,
            actual,
        });
    }
    Ok(header)
}

/// Header + archive of `data`: the bytes that go to disk and R2.
pub fn encode_blob(data: &ShardData) -> Result<Vec<u8>, ShardError> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(data)
        .map_err(|e| ShardError::Encode(e.to_string()))?;
    let mut blob = Vec::with_capacity(HEADER_LEN + payload.len());
    blob.extend_from_slice(&Header::for_payload(&payload).encode());
    blob.extend_from_slice(&payload);
    Ok(blob)
}

/// Everything one shard holds. Node `j` of every graph layer is document ordinal `j`.
/// Also serde-derivable so benchmarks can compare against a plain owned deserialisation.
#[derive(
    Debug,
    Clone,
    PartialEq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct ShardData {
    pub index_name: String,
    pub shard_name: String,
    pub dims: u32,
    /// [`super::Metric`] code.
    pub metric: u8,
    pub count: u32,
    /// Neighbour slots per node on layer 0 (at least 1).
    pub degree: u32,
    /// `count × degree` neighbour ordinals, padded with [`NO_NEIGHBOUR`].
    pub layer0: Vec<u32>,
    /// `upper_layers[l - 1]` is layer `l`: `nodes × UPPER_STRIDE` ordinals; its nodes are ordinals `0..nodes`.
    pub upper_layers: Vec<Vec<u32>>,
    pub vectors: StoredVectors,
    pub texts: StringColumn,
    pub ids: StoredIds,
    pub metadata: Vec<MetadataColumn>,
    pub lexical: LexicalData,
}

/// The inverted index of the shard's texts, for BM25 (see [`crate::lexical`]): a sorted term
/// dictionary, each term's postings (document ordinals ascending, with the term's count in
/// each), and every document's length in tokens. Document frequencies and the corpus counts are
/// the whole index's, so every shard scores with the same statistics.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct LexicalData {
    /// Passages in the whole index.
    pub index_docs: u64,
    /// Tokens over all passages of the whole index.
    pub index_tokens: u64,
    /// Distinct terms, sorted by bytes.
    pub terms: StringColumn,
    /// `doc_freq[t]`: passages of the whole index containing term `t`.
    pub doc_freq: Vec<u32>,
    /// Term `t`'s postings are `docs[starts[t]..starts[t + 1]]` (and the same range of `counts`).
    pub starts: Vec<u32>,
    pub docs: Vec<u32>,
    /// Occurrences of the term in the document, saturating at 255 (BM25 saturates long before).
    pub counts: Vec<u8>,
    /// `doc_tokens[ord]`: the document's length in tokens.
    pub doc_tokens: Vec<u32>,
}

/// Quantised passage vectors, `count × dims` flat.
#[derive(
    Debug,
    Clone,
    PartialEq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum StoredVectors {
    F16 { bits: Vec<u16> },
    I8 { codes: Vec<i8>, scales: Vec<f32> },
}

/// Many strings as one byte array; string `i` is `bytes[offsets[i]..offsets[i + 1]]`.
#[derive(
    Debug,
    Clone,
    PartialEq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct StringColumn {
    pub bytes: Vec<u8>,
    pub offsets: Vec<u32>,
}

impl StringColumn {
    pub fn new() -> StringColumn {
        StringColumn {
            bytes: Vec::new(),
            offsets: vec![0],
        }
    }

    pub fn push(&mut self, text: &str) {
        self.bytes.extend_from_slice(text.as_bytes());
        self.offsets.push(self.bytes.len() as u32);
    }
}

impl Default for StringColumn {
    fn default() -> Self {
        StringColumn::new()
    }
}

impl ArchivedStringColumn {
    /// How many strings the column holds.
    pub(crate) fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// String `index`; its bytes are checked for UTF-8 here, on read, rather than all at open.
    pub(crate) fn get(&self, index: usize) -> Result<&str, ShardError> {
        std::str::from_utf8(self.bytes_of(index)?)
            .map_err(|_| inconsistent(format!("string {index} is not UTF-8")))
    }

    /// Position of `wanted` in a column sorted by bytes (UTF-8 byte order is `str` order).
    pub(crate) fn binary_search(&self, wanted: &str) -> Result<Option<usize>, ShardError> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match self.bytes_of(mid)?.cmp(wanted.as_bytes()) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Ok(Some(mid)),
            }
        }
        Ok(None)
    }

    fn bytes_of(&self, index: usize) -> Result<&[u8], ShardError> {
        let offsets = native_u32(&self.offsets);
        let (Some(&start), Some(&end)) = (offsets.get(index), offsets.get(index + 1)) else {
            return Err(inconsistent(format!("string {index} out of range")));
        };
        self.bytes
            .get(start as usize..end as usize)
            .ok_or_else(|| inconsistent("string offsets out of range"))
    }
}

/// Document ids exactly as the corpus gave them.
#[derive(
    Debug,
    Clone,
    PartialEq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum StoredIds {
    Int(Vec<i64>),
    Str(StringColumn),
}

/// One metadata field, dictionary encoded: `values` are distinct canonical JSON texts (sorted, so a
/// filter finds its value id by binary search) and `doc_values[ord]` indexes them or is [`NO_VALUE`].
/// The dictionary is a flat [`StringColumn`], not a `Vec<String>`, so that validating it at open
/// costs the same for ten distinct values as for a hundred thousand.
#[derive(
    Debug,
    Clone,
    PartialEq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct MetadataColumn {
    pub field: String,
    pub values: StringColumn,
    pub doc_values: Vec<u32>,
}

/// The invariants bytecheck cannot know that reading in place relies on, checked at open in
/// O(number of arrays), independent of the shard's size: array lengths agree with `count` and
/// `dims`, and each graph layer is no larger than the one below. What would cost a scan is
/// checked where it is read instead: neighbour ordinals by the search (a bad link is an error
/// from the search), string offsets and dictionary ids by [`ArchivedStringColumn::get`]. So a
/// corrupt archive gives an error when opened or when the corrupt part is read, never a panic or
/// an out-of-bounds read; detecting corruption itself is the payload checksum's job.
pub(crate) fn check_structure(data: &ArchivedShardData) -> Result<(), ShardError> {
    let count = data.count.to_native() as usize;
    let dims = data.dims.to_native() as usize;
    if dims == 0 {
        return Err(inconsistent("dims is 0"));
    }
    super::Metric::from_code(data.metric)?;
    let degree = data.degree.to_native() as usize;
    if degree == 0 {
        return Err(inconsistent("layer-0 degree is 0"));
    }
    check_len(
        "layer-0 neighbours",
        data.layer0.len(),
        count.checked_mul(degree),
    )?;
    let mut nodes_below = count;
    for (index, layer) in data.upper_layers.iter().enumerate() {
        if layer.len() % UPPER_STRIDE != 0 {
            return Err(inconsistent(format!(
                "layer {} length {} is not a multiple of {UPPER_STRIDE}",
                index + 1,
                layer.len()
            )));
        }
        let nodes = layer.len() / UPPER_STRIDE;
        if nodes > nodes_below || nodes == 0 {
            return Err(inconsistent(format!(
                "layer {} has {nodes} nodes, the layer below {nodes_below}",
                index + 1
            )));
        }
        nodes_below = nodes;
    }
    let elements = count.checked_mul(dims);
    match &data.vectors {
        ArchivedStoredVectors::F16 { bits } => check_len("f16 vectors", bits.len(), elements)?,
        ArchivedStoredVectors::I8 { codes, scales } => {
            check_len("i8 vectors", codes.len(), elements)?;
            check_len("i8 scales", scales.len(), Some(count))?;
        }
    }
    check_len("texts", data.texts.len(), Some(count))?;
    match &data.ids {
        ArchivedStoredIds::Int(ids) => check_len("ids", ids.len(), Some(count))?,
        ArchivedStoredIds::Str(ids) => check_len("ids", ids.len(), Some(count))?,
    }
    for column in data.metadata.iter() {
        check_len("metadata column", column.doc_values.len(), Some(count))?;
    }
    let lexical = &data.lexical;
    let terms = lexical.terms.len();
    check_len("term frequencies", lexical.doc_freq.len(), Some(terms))?;
    check_len(
        "postings starts",
        lexical.starts.len(),
        terms.checked_add(1),
    )?;
    check_len(
        "postings counts",
        lexical.counts.len(),
        Some(lexical.docs.len()),
    )?;
    check_len("document lengths", lexical.doc_tokens.len(), Some(count))?;
    Ok(())
}

pub(crate) fn inconsistent(message: impl Into<String>) -> ShardError {
    ShardError::Inconsistent(message.into())
}

fn check_len(what: &str, actual: usize, expected: Option<usize>) -> Result<(), ShardError> {
    match expected {
        Some(expected) if expected == actual => Ok(()),
        Some(expected) => Err(inconsistent(format!(
            "{what}: {actual} entries, expected {expected}"
        ))),
        None => Err(inconsistent(format!("{what}: expected size overflows"))),
    }
}

// The archive stores little-endian primitives; on little-endian targets (x86_64, wasm32, aarch64)
// they have exactly the native layout, which lets the search read them as plain slices.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "shard blobs are read in place only on little-endian targets"
);

macro_rules! native_slice {
    ($name:ident, $archived:ty, $native:ty) => {
        pub(crate) fn $name(values: &[$archived]) -> &[$native] {
            const _: () =
                assert!(std::mem::size_of::<$archived>() == std::mem::size_of::<$native>());
            const _: () =
                assert!(std::mem::align_of::<$archived>() == std::mem::align_of::<$native>());
            // SAFETY: same size and alignment (checked above), and on a little-endian target the
            // archived type is a transparent wrapper with the native byte order.
            unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<$native>(), values.len()) }
        }
    };
}
native_slice!(native_u32, u32_le, u32);
native_slice!(native_u16, u16_le, u16);
native_slice!(native_f32, f32_le, f32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_bad_magic_version_and_flags() {
        let header = Header::for_payload(b"payload");
        let bytes = header.encode();
        assert_eq!(Header::parse(&bytes), Ok(header));

        let mut bad_magic = bytes;
        bad_magic[0] ^= 1;
        assert_eq!(Header::parse(&bad_magic), Err(ShardError::BadMagic));

        let mut bad_version = bytes;
        bad_version[8] = 9;
        assert!(matches!(
            Header::parse(&bad_version),
            Err(ShardError::UnsupportedVersion { found: 9, .. })
        ));

        let mut bad_flags = bytes;
        bad_flags[12] = 1;
        assert_eq!(Header::parse(&bad_flags), Err(ShardError::UnknownFlags(1)));

        assert!(matches!(
            Header::parse(&bytes[..5]),
            Err(ShardError::Truncated { len: 5, .. })
        ));
    }
}
