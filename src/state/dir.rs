//! `store = "dir"`: one file per target in `state.dir`, replaced
//! atomically (temporary file, fsync, rename; the directory is synced
//! once per batch of snapshots), so a crash leaves the old snapshot or
//! the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::state::{StateStore, StoreError};

/// Snapshots end in this; nothing else in the directory is read.
const SUFFIX: &str = ".tws";

#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    /// Files were renamed into the directory since it was last synced.
    renamed: bool,
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
            renamed: false,
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
    let dir = rename_in(path, bytes)?;
    sync_dir(dir);
    Ok(())
}

/// A temporary file in `path`'s directory with `bytes`, synced, renamed
/// to `path`; returns the directory, whose sync makes the rename durable
/// (until then a crash leaves the old file, whole).
fn rename_in<'a>(path: &'a Path, bytes: &[u8]) -> std::io::Result<&'a Path> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(dir)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl StateStore for DirStore {
    fn kind(&self) -> &'static str {
        "dir"
    }

    /// The file is synced before its rename; the directory (which makes
    /// the renames durable) once per batch, not once per file: half the
    /// syncs, and syncs are what bound the snapshots a second.
    fn write(&mut self, target: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(target);
        rename_in(&path, bytes)
            .map_err(|e| StoreError::new("state.dir", format!("{}: {e}", path.display())))?;
        self.renamed = true;
        Ok(())
    }

    fn batch_done(&mut self) {
        if std::mem::take(&mut self.renamed) {
            sync_dir(&self.dir);
        }
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.batch_done();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in `state` of a new temporary directory.
    fn store() -> (tempfile::TempDir, DirStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(&dir.path().join("state")).unwrap();
        (dir, s)
    }

    #[test]
    fn writes_whole_files_and_reads_only_what_is_asked() {
        let (dir, mut s) = store();
        s.write("web", b"one").unwrap();
        s.write("web", b"two").unwrap();
        s.write("gone", b"kept").unwrap();
        let got = s.read(&["web".into(), "new".into()]).unwrap();
        assert_eq!(got, vec![("web".to_string(), b"two".to_vec())]);
        // the snapshot of a target no longer configured stays
        assert!(s.path_of("gone").exists());
        // no temporary files left behind
        let names: Vec<String> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn the_directory_is_synced_once_a_batch_and_at_a_flush() {
        let (_dir, mut s) = store();
        s.write("a", b"1").unwrap();
        s.write("b", b"2").unwrap();
        assert!(s.renamed, "the renames wait for the batch's sync");
        // renamed already: readable before the sync
        assert_eq!(s.read(&["a".into()]).unwrap().len(), 1);
        s.batch_done();
        assert!(!s.renamed);
        s.write("c", b"3").unwrap();
        s.flush().unwrap();
        assert!(!s.renamed, "a flush syncs too");
    }

    #[test]
    fn an_unwritable_directory_is_refused_at_open_by_name() {
        let e = DirStore::open(Path::new("/proc/tidewatch-state")).unwrap_err();
        assert_eq!(e.setting, "state.dir");
        assert!(e.message.contains("/proc/tidewatch-state"), "{e}");
    }

    /// A real full disk (a 64 KiB tmpfs): the write fails with the path
    /// in the error, and the previous snapshot is whole. Needs root for
    /// the mount, as the test machines have.
    #[test]
    fn a_full_disk_keeps_the_last_good_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cannot mount a small tmpfs (root is needed) to test a full disk"
            );
            eprintln!("skipped: cannot mount a tmpfs (not root)");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(dir.path());
        let mut s = DirStore::open(dir.path()).unwrap();
        let good = vec![7u8; 20_000];
        s.write("web", &good).unwrap();
        let e = s.write("web", &vec![9u8; 100_000]).unwrap_err();
        assert_eq!(e.setting, "state.dir");
        assert!(e.message.contains("web.tws"), "{e}");
        assert_eq!(
            s.read(&["web".into()]).unwrap(),
            vec![("web".to_string(), good)]
        );
    }
}
