//! The one error type of the shard layer: everything that can go wrong opening, reading or searching a shard.

/// Why a shard blob could not be opened, read or searched.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ShardError {
    #[error("shard blob is truncated: {len} bytes, need at least {needed}")]
    Truncated { len: usize, needed: usize },
    #[error("not a shard blob: bad magic bytes")]
    BadMagic,
    #[error(
        "unsupported shard format version {found} (this build reads version {supported}: rebuild the index with this build's shardc)"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("unknown shard header flags {0:#x}")]
    UnknownFlags(u32),
    #[error("shard payload length mismatch: header says {declared} bytes, blob has {actual}")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error(
        "shard checksum mismatch: header says {declared:016x}, payload hashes to {actual:016x}"
    )]
    ChecksumMismatch { declared: u64, actual: u64 },
    #[error("shard archive failed validation: {0}")]
    InvalidArchive(String),
    #[error("shard structure is inconsistent: {0}")]
    Inconsistent(String),
    #[error("query has {got} dimensions, shard has {expected}")]
    DimensionMismatch { expected: usize, got: usize },
    #[error("query vector contains NaN or infinity")]
    NonFiniteQuery,
    #[error("query vector has zero length, cosine similarity is undefined")]
    ZeroQuery,
    #[error("passage ordinal {ord} out of range (shard has {count})")]
    OrdinalOutOfRange { ord: u32, count: u32 },
    #[error("failed to encode shard: {0}")]
    Encode(String),
}
