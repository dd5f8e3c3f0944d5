//! Names the CLI makes up for credentials it creates (import, credential
//! helpers), and hosts taken from URLs.

/// `https://index.docker.io/v1/` → `index.docker.io`; `nvcr.io` stays.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).trim()
}

/// `s` made into a credential name: characters names do not allow become
/// `-`, and it starts with a letter or digit.
pub fn name_from(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '/' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_names() {
        assert_eq!(host_of("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(host_of("nvcr.io"), "nvcr.io");
        assert_eq!(name_from("git.example.com:8443"), "git.example.com-8443");
        assert_eq!(name_from("  my profile"), "my-profile");
        assert!(vault_protocol::validate_name(&name_from("-x y")).is_ok());
    }
}
