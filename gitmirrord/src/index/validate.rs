//! Checks on index names, repo ids and repo URLs (SPEC §3.2). Each returns a short reason
//! an operator can act on.

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

/// A repo's fetch URL. Workers hand it to git, so anything git could read as an option or
/// as a command to run is refused.
pub fn repo_url(url: &str, allow_file_urls: bool) -> Result<(), String> {
    if url.is_empty() {
        return Err("url is empty".into());
    }
    if url.starts_with('-') {
        return Err("url starts with '-' (git would read it as an option)".into());
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "url contains whitespace or a control character ({c:?})"
        ));
    }
    let lower = url.to_ascii_lowercase();
    if lower.contains("ext::") || lower.contains("fd::") {
        return Err("url uses git's ext:: or fd:: transport, which runs commands".into());
    }
    // `<helper>::<address>` makes git run `git-remote-<helper>`.
    if let Some((helper, _)) = url.split_once("::")
        && !helper.is_empty()
        && helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(format!("url uses git's remote-helper syntax {helper:?}::"));
    }

    if let Some((scheme, rest)) = url.split_once("://") {
        return match scheme.to_ascii_lowercase().as_str() {
            "https" | "http" | "git" | "ssh" => {
                let authority = rest.split('/').next().unwrap_or_default();
                let host = authority.rsplit('@').next().unwrap_or_default();
                check_host(host)
            }
            "file" if allow_file_urls => Ok(()),
            "file" => Err("file:// urls are not allowed (allow_file_urls is off)".into()),
            other => Err(format!(
                "url scheme {other:?} is not allowed (use https, http, git or ssh)"
            )),
        };
    }

    // git's scp-like syntax: `[user@]host:path`, a ':' before any '/'.
    if let Some((user_host, path)) = url.split_once(':')
        && !user_host.contains('/')
    {
        let host = user_host.rsplit('@').next().unwrap_or_default();
        check_host(host)?;
        if path.is_empty() {
            return Err("url has no path after ':'".into());
        }
        return Ok(());
    }

    if !allow_file_urls {
        return Err("local paths are not allowed as urls (allow_file_urls is off)".into());
    }
    if !url.starts_with('/') {
        return Err("a local path must be absolute".into());
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("url has no host".into());
    }
    if host.starts_with('-') {
        return Err("url host starts with '-' (ssh would read it as an option)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC §3.2: URLs.
    #[test]
    fn urls() {
        for ok in [
            "https://github.com/berkeley-abc/abc",
            "http://example.org/x.git",
            "git://git.kernel.org/pub/scm/git/git.git",
            "ssh://git@example.org:2222/x.git",
            "HTTPS://Example.org/x",
            "git@github.com:torvalds/linux.git",
            "example.org:x.git",
            "git@[::1]:repo.git",
            "ssh://[::1]/repo.git",
        ] {
            assert_eq!(repo_url(ok, false), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("-uhttps://x", "starts with '-'"),
            ("--upload-pack=touch /tmp/x", "starts with '-'"),
            ("ext::sh -c touch% /tmp/pwned", "whitespace"),
            ("ext::sh%20-c%20x", "ext::"),
            ("EXT::x", "ext::"),
            ("fd::3", "fd::"),
            ("https://x/ext::y", "ext::"),
            ("testgit::https://x/y", "remote-helper"),
            ("https://example.org/a b", "whitespace"),
            ("https://example.org/a\tb", "whitespace"),
            ("https://example.org/a\u{7f}", "control"),
            ("ftp://example.org/x", "scheme \"ftp\""),
            ("https:///x", "no host"),
            ("ssh://-oProxyCommand=x/y", "host starts with '-'"),
            ("-oProxyCommand=x:y", "starts with '-'"),
            ("host:", "no path"),
            ("file:///srv/git/x.git", "allow_file_urls"),
            ("/srv/git/x.git", "allow_file_urls"),
            ("../x.git", "allow_file_urls"),
        ] {
            let e = repo_url(bad, false).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    // SPEC §3.2: `file` and local paths only with allow_file_urls.
    #[test]
    fn local_urls_when_allowed() {
        assert_eq!(repo_url("file:///srv/git/x.git", true), Ok(()));
        assert_eq!(repo_url("/srv/git/x.git", true), Ok(()));
        assert!(
            repo_url("srv/git/x.git", true)
                .unwrap_err()
                .contains("absolute")
        );
        assert!(repo_url("ext::x", true).is_err());
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
