//! Checks on index names, repo ids and repo URLs (SPEC §3.2). Each returns a short reason
//! an operator can act on.

use gitmirror_common::upstream_url::{self, UpstreamUrl};

/// Longest accepted repo id, in bytes.
pub const MAX_ID_LEN: usize = 255;

/// An index name becomes a file name (`<name>.git` in the index directory).
pub fn index_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an index name must not be empty".into());
    }
    if name.starts_with('.') {
        return Err("an index name must not start with '.'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err(format!(
            "an index name may only hold A-Z a-z 0-9 . _ - (found {c:?})"
        ));
    }
    Ok(())
}

/// A repo id: its path in the index, e.g. `a/abc/abc`.
pub fn repo_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_ID_LEN {
        return Err(format!("id is longer than {MAX_ID_LEN} bytes"));
    }
    for part in id.split('/') {
        if part.is_empty() {
            return Err("id has an empty component".into());
        }
        if part == "." || part == ".." {
            return Err(format!("id component {part:?} is not allowed"));
        }
        if part.starts_with('-') || part.starts_with('.') {
            return Err(format!(
                "id component {part:?} starts with {:?}",
                &part[..1]
            ));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._+-".contains(*c)))
        {
            return Err(format!(
                "id component {part:?} holds {c:?}; allowed are A-Z a-z 0-9 . _ + -"
            ));
        }
    }
    Ok(())
}

/// A repo's fetch URL (SPEC §3.2). Workers hand it to git, so anything git could read as
/// an option or as a command to run is refused. The policy lives in
/// [`gitmirror_common::upstream_url::check`], which parses with gix's own URL parser and
/// which every worker runs again before fetching; the parsed URL is returned so callers
/// see what gix will use.
pub fn repo_url(url: &str, allow_file_urls: bool) -> Result<UpstreamUrl, String> {
    upstream_url::check(url, allow_file_urls).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC §3.2: index URLs go through the one upstream URL policy (its cases are in
    // `gitmirror_common::upstream_url`'s tests); its reasons reach the rejected list, and
    // `allow_file_urls` is passed on.
    #[test]
    fn urls_go_through_the_upstream_policy() {
        assert!(repo_url("https://github.com/berkeley-abc/abc", false).is_ok());
        let e = repo_url("ssh://-oProxyCommand=x/y", false).unwrap_err();
        assert!(e.contains("host starts with '-'"), "{e}");
        assert!(
            repo_url("/srv/git/x.git", false)
                .unwrap_err()
                .contains("allow_file_urls")
        );
        assert!(repo_url("/srv/git/x.git", true).is_ok());
    }

    // SPEC §3.2: ids.
    #[test]
    fn ids() {
        for ok in [
            "a/abc/abc",
            "l/linux/linux-next",
            "g/gcc/gcc+plugins",
            "x/A.b_c/d-1",
        ] {
            assert_eq!(repo_id(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("a//abc", "empty"),
            ("a/../abc", "\"..\""),
            ("a/./abc", "\".\""),
            ("a/-x/abc", "starts with \"-\""),
            ("a/abc/.hidden", "starts with \".\""),
            ("a/ab c/abc", "holds ' '"),
            ("a/abc/ä", "holds 'ä'"),
            ("a/abc/a:b", "holds ':'"),
        ] {
            let e = repo_id(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = format!("a/b/{}", "c".repeat(252));
        assert_eq!(long.len(), 256);
        assert!(repo_id(&long).unwrap_err().contains("255 bytes"));
        assert_eq!(repo_id(&long[..255]), Ok(()));
    }

    #[test]
    fn index_names() {
        for ok in ["upstream-repos", "a.b_c", "X1"] {
            assert_eq!(index_name(ok), Ok(()));
        }
        for bad in ["", ".hidden", "a/b", "a b", "..", "ü"] {
            assert!(index_name(bad).is_err(), "{bad}");
        }
    }
}
