//! The durable event log (SPEC §8).
//!
//! `<state_dir>/events.log` is a header line (`gitmirror-state events v1`) and then one
//! JSON object per line, appended and fsynced before the outcome that produced it is
//! acknowledged. Each line also records which worker report produced it, so duplicates
//! are recognised after a crash even if the registry was saved earlier than the log.
//!
//! On open, a torn last line (a crash in the middle of an append) is cut off with a log
//! line; any other line that does not decode stops the daemon, naming the file.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

pub const FILE: &str = "events.log";
const HEADER: &str = "gitmirror-state events v1\n";
/// Events kept in memory for `GET /api/events`; older ones are read from the file.
const TAIL: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Cloned,
    Updated,
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefUpdate {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// An event as published (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub time: String,
    pub repo: String,
    pub url: String,
    pub worker: u32,
    pub kind: EventKind,
    pub refs: Vec<RefUpdate>,
}

/// The refs published for one repo, as hashes: [`ref_key`] of the name → [`ref_value`]
/// of the name and object id (16 bytes a ref, no strings kept).
pub type PublishedRefs = HashMap<u64, u64>;

pub fn ref_key(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

pub fn ref_value(name: &str, id: &str) -> u64 {
    gitmirror_wire::refs::ref_hash(name, id)
}

/// Whether the ref change `name → new` (`None`: deleted) is news against `published`.
pub fn is_news(published: &PublishedRefs, name: &str, new: Option<&str>) -> bool {
    published.get(&ref_key(name)).copied() != new.map(|id| ref_value(name, id))
}

/// `published` after an event: a clone lists every ref (the set is replaced), an update
/// or removal lists changed refs.
pub fn apply_published<'a>(
    published: &mut PublishedRefs,
    kind: EventKind,
    refs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) {
    if kind == EventKind::Cloned {
        published.clear();
    }
    for (name, new) in refs {
        match new {
            Some(id) => published.insert(ref_key(name), ref_value(name, id)),
            None => published.remove(&ref_key(name)),
        };
    }
}

/// An event before it has a sequence number, with the report that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    pub time_ms: i64,
    pub repo: String,
    pub url: String,
    pub worker: u32,
    pub kind: EventKind,
    pub refs: Vec<RefUpdate>,
    pub source: Uuid,
    pub report_id: u64,
}

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    #[serde(flatten)]
    event: Event,
    /// Worker uuid and report id the event came from (for dedupe after a crash).
    src: Uuid,
    report: u64,
    /// Digest of the repo's whole ref set once this event is published
    /// (`gitmirror_wire::refs`): the log is durable before every acknowledgement and
    /// `repos.json` is saved only every few seconds, so after a crash the log is what
    /// knows which refs were last published. Absent in logs written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("cannot {action} event log {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "event log {path} is corrupt at line {line} ({detail}); the daemon will not guess its contents. \
         Restore it from a backup, or move it aside to start a new log (`mv {path} {path}.broken`; \
         event numbers then restart)"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error(
        "event log {path} could not be appended to earlier and was left inconsistent; restart the daemon"
    )]
    Poisoned { path: PathBuf },
}

pub struct EventLog {
    path: PathBuf,
    file: File,
    /// Length of the file up to the last complete line.
    len: u64,
    next_seq: u64,
    tail: VecDeque<Event>,
    /// Highest report id per worker found in the log.
    reports: HashMap<Uuid, u64>,
    /// Per repo, the ref-set digest recorded with its last event (see [`Line::digest`]),
    /// as read at open.
    published: HashMap<String, u64>,
    /// Per repo, the refs its events published, replayed from the log at open.
    published_refs: HashMap<String, PublishedRefs>,
    poisoned: bool,
}

