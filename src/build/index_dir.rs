//! Opens a built index directory: reads the manifest and the shard files it names, and opens them
//! as a [`LocalIndex`] (what `shardc` and the tests search).

use std::ops::Deref;
use std::path::{Path, PathBuf};

use super::error::BuildError;
use crate::index::{LocalIndex, OpenError};
use crate::manifest::{Manifest, MANIFEST_FILE};

pub struct IndexDir {
    pub dir: PathBuf,
    pub index: LocalIndex,
}

impl IndexDir {
    pub fn open(dir: &Path) -> Result<IndexDir, BuildError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let json = std::fs::read(&manifest_path).map_err(BuildError::io(&manifest_path))?;
        let manifest = Manifest::from_json(&json).map_err(|source| BuildError::Manifest {
            path: manifest_path.clone(),
            source,
        })?;
        let paths: Vec<PathBuf> = manifest.shards.iter().map(|e| dir.join(&e.file)).collect();
        let blobs = paths
            .iter()
            .map(|path| std::fs::read(path).map_err(BuildError::io(path)))
            .collect::<Result<Vec<_>, _>>()?;
        let index = LocalIndex::open(manifest, blobs).map_err(|error| match error {
            OpenError::Manifest(source) => BuildError::Manifest {
                path: dir.to_path_buf(),
                source,
            },
            OpenError::Shard { shard, source } => BuildError::Shard { shard, source },
        })?;
        Ok(IndexDir {
            dir: dir.to_path_buf(),
            index,
        })
    }
}

/// An index directory is its open index plus where it was read from.
impl Deref for IndexDir {
    type Target = LocalIndex;

    fn deref(&self) -> &LocalIndex {
        &self.index
    }
}
