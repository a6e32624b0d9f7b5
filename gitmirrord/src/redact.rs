//! URLs as the coordinator shows them (SPEC §9 "URLs are shown without user info
//! everywhere"; issue 10 finding 4): in the API, the status page, metrics, webhook
//! payloads and logs.
//!
//! Passwords are always dropped; user names are dropped too, except in ssh URLs and
//! scp-style addresses (`git@host:path`), where the name is no secret and the fetch needs
//! it. Redaction happens when rendering, never when storing, so records written before
//! this rule (old events in the log) are covered as well.
//!
//! It must work on anything, including text that is not a valid URL (an old event, an
//! upstream's error message quoting a URL). Each `scheme://…` token (up to white space or
//! a quote) is read by the `url` crate (issue 11): when it parses, its user info is what
//! the parser found; when it does not (a password with an unescaped `/`, `?` or `#`, a
//! bad port), everything up to the token's last `@` is taken for user info, so a
//! secret is never left in place because the text was not a URL.

use std::borrow::Cow;

/// Schemes whose user name is kept: the name selects the account, it proves nothing.
const KEEPS_USER: [&str; 3] = ["ssh", "git+ssh", "ssh+git"];

/// One URL (an index entry's, a repo's, an index's) as shown: also handles scp-style
/// addresses, `user:password@host:path`.
pub fn url(s: &str) -> Cow<'_, str> {
    // User info ends at an `@`: without one there is none (the common case, and the one
    // that spares a URL parse per URL of a status page).
    if !s.contains('@') {
        return Cow::Borrowed(s);
    }
    if s.contains("://") {
        return text(s);
    }
    // scp-style `user@host:path`: the `@` comes before the `host:path` colon and no `/`
    // comes before it (otherwise it is part of a local path or of the repo path).
    let Some(at) = s.find('@') else {
        return Cow::Borrowed(s);
    };
    let (userinfo, rest) = (&s[..at], &s[at..]);
    if userinfo.contains('/') || !rest.contains(':') {
        return Cow::Borrowed(s);
    }
    match userinfo.split_once(':') {
        Some((user, _password)) => Cow::Owned(format!("{user}{rest}")),
        None => Cow::Borrowed(s),
    }
}

/// Free text (an error message, a log line) with any number of `scheme://` URLs in it.
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.contains("://") || !s.contains('@') {
        return Cow::Borrowed(s);
    }
    let mut out = String::new();
    // `s[copied..]` is not yet in `out`.
    let mut copied = 0;
    let mut from = 0;
    while let Some(i) = s[from..].find("://") {
        let sep = from + i;
        let authority_start = sep + 3;
        from = authority_start;
        let scheme_start = s[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |j| j + 1);
        let scheme = s[scheme_start..sep].to_ascii_lowercase();
        let token_end = s[authority_start..]
            .find(|c: char| matches!(c, '"' | '\'' | '<' | '>' | '`') || c.is_whitespace())
            .map_or(s.len(), |j| authority_start + j);
        let Some(at) = userinfo_end(&s[scheme_start..token_end], &s[authority_start..token_end])
        else {
            continue;
        };
        let userinfo = &s[authority_start..authority_start + at];
        out.push_str(&s[copied..authority_start]);
        if KEEPS_USER.contains(&scheme.as_str()) {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if !user.is_empty() {
                out.push_str(user);
                out.push('@');
            }
        }
        copied = authority_start + at + 1;
        from = copied;
    }
    if copied == 0 {
        return Cow::Borrowed(s);
    }
    out.push_str(&s[copied..]);
    Cow::Owned(out)
}

/// Where the user info of `token` (a `scheme://…` word) ends in `rest` (the token after
/// `://`): the `@` before the host, or `None` when there is no user info.
fn userinfo_end(token: &str, rest: &str) -> Option<usize> {
    match url::Url::parse(token) {
        Ok(u) if u.username().is_empty() && u.password().is_none() => None,
        Ok(u) => {
            // The parser's authority ends at the first of these (`\` only in the schemes
            // the URL standard calls special); the user info is up to its last `@`.
            let special = matches!(u.scheme(), "http" | "https" | "ws" | "wss" | "ftp" | "file");
            let end = rest
                .find(|c: char| matches!(c, '/' | '?' | '#') || (special && c == '\\'))
                .unwrap_or(rest.len());
            rest[..end].rfind('@')
        }
        // Not a URL, yet it may hold a secret: whatever precedes the last `@` may be one.
        Err(_) => rest.rfind('@'),
    }
}

/// [`url`] for the `Arc<str>` URLs the fleet keeps: no copy when nothing is removed.
pub fn url_arc(s: &std::sync::Arc<str>) -> std::sync::Arc<str> {
    match url(s) {
        Cow::Borrowed(_) => s.clone(),
        Cow::Owned(o) => o.into(),
    }
}

/// [`text`] into an owned string.
pub fn text_owned(s: String) -> String {
    match text(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(o) => o,
    }
}

