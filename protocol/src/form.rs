//! `application/x-www-form-urlencoded` (a query string, a form body):
//! decoding one value, as the URL standard does. `+` is a space, `%XX` a
//! byte; a `%` not followed by two hex digits stays as it is; bytes that
//! are not UTF-8 become U+FFFD. Used where the vault reads what a client
//! sent (the metadata endpoint's query) and by the tests' doubles.

/// The decoded value of `s`.
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_as_the_url_standard_does() {
        assert_eq!(
            decode("https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fx"),
            "https://www.googleapis.com/auth/x"
        );
        assert_eq!(decode("a%zz%4"), "a%zz%4");
        assert_eq!(decode("a+b%2Cc"), "a b,c");
        assert_eq!(decode("%FF"), "\u{FFFD}");
        assert_eq!(decode("%2b%2B"), "++");
    }
}
