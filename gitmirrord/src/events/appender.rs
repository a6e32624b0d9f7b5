//! Event appends off the main loop, with group commit.
//!
//! The main loop hands each outcome batch's events to [`Appender::append`] and goes on
//! answering workers and HTTP; a writer thread writes them in submission order and a
//! syncer thread makes everything written so far durable with one fsync, however many
//! batches that covers. Each job then comes back as [`Done`], in submission order, and only
//! then is its batch acknowledged (design.md "Event appends off the main loop").
//! Reads that must see every earlier append ([`Appender::read`]) queue behind the writes,
//! not behind the fsyncs.

use super::{Event, EventDraft, EventLog};
use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// A job's fate, reported once, in submission order.
#[derive(Debug)]
pub enum Done {
    /// The job's events are durable (numbered, oldest first).
    Durable { job: u64, events: Vec<Event> },
    /// They are not: `repos` are those the job's events were for.
    Failed {
        job: u64,
        repos: Vec<String>,
        error: String,
    },
}

type ReadFn = Box<dyn FnOnce(&mut EventLog) + Send>;

enum Job {
    Append {
        job: u64,
        drafts: Vec<EventDraft>,
        /// Per report id, the digest of the ref set its outcome reported.
        digests: HashMap<u64, u64>,
    },
    Read(ReadFn),
}

/// Written by the writer, waiting for the syncer.
struct Written {
    job: u64,
    result: Result<Vec<Event>, (Vec<String>, String)>,
}

pub struct Appender {
    jobs: std_mpsc::Sender<Job>,
    next_job: u64,
}

/// The appender's threads are gone (they only stop when it is dropped, or by a panic).
#[derive(Debug, thiserror::Error)]
#[error("the event log's writer thread has stopped")]
pub struct Stopped;

impl Appender {
    /// Start the writer and syncer threads on `log`; each job's [`Done`] arrives on the
    /// returned receiver.
    pub fn start(
        log: Arc<Mutex<EventLog>>,
    ) -> std::io::Result<(Self, mpsc::UnboundedReceiver<Done>)> {
        let (jobs, job_rx) = std_mpsc::channel::<Job>();
        let (written, written_rx) = std_mpsc::channel::<Written>();
        let (done, done_rx) = mpsc::unbounded_channel();
        let writer_log = log.clone();
        std::thread::Builder::new()
            .name("events-writer".into())
            .spawn(move || write_loop(&writer_log, &job_rx, &written))?;
        std::thread::Builder::new()
            .name("events-syncer".into())
            .spawn(move || sync_loop(&log, &written_rx, &done))?;
        Ok((Self { jobs, next_job: 1 }, done_rx))
    }

    /// Queue `drafts` for the log; returns the job number its [`Done`] will carry.
    pub fn append(
        &mut self,
        drafts: Vec<EventDraft>,
        digests: HashMap<u64, u64>,
    ) -> Result<u64, Stopped> {
        let job = self.next_job;
        self.jobs
            .send(Job::Append {
                job,
                drafts,
                digests,
            })
            .map_err(|_| Stopped)?;
        self.next_job += 1;
        Ok(job)
    }

    /// Run `f` on the log after every append queued before it was written (not synced).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut EventLog) -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        let run: ReadFn = Box::new(move |log| {
            let _ = tx.send(f(log));
        });
        self.jobs.send(Job::Read(run)).map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

fn lock(log: &Mutex<EventLog>) -> std::sync::MutexGuard<'_, EventLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_loop(
    log: &Mutex<EventLog>,
    jobs: &std_mpsc::Receiver<Job>,
    written: &std_mpsc::Sender<Written>,
) {
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Read(f) => f(&mut lock(log)),
            Job::Append {
                job,
                drafts,
                digests,
            } => {
                let repos: Vec<String> = drafts.iter().map(|d| d.repo.clone()).collect();
                let result = lock(log)
                    .write(drafts, |d| digests.get(&d.report_id).copied())
                    .map_err(|e| (repos, e.to_string()));
                if written.send(Written { job, result }).is_err() {
                    return;
                }
            }
        }
    }
}

