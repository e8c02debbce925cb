//! `store = "dir"`: one file per target in `state.dir`, replaced
//! atomically (temporary file, fsync, rename, fsync of the directory), so
//! a crash leaves the old snapshot or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::state::{StateStore, StoreError};

/// Snapshots end in this; nothing else in the directory is read.
const SUFFIX: &str = ".tws";

#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// Creates the directory if needed; fails when it cannot be written.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let err =
            |e: std::io::Error| StoreError::new("state.dir", format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(err)?;
        let probe = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        drop(probe);
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The file of `target` (target names are `[a-z0-9._-]`, checked by
    /// the configuration, so they are safe file names).
    pub fn path_of(&self, target: &str) -> PathBuf {
        self.dir.join(format!("{target}{SUFFIX}"))
    }
}

/// Replaces `path` with `bytes`: temporary file in the same directory,
/// fsync, rename, fsync of the directory.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // the rename itself is durable once the directory is
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl StateStore for DirStore {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn write(&mut self, target: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(target);
        replace_file(&path, bytes)
            .map_err(|e| StoreError::new("state.dir", format!("{}: {e}", path.display())))
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn read(&mut self, targets: &[String]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for t in targets {
            let path = self.path_of(t);
            match std::fs::read(&path) {
                Ok(bytes) => out.push((t.clone(), bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // One unreadable file starts one target cold.
                    tracing::warn!(setting = "state.dir", path = %path.display(), error = %e, "snapshot unreadable; the target starts cold");
                }
            }
        }
        Ok(out)
    }
}
