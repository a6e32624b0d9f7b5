//! The repository URLs a push payload names (SPEC §15).
//!
//! GitHub, Gitea/Forgejo and Gitee put them in `repository` (`clone_url`, `ssh_url`,
//! `git_url`, `html_url`, `url`, `git_http_url`, `git_ssh_url`); GitLab in `project`
//! (`git_http_url`, `git_ssh_url`, `web_url`, `http_url`, `ssh_url`, `url`) and the older
//! `repository` (`url`, `homepage`, `git_http_url`, `git_ssh_url`). The generic kind sends
//! `{"url": "..."}` or `{"urls": [...]}`, and may use the forge shapes too. Every kind is
//! read the same way: a key that is not a string is ignored, not an error.

/// Most URLs taken from one payload.
pub const MAX_URLS: usize = 32;

const REPO_KEYS: &[&str] = &[
    "clone_url",
    "ssh_url",
    "git_url",
    "html_url",
    "url",
    "git_http_url",
    "git_ssh_url",
    "web_url",
    "http_url",
    "homepage",
];

/// The URLs in `body`; `None` when it is not a JSON object (undecodable: 400). serde_json
/// refuses nesting deeper than 128, so a hostile payload costs its size and no more.
pub fn urls(body: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        if out.len() < MAX_URLS && !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    };
    for section in ["repository", "project"] {
        if let Some(r) = obj.get(section).and_then(|r| r.as_object()) {
            for k in REPO_KEYS {
                if let Some(s) = r.get(*k).and_then(|s| s.as_str()) {
                    add(s);
                }
            }
        }
    }
    if let Some(s) = obj.get("url").and_then(|s| s.as_str()) {
        add(s);
    }
    if let Some(list) = obj.get("urls").and_then(|l| l.as_array()) {
        for s in list.iter().filter_map(|s| s.as_str()) {
            add(s);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPEC §15: the URLs of each forge's push payload shape (trimmed real payloads).
    #[test]
    fn spec_15_urls_of_each_forge_shape() {
        let github = br#"{"ref":"refs/heads/main","repository":{"id":1,"full_name":"o/r","html_url":"https://github.com/o/r","clone_url":"https://github.com/o/r.git","ssh_url":"git@github.com:o/r.git","git_url":"git://github.com/o/r.git","url":"https://github.com/o/r"},"pusher":{"name":"x"}}"#;
        assert_eq!(
            urls(github).unwrap(),
            [
                "https://github.com/o/r.git",
                "git@github.com:o/r.git",
                "git://github.com/o/r.git",
                "https://github.com/o/r"
            ]
        );
        let gitlab = br#"{"object_kind":"push","project":{"id":15,"web_url":"https://gitlab.example/g/p","git_ssh_url":"git@gitlab.example:g/p.git","git_http_url":"https://gitlab.example/g/p.git"},"repository":{"url":"git@gitlab.example:g/p.git","homepage":"https://gitlab.example/g/p"}}"#;
        let u = urls(gitlab).unwrap();
        assert!(
            u.contains(&"https://gitlab.example/g/p.git".to_owned()),
            "{u:?}"
        );
        assert!(
            u.contains(&"git@gitlab.example:g/p.git".to_owned()),
            "{u:?}"
        );
        let generic = br#"{"urls":["https://h/a/b",7,null],"url":"https://h/c/d"}"#;
        assert_eq!(urls(generic).unwrap(), ["https://h/c/d", "https://h/a/b"]);
        assert_eq!(
            urls(br#"{"repository":{"clone_url":5}}"#).unwrap(),
            Vec::<String>::new()
        );
    }

    // Issue 14 hostile input: not JSON, not an object, deep nesting: None (400), no panic.
    #[test]
    fn spec_15_undecodable_payloads() {
        for bad in [
            &b""[..],
            b"{",
            b"[1]",
            b"\"s\"",
            b"null",
            b"\xff\xfe",
            b"{\"a\":1}x",
        ] {
            assert_eq!(urls(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(urls(deep.as_bytes()), None);
        let deep_obj = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert_eq!(urls(deep_obj.as_bytes()), None);
        let many = format!(
            r#"{{"urls":[{}]}}"#,
            vec![r#""https://h/x/y""#; 1000].join(",")
        );
        assert_eq!(urls(many.as_bytes()).unwrap().len(), 1);
    }
}