/// One fsync for everything written since the last, then each job's [`Done`].
fn sync_loop(
    log: &Mutex<EventLog>,
    written: &std_mpsc::Receiver<Written>,
    done: &mpsc::UnboundedSender<Done>,
) {
    while let Ok(first) = written.recv() {
        let mut group = vec![first];
        group.extend(written.try_iter());
        let synced = if group.iter().any(|w| w.result.is_ok()) {
            sync(log)
        } else {
            Ok(())
        };
        for w in group {
            let d = match (w.result, &synced) {
                (Ok(events), Ok(())) => Done::Durable { job: w.job, events },
                (Ok(events), Err(e)) => Done::Failed {
                    job: w.job,
                    repos: events.into_iter().map(|e| e.repo).collect(),
                    error: e.clone(),
                },
                (Err((repos, error)), _) => Done::Failed {
                    job: w.job,
                    repos,
                    error,
                },
            };
            if done.send(d).is_err() {
                return;
            }
        }
    }
}

/// The fsync runs without the lock, so readers and the writer go on meanwhile.
fn sync(log: &Mutex<EventLog>) -> Result<(), String> {
    let Some((file, seq)) = lock(log).unsynced().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    match file.sync_data() {
        Ok(()) => {
            lock(log).synced(seq);
            Ok(())
        }
        Err(source) => Err(lock(log).sync_failed(source).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    fn draft(report_id: u64, repo: &str) -> EventDraft {
        EventDraft {
            time_ms: 1_700_000_000_000,
            repo: repo.into(),
            url: "https://example.org/r".into(),
            worker: 1,
            kind: EventKind::Cloned,
            trigger: Default::default(),
            refs: Vec::new(),
            source: uuid::Uuid::from_u128(9),
            report_id,
        }
    }

    // SPEC §10: every job comes back once, in submission order, durable; a read queued
    // after an append sees it written; the digests go with their events.
    #[tokio::test]
    async fn spec_10_jobs_come_back_in_order_and_durable() {
        let d = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(EventLog::open(d.path()).unwrap()));
        let (mut appender, mut done) = Appender::start(log.clone()).unwrap();
        let mut jobs = Vec::new();
        for i in 1..=50u64 {
            let digests = HashMap::from([(i, 100 + i)]);
            jobs.push(
                appender
                    .append(vec![draft(i, &format!("r{i}"))], digests)
                    .unwrap(),
            );
        }
        let last = appender.read(|log| log.last_seq()).await.unwrap();
        assert_eq!(last, 50, "the read came after the 50 writes");
        let mut seqs = Vec::new();
        for job in jobs {
            match done.recv().await.unwrap() {
                Done::Durable { job: j, events } => {
                    assert_eq!(j, job);
                    seqs.extend(events.iter().map(|e| e.seq));
                }
                Done::Failed { error, .. } => panic!("{error}"),
            }
        }
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
        assert_eq!(lock(&log).durable_seq(), 50);
        drop(appender);
        let mut reopened = EventLog::open(d.path()).unwrap();
        assert_eq!(reopened.take_published().get("r7"), Some(&107));
    }

    #[tokio::test]
    async fn spec_10_a_poisoned_log_fails_each_job_naming_its_repos() {
        let d = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(EventLog::open(d.path()).unwrap()));
        let _ = lock(&log).sync_failed(std::io::Error::other("EIO"));
        let (mut appender, mut done) = Appender::start(log).unwrap();
        let job = appender
            .append(vec![draft(1, "a"), draft(2, "b")], HashMap::new())
            .unwrap();
        match done.recv().await.unwrap() {
            Done::Failed {
                job: j,
                repos,
                error,
            } => {
                assert_eq!((j, repos), (job, vec!["a".to_owned(), "b".to_owned()]));
                assert!(error.contains("events"), "{error}");
            }
            Done::Durable { .. } => panic!("a poisoned log wrote"),
        }
    }
}
