//! Masking of secret values in the child's output when it goes to a pipe or
//! a file (a CI log): every occurrence becomes `<redacted:NAME>`, also when a
//! value is split across reads. A terminal is never masked, so interactive
//! programs keep working.

use std::io::{self, Read, Write};

use zeroize::Zeroizing;

/// Values shorter than this are not masked: they would match everywhere and
/// reveal little.
pub const MIN_MASKED: usize = 4;

/// The secrets to hide and what to show instead.
#[derive(Debug, Default)]
pub struct Masker {
    /// (value, replacement), longest value first so that a value containing
    /// another is replaced whole.
    needles: Vec<(Zeroizing<Vec<u8>>, Vec<u8>)>,
}

impl Masker {
    /// Adds `value` (from credential `name`) unless it is too short.
    pub fn add(&mut self, value: &str, name: &str) {
        if value.len() < MIN_MASKED
            || self
                .needles
                .iter()
                .any(|(v, _)| v.as_slice() == value.as_bytes())
        {
            return;
        }
        self.needles.push((
            Zeroizing::new(value.as_bytes().to_vec()),
            format!("<redacted:{name}>").into_bytes(),
        ));
        self.needles
            .sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    fn longest(&self) -> usize {
        self.needles.first().map_or(0, |(v, _)| v.len())
    }

    /// Copies `input` to `output` until EOF, masking every value. Holds back
    /// at most the longest value minus one byte between reads, so a value
    /// split across reads is still found; flushes after every read so output
    /// is not delayed more than that.
    pub fn pump(&self, mut input: impl Read, mut output: impl Write) -> io::Result<()> {
        let keep = self.longest().saturating_sub(1);
        let mut pending: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
        let mut chunk = Zeroizing::new(vec![0u8; 64 * 1024]);
        loop {
            let n = match input.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            pending.extend_from_slice(&chunk[..n]);
            let done = self.emit(&pending, keep, false, &mut output)?;
            pending.drain(..done);
            output.flush()?;
        }
        self.emit(&pending, 0, true, &mut output)?;
        output.flush()
    }

    /// Writes the masked form of `data` except its last `keep` bytes (which
    /// may start a value), unless `end`. Returns how many bytes of `data`
    /// were consumed.
    fn emit(&self, data: &[u8], keep: usize, end: bool, out: &mut impl Write) -> io::Result<usize> {
        let limit = if end {
            data.len()
        } else {
            data.len().saturating_sub(keep)
        };
        let mut start = 0;
        let mut i = 0;
        while i < limit {
            match self.needles.iter().find(|(v, _)| data[i..].starts_with(v)) {
                Some((value, replacement)) => {
                    out.write_all(&data[start..i])?;
                    out.write_all(replacement)?;
                    i += value.len();
                    start = i;
                }
                None => i += 1,
            }
        }
        out.write_all(&data[start..i.min(data.len())])?;
        Ok(i.min(data.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its data `step` bytes at a time.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(self.data.len()).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn masked(m: &Masker, text: &str, step: usize) -> String {
        let mut out = Vec::new();
        m.pump(
            Trickle {
                data: text.as_bytes(),
                step,
            },
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_masked_whatever_the_read_boundaries() {
        let mut m = Masker::default();
        m.add("hunter22", "db");
        m.add("tok-ABCDEF", "gh");
        m.add("abc", "short");
        let text = "pw=hunter22 token=tok-ABCDEF twice:hunter22hunter22 abc end";
        let want = "pw=<redacted:db> token=<redacted:gh> twice:<redacted:db><redacted:db> abc end";
        for step in 1..=text.len() {
            assert_eq!(masked(&m, text, step), want, "read size {step}");
        }
    }

    #[test]
    fn a_value_containing_another_is_replaced_whole() {
        let mut m = Masker::default();
        m.add("secret", "inner");
        m.add("my-secret-value", "outer");
        assert_eq!(
            masked(&m, "x my-secret-value secret", 3),
            "x <redacted:outer> <redacted:inner>"
        );
    }

    #[test]
    fn a_prefix_at_the_end_is_not_held_forever() {
        let mut m = Masker::default();
        m.add("hunter22", "db");
        assert_eq!(masked(&m, "ends with hunt", 4), "ends with hunt");
    }
}