impl EventLog {
    /// Open (creating if missing) `<dir>/events.log`.
    pub fn open(dir: &Path) -> Result<Self, EventLogError> {
        let path = dir.join(FILE);
        let io = |action, source| EventLogError::Io {
            action,
            path: path.clone(),
            source,
        };
        if !path.exists() {
            gitmirror_common::statefile::write_atomic(&path, HEADER.as_bytes(), 0o640).map_err(
                |e| match e {
                    gitmirror_common::statefile::StateError::Io { action, source, .. } => {
                        io(action, source)
                    }
                    other => io("create", std::io::Error::other(other.to_string())),
                },
            )?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("open", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io("read", e))?;
        let corrupt = |line: usize, detail: String| EventLogError::Corrupt {
            path: path.clone(),
            line,
            detail,
        };
        if !bytes.starts_with(HEADER.as_bytes()) {
            let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            return Err(corrupt(
                1,
                format!(
                    "expected the header {:?}, found {:?}",
                    HEADER.trim_end(),
                    String::from_utf8_lossy(&first[..first.len().min(80)])
                ),
            ));
        }
        let mut log = EventLog {
            path: path.clone(),
            file,
            len: HEADER.len() as u64,
            next_seq: 1,
            tail: VecDeque::new(),
            reports: HashMap::new(),
            published: HashMap::new(),
            published_refs: HashMap::new(),
            poisoned: false,
        };
        let body = &bytes[HEADER.len()..];
        let mut pos = 0usize;
        let mut line_no = 1usize;
        while pos < body.len() {
            line_no += 1;
            let end = body[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| pos + i);
            let text = &body[pos..end.unwrap_or(body.len())];
            let is_last = end.is_none_or(|e| e + 1 >= body.len());
            let parsed = if end.is_some() {
                serde_json::from_slice::<Line>(text).ok()
            } else {
                None
            };
            match parsed {
                Some(line) => {
                    if line.event.seq < log.next_seq {
                        return Err(corrupt(
                            line_no,
                            format!(
                                "event {} follows event {}",
                                line.event.seq,
                                log.next_seq - 1
                            ),
                        ));
                    }
                    log.replay(&line);
                    log.remember(line);
                    pos = end.map_or(body.len(), |e| e + 1);
                    log.len = (HEADER.len() + pos) as u64;
                }
                None if is_last => {
                    tracing::warn!(
                        "event log {}: cutting off an incomplete last line ({} bytes) left by a crash during an append; it was never acknowledged",
                        path.display(),
                        body.len() - pos
                    );
                    log.file.set_len(log.len).map_err(|e| io("truncate", e))?;
                    log.file.sync_all().map_err(|e| io("fsync", e))?;
                    break;
                }
                None => {
                    let detail = match serde_json::from_slice::<Line>(text) {
                        Err(e) => e.to_string(),
                        Ok(_) => "undecodable line".into(),
                    };
                    return Err(corrupt(line_no, detail));
                }
            }
        }
        Ok(log)
    }

    /// What the coordinator needs at start from a line read back: the published refs.
    fn replay(&mut self, line: &Line) {
        if let Some(d) = line.digest {
            self.published.insert(line.event.repo.clone(), d);
        }
        apply_published(
            self.published_refs
                .entry(line.event.repo.clone())
                .or_default(),
            line.event.kind,
            line.event
                .refs
                .iter()
                .map(|r| (r.name.as_str(), r.new.as_deref())),
        );
    }

    fn remember(&mut self, line: Line) {
        let r = self.reports.entry(line.src).or_insert(0);
        *r = (*r).max(line.report);
        self.next_seq = line.event.seq + 1;
        self.tail.push_back(line.event);
        if self.tail.len() > TAIL {
            self.tail.pop_front();
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Highest report id per worker recorded in the log.
    pub fn report_ids(&self) -> &HashMap<Uuid, u64> {
        &self.reports
    }

    /// Per repo, the digest of the refs published by its last event that recorded one,
    /// in the log when it was opened.
    pub fn published(&self) -> &HashMap<String, u64> {
        &self.published
    }

    /// Per repo, the refs published by the events in the log when it was opened; handed
    /// over once (later calls get nothing).
    pub fn take_published_refs(&mut self) -> HashMap<String, PublishedRefs> {
        std::mem::take(&mut self.published_refs)
    }

    /// Sequence number of the last event (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Number events, append them, and fsync. On error nothing is acknowledged and the
    /// file is cut back to its last complete line.
    pub fn append(&mut self, drafts: Vec<EventDraft>) -> Result<Vec<Event>, EventLogError> {
        self.append_with_digests(drafts, |_| None)
    }

    /// [`EventLog::append`], recording with each event the digest of its repo's whole ref
    /// set once it is published (`digest(draft)`), for [`EventLog::published`].
    pub fn append_with_digests(
        &mut self,
        drafts: Vec<EventDraft>,
        digest: impl Fn(&EventDraft) -> Option<u64>,
    ) -> Result<Vec<Event>, EventLogError> {
        if self.poisoned {
            return Err(EventLogError::Poisoned {
                path: self.path.clone(),
            });
        }
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let mut buf = Vec::new();
        let mut lines = Vec::with_capacity(drafts.len());
        for (i, d) in drafts.into_iter().enumerate() {
            let digest = digest(&d);
            let event = Event {
                seq: self.next_seq + i as u64,
                time: gitmirror_common::rfc3339_ms(d.time_ms),
                repo: d.repo,
                url: d.url,
                worker: d.worker,
                kind: d.kind,
                refs: d.refs,
            };
            let line = Line {
                event,
                src: d.source,
                report: d.report_id,
                digest,
            };
            serde_json::to_writer(&mut buf, &line).map_err(|e| EventLogError::Io {
                action: "encode an event for",
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })?;
            buf.push(b'\n');
            lines.push(line);
        }
        let result = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = result {
            // Cut back whatever part was written, so the next append starts on a line.
            if self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_all())
                .is_err()
            {
                self.poisoned = true;
            }
            return Err(EventLogError::Io {
                action: "append to",
                path: self.path.clone(),
                source,
            });
        }
        self.len += buf.len() as u64;
        let events = lines.iter().map(|l| l.event.clone()).collect();
        for l in lines {
            self.remember(l);
        }
        Ok(events)
    }

    /// Up to `limit` events with `seq > since`, oldest first.
    pub fn since(&self, since: u64, limit: usize) -> Result<Vec<Event>, EventLogError> {
        let in_tail = self
            .tail
            .front()
            .is_none_or(|first| first.seq <= since.saturating_add(1));
        if in_tail {
            return Ok(self
                .tail
                .iter()
                .filter(|e| e.seq > since)
                .take(limit)
                .cloned()
                .collect());
        }
        self.read_file(since, limit)
    }

    fn read_file(&self, since: u64, limit: usize) -> Result<Vec<Event>, EventLogError> {
        let io = |action, source| EventLogError::Io {
            action,
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(|e| io("open", e))?;
        f.seek(SeekFrom::Start(HEADER.len() as u64))
            .map_err(|e| io("seek in", e))?;
        let reader = BufReader::new(f.take(self.len.saturating_sub(HEADER.len() as u64)));
        let mut out = Vec::new();
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|e| io("read", e))?;
            let parsed: Line =
                serde_json::from_slice(&line).map_err(|e| EventLogError::Corrupt {
                    path: self.path.clone(),
                    line: i + 2,
                    detail: e.to_string(),
                })?;
            if parsed.event.seq > since {
                out.push(parsed.event);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(report_id: u64) -> EventDraft {
        EventDraft {
            time_ms: 1_700_000_000_000,
            repo: "a/abc/abc".into(),
            url: "https://example.org/abc".into(),
            worker: 2,
            kind: EventKind::Updated,
            refs: vec![RefUpdate {
                name: "refs/heads/master".into(),
                old: Some("9fceb02".into()),
                new: Some("e5a2f01".into()),
            }],
            source: Uuid::from_u128(7),
            report_id,
        }
    }

    // SPEC §8: numbered, durable, readable back after a restart.
    #[test]
    fn append_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        let ev = log.append(vec![draft(1), draft(2)]).unwrap();
        assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(ev[0].time, "2023-11-14T22:13:20Z");
        drop(log);
        let mut log = EventLog::open(d.path()).unwrap();
        assert_eq!(log.last_seq(), 2);
        assert_eq!(log.report_ids()[&Uuid::from_u128(7)], 2);
        assert_eq!(log.append(vec![draft(3)]).unwrap()[0].seq, 3);
        assert_eq!(log.since(1, 10).unwrap().len(), 2);
        assert_eq!(log.since(0, 1).unwrap()[0].seq, 1);
        let json = serde_json::to_value(&log.since(2, 10).unwrap()[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"seq":3,"time":"2023-11-14T22:13:20Z","repo":"a/abc/abc",
                "url":"https://example.org/abc","worker":2,"kind":"updated",
                "refs":[{"name":"refs/heads/master","old":"9fceb02","new":"e5a2f01"}]})
        );
    }

    // SPEC §8, §10: the digest of the refs each event published survives a restart in the
    // log itself (repos.json may be older), the last one per repo wins, and lines without
    // one (older logs) leave it unknown. The API does not show it.
    #[test]
    fn published_digests_come_back_from_the_log() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        let mut other = draft(3);
        other.repo = "b/bcd/bcd".into();
        log.append(vec![draft(1)]).unwrap();
        log.append_with_digests(vec![draft(2), other], |e| {
            Some(if e.repo == "a/abc/abc" { 11 } else { 22 })
        })
        .unwrap();
        log.append_with_digests(vec![draft(4)], |_| Some(33))
            .unwrap();
        drop(log);
        let log = EventLog::open(d.path()).unwrap();
        let want: HashMap<String, u64> =
            [("a/abc/abc".to_owned(), 33), ("b/bcd/bcd".to_owned(), 22)].into();
        assert_eq!(log.published(), &want);
        let json = serde_json::to_value(&log.since(0, 10).unwrap()[3]).unwrap();
        assert!(json.get("digest").is_none(), "{json}");
    }

    // SPEC §8, §10: the refs published per repo are replayed from the log: a clone sets
    // the whole set, an update changes the refs it lists, a deletion removes one.
    #[test]
    fn published_refs_are_replayed_from_the_log() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        let refs = |list: &[(&str, Option<&str>, Option<&str>)]| -> Vec<RefUpdate> {
            list.iter()
                .map(|(n, o, w)| RefUpdate {
                    name: (*n).into(),
                    old: o.map(Into::into),
                    new: w.map(Into::into),
                })
                .collect()
        };
        let mut clone = draft(1);
        clone.kind = EventKind::Cloned;
        clone.refs = refs(&[
            ("refs/heads/a", None, Some("1")),
            ("refs/heads/b", None, Some("2")),
        ]);
        let mut update = draft(2);
        update.refs = refs(&[
            ("refs/heads/a", Some("1"), Some("3")),
            ("refs/heads/b", Some("2"), None),
            ("refs/tags/t", None, Some("4")),
        ]);
        log.append(vec![clone, update]).unwrap();
        assert!(
            log.take_published_refs().is_empty(),
            "only what was read at open"
        );
        drop(log);
        let mut log = EventLog::open(d.path()).unwrap();
        let all = log.take_published_refs();
        let p = &all["a/abc/abc"];
        let want: PublishedRefs = [("refs/heads/a", "3"), ("refs/tags/t", "4")]
            .iter()
            .map(|(n, id)| (ref_key(n), ref_value(n, id)))
            .collect();
        assert_eq!(p, &want);
        assert!(!is_news(p, "refs/heads/a", Some("3")));
        assert!(is_news(p, "refs/heads/a", Some("1")));
        assert!(!is_news(p, "refs/heads/b", None));
        assert!(is_news(p, "refs/heads/b", Some("2")));
        assert!(is_news(p, "refs/tags/t", None));
        assert!(log.take_published_refs().is_empty(), "handed over once");
    }

