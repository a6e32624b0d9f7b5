//! The index layout (SPEC §3.1): which files are entries, `DEFAULTS` inheritance, and
//! turning file contents into validated entries (SPEC §3.2).

use super::validate;
use super::{Entries, Rejected, Stored};
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Raise when a change of these rules changes the entries read from the same files.
/// 2: URLs judged by gix's parser (issue 10), so an index read under 1 is read again.
pub const VERSION: u32 = 2;

/// Largest entry or `DEFAULTS` file read (SPEC §3.2).
pub const MAX_FILE_SIZE: u64 = 64 * 1024;

/// What a file means in the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `<first>/<project>/<name>`.
    Entry,
    /// `DEFAULTS` at the root, at `<first>/` or at `<first>/<project>/`.
    Defaults,
}

/// A file of the index that has a [`Role`], as a source found it.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    /// Path relative to the index root, `/`-separated, as raw bytes (may not be UTF-8).
    pub path: Vec<u8>,
    pub role: Role,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Regular(Vec<u8>),
    Symlink,
    /// Larger than [`MAX_FILE_SIZE`]; never read.
    TooLarge(u64),
    /// Anything else (a submodule, a FIFO, an unreadable file), with a reason.
    Unusable(String),
}

/// The role of the file at `path`, or `None` when the layout ignores it.
pub fn role(path: &[u8]) -> Option<Role> {
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let (name, dirs) = parts.split_last()?;
    // Anything under a dot-directory is ignored; a dot-file entry is rejected later.
    if dirs.iter().any(|d| d.starts_with(b".")) || name.starts_with(b"README") {
        return None;
    }
    if *name == b"DEFAULTS" {
        return (parts.len() <= 3).then_some(Role::Defaults);
    }
    (parts.len() == 3).then_some(Role::Entry)
}

/// Entries and rejections of one index snapshot.
#[derive(Debug, Default)]
pub struct Parsed {
    pub entries: Entries,
    pub rejected: Vec<Rejected>,
}

/// Distinct metadata texts shared between entries, at most this many (most indexes give
/// every entry the same few keys; a bound keeps an index of all-different ones cheap).
const MAX_INTERNED: usize = 4096;

/// Turns the files of one index snapshot into entries as a source hands them over, one at
/// a time, so no snapshot is ever held whole. A `DEFAULTS` file must come before the
/// entries below it (sources hand all of them over first).
pub struct Parser {
    allow_file_urls: bool,
    /// Directory ("" for the root) -> keys of its DEFAULTS.
    defaults: BTreeMap<Vec<u8>, Map<String, Json>>,
    parsed: Parsed,
    interned: Interned,
}

impl Parser {
    pub fn new(allow_file_urls: bool) -> Self {
        Self {
            allow_file_urls,
            defaults: BTreeMap::new(),
            parsed: Parsed::default(),
            interned: Interned::default(),
        }
    }

    pub fn file(&mut self, f: &File) {
        match f.role {
            Role::Defaults => match mapping(&f.kind) {
                Ok(keys) => {
                    let dir = f
                        .path
                        .get(..f.path.len().saturating_sub(b"/DEFAULTS".len()))
                        .unwrap_or_default();
                    self.defaults.insert(dir.to_vec(), keys);
                }
                // Entries below still load, without these keys.
                Err(reason) => self.parsed.rejected.push(Rejected {
                    path: display(&f.path),
                    reason,
                }),
            },
            Role::Entry => match entry(f, &self.defaults, self.allow_file_urls) {
                // One search of the map per entry (a read of 1M entries searches 1M times).
                Ok((id, url, keys)) => match self.parsed.entries.entry(id.into()) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        self.parsed.rejected.push(Rejected {
                            path: id.to_owned(),
                            reason: "duplicate id".into(),
                        });
                    }
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        let metadata = self.interned.intern(keys);
                        slot.insert(Stored {
                            url: url.into(),
                            metadata,
                        });
                    }
                },
                Err(reason) => self.parsed.rejected.push(Rejected {
                    path: display(&f.path),
                    reason,
                }),
            },
        }
    }

    /// A parser for another part of the same snapshot: the `DEFAULTS` read so far, no
    /// entries. Parts are read apart and put together with [`Parser::join`].
    pub fn fork(&self) -> Self {
        Self {
            allow_file_urls: self.allow_file_urls,
            defaults: self.defaults.clone(),
            parsed: Parsed::default(),
            interned: Interned::default(),
        }
    }

    /// Take in the entries and rejections of a part read by a [`Parser::fork`].
    pub fn join(&mut self, part: Parser) {
        let Parsed {
            mut entries,
            rejected,
        } = part.parsed;
        self.parsed.rejected.extend(rejected);
        let overlap = match (
            self.parsed.entries.last_key_value(),
            entries.first_key_value(),
        ) {
            (Some((last, _)), Some((first, _))) => first <= last,
            _ => false,
        };
        if !overlap {
            // Parts of a sorted listing: the common case appends in O(n).
            self.parsed.entries.append(&mut entries);
            return;
        }
        for (id, e) in entries {
            match self.parsed.entries.entry(id) {
                std::collections::btree_map::Entry::Occupied(o) => {
                    self.parsed.rejected.push(Rejected {
                        path: o.key().to_string(),
                        reason: "duplicate id".into(),
                    });
                }
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(e);
                }
            }
        }
    }

    pub fn finish(mut self) -> Parsed {
        self.parsed.rejected.sort_by(|a, b| a.path.cmp(&b.path));
        self.parsed
    }
}

