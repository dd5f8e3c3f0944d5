//! Private files and directories (docs/architecture.md): created 0700/0600 from the start,
//! and verified before use. The daemon refuses to run on a vault path that is
//! a symlink, owned by another user, or open to group/other, and says how to
//! fix it.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A vault path that is not safe to use, with the fix.
#[derive(Debug)]
pub struct UnsafePath(pub String);

impl std::fmt::Display for UnsafePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnsafePath {}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Creates `dir` (and missing parents) with mode 0700, then verifies it.
pub fn ensure_private_dir(dir: &Path) -> Result<(), UnsafePath> {
    match fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    UnsafePath(format!("cannot create directory {}: {e}", dir.display()))
                })?;
        }
        Err(e) => return Err(UnsafePath(format!("cannot inspect {}: {e}", dir.display()))),
    }
    check_private(dir, true)
}

/// Verifies that an existing `path` is ours and private. A missing path is
/// fine (nothing to protect yet).
pub fn check_private_if_exists(path: &Path) -> Result<(), UnsafePath> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        _ => check_private(path, false),
    }
}

/// Verifies that `path` is a real (non-symlink) directory or file, owned by
/// the current user, with no group/other permission bits.
pub fn check_private(path: &Path, want_dir: bool) -> Result<(), UnsafePath> {
    use vault_protocol::private::{self, Found, NotPrivate, Want};
    let meta = fs::symlink_metadata(path)
        .map_err(|e| UnsafePath(format!("cannot inspect {}: {e}", path.display())))?;
    let p = path.display();
    let want = if want_dir { Want::Dir } else { Want::File };
    let Err(wrong) = private::check(Found::of(&meta), want, euid()) else {
        return Ok(());
    };
    let fix = match wrong {
        NotPrivate::Symlink(w) => format!(
            "Replace it with the real {} (e.g. mv the target there)",
            w.noun()
        ),
        NotPrivate::NotA(_) => "Move it aside".to_owned(),
        NotPrivate::Owner { me, .. } => {
            format!("A vault must belong to the user running vaultd. Fix with: chown {me} {p}")
        }
        NotPrivate::Open { want, .. } => format!("Fix with: chmod {} {p}", want.mode()),
    };
    Err(UnsafePath(format!("{p} {wrong}. {fix}")))
}

/// Opens (creating if missing) a private file for appending or writing:
/// created 0600, never followed through a symlink.
pub fn open_private(path: &Path, append: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    if append {
        opts.append(true);
    } else {
        opts.read(true).write(true);
    }
    opts.open(path)
}

/// Reads a whole private file, never through a symlink.
pub fn read_private(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Creates a new private file; fails if it already exists.
pub fn create_new_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Writes `bytes` to a new private file atomically: a temp file in the same
/// directory, fsync, rename, fsync of the directory.
pub fn write_new_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = create_new_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if path.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
        }
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a private file of our own whole: a 0600 temp file in the same
/// directory, fsync, rename over `path` (a symlink there is replaced, never
/// followed), fsync of the directory. A reader sees the old file or the new
/// one.
pub fn replace_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".vault-write-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)?;
    io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// Reads a file other tools own (following a symlink); `None` when it does
/// not exist yet.
pub fn read_text(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// An advisory lock (`flock`) on a file other tools read, held while the
/// vault reads, merges and replaces it; released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _held: File,
}

/// How long [`lock_file`] waits for another process's lock.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes an exclusive advisory lock on `path` (its target, when it is a
/// symlink), waiting up to `wait`. Because the vault replaces files by
/// rename, a lock taken on a file that was replaced meanwhile is dropped and
/// taken again on the new one. A file that does not exist yet is locked
/// through its directory; `None` when that does not exist either (nothing
/// to race with).
pub fn lock_file(path: &Path, wait: std::time::Duration) -> io::Result<Option<FileLock>> {
    use rustix::fs::{FlockOperation, flock};
    let deadline = std::time::Instant::now() + wait;
    loop {
        let (file, is_dir) = match File::open(path) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match path.parent().map(File::open) {
                Some(Ok(d)) => (d, true),
                _ => return Ok(None),
            },
            Err(e) => return Err(e),
        };
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                if std::time::Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "another process holds a lock on it; retry when it is done",
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        // Still the file at `path` (or, for a directory lock, still no
        // file)? Otherwise it was replaced or created while we waited.
        let now_there = fs::metadata(path);
        let same = match (&now_there, is_dir) {
            (Err(e), true) => e.kind() == io::ErrorKind::NotFound,
            (Ok(m), false) => {
                let held = file.metadata()?;
                m.ino() == held.ino() && m.dev() == held.dev()
            }
            _ => false,
        };
        if same {
            return Ok(Some(FileLock { _held: file }));
        }
    }
}