    // SPEC §10: a crash mid-append leaves a torn last line, which is cut off.
    #[test]
    fn torn_tail_is_truncated() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        log.append(vec![draft(1)]).unwrap();
        drop(log);
        let p = d.path().join(FILE);
        let good = std::fs::read(&p).unwrap();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":2,\"time\":\"20").unwrap();
        drop(f);
        let mut log = EventLog::open(d.path()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), good);
        assert_eq!(log.append(vec![draft(2)]).unwrap()[0].seq, 2);
        drop(log);
        assert_eq!(EventLog::open(d.path()).unwrap().last_seq(), 2);
    }

    // SPEC §10: any other bad line is loud and names the file.
    #[test]
    fn corrupt_middle_line_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        log.append(vec![draft(1)]).unwrap();
        drop(log);
        let p = d.path().join(FILE);
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("garbage\n");
        text.push_str(
            &std::fs::read_to_string(&p).unwrap()[HEADER.len()..].replace("\"seq\":1", "\"seq\":2"),
        );
        std::fs::write(&p, text).unwrap();
        let e = EventLog::open(d.path()).err().unwrap().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("line 3"),
            "{e}"
        );
        std::fs::write(&p, "something else\n").unwrap();
        let e = EventLog::open(d.path()).err().unwrap().to_string();
        assert!(e.contains("header"), "{e}");
    }

    #[test]
    fn old_events_come_from_the_file() {
        let d = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(d.path()).unwrap();
        let drafts: Vec<_> = (1..=(TAIL as u64 + 5)).map(draft).collect();
        log.append(drafts).unwrap();
        let got = log.since(0, 3).unwrap();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        let got = log.since(TAIL as u64 + 3, 10).unwrap();
        assert_eq!(
            got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![TAIL as u64 + 4, TAIL as u64 + 5]
        );
    }
}
