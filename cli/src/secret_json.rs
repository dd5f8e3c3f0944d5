//! JSON objects of string values built straight into wiped buffers, for
//! answers that carry secrets (`--server`, `aws-process`): the values never
//! sit in a `serde_json::Value` that is dropped without being wiped.

use zeroize::Zeroizing;

/// `{"k1":"v1",...}` with each value JSON-escaped; `None` values are left
/// out.
pub fn object(pairs: &[(&str, Option<&str>)]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::from("{"));
    for (key, value) in pairs {
        let Some(value) = value else { continue };
        if out.len() > 1 {
            out.push(',');
        }
        push_quoted(&mut out, key);
        out.push(':');
        push_quoted(&mut out, value);
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string. Escapes are written in place, so no
/// unwiped copy of `s` is made.
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_back_to_the_same_values() {
        let tricky = "a\"b\\c\nd\u{1}é";
        let doc = object(&[("A", Some(tricky)), ("skip", None), ("B", Some(""))]);
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["A"], tricky);
        assert_eq!(v["B"], "");
        assert!(v.get("skip").is_none());
    }
}