/// Metadata texts shared between entries (those of their `DEFAULTS`, mostly), and the keys
/// of the last entry with its text: entries next to each other mostly carry the same keys
/// (a whole index of 1M entries formatted and hashed each one's JSON: ~4 % of a first
/// read's CPU).
#[derive(Default)]
struct Interned {
    texts: HashSet<Arc<str>>,
    last: Option<(Map<String, Json>, Arc<str>)>,
}

impl Interned {
    /// The JSON text of `keys` (`None` for none), shared with equal metadata seen before.
    fn intern(&mut self, keys: Map<String, Json>) -> Option<Arc<str>> {
        if keys.is_empty() {
            return None;
        }
        if let Some((last, text)) = &self.last
            && *last == keys
        {
            return Some(text.clone());
        }
        let text = serde_json::to_string(&keys).unwrap_or_default();
        let text = match self.texts.get(text.as_str()) {
            Some(shared) => shared.clone(),
            None => {
                let text: Arc<str> = text.into();
                if self.texts.len() < MAX_INTERNED {
                    self.texts.insert(text.clone());
                }
                text
            }
        };
        self.last = Some((keys, text.clone()));
        Some(text)
    }
}

/// Build the entries of one index snapshot from its files (in any order).
#[cfg(test)]
pub fn parse(files: &[File], allow_file_urls: bool) -> Parsed {
    let mut parser = Parser::new(allow_file_urls);
    for f in files.iter().filter(|f| f.role == Role::Defaults) {
        parser.file(f);
    }
    for f in files.iter().filter(|f| f.role == Role::Entry) {
        parser.file(f);
    }
    parser.finish()
}