/// [`url`] into an owned string.
pub fn url_owned(s: String) -> String {
    match url(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(o) => o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // issue 10 finding 4 / SPEC §9: passwords always go, user names go from http(s) (and
    // every scheme but ssh), ssh and scp-style user names stay; URLs without user info
    // come back unchanged.
    #[test]
    fn issue10_f4_user_info_is_stripped_as_the_spec_says() {
        for (given, shown) in [
            ("https://user:secret@host/x", "https://host/x"),
            ("https://user@host/x", "https://host/x"),
            (
                "HTTP://user:secret@host:8080/x?a=b",
                "HTTP://host:8080/x?a=b",
            ),
            ("https://a:b@c@host/x", "https://host/x"),
            ("https://:secret@[::1]:9/x", "https://[::1]:9/x"),
            ("git://u:pw@host/x", "git://host/x"),
            ("ssh://git:pw@host/x", "ssh://git@host/x"),
            ("ssh://git@host:2222/x", "ssh://git@host:2222/x"),
            ("git+ssh://git:pw@host/x", "git+ssh://git@host/x"),
            ("ssh://:pw@host/x", "ssh://host/x"),
            ("git:pw@host:x.git", "git@host:x.git"),
            ("git@host:x.git", "git@host:x.git"),
            ("/srv/git/a@b:c", "/srv/git/a@b:c"),
            ("host:a@b", "host:a@b"),
            ("https://host/@scope/x", "https://host/@scope/x"),
            ("https://host", "https://host"),
            ("", ""),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    // Error messages quote URLs: every one in the text is cleaned, the rest kept.
    #[test]
    fn issue10_f4_urls_inside_text_are_cleaned() {
        assert_eq!(
            text("error sending request for url (https://u:tok@h/x): refused; see ssh://me:pw@g/y"),
            "error sending request for url (https://h/x): refused; see ssh://me@g/y"
        );
        assert_eq!(
            text("\"https://u:p@a/x\" and 'http://v@b'"),
            "\"https://a/x\" and 'http://b'"
        );
        assert_eq!(text("no url here: a@b"), "no url here: a@b");
        assert_eq!(
            text("see https://h/@scope/x now"),
            "see https://h/@scope/x now"
        );
        assert!(matches!(text("https://h/x"), Cow::Borrowed(_)));
    }

    // issue 11 part 4: a password holding an unescaped `/`, `?` or `#` ended the
    // hand-written scan's authority early, so the user info was not found and the whole
    // password was shown. (Seen failing before the fix: the first case came back as given.)
    #[test]
    fn issue11_a_password_with_a_slash_or_question_mark_is_not_shown() {
        for (given, shown) in [
            ("https://user:pa/ss@host/x", "https://host/x"),
            ("https://user:pa?ss@host/x", "https://host/x"),
            ("https://user:pa#ss@host/x", "https://host/x"),
            ("https://user:pa\\ss@host/x", "https://host/x"),
            ("ssh://git:pa/ss@host/x", "ssh://git@host/x"),
            ("https://user:p%2Fw@host/x", "https://host/x"),
            ("https://host:99999/x", "https://host:99999/x"),
        ] {
            assert_eq!(url(given), shown, "{given}");
            let t = format!("fetch of ({given}) failed");
            assert_eq!(text(&t), format!("fetch of ({shown}) failed"), "{given}");
        }
    }

    proptest! {
        // Whatever the user, password, scheme and surrounding text, the password is not
        // shown, and neither is the user of an http(s) URL.
        #[test]
        fn issue10_f4_no_password_survives(
            scheme in prop_oneof![Just("https"), Just("http"), Just("ssh"), Just("git"), Just("ftp")],
            user in "[A-Za-z0-9._~%!$&*+,;=-]{0,12}",
            pw in "[A-Za-z0-9._~%!$&*+,;=:@/?#-]{1,16}",
            host in "[a-z0-9.-]{1,12}|\\[[0-9a-f:]{2,10}\\]",
            port in proptest::option::of(1u16..),
            path in "(/[A-Za-z0-9@:._-]{0,10}){0,3}",
            before in "[ a-z(\"']{0,6}",
            after in "[ a-z)\"']{0,6}",
        ) {
            let secret = format!("PW{pw}WP");
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let u = format!("{scheme}://{user}:{secret}@{host}{port}{path}");
            let shown = url(&u);
            prop_assert!(!shown.contains(&secret), "{u} shown as {shown}");
            let t = format!("{before}{u}{after}");
            let shown = text(&t);
            prop_assert!(!shown.contains(&secret), "{t} shown as {shown}");
            // When the URL does not parse (a `/`, `?` or `#` in the password), an `@` in
            // the path is taken for the end of the user info: more is cut, never less.
            if url::Url::parse(&u).is_ok() {
                prop_assert!(shown.ends_with(&format!("{host}{port}{path}{after}")), "{t} shown as {shown}");
            }
            if scheme.starts_with("http") && !user.is_empty() {
                let named = format!("{scheme}://USR{user}@{host}{path}");
                prop_assert!(!url(&named).contains("USR"), "{named}");
            }
        }
    }
}
