//! What the CLI prints, and where: results to stdout (collected, written once
//! at the end so an error never leaves half a document behind), messages to
//! stderr. Tables and colours only on a terminal; `NO_COLOR` respected.
//!
//! The stdout buffer may hold secret values (`vault get`), so it zeroizes.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use serde::Serialize;
use vault_protocol::timefmt::{Timestamp, format_duration_short};
use zeroize::Zeroizing;

use crate::error::{CliResult, failed};

/// The CLI's output streams and modes.
#[derive(Debug)]
pub struct Output {
    buf: Zeroizing<String>,
    /// `--json`: one JSON document on stdout.
    pub json: bool,
    /// `-q`: no informational messages on stderr.
    pub quiet: bool,
    /// stdout is a terminal: tables and colours allowed.
    pub stdout_tty: bool,
    /// Colours on.
    pub color: bool,
}

impl Output {
    /// Output modes from the global flags and the environment.
    pub fn new(json: bool, quiet: bool) -> Self {
        let stdout_tty = io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
            || std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        Self {
            buf: Zeroizing::new(String::new()),
            json,
            quiet,
            stdout_tty,
            color: stdout_tty && !no_color,
        }
    }

    /// Adds a line to stdout.
    pub fn line(&mut self, text: &str) {
        self.buf.push_str(text);
        self.buf.push('\n');
    }

    /// Adds text to stdout as is.
    pub fn text(&mut self, text: &str) {
        self.buf.push_str(text);
    }

    /// Sets stdout to one JSON document.
    pub fn json<T: Serialize + ?Sized>(&mut self, value: &T) -> CliResult<()> {
        let doc = Zeroizing::new(
            serde_json::to_string_pretty(value)
                .map_err(|e| failed(format!("cannot format the JSON output: {e}")))?,
        );
        self.line(&doc);
        Ok(())
    }

    /// A message about what was done, on stderr unless `-q`.
    pub fn info(&self, message: &str) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }

    /// What the user must do now (open a page, type a code), on stderr
    /// even with `-q`.
    pub fn prompt(&self, message: &str) {
        eprintln!("{message}");
    }

    /// A warning on stderr, even with `-q`.
    pub fn warn(&self, message: &str) {
        eprintln!("warning: {message}");
    }

    /// Forgets what was collected for stdout (after an error).
    pub fn discard(&mut self) {
        self.buf.clear();
    }

    /// Writes what was collected to stdout. A closed pipe (`| head`) is not
    /// an error.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut stdout = io::stdout().lock();
        let result = stdout
            .write_all(self.buf.as_bytes())
            .and_then(|()| stdout.flush());
        self.buf.clear();
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }
}

/// A colour for a table cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    /// Needs attention soon.
    Yellow,
    /// Broken or expired.
    Red,
}

impl Color {
    fn code(self) -> &'static str {
        match self {
            Color::Yellow => "\x1b[33m",
            Color::Red => "\x1b[31m",
        }
    }
}

/// An aligned table for terminals.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<(String, Option<Color>)>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; control characters are shown as spaces so a cell cannot
    /// break the layout.
    pub fn row(&mut self, cells: Vec<(String, Option<Color>)>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|(text, color)| (one_line(&text), color))
                .collect(),
        );
    }

    /// The table as text; the last column is not padded.
    pub fn render(&self, color: bool) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (text, _)) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(text.chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<_> = self.headers.iter().map(|h| (h.to_string(), None)).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (text, cell_color)) in row.iter().enumerate() {
                let last = i + 1 == row.len();
                let pad = if last {
                    0
                } else {
                    widths[i].saturating_sub(text.chars().count()) + 2
                };
                match cell_color {
                    Some(c) if color => {
                        let _ = write!(line, "{}{text}\x1b[0m", c.code());
                    }
                    _ => line.push_str(text),
                }
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// One CSV record (RFC 4180): fields with a comma, quote or line break are
/// quoted, quotes doubled; lines end with `\n`.
pub fn csv_row(fields: &[&str]) -> String {
    let mut line = fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                (*f).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// One tab-separated line; tabs and line breaks inside fields become spaces.
pub fn tsv_row(fields: &[&str]) -> String {
    let mut line = fields
        .iter()
        .map(|f| one_line(f))
        .collect::<Vec<_>>()
        .join("\t");
    line.push('\n');
    line
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `in 5h12m`, `3d2h ago`, or `now`, relative to `now`.
pub fn relative(ts: Timestamp, now: Timestamp) -> String {
    let delta = ts.unix() - now.unix();
    let span = Duration::from_secs(delta.unsigned_abs());
    if delta.unsigned_abs() < 60 {
        "now".to_owned()
    } else if delta > 0 {
        format!("in {}", format_duration_short(span))
    } else {
        format!("{} ago", format_duration_short(span))
    }
}

/// Shortens `text` to `max` characters, marking the cut with `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_row(&["a", "b c", ""]), "a,b c,\n");
        assert_eq!(
            csv_row(&["x,y", "say \"hi\"", "two\nlines"]),
            "\"x,y\",\"say \"\"hi\"\"\",\"two\nlines\"\n"
        );
    }

    #[test]
    fn tsv_keeps_one_record_per_line() {
        assert_eq!(tsv_row(&["a\tb", "c\nd", "-"]), "a b\tc d\t-\n");
    }

    #[test]
    fn table_aligns_columns_and_trims() {
        let mut t = Table::new(&["NAME", "TYPE", "TAGS"]);
        t.row(vec![
            ("aws-dev".into(), None),
            ("aws".into(), Some(Color::Red)),
            (String::new(), None),
        ]);
        t.row(vec![
            ("a".into(), None),
            ("registry".into(), None),
            ("x,y".into(), None),
        ]);
        let plain = t.render(false);
        assert_eq!(
            plain,
            "NAME     TYPE      TAGS\naws-dev  aws\na        registry  x,y\n"
        );
        let colored = t.render(true);
        assert!(
            colored.contains("aws-dev  \x1b[31maws\x1b[0m\n"),
            "{colored:?}"
        );
    }

    #[test]
    fn table_cells_cannot_break_lines() {
        let mut t = Table::new(&["DESCRIPTION"]);
        t.row(vec![("two\nlines".into(), None)]);
        assert_eq!(t.render(false), "DESCRIPTION\ntwo lines\n");
    }

    #[test]
    fn relative_times() {
        let now = Timestamp(1_000_000);
        assert_eq!(relative(Timestamp(1_000_000 + 5400), now), "in 1h30m");
        assert_eq!(relative(Timestamp(1_000_000 - 3 * 86_400), now), "3d0h ago");
        assert_eq!(relative(Timestamp(1_000_010), now), "now");
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a long description", 6), "a lon…");
    }
}
