//! `store = "dir"`: one file per target in `state.dir`, replaced
//! atomically, a batch of snapshots at a time: each is written to a
//! temporary file, then the batch's files are synced together (one sync
//! of the filesystem), then renamed over the old ones, then the directory
//! is synced. A crash leaves the old snapshot or the new one, never half
//! of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::state::{StateStore, StoreError};

/// Snapshots end in this; nothing else in the directory is read.
const SUFFIX: &str = ".tws";

/// Files written and not yet synced at most: past it the batch so far is
/// committed (the state thread's batches are smaller: `writer::MAX_QUEUED`).
const MAX_PENDING: usize = 1024;

#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    /// Files were renamed into the directory since it was last synced.
    renamed: bool,
    /// This batch's files: written and closed, not synced nor renamed yet.
    pending: Vec<(tempfile::TempPath, PathBuf)>,
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
            pending: Vec::new(),
        })
    }

    /// The file of `target` (target names are `[a-z0-9._-]`, checked by
    /// the configuration, so they are safe file names).
    pub fn path_of(&self, target: &str) -> PathBuf {
        self.dir.join(format!("{target}{SUFFIX}"))
    }

    /// Makes the batch so far durable: the data of every file written
    /// since the last commit in one sync, then each renamed over its
    /// target's file, then the directory synced (which makes the renames
    /// durable). A file per sync bounded the store at about 300 snapshots
    /// a second here (PERFORMANCE.md). When the sync fails nothing is
    /// renamed: the old snapshots stay, and the batch's files are removed.
    fn commit(&mut self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.pending);
        let mut failed = None;
        if !pending.is_empty() {
            if let Err(e) = sync_data_of(&self.dir, &pending) {
                return Err(StoreError::new(
                    "state.dir",
                    format!(
                        "{}: the sync of {} snapshots failed: {e}",
                        self.dir.display(),
                        pending.len()
                    ),
                ));
            }
            for (tmp, path) in pending {
                match tmp.persist(&path) {
                    Ok(()) => self.renamed = true,
                    Err(e) => {
                        failed.get_or_insert_with(|| {
                            StoreError::new("state.dir", format!("{}: {}", path.display(), e.error))
                        });
                    }
                }
            }
        }
        if std::mem::take(&mut self.renamed) {
            sync_dir(&self.dir);
        }
        failed.map_or(Ok(()), Err)
    }
}

impl Drop for DirStore {
    /// What was written is stored, as if the batch had ended.
    fn drop(&mut self) {
        if let Err(e) = self.commit() {
            tracing::warn!(setting = "state.dir", error = %e, "snapshots not stored at the store's end");
        }
    }
}

/// Syncs the data of the files of `pending` (in directory `dir`): on
/// Linux one `syncfs` of the filesystem, elsewhere each file's.
#[allow(unsafe_code)]
fn sync_data_of(dir: &Path, pending: &[(tempfile::TempPath, PathBuf)]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let _ = pending;
        let d = std::fs::File::open(dir)?;
        // SAFETY: syncfs(2) on a descriptor this function owns and keeps
        // open for the call; it only writes back the filesystem's data.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        for (tmp, _) in pending {
            std::fs::File::open(&**tmp)?.sync_all()?;
        }
        Ok(())
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
    sync_dir(dir);
    Ok(())
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

    /// Written to a temporary file; stored (synced and renamed) with the
    /// rest of its batch at [`StateStore::batch_done`] or a flush.
    fn write(&mut self, target: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(target);
        let err =
            |e: std::io::Error| StoreError::new("state.dir", format!("{}: {e}", path.display()));
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(err)?;
        tmp.write_all(bytes).map_err(err)?;
        self.pending.push((tmp.into_temp_path(), path));
        if self.pending.len() >= MAX_PENDING {
            self.commit()?;
        }
        Ok(())
    }

    fn batch_done(&mut self) -> Result<(), StoreError> {
        self.commit()
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.commit()
    }

    /// Reads what was written, the batch in progress too.
    fn read(&mut self, targets: &[String]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.commit()?;
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

    /// The names of the files in `dir`.
    fn files_in(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

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
        let names = files_in(&dir.path().join("state"));
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// A batch's files are stored together: none is in place before the
    /// batch ends (the old snapshot stays until then), all are after it,
    /// and no temporary file is left; a flush ends a batch too.
    #[test]
    fn a_batch_is_stored_at_its_end() {
        let (dir, mut s) = store();
        s.write("a", b"old").unwrap();
        s.batch_done().unwrap();
        s.write("a", b"1").unwrap();
        s.write("b", b"2").unwrap();
        assert_eq!(s.pending.len(), 2);
        assert_eq!(std::fs::read(s.path_of("a")).unwrap(), b"old");
        assert!(!s.path_of("b").exists());
        s.batch_done().unwrap();
        assert!(
            s.pending.is_empty() && !s.renamed,
            "synced, renamed, directory synced"
        );
        assert_eq!(std::fs::read(s.path_of("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(s.path_of("b")).unwrap(), b"2");
        s.write("c", b"3").unwrap();
        s.flush().unwrap();
        assert_eq!(std::fs::read(s.path_of("c")).unwrap(), b"3");
        let names = files_in(&dir.path().join("state"));
        assert_eq!(names.len(), 3, "{names:?}");
    }

    /// A store dropped in the middle of a batch stores it, as the state
    /// thread's end does.
    #[test]
    fn a_store_dropped_mid_batch_stores_what_it_was_given() {
        let (dir, mut s) = store();
        s.write("a", b"1").unwrap();
        drop(s);
        let s = DirStore::open(&dir.path().join("state")).unwrap();
        assert_eq!(std::fs::read(s.path_of("a")).unwrap(), b"1");
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
