//! The one error type of the build layer (corpus reading, partitioning, writing and reopening indexes).

use std::path::PathBuf;

use crate::manifest::ManifestError;
use crate::shard::ShardError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Corpus {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Vectors { path: PathBuf, message: String },
    #[error("invalid build input: {0}")]
    Invalid(String),
    #[error("shard {shard}: {source}")]
    Shard { shard: String, source: ShardError },
    #[error("{path}: {source}")]
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
    #[error("graph export failed: {0}")]
    GraphExport(String),
    /// An embedder failed or answered something unusable (`shardc ingest`, `shardc sync`).
    #[error("embedding: {0}")]
    Embed(String),
    /// A worker's write routes refused or did not answer (`shardc sync`).
    #[error("sync: {0}")]
    Sync(String),
}

impl BuildError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io { path, source }
    }
}