/// client-go's lock on a kubeconfig: `PATH.lock`, created with `O_EXCL`
/// while kubectl changes `PATH` (which it rewrites in place), removed when
/// done. Held by the vault around its read, merge and rename of the file,
/// so neither overwrites the other's change; removed when dropped.
#[derive(Debug)]
pub struct DotLock {
    path: PathBuf,
}

impl Drop for DotLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Creates `PATH.lock` (see [`DotLock`]), waiting up to `wait` for one that
/// exists to go. `None` when the directory does not exist yet (no kubectl
/// can be writing there).
pub fn dot_lock(path: &Path, wait: std::time::Duration) -> io::Result<Option<DotLock>> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock = PathBuf::from(name);
    let deadline = std::time::Instant::now() + wait;
    loop {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&lock)
        {
            Ok(_) => return Ok(Some(DotLock { path: lock })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if std::time::Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "{} exists: kubectl is changing the file; retry when it is done, or \
                             remove that file if no kubectl is running",
                            lock.display()
                        ),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Replaces the content of a file other tools read, the way a user's
/// dotfile must be treated: a temp file in the same directory, fsync,
/// rename, fsync of the directory, so a reader sees the old file or the new
/// one, never a part. A symlinked file is followed and its target replaced
/// (the link stays). The existing mode is kept; a new file is 0600 and new
/// directories 0700.
pub fn replace_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path)?,
        _ => path.to_path_buf(),
    };
    let dir = target
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a file path is needed"))?;
    if !dir.exists() {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let mode = fs::metadata(&target).map_or(0o600, |m| m.mode() & 0o7777);
    let mut tmp = tempfile::Builder::new()
        .prefix(".vault-write-")
        .tempfile_in(dir)?;
    io::Write::write_all(&mut tmp, content)?;
    fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )?;
    tmp.as_file().sync_all()?;
    tmp.persist(&target).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// Removes the per-child folders of `vault exec` wrappers that are gone
/// (killed before they could clean up). A folder is named
/// `<wrapper pid>-<random>`; anything else is left alone.
pub fn sweep_exec_dirs(exec_dir: &Path) {
    let Ok(entries) = fs::read_dir(exec_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        let gone = matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        );
        if gone && entry.file_type().is_ok_and(|t| t.is_dir()) {
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(
                    wrapper = pid.as_raw_nonzero().get(),
                    "removed an abandoned exec folder"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot remove an abandoned exec folder"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_kubectl_lock_file_is_waited_for_then_named() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("config");
        let short = std::time::Duration::from_millis(100);
        let held = dot_lock(&f, short).unwrap().unwrap();
        assert!(tmp.path().join("config.lock").exists());
        let e = dot_lock(&f, short).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains("config.lock exists"), "{e}");
        drop(held);
        assert!(!tmp.path().join("config.lock").exists());
        // Released while waited for: taken.
        let held = dot_lock(&f, short).unwrap().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(held);
        });
        assert!(
            dot_lock(&f, std::time::Duration::from_secs(5))
                .unwrap()
                .is_some()
        );
        t.join().unwrap();
        assert!(
            dot_lock(&tmp.path().join("no/config"), short)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_held_lock_is_waited_for_and_a_replaced_file_is_locked_anew() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("credentials");
        let short = std::time::Duration::from_millis(100);
        // Not there yet: locked through the directory.
        let dir_lock = lock_file(&f, short).unwrap().unwrap();
        assert!(lock_file(&f, short).is_err(), "the directory lock is held");
        drop(dir_lock);
        fs::write(&f, "a").unwrap();
        // Another process's lock (another open file description).
        let other = File::open(&f).unwrap();
        rustix::fs::flock(&other, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let err = lock_file(&f, short).unwrap_err();
        assert!(err.to_string().contains("lock"), "{err}");
        // Released by a writer that replaced the file meanwhile: the waiter
        // ends up holding the new file.
        let path = f.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            replace_file(&path, b"b").unwrap();
            drop(other);
        });
        let held = lock_file(&f, std::time::Duration::from_secs(5))
            .unwrap()
            .unwrap();
        writer.join().unwrap();
        let locked = held._held.metadata().unwrap();
        assert_eq!(locked.ino(), fs::metadata(&f).unwrap().ino());
        assert!(lock_file(&f, short).is_err());
        assert!(
            lock_file(&tmp.path().join("no/such/dir/f"), short)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn creates_private_dirs_and_refuses_open_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        ensure_private_dir(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let err = ensure_private_dir(&d).unwrap_err().0;
        assert!(err.contains("chmod 700"), "{err}");
    }

    #[test]
    fn refuses_symlinks_and_open_files() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        drop(open_private(&f, true).unwrap());
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        check_private(&f, false).unwrap();
        let link = tmp.path().join("l");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(
            check_private(&link, false)
                .unwrap_err()
                .0
                .contains("symlink")
        );
        assert!(open_private(&link, true).is_err());
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            check_private(&f, false)
                .unwrap_err()
                .0
                .contains("chmod 600")
        );
    }
}
