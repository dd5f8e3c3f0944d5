//! `vault add --generate`: a password from the OS random source
//! (`getrandom`), every character drawn uniformly from the chosen classes,
//! at least one of each.

use zeroize::Zeroizing;

/// The length when `--length` is not given: 24 characters of the three
/// default classes are about 150 bits.
pub const DEFAULT_LENGTH: usize = 24;
/// The range `--length` takes.
const LENGTHS: std::ops::RangeInclusive<usize> = 8..=1024;
/// The classes when `--charset` is not given.
pub const DEFAULT_CHARSET: &str = "letters,digits,symbols";

const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const DIGITS: &[u8] = b"0123456789";
/// Symbols that need no quoting in a shell word, a URL's userinfo or an
/// .env value (no quotes, `$`, `&`, `\`, `#`, `/` or space).
const SYMBOLS: &[u8] = b"!%*+-.:=?@^_~";

/// The classes named in `--charset` (comma-separated: letters, upper,
/// lower, digits, symbols).
pub fn classes(charset: &str) -> Result<Vec<&'static [u8]>, String> {
    let mut out: Vec<&'static [u8]> = Vec::new();
    for name in charset.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let class: &'static [u8] = match name {
            "letters" => LETTERS,
            "upper" => &LETTERS[..26],
            "lower" => &LETTERS[26..],
            "digits" => DIGITS,
            "symbols" => SYMBOLS,
            other => {
                return Err(format!(
                    "unknown character class '{other}' in --charset: use letters, upper, lower, \
                     digits and symbols, comma-separated"
                ));
            }
        };
        if !out.contains(&class) {
            out.push(class);
        }
    }
    if out.is_empty() {
        return Err("--charset names no class: use e.g. letters,digits".into());
    }
    Ok(out)
}

/// Whether `--length` is in range, checked before anything is asked.
pub fn check_length(length: usize) -> Result<(), String> {
    if LENGTHS.contains(&length) {
        return Ok(());
    }
    Err(format!(
        "--length {length} is out of range: use {} to {}",
        LENGTHS.start(),
        LENGTHS.end()
    ))
}

/// A password of `length` characters from `classes`.
pub fn password(length: usize, classes: &[&[u8]]) -> Result<Zeroizing<String>, String> {
    password_from(length, classes, &mut |buf| {
        getrandom::fill(buf).map_err(|e| format!("the OS random source failed: {e}"))
    })
}

fn password_from(
    length: usize,
    classes: &[&[u8]],
    fill: &mut dyn FnMut(&mut [u8]) -> Result<(), String>,
) -> Result<Zeroizing<String>, String> {
    check_length(length)?;
    // Each character once, however the classes overlap (letters,upper).
    let pool: Vec<u8> = classes
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect::<std::collections::BTreeSet<u8>>()
        .into_iter()
        .collect();
    // Bytes at or above this would make some characters likelier.
    let limit = 256 - 256 % pool.len();
    let mut bytes = Zeroizing::new(vec![0u8; 64]);
    let mut out = Zeroizing::new(String::with_capacity(length));
    // Drawn again whole until every class is in: every password with them
    // all stays equally likely. At 8 characters of three classes about
    // one draw in seven is redrawn.
    loop {
        out.clear();
        while out.len() < length {
            fill(&mut bytes)?;
            for &b in bytes.iter().filter(|&&b| usize::from(b) < limit) {
                if out.len() == length {
                    break;
                }
                out.push(char::from(pool[usize::from(b) % pool.len()]));
            }
        }
        if classes.iter().all(|c| out.bytes().any(|b| c.contains(&b))) {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_parse_and_bad_ones_say_what_to_use() {
        assert_eq!(classes(DEFAULT_CHARSET).unwrap().len(), 3);
        assert_eq!(classes("digits, digits").unwrap(), vec![DIGITS]);
        assert!(classes("emoji").unwrap_err().contains("letters, upper"));
        assert!(classes(",").is_err());
    }

    #[test]
    fn every_class_is_in_and_only_the_classes() {
        let all = classes(DEFAULT_CHARSET).unwrap();
        for _ in 0..200 {
            let p = password(8, &all).unwrap();
            assert_eq!(p.len(), 8);
            assert!(p.bytes().any(|b| SYMBOLS.contains(&b)), "{}", p.as_str());
            assert!(p.bytes().any(|b| DIGITS.contains(&b)));
            assert!(p.bytes().any(|b| LETTERS.contains(&b)));
        }
        // Overlapping classes do not weigh their shared characters twice.
        let upper = classes("letters,upper").unwrap();
        let mut counts = [0usize; 2];
        for _ in 0..50 {
            for b in password(1000, &upper).unwrap().bytes() {
                counts[usize::from(b.is_ascii_uppercase())] += 1;
            }
        }
        assert!((23_500..=26_500).contains(&counts[1]), "{counts:?}");
        let digits = password(40, &[DIGITS]).unwrap();
        assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        assert!(password(7, &all).unwrap_err().contains("8 to 1024"));
    }

    #[test]
    fn biased_bytes_are_dropped() {
        // 10 digits: bytes 250-255 would favour 0-5, so they are skipped.
        let mut feed = [255u8, 250, 3, 249].into_iter().cycle();
        let p = password_from(8, &[DIGITS], &mut |buf| {
            buf.iter_mut().for_each(|b| *b = feed.next().unwrap());
            Ok(())
        })
        .unwrap();
        assert_eq!(p.as_str(), "39393939");
    }

    #[test]
    fn the_draw_is_spread_evenly() {
        let p = password(100_000, &[DIGITS]).unwrap_err();
        assert!(p.contains("out of range"));
        let mut counts = [0usize; 10];
        for _ in 0..100 {
            for b in password(1000, &[DIGITS]).unwrap().bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        // 100,000 draws, 10,000 expected each; 4% is over 12 sigma.
        for c in counts {
            assert!((9_600..=10_400).contains(&c), "{counts:?}");
        }
    }
}
