//! The private-path rule, written once (docs/architecture.md): a vault's
//! own files, directories and socket, and `vault exec`'s folders, must be
//! what they claim to be (never a symlink), belong to the user, and grant
//! nothing to group or others. The daemon enforces it, `vault exec` checks
//! its folders with it, and `vault doctor` reports it with a fix.
//!
//! Pure: callers pass what `lstat` said, so the rule is tested without
//! files, and each caller phrases its own fix.

use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// What a private path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A directory (mode 0700).
    Dir,
    /// A regular file (mode 0600).
    File,
    /// A unix socket (mode 0600).
    Socket,
}

impl Want {
    /// The word for it in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Want::Dir => "directory",
            Want::File => "file",
            Want::Socket => "socket",
        }
    }

    /// The mode it should have, for `chmod`.
    pub fn mode(self) -> &'static str {
        match self {
            Want::Dir => "700",
            Want::File | Want::Socket => "600",
        }
    }
}

/// What `lstat` found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// A symlink (never followed).
    pub symlink: bool,
    /// What it is, when not a symlink: the [`Want`] it matches, if any.
    pub kind: Option<Want>,
    /// Its owner.
    pub uid: u32,
    /// Its permission bits.
    pub mode: u32,
}

impl Found {
    /// From `std::fs::symlink_metadata`.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let t = meta.file_type();
        let kind = if t.is_dir() {
            Some(Want::Dir)
        } else if t.is_file() {
            Some(Want::File)
        } else if t.is_socket() {
            Some(Want::Socket)
        } else {
            None
        };
        Self {
            symlink: t.is_symlink(),
            kind,
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        }
    }
}

/// Why a path is not private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotPrivate {
    /// A symlink, where the real thing is wanted.
    Symlink(Want),
    /// Something other than what is wanted.
    NotA(Want),
    /// Owned by someone else.
    Owner {
        /// The owner.
        owner: u32,
        /// The user checking.
        me: u32,
    },
    /// Group or others have some permission.
    Open {
        /// Its permission bits.
        mode: u32,
        /// What it should be.
        want: Want,
    },
}

/// Checks `found` against the rule, for user `me`.
pub fn check(found: Found, want: Want, me: u32) -> Result<(), NotPrivate> {
    if found.symlink {
        return Err(NotPrivate::Symlink(want));
    }
    if found.kind != Some(want) {
        return Err(NotPrivate::NotA(want));
    }
    if found.uid != me {
        return Err(NotPrivate::Owner {
            owner: found.uid,
            me,
        });
    }
    if found.mode & 0o077 != 0 {
        return Err(NotPrivate::Open {
            mode: found.mode & 0o777,
            want,
        });
    }
    Ok(())
}

impl fmt::Display for NotPrivate {
    /// What is wrong, without the path (the caller puts it first) or the
    /// fix (each caller has its own).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotPrivate::Symlink(_) => {
                f.write_str("is a symlink; vault does not follow symlinks for its own files")
            }
            NotPrivate::NotA(want) => write!(f, "is not a {}", want.noun()),
            NotPrivate::Owner { owner, me } => {
                write!(f, "is owned by uid {owner}, not by you (uid {me})")
            }
            NotPrivate::Open { mode, .. } => {
                write!(f, "is accessible to other users (mode {mode:03o})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(kind: Want, uid: u32, mode: u32) -> Found {
        Found {
            symlink: false,
            kind: Some(kind),
            uid,
            mode,
        }
    }

    #[test]
    fn only_the_users_own_closed_path_of_the_right_kind_passes() {
        assert_eq!(check(found(Want::Dir, 7, 0o700), Want::Dir, 7), Ok(()));
        assert_eq!(check(found(Want::File, 7, 0o400), Want::File, 7), Ok(()));
        assert_eq!(
            check(found(Want::File, 7, 0o640), Want::File, 7),
            Err(NotPrivate::Open {
                mode: 0o640,
                want: Want::File
            })
        );
        assert_eq!(
            check(found(Want::Socket, 7, 0o602), Want::Socket, 7)
                .unwrap_err()
                .to_string(),
            "is accessible to other users (mode 602)"
        );
        assert_eq!(
            check(found(Want::Dir, 0, 0o700), Want::Dir, 7)
                .unwrap_err()
                .to_string(),
            "is owned by uid 0, not by you (uid 7)"
        );
        assert_eq!(
            check(found(Want::File, 7, 0o600), Want::Dir, 7),
            Err(NotPrivate::NotA(Want::Dir))
        );
        let link = Found {
            symlink: true,
            kind: None,
            uid: 7,
            mode: 0o777,
        };
        assert_eq!(
            check(link, Want::File, 7),
            Err(NotPrivate::Symlink(Want::File))
        );
        // The kind is checked before the owner, the owner before the mode.
        assert_eq!(
            check(found(Want::File, 0, 0o666), Want::Dir, 7),
            Err(NotPrivate::NotA(Want::Dir))
        );
        assert!(matches!(
            check(found(Want::File, 0, 0o666), Want::File, 7),
            Err(NotPrivate::Owner { .. })
        ));
    }
}
