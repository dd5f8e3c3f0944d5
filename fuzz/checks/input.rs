//! The byte layout of the merge targets' inputs (`aws_ini_merge`,
//! `docker_json_merge`), written so that a seed can be a real file made by
//! hand:
//!
//! ```text
//! FILE TEXT  [ NUL  OPS ]
//! ```
//!
//! Everything before the first NUL byte is the file as it is on disk (bytes
//! that are not UTF-8 are replaced, as a file vault can read is UTF-8). The
//! bytes after it are a sequence of operations of the engine on that file,
//! each `OP [LEN VALUE...]`:
//!
//! - `OP & 3`: 0 or 1 emit, 2 remove, 3 emit with `--force`;
//! - `(OP >> 2) & 3`: which name (0..=2: fixed vault names of the target; 3:
//!   a name that is already in the file, the `OP >> 4`-th one);
//! - for an emit, `LEN & 0x3f` bytes of value follow (ASCII bytes as they
//!   are, others mapped to letters and digits); `LEN & 0xc0` are flags of the
//!   target.
//!
//! No NUL (or nothing after it): one emit of the first vault name.
//!
//! This is hand-rolled rather than `arbitrary`-derived on purpose: the same
//! decoding must run in `cargo test` (daemon/tests/fuzz_replay.rs), where
//! the crate has no `arbitrary` dependency, and seeds stay readable files.

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Write (or rewrite) the vault's entry.
    Emit {
        /// `--force`: take a name the vault did not write.
        force: bool,
    },
    /// Take the vault's entry out (`vault emit rm`, expiry, deletion).
    Remove,
}

/// One operation of the engine on the file.
#[derive(Debug, Clone)]
pub struct Op {
    /// What it does.
    pub kind: Kind,
    /// 0..=2: the target's fixed names; 3: a name already in the file.
    pub slot: u8,
    /// For slot 3: which of the file's names (modulo their number).
    pub pick: u8,
    /// The value to write (emit only).
    pub value: String,
    /// Two bits the target may use (emit only).
    pub flags: u8,
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Splits an input into the file text and its operations.
pub fn split(data: &[u8]) -> (String, Vec<Op>) {
    let (text, ops) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text).into_owned();
    let mut out = Vec::new();
    let mut rest = ops;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let kind = match op & 3 {
            0 | 1 => Kind::Emit { force: false },
            2 => Kind::Remove,
            _ => Kind::Emit { force: true },
        };
        let (mut value, mut flags) = (String::new(), 0);
        if kind != Kind::Remove
            && let Some((&len, tail)) = rest.split_first()
        {
            rest = tail;
            flags = len >> 6;
            let n = usize::from(len & 0x3f).min(rest.len());
            value = rest[..n]
                .iter()
                .map(|&b| {
                    if b.is_ascii() {
                        char::from(b)
                    } else {
                        char::from(ALNUM[usize::from(b) % ALNUM.len()])
                    }
                })
                .collect();
            rest = &rest[n..];
        }
        out.push(Op {
            kind,
            slot: (op >> 2) & 3,
            pick: op >> 4,
            value,
            flags,
        });
    }
    if out.is_empty() {
        out.push(Op {
            kind: Kind::Emit { force: false },
            slot: 0,
            pick: 0,
            value: "SeedSecretValue0+/".to_owned(),
            flags: 0,
        });
    }
    (text, out)
}
