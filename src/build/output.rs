//! Writes an index directory atomically: each file via a temp file in the same directory, fsync and
//! rename; shard files are content-addressed and the manifest goes last, so a failed build leaves
//! the previous index readable.

use std::io::Write;
use std::path::Path;

use super::error::BuildError;
use crate::manifest::{Manifest, MANIFEST_FILE};

pub const SHARD_FILE_SUFFIX: &str = ".shard";

/// Replaces `dir/name` with whatever `write` produces, or leaves it untouched if anything fails.
pub fn write_atomic(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), BuildError> {
    let target = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        write(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&temp, &target)?;
        // Persist the rename itself.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: the temp file may not exist; the error that matters is the original one.
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(BuildError::io(target))
}

/// Writes shard blobs (file name → bytes), then the manifest, then removes shard files the new
/// manifest no longer names.
pub fn write_index(
    dir: &Path,
    blobs: &[(String, Vec<u8>)],
    manifest: &Manifest,
) -> Result<(), BuildError> {
    std::fs::create_dir_all(dir).map_err(BuildError::io(dir))?;
    for (file, bytes) in blobs {
        write_atomic(dir, file, |f| f.write_all(bytes))?;
    }
    write_atomic(dir, MANIFEST_FILE, |f| {
        f.write_all(manifest.to_json_pretty().as_bytes())
    })?;
    let entries = std::fs::read_dir(dir).map_err(BuildError::io(dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let referenced = manifest.shards.iter().any(|s| s.file == name);
        if name.ends_with(SHARD_FILE_SUFFIX) && !referenced {
            std::fs::remove_file(entry.path()).map_err(BuildError::io(entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_previous_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "a", |f| f.write_all(b"old")).unwrap();
        let failed = write_atomic(dir.path(), "a", |f| {
            f.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(matches!(failed, Err(BuildError::Io { .. })));
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
