//! Pure editing of the vault's `users[]` entries in a kubeconfig
//! (`~/.kube/config`, docs/kube.md): the current text and the entries in,
//! the new text out. Each entry is an exec user that runs `vault eks|gke
//! token …`. Only the items of the top-level `users:` block sequence that
//! the vault owns are inserted, replaced or removed, by their lines; every
//! other byte of the file (clusters, contexts, the user's own users,
//! comments, indentation) stays identical. A file this cannot edit safely
//! is refused and left as it is. `yaml-rust2` parses: the result is
//! checked to mean what was asked before it is returned.
//!
//! Real kubeconfigs are block style, written by kubectl (sequence items at
//! the key's column: `users:\n- name: a`) or by hand and other tools
//! (indented: `users:\n  - name: a`); both are taken, and a new item gets
//! the file's own indentation.

use std::collections::BTreeSet;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;
use yaml_rust2::{Yaml, YamlLoader};

/// The exec API version the vault writes (every kubectl since 1.11).
pub const EXEC_API_VERSION: &str = "client.authentication.k8s.io/v1beta1";

/// A `users[]` entry whose credentials come from running a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// `users[].name`.
    pub name: String,
    /// `user.exec.command`: the absolute path of `vault`.
    pub command: String,
    /// `user.exec.args`.
    pub args: Vec<String>,
    /// `user.exec.apiVersion`.
    pub api_version: String,
}

/// Why the file was not rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeError {
    /// Not a kubeconfig this module can edit safely (why; never the
    /// file's content, which may hold tokens and keys).
    Unparseable(String),
    /// A `users[]` entry of that name the vault did not write.
    NotOwned(String),
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeError::Unparseable(why) => write!(
                f,
                "is not a kubeconfig vault can edit ({why}); the file was left as it is: fix it \
                 and retry"
            ),
            KubeError::NotOwned(name) => write!(
                f,
                "has a user '{name}' that vault did not write: --force replaces it (a backup is \
                 kept)"
            ),
        }
    }
}

fn bad(why: impl Into<String>) -> KubeError {
    KubeError::Unparseable(why.into())
}

/// What a new (or empty) file becomes, before its `users:` items; what
/// kubectl itself writes for an empty config.
const NEW_FILE: &str = "apiVersion: v1\nclusters: null\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {}\nusers:\n";

/// `s` as a YAML scalar: plain when it reads back as the same string in
/// YAML 1.1 and 1.2 (kubectl's parser is 1.1), else double-quoted with
/// JSON's escapes (a subset of YAML's).
fn scalar(s: &str) -> String {
    let plain_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
    let starts_well = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'/' || b == b'_')
        || (s.starts_with("--") && s.len() > 2);
    let keyword = matches!(
        s.to_ascii_lowercase().as_str(),
        "y" | "n" | "yes" | "no" | "true" | "false" | "on" | "off" | "null" | "nan" | "inf"
    );
    if plain_chars && starts_well && !keyword {
        s.to_owned()
    } else {
        serde_json::Value::from(s).to_string()
    }
}

/// The entry's text at column 0, ending in a newline, laid out as kubectl
/// writes it (keys sorted, `env: null`), so that a kubectl rewrite of the
/// file changes it little or not at all.
pub fn render(user: &ExecUser) -> String {
    let mut out = format!("- name: {}\n  user:\n    exec:\n", scalar(&user.name));
    out.push_str(&format!(
        "      apiVersion: {}\n",
        scalar(&user.api_version)
    ));
    if user.args.is_empty() {
        out.push_str("      args: null\n");
    } else {
        out.push_str("      args:\n");
        for a in &user.args {
            out.push_str(&format!("      - {}\n", scalar(a)));
        }
    }
    out.push_str(&format!("      command: {}\n", scalar(&user.command)));
    out.push_str(
        "      env: null\n      interactiveMode: Never\n      provideClusterInfo: false\n",
    );
    out
}

/// Refuses anchors, aliases and tags (an edit could break what refers to
/// what), and more than one document.
#[derive(Default)]
struct Plain {
    docs: usize,
    fancy: bool,
}

impl MarkedEventReceiver for Plain {
    fn on_event(&mut self, ev: Event, _mark: Marker) {
        match ev {
            Event::DocumentStart => self.docs += 1,
            Event::Alias(_) => self.fancy = true,
            Event::Scalar(_, _, anchor, tag) => self.fancy |= anchor != 0 || tag.is_some(),
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) => {
                self.fancy |= anchor != 0 || tag.is_some();
            }
            _ => {}
        }
    }
}

