//! SPEC §16: the coordinator takes `credentials` for a private index URL. Real `git
//! http-backend` behind a loopback server that demands Basic or Bearer auth.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
// The worker's test server, shared rather than copied.
#[allow(dead_code)]
#[path = "../../gitmirror-worker/tests/common/http.rs"]
mod http;

use common::git;
use gitmirror_common::credentials::{AuthScheme, CredentialSpec, Credentials, SharedCredentials};
use gitmirrord::index::{IndexSettings, IndexSource, Indexes};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "gm-secret-index-5d1e";

fn index_repo(base: &Path) {
    let dir = base.join("index");
    std::fs::create_dir_all(dir.join("a/abc")).unwrap();
    std::fs::write(dir.join("a/abc/abc"), "url: https://example.org/abc.git\n").unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "index"]);
}

fn settings(state: &Path, spec: CredentialSpec) -> IndexSettings {
    IndexSettings {
        dir: state.join("index"),
        allow_file_urls: false,
        purge_protect_percent: 5.0,
        credentials: SharedCredentials::new(Arc::new(
            Credentials::load(&[spec], "credentials").unwrap(),
        )),
    }
}

fn spec(prefix: &str, token: &Path, scheme: Option<AuthScheme>) -> CredentialSpec {
    CredentialSpec {
        prefix: prefix.into(),
        username: None,
        scheme,
        token_file: Some(token.into()),
        ssh_key_file: None,
        known_hosts_file: None,
        allow_plain_http: true,
    }
}

/// SPEC §16: a private index behind Basic auth, then one behind Bearer auth, is read with
/// the entry's token; a wrong token reads nothing; the token is in no git argument.
#[test]
fn spec_16_private_index_is_read_with_its_credential() {
    use base64::Engine;
    let up = tempfile::tempdir().unwrap();
    index_repo(up.path());
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    let write = |text: &str| {
        std::fs::write(&token, format!("{text}\n")).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    for (scheme, header) in [
        (
            None,
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("git:{TOKEN}"))
            ),
        ),
        (Some(AuthScheme::Bearer), format!("Bearer {TOKEN}")),
    ] {
        let server = http::HttpGit::start(up.path());
        server.require_authorization(&header);
        let prefix = format!("http://127.0.0.1:{}/", server.port);
        let source = IndexSource {
            name: "private".into(),
            url: server.url("index"),
            branch: None,
            poll_interval: Duration::from_secs(60),
        };

        write("gm-secret-wrong");
        let state = tempfile::tempdir().unwrap();
        let mut ix = Indexes::open(
            vec![source.clone()],
            settings(state.path(), spec(&prefix, &token, scheme)),
        )
        .unwrap();
        let _ = ix.poll(true);
        assert!(
            ix.entries().next().is_none(),
            "{scheme:?}: read with a wrong token"
        );

        write(TOKEN);
        let state = tempfile::tempdir().unwrap();
        let mut ix = Indexes::open(
            vec![source],
            settings(state.path(), spec(&prefix, &token, scheme)),
        )
        .unwrap();
        let delta = ix.poll(true).unwrap();
        assert_eq!(delta.added.len(), 1, "{scheme:?}");
        assert!(
            server
                .seen()
                .iter()
                .any(|s| s.status == 200 && s.authorization.as_deref() == Some(header.as_str())),
            "{scheme:?}"
        );
    }
}