fn display(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// A valid entry's id, URL and other keys.
fn entry<'f>(
    f: &'f File,
    defaults: &BTreeMap<Vec<u8>, Map<String, Json>>,
    allow_file_urls: bool,
) -> Result<(&'f str, String, Map<String, Json>), String> {
    let id = std::str::from_utf8(&f.path).map_err(|_| "path is not UTF-8".to_owned())?;
    validate::repo_id(id)?;
    let own = mapping(&f.kind)?;

    // Farthest DEFAULTS first, so nearer ones and then the entry overwrite key by key.
    let mut keys = Map::new();
    if !defaults.is_empty() {
        let (first, project) = {
            let mut it = id.split('/');
            (it.next().unwrap_or_default(), it.next().unwrap_or_default())
        };
        for dir in [
            String::new(),
            first.to_owned(),
            format!("{first}/{project}"),
        ] {
            if let Some(d) = defaults.get(dir.as_bytes()) {
                keys.extend(d.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
    }
    keys.extend(own);

    let url = match keys.remove("url") {
        None | Some(Json::Null) => return Err("missing url".into()),
        Some(Json::String(s)) => s,
        Some(Json::Array(list)) => match list.into_iter().next() {
            None => return Err("url list is empty".into()),
            Some(Json::String(s)) => s,
            Some(_) => return Err("first url of the list is not a string".into()),
        },
        Some(_) => return Err("url is not a string or a list".into()),
    };
    if url.is_empty() {
        return Err("missing url (empty)".into());
    }
    validate::repo_url(&url, allow_file_urls)?;
    Ok((id, url, keys))
}

/// The YAML mapping a file holds (an empty file is an empty mapping).
fn mapping(kind: &Kind) -> Result<Map<String, Json>, String> {
    let bytes = match kind {
        Kind::Regular(b) => b,
        Kind::Symlink => return Err("symbolic link (not followed)".into()),
        Kind::TooLarge(size) => {
            return Err(format!(
                "file is {size} bytes, over the {MAX_FILE_SIZE}-byte limit"
            ));
        }
        Kind::Unusable(why) => return Err(why.clone()),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| "content is not UTF-8".to_owned())?;
    if let Some(keys) = plain_mapping(text) {
        return Ok(keys);
    }
    yaml_mapping(text)
}

/// The keys of `text` as YAML parses them (what [`plain_mapping`] must agree with).
fn yaml_mapping(text: &str) -> Result<Map<String, Json>, String> {
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("YAML does not parse: {e}"))?;
    match to_json(yaml)? {
        Json::Null => Ok(Map::new()),
        Json::Object(map) => Ok(map),
        _ => Err("content is not a YAML mapping of keys".into()),
    }
}

/// The keys of `text` when it is only `key: value` lines of plain words that YAML reads
/// as strings (`url: https://host/x.git`, `submit: sim`), without a YAML parser: that was
/// half of the time of parsing an entry. `None` for anything else, which YAML then
/// decides, so the result is always YAML's (a property test checks it).
fn plain_mapping(text: &str) -> Option<Map<String, Json>> {
    // Words YAML reads as null or a boolean; everything else starting with a letter
    // and made of these characters is a string (a number starts with a digit, a sign or
    // a dot).
    const SPECIAL: [&str; 9] = [
        "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE",
    ];
    let word = |w: &str, more: fn(u8) -> bool| {
        w.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && w.bytes().all(more)
            && !SPECIAL.contains(&w)
    };
    let key_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    // No space, quote, '#', ',' or bracket; a ':' only inside (checked below).
    let value_char = |b: u8| b.is_ascii_alphanumeric() || b"/:._+@%=~-".contains(&b);
    let mut keys = Map::new();
    let body = text.strip_suffix('\n').unwrap_or(text);
    for line in body.split('\n') {
        let (key, value) = line.split_once(": ")?;
        if !word(key, key_char) || !word(value, value_char) || value.ends_with(':') {
            return None;
        }
        // A repeated key is YAML's to judge.
        if keys
            .insert(key.to_owned(), Json::String(value.to_owned()))
            .is_some()
        {
            return None;
        }
    }
    (!keys.is_empty()).then_some(keys)
}

/// YAML to JSON, for opaque metadata. Tags are dropped, keys become strings.
fn to_json(v: serde_yaml::Value) -> Result<Json, String> {
    use serde_yaml::Value as Y;
    Ok(match v {
        Y::Null => Json::Null,
        Y::Bool(b) => Json::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                // NaN and infinities have no JSON number: keep YAML's spelling.
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| Json::String(n.to_string()), Json::Number)
            }
        }
        Y::String(s) => Json::String(s),
        Y::Sequence(items) => {
            Json::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Null => "null".to_owned(),
                    _ => return Err("a key is not a string".into()),
                };
                out.insert(key, to_json(v)?);
            }
            Json::Object(out)
        }
        Y::Tagged(t) => to_json(t.value)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> File {
        let role = role(path.as_bytes()).unwrap();
        File {
            path: path.as_bytes().to_vec(),
            role,
            kind: Kind::Regular(content.as_bytes().to_vec()),
        }
    }

    fn reason(p: &Parsed, path: &str) -> String {
        p.rejected
            .iter()
            .find(|r| r.path == path)
            .map(|r| r.reason.clone())
            .unwrap_or_default()
    }

    use proptest::strategy::Strategy;

    // SPEC §3.2 (metadata): each entry keeps its own keys beside `url`, as JSON text; equal
    // keys share one text whether they come in a row or apart, and different keys never do.
    #[test]
    fn spec_3_2_metadata_is_each_entrys_own_and_shared_when_equal() {
        let files = [
            file("a/aa/a1", "url: https://h/a1.git\nsubmit: sim\n"),
            file("a/aa/a2", "url: https://h/a2.git\nsubmit: sim\n"),
            file("a/aa/a3", "url: https://h/a3.git\nsubmit: other\n"),
            file("a/aa/a4", "url: https://h/a4.git\nsubmit: sim\n"),
            file("a/aa/a5", "url: https://h/a5.git\n"),
            file(
                "a/aa/a6",
                "url: https://h/a6.git\nsubmit: other\nowner: x\n",
            ),
        ];
        let p = parse(&files, false);
        let meta = |id: &str| p.entries[id].metadata.clone();
        assert_eq!(meta("a/aa/a1").as_deref(), Some(r#"{"submit":"sim"}"#));
        assert_eq!(meta("a/aa/a3").as_deref(), Some(r#"{"submit":"other"}"#));
        assert_eq!(meta("a/aa/a5"), None);
        assert_eq!(
            meta("a/aa/a6").as_deref(),
            Some(r#"{"owner":"x","submit":"other"}"#)
        );
        let (a1, a2, a4) = (meta("a/aa/a1"), meta("a/aa/a2"), meta("a/aa/a4"));
        assert!(Arc::ptr_eq(a1.as_ref().unwrap(), a2.as_ref().unwrap()));
        assert!(Arc::ptr_eq(a1.as_ref().unwrap(), a4.as_ref().unwrap()));
    }

    // SPEC §3.2: the plain fast path takes the usual entry file and leaves to YAML what
    // YAML reads otherwise than as strings.
    #[test]
    fn spec_3_2_plain_mapping_takes_plain_words_only() {
        let sim = "url: https://git.example.invalid/0/00/r1.git\nsubmit: sim\n";
        assert_eq!(
            plain_mapping(sim),
            Some(yaml_mapping(sim).unwrap()),
            "the common entry takes the fast path"
        );
        for other in [
            "",
            "url: true\n",
            "Null: x\n",
            "url: 12\n",
            "url: x # comment\n",
            "url: 'x'\n",
            "url: x\nurl: y\n",
            "url: x:\n",
            "url:x\n",
            "url:  x\n",
            "url: x\n\n",
            "url: [x]\n",
            "url: x\r\n",
            "url: .inf\n",
        ] {
            assert_eq!(plain_mapping(other), None, "{other:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        // Whatever the fast path accepts, YAML reads the same way.
        #[test]
        fn spec_3_2_plain_mapping_agrees_with_yaml(
            lines in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::string::string_regex("[A-Za-z_1-][A-Za-z0-9_:-]{0,6}").unwrap(),
                        proptest::sample::select(vec!["url", "true", "Null", "y", "<<"])
                            .prop_map(str::to_owned),
                    ],
                    proptest::sample::select(vec![": ", ": ", ": ", ":", ":  ", " : "]),
                    proptest::prop_oneof![
                        // Mostly what the fast path takes, to test that side well.
                        proptest::string::string_regex("[A-Za-z][A-Za-z0-9/:._+@%=~-]{0,10}")
                            .unwrap(),
                        proptest::string::string_regex(
                            "[A-Za-z0-9.~+-][A-Za-z0-9/:._+@%=~ #'\"\\[\\],&*!|>{}-]{0,10}"
                        )
                        .unwrap(),
                        proptest::sample::select(vec![
                            "inf", "nan", "NaN", "infinity", "e5", "x:", "a:b", "0x1", "yes",
                            "FALSE", "~",
                        ])
                        .prop_map(str::to_owned),
                    ],
                ),
                1..4,
            ),
            end in proptest::sample::select(vec!["\n", "", "\n\n"]),
        ) {
            let text = lines
                .iter()
                .map(|(k, sep, v)| format!("{k}{sep}{v}"))
                .collect::<Vec<_>>()
                .join("\n")
                + end;
            if let Some(fast) = plain_mapping(&text) {
                proptest::prop_assert_eq!(Ok(fast), yaml_mapping(&text), "{:?}", text);
            }
        }
    }

    // SPEC §3.1: which paths are entries.
    #[test]
    fn roles() {
        assert_eq!(role(b"a/abc/abc"), Some(Role::Entry));
        assert_eq!(role(b"a/abc/.hidden"), Some(Role::Entry));
        assert_eq!(role(b"DEFAULTS"), Some(Role::Defaults));
        assert_eq!(role(b"a/DEFAULTS"), Some(Role::Defaults));
        assert_eq!(role(b"a/abc/DEFAULTS"), Some(Role::Defaults));
        for ignored in [
            "a/abc/d/DEFAULTS",
            "README.md",
            "a/abc/README",
            "a/abc",
            "abc",
            "a/abc/x/y",
            ".github/workflows/ci",
            "a/.git/config",
            ".x/DEFAULTS",
        ] {
            assert_eq!(role(ignored.as_bytes()), None, "{ignored}");
        }
    }

    // SPEC §3.1: DEFAULTS at every level, nearest wins key by key, the entry over all.
    #[test]
    fn defaults_inherit_key_by_key() {
        let files = [
            file("DEFAULTS", "submit: root\nowner: root\nlevel: 0\n"),
            file("a/DEFAULTS", "owner: a\nlevel: 1\n"),
            file("a/abc/DEFAULTS", "level: 2\n"),
            file("a/abc/abc", "url: https://x/abc\nextra: [1, 2]\n"),
            file("a/abd/abd", "url: https://x/abd\nowner: me\n"),
            file("b/bcd/bcd", "url: https://x/bcd\n"),
        ];
        let p = parse(&files, false);
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        let md = |id: &str| Json::Object(p.entries[id].metadata_map());
        assert_eq!(
            md("a/abc/abc"),
            serde_json::json!({"submit": "root", "owner": "a", "level": 2, "extra": [1, 2]})
        );
        assert_eq!(
            md("a/abd/abd"),
            serde_json::json!({"submit": "root", "owner": "me", "level": 1})
        );
        assert_eq!(
            md("b/bcd/bcd"),
            serde_json::json!({"submit": "root", "owner": "root", "level": 0})
        );
        assert_eq!(&*p.entries["a/abc/abc"].url, "https://x/abc");
    }

    // SPEC §3.1: `url` as a list; the first element is the fetch URL.
    #[test]
    fn url_list() {
        let files = [
            file(
                "a/b/ok",
                "url:\n  - https://x/first\n  - https://x/second\n",
            ),
            file("a/b/empty", "url: []\n"),
            file("a/b/num", "url: [1, \"https://x\"]\n"),
            file("a/b/map", "url: {a: 1}\n"),
            file("a/b/none", "other: 1\n"),
            file("a/b/blank", "url: ''\n"),
            file("a/b/nothing", ""),
            file("a/b/scalar", "just text\n"),
        ];
        let p = parse(&files, false);
        assert_eq!(
            p.entries.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["a/b/ok"]
        );
        assert_eq!(&*p.entries["a/b/ok"].url, "https://x/first");
        assert_eq!(reason(&p, "a/b/empty"), "url list is empty");
        assert_eq!(
            reason(&p, "a/b/num"),
            "first url of the list is not a string"
        );
        assert_eq!(reason(&p, "a/b/map"), "url is not a string or a list");
        assert_eq!(reason(&p, "a/b/none"), "missing url");
        assert_eq!(reason(&p, "a/b/nothing"), "missing url");
        assert_eq!(reason(&p, "a/b/blank"), "missing url (empty)");
        assert_eq!(
            reason(&p, "a/b/scalar"),
            "content is not a YAML mapping of keys"
        );
    }

    // SPEC §3.2: each bad entry is rejected on its own.
    #[test]
    fn rejections() {
        let mut files = vec![
            file("a/good/good", "url: https://x/good\n"),
            file("a/bad/yaml", "url: [unclosed\n"),
            file("a/bad/dup", "url: a\nurl: b\n"),
            file("a/bad/ext", "url: 'ext::sh -c touch% /tmp/pwned'\n"),
            file("a/bad/opt", "url: -uhttps://x\n"),
        ];
        files.push(File {
            path: b"a/bad/link".to_vec(),
            role: Role::Entry,
            kind: Kind::Symlink,
        });
        files.push(File {
            path: b"a/bad/big".to_vec(),
            role: Role::Entry,
            kind: Kind::TooLarge(70_000),
        });
        files.push(File {
            path: b"a/bad/bin".to_vec(),
            role: Role::Entry,
            kind: Kind::Regular(vec![0xff, 0xfe, 0, 1]),
        });
        files.push(File {
            path: b"a/bad/\xff".to_vec(),
            role: Role::Entry,
            kind: Kind::Regular(vec![]),
        });
        let p = parse(&files, false);
        assert_eq!(
            p.entries.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["a/good/good"]
        );
        assert!(
            reason(&p, "a/bad/yaml").starts_with("YAML does not parse"),
            "{:?}",
            p.rejected
        );
        assert!(
            reason(&p, "a/bad/dup").starts_with("YAML does not parse"),
            "{:?}",
            p.rejected
        );
        assert!(reason(&p, "a/bad/ext").contains("whitespace"));
        assert!(reason(&p, "a/bad/opt").contains("starts with '-'"));
        assert_eq!(reason(&p, "a/bad/link"), "symbolic link (not followed)");
        assert!(reason(&p, "a/bad/big").contains("70000 bytes"));
        assert_eq!(reason(&p, "a/bad/bin"), "content is not UTF-8");
        assert_eq!(reason(&p, "a/bad/\u{fffd}"), "path is not UTF-8");
        assert_eq!(p.rejected.len(), 8);
    }

    // SPEC §3.2: a bad DEFAULTS is reported; entries below load without its keys.
    #[test]
    fn bad_defaults_do_not_stop_entries() {
        let files = [
            file("a/DEFAULTS", "x: [\n"),
            file("a/abc/abc", "url: https://x/abc\n"),
        ];
        let p = parse(&files, false);
        assert!(p.entries.contains_key("a/abc/abc"));
        assert!(reason(&p, "a/DEFAULTS").starts_with("YAML does not parse"));
    }

    // SPEC §3.1, §3.2: an index read in parts (one per git process) gives what one read
    // gives: DEFAULTS seen before the fork apply in every part, a repeated id is rejected.
    #[test]
    fn parts_join_like_one_read() {
        let mut whole = Parser::new(false);
        whole.file(&file("DEFAULTS", "submit: root\n"));
        let mut first = whole.fork();
        let mut second = whole.fork();
        first.file(&file("a/abc/abc", "url: https://x/abc\n"));
        first.file(&file("a/abd/abd", "url: https://x/abd\n"));
        second.file(&file("b/bcd/bcd", "url: https://x/bcd\n"));
        second.file(&file("b/bad/bad", "url: []\n"));
        let mut again = whole.fork();
        again.file(&file("a/abc/abc", "url: https://y/abc\n"));
        whole.join(first);
        whole.join(second);
        whole.join(again);
        let p = whole.finish();
        let ids: Vec<&str> = p.entries.keys().map(|k| &**k).collect();
        assert_eq!(ids, ["a/abc/abc", "a/abd/abd", "b/bcd/bcd"]);
        assert_eq!(
            &*p.entries["a/abc/abc"].url, "https://x/abc",
            "the first read wins"
        );
        assert_eq!(
            Json::Object(p.entries["b/bcd/bcd"].metadata_map()),
            serde_json::json!({"submit": "root"})
        );
        assert_eq!(reason(&p, "a/abc/abc"), "duplicate id");
        assert_eq!(reason(&p, "b/bad/bad"), "url list is empty");
        assert!(Arc::ptr_eq(
            p.entries["a/abc/abc"].metadata.as_ref().unwrap(),
            p.entries["a/abd/abd"].metadata.as_ref().unwrap()
        ));
    }

    // Hostile YAML must be refused, not crash or blow up memory.
    #[test]
    fn hostile_yaml() {
        let deep = format!("url: {}{}", "[".repeat(20_000), "]".repeat(20_000));
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n\
                    url: https://x\n";
        let files = [
            file("a/b/deep", &deep),
            file("a/b/bomb", bomb),
            file("a/b/tag", "url: !x https://x\n? [a]\n: 1\n"),
        ];
        let p = parse(&files, false);
        assert!(p.entries.is_empty(), "{:?}", p.entries.keys());
        assert!(
            reason(&p, "a/b/deep").starts_with("YAML does not parse"),
            "{:?}",
            p.rejected
        );
        assert!(
            reason(&p, "a/b/bomb").starts_with("YAML does not parse"),
            "{:?}",
            p.rejected
        );
        assert_eq!(reason(&p, "a/b/tag"), "a key is not a string");
    }
}
