//! Words for a shell's Tab (`vault` completion, docs/user-guide.md): names,
//! tags, remotes, binding ids and field names — never a value. Credential
//! names come from the in-memory index in order, so a prefix costs a range
//! scan however large the vault; a locked vault answers `Locked`, and the
//! CLI then offers nothing.

use std::collections::BTreeSet;
use std::ops::Bound;

use vault_protocol::message::{COMPLETE_MAX, Completable, Completion};

use super::{Engine, Result, store_err};

/// Longest description shown beside a name.
const HELP_CHARS: usize = 48;

impl Engine {
    /// Up to [`COMPLETE_MAX`] words of `what` that start with `prefix`.
    pub fn complete(&self, what: &Completable, prefix: &str) -> Result<Vec<Completion>> {
        let sess = self.session()?;
        let starts = |s: &&str| s.starts_with(prefix);
        let mut out: Vec<Completion> = match what {
            Completable::Credential => sess
                .index
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(name, _)| name.starts_with(prefix))
                .take(COMPLETE_MAX)
                .map(|(name, e)| {
                    let help = match &e.description {
                        Some(d) if !d.is_empty() => format!("{}: {}", e.kind, short(d)),
                        _ => e.kind.to_string(),
                    };
                    word(name, Some(help))
                })
                .collect(),
            Completable::Tag => {
                let tags: BTreeSet<&str> = sess
                    .index
                    .values()
                    .flat_map(|e| e.tags.iter().map(String::as_str))
                    .filter(starts)
                    .collect();
                tags.into_iter().map(|t| word(t, None)).collect()
            }
            Completable::Remote => self
                .remotes()?
                .iter()
                .filter(|r| r.name.starts_with(prefix))
                .map(|r| word(&r.name, Some(format!("{} {}", r.kind, r.url))))
                .collect(),
            Completable::Emitter => {
                let names = self.names_by_id();
                self.store()?
                    .emitters()
                    .map_err(store_err)?
                    .iter()
                    .filter(|e| e.id.starts_with(prefix))
                    .map(|e| {
                        let name = names.get(&e.record_id).map_or("(deleted)", String::as_str);
                        let help = format!("{name} {} {} [{}]", e.kind.as_str(), e.path, e.section);
                        word(&e.id, Some(help))
                    })
                    .collect()
            }
            Completable::Field { name } => {
                let (_, body) = self.load(name)?;
                body.fields
                    .keys()
                    .map(String::as_str)
                    .filter(starts)
                    .map(|f| word(f, None))
                    .collect()
            }
        };
        out.sort_by(|a, b| a.value.cmp(&b.value));
        out.truncate(COMPLETE_MAX);
        Ok(out)
    }
}

fn word(value: &str, help: Option<String>) -> Completion {
    Completion {
        value: value.to_owned(),
        help,
    }
}

/// `text` on one line, cut to [`HELP_CHARS`] characters.
fn short(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(HELP_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn descriptions_are_cut_to_one_short_line() {
        assert_eq!(short("dev account\nsecond line"), "dev account");
        let long = "é".repeat(60);
        assert_eq!(short(&long), format!("{}…", "é".repeat(48)));
    }
}
