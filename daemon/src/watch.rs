//! Watching emitted files (docs/emit.md): `notify` reports every change to the
//! directories holding them, and a change to one of the files marks the
//! drift report stale. The daemon's ticker then compares the files with
//! what the vault wrote (`Engine::watch_emitted`); the vault reports drift,
//! it never rewrites a user's edit by itself.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use notify::{RecursiveMode, Watcher as _};
use tracing::{debug, warn};

/// The watcher and what it watches.
pub struct DriftWatch {
    watcher: Option<notify::RecommendedWatcher>,
    /// Directories watched (non-recursively).
    dirs: BTreeSet<PathBuf>,
    /// The files of interest: emitted paths and, for symlinks, their
    /// targets. Shared with the event handler.
    files: Arc<Mutex<BTreeSet<PathBuf>>>,
    /// Set by the event handler when one of `files` changed.
    changed: Arc<AtomicBool>,
}

impl std::fmt::Debug for DriftWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriftWatch")
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl Default for DriftWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl DriftWatch {
    /// A watch on nothing yet. When the platform refuses a watcher (no
    /// inotify instances left), drift is still found on demand by
    /// `vault emit list`; the reason is logged.
    pub fn new() -> Self {
        let files: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let changed = Arc::new(AtomicBool::new(false));
        let (f, c) = (Arc::clone(&files), Arc::clone(&changed));
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            match event {
                Ok(event) => {
                    let files = f.lock().unwrap_or_else(|p| p.into_inner());
                    if event.paths.iter().any(|p| files.contains(p)) {
                        c.store(true, Ordering::Release);
                    }
                }
                // A lost event (queue overflow) may have been ours: look.
                Err(_) => c.store(true, Ordering::Release),
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot watch emitted files; drift shows in 'vault emit list' only");
                None
            }
        };
        Self {
            watcher,
            dirs: BTreeSet::new(),
            files,
            changed,
        }
    }

    /// Watches exactly the files `paths` (and their symlink targets).
    /// Returns whether the set changed.
    pub fn set_files<'a>(&mut self, paths: impl IntoIterator<Item = &'a str>) -> bool {
        let mut files = BTreeSet::new();
        for p in paths {
            let p = PathBuf::from(p);
            if let Ok(target) = std::fs::canonicalize(&p)
                && target != p
            {
                files.insert(target);
            }
            files.insert(p);
        }
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        let same = {
            let mut current = self.files.lock().unwrap_or_else(|p| p.into_inner());
            let same = *current == files;
            *current = files;
            same
        };
        if let Some(w) = self.watcher.as_mut() {
            for gone in self.dirs.difference(&dirs) {
                let _ = w.unwatch(gone);
            }
            for new in dirs.difference(&self.dirs) {
                // A directory that does not exist yet is watched once the
                // vault has written into it (the next tick).
                if let Err(e) = w.watch(new, RecursiveMode::NonRecursive) {
                    debug!(dir = %new.display(), error = %e, "not watching yet");
                    continue;
                }
            }
        }
        self.dirs = dirs.into_iter().filter(|d| d.is_dir()).collect();
        !same
    }

    /// Whether a watched file changed since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_changed(w: &DriftWatch) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if w.take_changed() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn reports_a_change_to_a_watched_file_only() {
        let tmp = tempfile::tempdir().unwrap();
        let watched = tmp.path().join("credentials");
        let other = tmp.path().join("other");
        std::fs::write(&watched, "a").unwrap();
        let mut w = DriftWatch::new();
        assert!(w.set_files([watched.to_str().unwrap()]));
        assert!(!w.set_files([watched.to_str().unwrap()]), "unchanged set");
        std::fs::write(&other, "x").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(!w.take_changed(), "another file in the same directory");
        std::fs::write(&watched, "b").unwrap();
        assert!(wait_changed(&w), "an edit in place");
        // A replacement by rename (what editors and the vault do).
        let tmpfile = tmp.path().join(".new");
        std::fs::write(&tmpfile, "c").unwrap();
        std::fs::rename(&tmpfile, &watched).unwrap();
        assert!(wait_changed(&w), "a rename over it");
        w.set_files(std::iter::empty());
        std::fs::write(&watched, "d").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(!w.take_changed(), "no longer watched");
    }
}