/// Where the parser sees the top-level `users` key and the start of each
/// of its items (1-based lines), to hold the line editor to the same
/// reading of the file.
#[derive(Default)]
struct Layout {
    /// Open containers: `true` for a mapping, with whether the next
    /// scalar there is a key.
    stack: Vec<(bool, bool)>,
    /// The next node is the value of the top-level `users`.
    users_next: bool,
    /// The depth of the `users` sequence, once open.
    users_depth: Option<usize>,
    key_line: Option<usize>,
    item_lines: Vec<usize>,
}

impl Layout {
    /// A node starts at `line`: an item of `users`, or its value.
    fn node(&mut self, line: usize, opens: Option<bool>) {
        if self.users_depth == Some(self.stack.len()) {
            self.item_lines.push(line);
        }
        if let Some((true, next_is_key)) = self.stack.last_mut() {
            *next_is_key = !*next_is_key;
        }
        if self.users_next {
            self.users_next = false;
            if opens == Some(false) {
                self.users_depth = Some(self.stack.len() + 1);
            }
        }
        if let Some(is_map) = opens {
            self.stack.push((is_map, true));
        }
    }
}

impl MarkedEventReceiver for Layout {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                let top_key = self.stack.len() == 1 && self.stack[0].0 && self.stack[0].1;
                self.node(mark.line(), None);
                if top_key && value == "users" {
                    self.key_line = Some(mark.line());
                    self.users_next = true;
                }
            }
            Event::Alias(_) => self.node(mark.line(), None),
            Event::SequenceStart(..) => self.node(mark.line(), Some(false)),
            Event::MappingStart(..) => self.node(mark.line(), Some(true)),
            Event::SequenceEnd | Event::MappingEnd => {
                if self.users_depth == Some(self.stack.len()) {
                    self.users_depth = None;
                }
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// The largest kubeconfig read.
const MAX_KUBECONFIG: usize = 4 << 20;
/// The most columns of indentation and `- ` before a line's content.
const MAX_NESTING_COLUMNS: usize = 256;

/// The document of `text`: one mapping (an empty file has none), with no
/// anchors, aliases or tags.
fn document(text: &str) -> Result<Option<yaml_rust2::yaml::Hash>, KubeError> {
    // The parser recurses once per level of block nesting, without a
    // bound: 20,000 levels of `- ` overflowed the daemon's stack (review,
    // 2026-12-05). No kubeconfig nests deeper than a few levels.
    if text.len() > MAX_KUBECONFIG {
        return Err(bad("it is larger than 4 MiB"));
    }
    let deep = text.lines().position(|l| {
        l.bytes()
            .take_while(|b| matches!(b, b' ' | b'-' | b'?' | b':'))
            .count()
            > MAX_NESTING_COLUMNS
    });
    if let Some(line) = deep {
        return Err(bad(format!(
            "line {} nests deeper than vault reads (over {MAX_NESTING_COLUMNS} columns of \
             indentation and '- ')",
            line + 1
        )));
    }
    let mut plain = Plain::default();
    Parser::new_from_str(text)
        .load(&mut plain, true)
        .map_err(|e| bad(format!("YAML error at line {}", e.marker().line())))?;
    if plain.docs > 1 {
        return Err(bad("it holds more than one YAML document"));
    }
    if plain.fancy {
        return Err(bad("it uses YAML anchors, aliases or tags"));
    }
    let docs = YamlLoader::load_from_str(text).map_err(|_| bad("YAML error"))?;
    match docs.into_iter().next() {
        None | Some(Yaml::Null) => Ok(None),
        Some(Yaml::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(bad("its top level is not a mapping")),
    }
}

fn users_of(doc: &yaml_rust2::yaml::Hash) -> Result<Vec<Yaml>, KubeError> {
    match doc.get(&Yaml::String("users".into())) {
        None | Some(Yaml::Null) => Ok(Vec::new()),
        Some(Yaml::Array(items)) => Ok(items.clone()),
        Some(_) => Err(bad("'users' is not a list")),
    }
}

fn name_of(item: &Yaml) -> Option<&str> {
    match item {
        Yaml::Hash(h) => h.get(&Yaml::String("name".into()))?.as_str(),
        _ => None,
    }
}

/// `item` as an exec user that says what [`render`] writes, in meaning.
fn as_exec_user(item: &Yaml) -> Option<ExecUser> {
    let Yaml::Hash(h) = item else { return None };
    let key = |k: &str| Yaml::String(k.to_owned());
    if h.keys().any(|k| k != &key("name") && k != &key("user")) {
        return None;
    }
    let Yaml::Hash(user) = h.get(&key("user"))? else {
        return None;
    };
    if user.len() != 1 {
        return None;
    }
    let Yaml::Hash(exec) = user.get(&key("exec"))? else {
        return None;
    };
    let known = [
        "apiVersion",
        "args",
        "command",
        "env",
        "interactiveMode",
        "provideClusterInfo",
    ];
    if exec.keys().any(|k| !known.iter().any(|n| k == &key(n))) {
        return None;
    }
    let args = match exec.get(&key("args")) {
        None | Some(Yaml::Null) => Vec::new(),
        Some(Yaml::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    let env_ok = match exec.get(&key("env")) {
        None | Some(Yaml::Null) => true,
        Some(Yaml::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    let cluster_info_ok = matches!(
        exec.get(&key("provideClusterInfo")),
        None | Some(Yaml::Boolean(false))
    );
    let interactive_ok = match exec.get(&key("interactiveMode")) {
        None => true,
        Some(v) => v.as_str() == Some("Never"),
    };
    if !(env_ok && cluster_info_ok && interactive_ok) {
        return None;
    }
    Some(ExecUser {
        name: name_of(item)?.to_owned(),
        command: exec.get(&key("command"))?.as_str()?.to_owned(),
        args,
        api_version: exec.get(&key("apiVersion"))?.as_str()?.to_owned(),
    })
}

/// The `users[]` entry named `name`: `None` when there is none;
/// `Some(None)` when there is one that does not say what [`render`]
/// writes (it was changed by hand); `Some(Some(u))` read by meaning,
/// whatever its quoting, key order or indentation.
pub fn exec_user(text: &str, name: &str) -> Result<Option<Option<ExecUser>>, KubeError> {
    let Some(doc) = document(text)? else {
        return Ok(None);
    };
    let users = users_of(&doc)?;
    let mut found = users.iter().filter(|u| name_of(u) == Some(name));
    let Some(item) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(bad(format!("the user '{name}' appears twice")));
    }
    Ok(Some(as_exec_user(item)))
}

/// One line of the file: where it starts and ends (its newline
/// included), and what it says.
#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    end: usize,
    /// Its indentation (spaces), or `None` for a blank or comment line.
    indent: Option<usize>,
    /// Its leading spaces, whatever it is (0 for a blank line).
    spaces: usize,
}

fn lines(text: &str) -> Result<Vec<Line>, KubeError> {
    // YAML ends a line at a lone CR too; these lines end at LF only.
    if text.replace("\r\n", "\n").contains('\r') {
        return Err(bad("it has a carriage return inside a line"));
    }
    let mut out = Vec::new();
    let mut start = 0;
    for piece in text.split_inclusive('\n') {
        let body = piece.trim_end_matches(['\n', '\r']);
        let rest = body.trim_start_matches(' ');
        let indent = body.len() - rest.len();
        let indent = if rest.is_empty() || rest.starts_with('#') {
            None
        } else if rest.starts_with('\t') {
            return Err(bad("it indents with tabs"));
        } else {
            Some(indent)
        };
        out.push(Line {
            start,
            end: start + piece.len(),
            indent,
            spaces: if rest.is_empty() {
                0
            } else {
                body.len() - rest.len()
            },
        });
        start += piece.len();
    }
    Ok(out)
}

/// The `users:` key line and its items.
struct Users {
    /// The line of the `users:` key.
    key: usize,
    /// The value written on the key's own line (`[]`, `null`, `~`), if
    /// any, as a byte range.
    inline: Option<(usize, usize)>,
    /// The items' dash column.
    dash: usize,
    /// Each item's first and last line (inclusive; the last one that is
    /// not blank or a comment at or left of the dash column).
    items: Vec<(usize, usize)>,
}

/// Finds the top-level `users:` and its items by their lines; `None` when
/// the file has no such key.
fn find_users(text: &str, ls: &[Line]) -> Result<Option<Users>, KubeError> {
    let body = |l: &Line| text[l.start..l.end].trim_end_matches(['\n', '\r']);
    let keys: Vec<usize> = (0..ls.len())
        .filter(|&i| {
            ls[i].indent == Some(0) && {
                let b = body(&ls[i]);
                b.strip_prefix("users")
                    .is_some_and(|r| r.trim_start().starts_with(':'))
            }
        })
        .collect();
    let key = match keys.as_slice() {
        [] => return Ok(None),
        [k] => *k,
        _ => return Err(bad("'users' is given more than once")),
    };
    let line = body(&ls[key]);
    let after = &line[line.find(':').map_or(line.len(), |c| c + 1)..];
    let value = after.split(" #").next().unwrap_or("").trim();
    let inline = match value {
        "" => None,
        "[]" | "null" | "~" | "Null" | "NULL" => {
            let at = ls[key].start + line.find(value).unwrap_or(0);
            Some((at, at + value.len()))
        }
        _ => return Err(bad("'users' is not a block list")),
    };
    // The block: up to the next line at column 0 that is not an item.
    let mut end = key + 1;
    while end < ls.len() {
        if ls[end].indent == Some(0) && !body(&ls[end]).starts_with('-') {
            break;
        }
        end += 1;
    }
    let content: Vec<usize> = (key + 1..end).filter(|&i| ls[i].indent.is_some()).collect();
    if inline.is_some() && !content.is_empty() {
        return Err(bad("'users' has a value and a list"));
    }
    let Some(&first) = content.first() else {
        return Ok(Some(Users {
            key,
            inline,
            dash: 0,
            items: Vec::new(),
        }));
    };
    let dash = ls[first].indent.unwrap_or(0);
    let is_item = |i: usize| {
        ls[i].indent == Some(dash) && {
            let b = &body(&ls[i])[dash..];
            b == "-" || b.starts_with("- ")
        }
    };
    let mut items: Vec<(usize, usize)> = Vec::new();
    for (i, line) in ls.iter().enumerate().take(end).skip(key + 1) {
        let Some(indent) = line.indent else {
            // A comment right of the dash is the item's (it may be a line
            // of a block scalar that starts with '#').
            if line.spaces > dash
                && let Some(last) = items.last_mut()
            {
                last.1 = i;
            }
            continue;
        };
        if is_item(i) {
            items.push((i, i));
        } else if indent > dash && !items.is_empty() {
            if let Some(last) = items.last_mut() {
                last.1 = i;
            }
        } else {
            return Err(bad("'users' is not a list of entries"));
        }
    }
    Ok(Some(Users {
        key,
        inline,
        dash,
        items,
    }))
}

/// [`find_users`], held to the parser's reading of the file: the key and
/// every item must start on the lines the parser says (a layout the line
/// editor would misread is refused, never edited).
fn users_block(text: &str, ls: &[Line]) -> Result<Option<Users>, KubeError> {
    let found = find_users(text, ls)?;
    let mut layout = Layout::default();
    Parser::new_from_str(text)
        .load(&mut layout, false)
        .map_err(|e| bad(format!("YAML error at line {}", e.marker().line())))?;
    let agrees = match &found {
        None => layout.key_line.is_none(),
        Some(u) => {
            layout.key_line == Some(u.key + 1)
                && layout.item_lines == u.items.iter().map(|(a, _)| a + 1).collect::<Vec<_>>()
        }
    };
    if !agrees {
        return Err(bad(
            "its users list is laid out in a way vault does not edit",
        ));
    }
    Ok(found)
}

/// The lines of `rendered` indented by `by` spaces, with `eol` endings.
fn indented(rendered: &str, by: usize, eol: &str) -> String {
    rendered
        .lines()
        .map(|l| format!("{}{l}{eol}", " ".repeat(by)))
        .collect()
}

/// Sets each of `set` (inserted after the last item, or in place of the
/// item of that name) and removes each name of `remove` that is also in
/// `owned`, in the top-level `users:` of `text`. A name in the file and
/// not in `owned` is [`KubeError::NotOwned`] unless `force`. An empty file
/// becomes a new kubeconfig (as kubectl writes one) with these users.
/// When the last item goes, `users: []` is left.
pub fn merge(
    text: &str,
    set: &[ExecUser],
    remove: &BTreeSet<String>,
    owned: &BTreeSet<String>,
    force: bool,
) -> Result<String, KubeError> {
    let before = document(text)?;
    let before_users = match &before {
        Some(doc) => users_of(doc)?,
        None => Vec::new(),
    };
    for u in set {
        let count = before_users
            .iter()
            .filter(|i| name_of(i) == Some(u.name.as_str()))
            .count();
        if count > 1 {
            return Err(bad(format!("the user '{}' appears twice", u.name)));
        }
        if count == 1 && !owned.contains(&u.name) && !force {
            return Err(KubeError::NotOwned(u.name.clone()));
        }
    }
    // Lines are added at column 0: the file's keys must be there too.
    if lines(text)?
        .iter()
        .find_map(|l| l.indent)
        .is_some_and(|i| i > 0)
    {
        return Err(bad("its top-level keys are indented"));
    }
    // The file's own line end, as its first line has it (never changed
    // by a merge, so the choice holds from one merge to the next).
    let eol = match text.find('\n') {
        Some(i) if text[..i].ends_with('\r') => "\r\n",
        _ => "\n",
    };
    let mut out = if text.trim().is_empty() {
        NEW_FILE.replace('\n', eol)
    } else {
        text.to_owned()
    };
    for u in set {
        out = set_one(&out, u, eol, owned.contains(&u.name))?;
    }
    for name in remove.iter().filter(|n| owned.contains(*n)) {
        out = remove_one(&out, name)?;
    }
    check(text, &out, set, remove, owned)?;
    Ok(out)
}

/// Each item's `name`, by its lines.
fn item_names(text: &str, ls: &[Line], users: &Users) -> Vec<Option<String>> {
    users
        .items
        .iter()
        .map(|&(a, b)| {
            let item = &text[ls[a].start..ls[b].end];
            let docs = YamlLoader::load_from_str(item).ok()?;
            match docs.first()? {
                Yaml::Array(v) if v.len() == 1 => name_of(&v[0]).map(str::to_owned),
                _ => None,
            }
        })
        .collect()
}

/// The last line of item `(a, b)` that is not blank or a comment: where an
/// item the vault wrote ends. Comments after it are the user's (about the
/// next item, or the end of the file) and stay when it is replaced or
/// removed. The vault writes no block scalars, so none of those lines is
/// part of a value; a user's item keeps its whole range.
fn content_end(ls: &[Line], (a, b): (usize, usize)) -> usize {
    (a..=b).rev().find(|&i| ls[i].indent.is_some()).unwrap_or(a)
}

fn set_one(text: &str, user: &ExecUser, eol: &str, ours: bool) -> Result<String, KubeError> {
    let ls = lines(text)?;
    let rendered = render(user);
    let Some(users) = users_block(text, &ls)? else {
        let mut out = text.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(eol);
        }
        out.push_str(&format!("users:{eol}"));
        out.push_str(&indented(&rendered, 0, eol));
        return Ok(out);
    };
    let names = item_names(text, &ls, &users);
    let entry = indented(&rendered, users.dash, eol);
    // A file without a final newline keeps none: an entry that ends it
    // ends without one (so that taking it out gives the file back).
    let unterminated = !text.ends_with('\n');
    let last_entry = || entry.strip_suffix(eol).unwrap_or(&entry).to_owned();
    if let Some(at) = names.iter().position(|n| n.as_deref() == Some(&user.name)) {
        let (a, mut b) = users.items[at];
        if ours {
            b = content_end(&ls, (a, b));
        }
        let entry = if unterminated && ls[b].end == text.len() {
            last_entry()
        } else {
            entry.clone()
        };
        return Ok(format!(
            "{}{entry}{}",
            &text[..ls[a].start],
            &text[ls[b].end..]
        ));
    }
    if let Some(&(_, last)) = users.items.last() {
        let at = ls[last].end;
        if unterminated && at == text.len() {
            return Ok(format!("{text}{eol}{}", last_entry()));
        }
        return Ok(format!("{}{entry}{}", &text[..at], &text[at..]));
    }
    // No items: the key gets them, its inline value (`[]`, `null`) goes.
    let key = ls[users.key];
    let head = match users.inline {
        Some((a, _)) => text[key.start..a].trim_end().to_owned(),
        None => text[key.start..key.end]
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
    };
    let tail = match users.inline {
        Some((_, b)) => text[b..key.end].trim_end_matches(['\n', '\r']).to_owned(),
        None => String::new(),
    };
    let line = if tail.trim().is_empty() {
        head
    } else {
        format!("{head}{tail}")
    };
    // Comments right of column 0 under the key stay above the entry:
    // after it, they would read as the entry's own.
    let lead_end = ls[users.key + 1..]
        .iter()
        .take_while(|l| l.indent.is_none())
        .filter(|l| l.spaces > 0)
        .last()
        .map_or(key.end, |l| l.end);
    let mut lead = text[key.end..lead_end].to_owned();
    if !lead.is_empty() && !lead.ends_with('\n') {
        lead.push_str(eol);
    }
    Ok(format!(
        "{}{line}{eol}{lead}{}{}",
        &text[..key.start],
        indented(&rendered, 0, eol),
        &text[lead_end..]
    ))
}

fn remove_one(text: &str, name: &str) -> Result<String, KubeError> {
    let ls = lines(text)?;
    let Some(users) = users_block(text, &ls)? else {
        return Ok(text.to_owned());
    };
    let names = item_names(text, &ls, &users);
    let Some(at) = names.iter().position(|n| n.as_deref() == Some(name)) else {
        return Ok(text.to_owned());
    };
    // Only the vault's own items are removed.
    let (a, b) = users.items[at];
    let b = content_end(&ls, (a, b));
    let mut start = ls[a].start;
    if ls[b].end == text.len() && !text.ends_with('\n') && users.items.len() > 1 {
        // It ends a file without a final newline: the line break before
        // it goes with it.
        let head = &text[..start];
        start -= if head.ends_with("\r\n") {
            2
        } else {
            usize::from(head.ends_with('\n'))
        };
    }
    let out = format!("{}{}", &text[..start], &text[ls[b].end..]);
    if users.items.len() > 1 {
        return Ok(out);
    }
    // The last item went: `users: []`, as an empty list reads.
    let key = ls[users.key];
    let line = text[key.start..key.end].trim_end_matches(['\n', '\r']);
    let eol = &text[key.start + line.len()..key.end];
    Ok(format!(
        "{}users: []{eol}{}",
        &out[..key.start],
        &out[key.end..]
    ))
}

/// The safety net: `after` must mean `before` with `set` in and `remove`
/// (of `owned`) out, and nothing else changed.
fn check(
    before: &str,
    after: &str,
    set: &[ExecUser],
    remove: &BTreeSet<String>,
    owned: &BTreeSet<String>,
) -> Result<(), KubeError> {
    let wrong = || bad("the result would not parse as intended");
    let old = document(before)?.unwrap_or_default();
    // An empty result is wrong only if something was set (checked below).
    let new = document(after).map_err(|_| wrong())?.unwrap_or_default();
    let users = Yaml::String("users".into());
    for (k, v) in &old {
        if *k != users && new.get(k) != Some(v) {
            return Err(wrong());
        }
    }
    let touched = |n: Option<&str>| {
        n.is_some_and(|n| {
            set.iter().any(|u| u.name == n) || (remove.contains(n) && owned.contains(n))
        })
    };
    let old_users = users_of(&old)?;
    let new_users = users_of(&new).map_err(|_| wrong())?;
    let kept_old: Vec<&Yaml> = old_users.iter().filter(|u| !touched(name_of(u))).collect();
    let kept_new: Vec<&Yaml> = new_users.iter().filter(|u| !touched(name_of(u))).collect();
    if kept_old != kept_new {
        return Err(wrong());
    }
    for u in set {
        let found: Vec<&Yaml> = new_users
            .iter()
            .filter(|i| name_of(i) == Some(u.name.as_str()))
            .collect();
        if found.len() != 1 || as_exec_user(found[0]).as_ref() != Some(u) {
            return Err(wrong());
        }
    }
    for n in remove.iter().filter(|n| owned.contains(*n)) {
        if !set.iter().any(|u| &u.name == n)
            && new_users.iter().any(|i| name_of(i) == Some(n.as_str()))
        {
            return Err(wrong());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn deep_nesting_and_huge_files_are_refused_not_parsed() {
        let deep = format!("clusters:\n- {}x\n", "- ".repeat(20_000));
        let e = exec_user(&deep, "vault-dev").unwrap_err();
        assert!(e.to_string().contains("nests deeper"), "{e}");
        let huge = format!("clusters: []\n#{}\n", "x".repeat(5 << 20));
        assert!(
            exec_user(&huge, "vault-dev")
                .unwrap_err()
                .to_string()
                .contains("4 MiB")
        );
    }

    /// As kubectl writes a config (`kubectl config view --raw` shape).
    const KUBECTL: &str = "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTi1DQQ==
    server: https://10.0.0.1:6443
  name: prod
contexts:
- context:
    cluster: prod
    user: admin
  name: prod
current-context: prod
kind: Config
preferences: {}
users:
- name: admin
  user:
    client-certificate-data: LS0tLS1DRVJU
    client-key-data: LS0tLS1LRVk=
- name: ci
  user:
    token: abc.def
";

    /// As `aws eks update-kubeconfig` and hand editing leave one: indented
    /// items, comments, no final newline.
    const INDENTED: &str = "# my clusters
apiVersion: v1
kind: Config
clusters:
  - name: eks
    cluster:
      server: https://EXAMPLE.gr7.eu-west-1.eks.amazonaws.com
users:
  # the team's user
  - name: arn:aws:eks:eu-west-1:111122223333:cluster/eks
    user:
      exec:
        apiVersion: client.authentication.k8s.io/v1beta1
        command: aws
        args: [--region, eu-west-1, eks, get-token, --cluster-name, eks]
# after users
contexts: []
current-context: \"\"";

    /// As gcloud writes a GKE user.
    const GCLOUD: &str = "apiVersion: v1
clusters: []
contexts: []
kind: Config
users:
- name: gke_proj_europe-west1_c1
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: gke-gcloud-auth-plugin
      installHint: Install gke-gcloud-auth-plugin for use with kubectl by following
        https://cloud.google.com/kubernetes-engine/docs/how-to/cluster-access-for-kubectl#install_plugin
      provideClusterInfo: true
";

    fn user(name: &str, cluster: &str) -> ExecUser {
        ExecUser {
            name: name.into(),
            command: "/usr/bin/vault".into(),
            args: ["eks", "token", "dev", "--cluster", cluster]
                .map(String::from)
                .to_vec(),
            api_version: EXEC_API_VERSION.into(),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn an_entry_goes_after_the_users_own_and_back_out_byte_for_byte() {
        for base in [KUBECTL, INDENTED, GCLOUD] {
            let u = user("vault-dev", "demo");
            let added = merge(base, std::slice::from_ref(&u), &set(&[]), &set(&[]), false).unwrap();
            assert_eq!(
                exec_user(&added, "vault-dev").unwrap(),
                Some(Some(u.clone()))
            );
            // Idempotent, and replaced in place.
            let owned = set(&["vault-dev"]);
            assert_eq!(
                merge(&added, std::slice::from_ref(&u), &set(&[]), &owned, false).unwrap(),
                added
            );
            let other = user("vault-dev", "other");
            let replaced = merge(
                &added,
                std::slice::from_ref(&other),
                &set(&[]),
                &owned,
                false,
            )
            .unwrap();
            assert_eq!(
                exec_user(&replaced, "vault-dev").unwrap(),
                Some(Some(other))
            );
            assert_eq!(replaced.len(), added.len() + 1, "{replaced}");
            let back = merge(&replaced, &[], &owned, &owned, false).unwrap();
            assert_eq!(back, base);
        }
        // Every byte of the user's text comes before ours when users is last.
        let added = merge(
            KUBECTL,
            &[user("vault-dev", "demo")],
            &set(&[]),
            &set(&[]),
            false,
        )
        .unwrap();
        assert!(added.starts_with(KUBECTL));
        assert!(added.ends_with(&render(&user("vault-dev", "demo"))));
        // An indented list gets an indented item, before what follows.
        let added = merge(
            INDENTED,
            &[user("vault-dev", "demo")],
            &set(&[]),
            &set(&[]),
            false,
        )
        .unwrap();
        assert!(
            added.contains("\n  - name: vault-dev\n    user:\n"),
            "{added}"
        );
        assert!(added.contains("\n        - --cluster\n"), "{added}");
        assert!(added.contains("\n# after users\ncontexts: []"), "{added}");
    }

    #[test]
    fn empty_missing_and_null_users_are_filled_and_emptied() {
        let u = user("vault-dev", "demo");
        let new = merge("", std::slice::from_ref(&u), &set(&[]), &set(&[]), false).unwrap();
        assert!(new.starts_with("apiVersion: v1\n"), "{new}");
        assert_eq!(exec_user(&new, "vault-dev").unwrap(), Some(Some(u.clone())));
        for (base, empty) in [
            (
                "apiVersion: v1\nkind: Config\nusers: []\n",
                "apiVersion: v1\nkind: Config\nusers: []\n",
            ),
            (
                "apiVersion: v1\nusers: null\nkind: Config\n",
                "apiVersion: v1\nusers: []\nkind: Config\n",
            ),
            (
                "apiVersion: v1\nusers:\nkind: Config\n",
                "apiVersion: v1\nusers: []\nkind: Config\n",
            ),
            (
                "apiVersion: v1\nkind: Config",
                "apiVersion: v1\nkind: Config\nusers: []\n",
            ),
        ] {
            let added = merge(base, std::slice::from_ref(&u), &set(&[]), &set(&[]), false).unwrap();
            assert_eq!(
                exec_user(&added, "vault-dev").unwrap(),
                Some(Some(u.clone())),
                "{added}"
            );
            let owned = set(&["vault-dev"]);
            let gone = merge(&added, &[], &owned, &owned, false).unwrap();
            assert_eq!(gone, empty);
            assert_eq!(exec_user(&gone, "vault-dev").unwrap(), None);
        }
    }

    #[test]
    fn a_users_entry_is_taken_only_with_force() {
        let mine = user("ci", "demo");
        let e = merge(
            KUBECTL,
            std::slice::from_ref(&mine),
            &set(&[]),
            &set(&[]),
            false,
        )
        .unwrap_err();
        assert_eq!(e, KubeError::NotOwned("ci".into()));
        assert!(e.to_string().contains("--force"));
        let taken = merge(
            KUBECTL,
            std::slice::from_ref(&mine),
            &set(&[]),
            &set(&[]),
            true,
        )
        .unwrap();
        assert_eq!(exec_user(&taken, "ci").unwrap(), Some(Some(mine)));
        assert!(!taken.contains("abc.def"));
        assert!(taken.contains("client-key-data: LS0tLS1LRVk="));
        // Removing a name not owned changes nothing.
        assert_eq!(
            merge(KUBECTL, &[], &set(&["ci"]), &set(&[]), false).unwrap(),
            KUBECTL
        );
    }

    #[test]
    fn what_cannot_be_edited_safely_is_refused_without_echoing_it() {
        let u = user("vault-dev", "demo");
        for (text, why) in [
            (
                "users: [{name: a, user: {token: SECRET-x}}]\n",
                "block list",
            ),
            ("users:\n- &a {name: a}\n- *a\n", "anchors"),
            ("users:\n\t- name: a\n", "YAML error"),
            ("a: 1\n---\nb: 2\n", "more than one"),
            ("- a\n- b\n", "not a mapping"),
            ("users:\n- name: x\nusers:\n- name: y\n", "YAML error"),
            ("users: SECRET-x\n", "list"),
            ("users:\n- name: vault-dev\n- name: vault-dev\n", "twice"),
        ] {
            let e = merge(
                text,
                std::slice::from_ref(&u),
                &set(&[]),
                &set(&["vault-dev"]),
                false,
            )
            .unwrap_err();
            let said = e.to_string();
            assert!(said.contains(why), "{text:?}: {said}");
            assert!(!said.contains("SECRET"), "{said}");
        }
    }

    #[test]
    fn kubectls_rewrite_of_an_entry_reads_the_same() {
        let u = user("vault-dev", "demo");
        let rewritten = "users:
- name: \"vault-dev\"
  user:
    exec:
      command: '/usr/bin/vault'
      args: [eks, token, dev, \"--cluster\", demo]
      apiVersion: client.authentication.k8s.io/v1beta1
      env: []
      provideClusterInfo: false
";
        assert_eq!(exec_user(rewritten, "vault-dev").unwrap(), Some(Some(u)));
        let changed = rewritten.replace("env: []", "env:\n      - name: A\n        value: b");
        assert_eq!(exec_user(&changed, "vault-dev").unwrap(), Some(None));
        let changed = rewritten.replace("provideClusterInfo: false", "provideClusterInfo: true");
        assert_eq!(exec_user(&changed, "vault-dev").unwrap(), Some(None));
        assert_eq!(exec_user(rewritten, "other").unwrap(), None);
        assert_eq!(
            exec_user(GCLOUD, "gke_proj_europe-west1_c1").unwrap(),
            Some(None)
        );
    }

    #[test]
    fn awkward_values_read_back_as_written() {
        for v in [
            "",
            ":",
            "#x",
            "-",
            "- x",
            "--cluster",
            "true",
            "yes",
            "null",
            "1",
            "1.5",
            "a b",
            "it's",
            "say \"hi\"",
            "ünï",
            "line\nbreak",
            "https://x.example/a:b",
            "~",
            "@x",
        ] {
            let u = ExecUser {
                name: v.into(),
                command: v.into(),
                args: vec![v.into()],
                api_version: v.into(),
            };
            let text = merge("", std::slice::from_ref(&u), &set(&[]), &set(&[]), false).unwrap();
            assert_eq!(exec_user(&text, v).unwrap(), Some(Some(u)), "{v:?}: {text}");
        }
    }

    #[test]
    fn a_block_scalar_line_that_looks_like_a_comment_stays_in_its_item() {
        let base = "users:\n- name: a\n  user:\n    token: |\n      abc\n      # tail\n# after\n";
        let u = user("vault-dev", "demo");
        let added = merge(base, std::slice::from_ref(&u), &set(&[]), &set(&[]), false).unwrap();
        assert!(added.starts_with("users:\n- name: a\n  user:\n    token: |\n      abc\n      # tail\n- name: vault-dev\n"), "{added}");
        assert!(added.ends_with("# after\n"), "{added}");
        let owned = set(&["vault-dev"]);
        assert_eq!(merge(&added, &[], &owned, &owned, false).unwrap(), base);
    }

    #[test]
    fn comments_after_the_vaults_entry_stay_when_it_is_replaced_or_removed() {
        let u = user("vault-dev", "demo");
        let owned = set(&["vault-dev"]);
        let ours = indented(&render(&u), 0, "\n");
        for (head, tail) in [
            (
                "users:\n",
                "  # the prod user, ask ops\n- name: prod\n  user:\n    token: t\n",
            ),
            (
                "users:\n- name: prod\n  user:\n    token: t\n",
                "  # last words\n",
            ),
            ("users:\n", "  # end, no newline"),
        ] {
            let base = format!("{head}{ours}{tail}");
            let moved = merge(
                &base,
                &[user("vault-dev", "other")],
                &set(&[]),
                &owned,
                false,
            )
            .unwrap();
            assert!(moved.ends_with(tail), "{moved}");
            assert!(moved.contains("other"), "{moved}");
            let gone = merge(&base, &[], &owned, &owned, false).unwrap();
            assert!(gone.contains(tail.trim_end()), "{gone}");
            assert!(!gone.contains("vault-dev"), "{gone}");
        }
    }

    #[test]
    fn crlf_files_keep_crlf() {
        let text = KUBECTL.replace('\n', "\r\n");
        let u = user("vault-dev", "demo");
        let added = merge(&text, std::slice::from_ref(&u), &set(&[]), &set(&[]), false).unwrap();
        assert!(!added.replace("\r\n", "").contains('\n'), "{added:?}");
        let owned = set(&["vault-dev"]);
        assert_eq!(merge(&added, &[], &owned, &owned, false).unwrap(), text);
    }
}
