//! The daemons under test as child processes: config files, logs, kill -9 and restart,
//! the HTTP API, and a whole fleet (index + coordinator + workers) in one temp dir.

use crate::git::{Index, is_bare_repo, remote_url, try_ls_remote, try_mirror_refs};
use crate::{
    TestDir, bin, free_tcp_port, free_udp_port, http, tail, wait_for, yaml_path, yaml_str,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// `fetch.min_interval` of the standard worker config.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);
/// `liveness.suspect_after + dead_after` of the standard coordinator config.
pub const DEAD_AFTER_TOTAL: Duration = Duration::from_secs(7);
/// Deadline for a fleet to mirror a few dozen small repos.
pub const SETTLE: Duration = Duration::from_secs(90);

/// A daemon process: stdout and stderr appended to one log file, `RUST_LOG=info`,
/// SIGKILLed when dropped. Restartable with the same arguments.
pub struct Proc {
    label: String,
    bin: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    /// Extra environment for the next starts ([`Proc::set_env`]).
    env: Mutex<Vec<(OsString, OsString)>>,
}

impl Proc {
    pub fn new(label: &str, bin: PathBuf, args: Vec<OsString>, log: PathBuf) -> Self {
        Self {
            label: label.to_owned(),
            bin,
            args,
            log,
            child: Mutex::new(None),
            env: Mutex::new(Vec::new()),
        }
    }

    /// Set `key=value` in the environment of every later start.
    pub fn set_env(&self, key: &str, value: &str) {
        let mut env = self.env.lock().unwrap_or_else(|e| e.into_inner());
        env.retain(|(k, _)| k != key);
        env.push((key.into(), value.into()));
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawn the process (it must not be running).
    pub fn start(&self) {
        let mut slot = self.slot();
        if let Some(c) = slot.as_mut() {
            assert!(
                c.try_wait().ok().flatten().is_some(),
                "{} is already running",
                self.label
            );
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        writeln!(log, "=== harness: starting {} ===", self.label).expect("write log");
        let err = log.try_clone().expect("clone log handle");
        let env = self.env.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        *slot = Some(child);
    }

    /// Send `signal` to the running process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = self
            .pid()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            .unwrap_or_else(|| panic!("{} is not running", self.label));
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("kill {signal:?} {}: {e}", self.label));
    }

    /// Send SIGTERM and wait up to `timeout` for the exit; `None` if it did not exit.
    pub fn terminate(&self, timeout: Duration) -> Option<ExitStatus> {
        if !self.is_running() {
            return self.exited();
        }
        self.signal(rustix::process::Signal::TERM);
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` and reap.
    pub fn kill(&self) {
        if let Some(mut c) = self.slot().take() {
            let _ = c.kill();
            let _ = c.wait();
            if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log) {
                let _ = writeln!(log, "=== harness: killed {} (SIGKILL) ===", self.label);
            }
        }
    }

    /// Exit status if the process was started and has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.slot()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&self) -> bool {
        let mut slot = self.slot();
        match slot.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.slot().as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Current log length, to wait for lines written after this point.
    pub fn log_mark(&self) -> usize {
        std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize)
    }

    /// The log written since `mark`.
    pub fn log_since(&self, mark: usize) -> String {
        let b = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(b.get(mark..).unwrap_or_default()).into_owned()
    }

    /// Wait until a line containing `needle` appears after `mark`; returns that line.
    pub fn wait_log(&self, mark: usize, needle: &str, timeout: Duration) -> String {
        wait_for(
            timeout,
            &format!("{:?} in the log of {}", needle, self.label),
            || {
                let text = self.log_since(mark);
                text.lines()
                    .find(|l| l.contains(needle))
                    .map(str::to_owned)
                    .ok_or_else(|| format!("log tail:\n{}", tail(&text, 15)))
            },
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}\n-----",
                self.label,
                self.log.display(),
                tail(&self.log(), 40)
            );
        }
    }
}

/// Result of a `check-config` run.
#[derive(Debug)]
pub struct CheckConfig {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// `<binary> check-config --config <path>`.
pub fn check_config(binary: &str, config: &Path) -> CheckConfig {
    let out = Command::new(bin(binary))
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {binary} check-config: {e}"));
    CheckConfig {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `gitmirrord join-token --config <path>`: the one-line token.
pub fn join_token(config: &Path) -> String {
    let out = Command::new(bin("gitmirrord"))
        .arg("join-token")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run gitmirrord join-token");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gitmirrord join-token --config {} failed ({}): {}",
        config.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("gmj1."),
        "join-token should print one line gmj1.…, got {stdout:?}"
    );
    lines[0].trim().to_owned()
}

/// The coordinator: config in `<dir>/gitmirrord.yaml`, state in `<dir>/state`, log in
/// `<dir>/gitmirrord.log`, QUIC and HTTP on loopback ports picked free.
pub struct Coordinator {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub udp_port: u16,
    pub http_port: u16,
    pub proc: Proc,
}

impl Coordinator {
    /// The standard test config (SPEC §2.1) for an index at `index`. It places per repo
    /// (`placement: repo`): the tests of SPEC §5 spread repos of one folder (`repo_set`
    /// makes one) over the workers; tests of project placement (SPEC §14) drop the line
    /// (a fresh state directory then takes `project`) or set `placement: project`.
    pub fn standard_yaml(udp: u16, http: u16, state_dir: &Path, index: &Path) -> String {
        format!(
            "listen: 127.0.0.1:{udp}\n\
             http_listen: 127.0.0.1:{http}\n\
             state_dir: {state}\n\
             indexes:\n  - name: test\n    url: {index}\n    poll_interval: 1s\n\
             allow_file_urls: false\n\
             liveness:\n  keepalive_interval: 1s\n  suspect_after: 3s\n  dead_after: 4s\n\
             max_workers: 10\n\
             placement: repo\n\
             log_level: info\n",
            state = yaml_path(state_dir),
            index = yaml_path(index),
        )
    }

    /// A coordinator with the standard config (not started).
    pub fn new(dir: &Path, index: &Path) -> Self {
        Self::with_yaml(dir, |udp, http, state| {
            Self::standard_yaml(udp, http, state, index)
        })
    }

    /// A coordinator whose config `make(udp_port, http_port, state_dir)` writes.
    pub fn with_yaml(dir: &Path, make: impl FnOnce(u16, u16, &Path) -> String) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir coordinator dir");
        let (udp_port, http_port) = (free_udp_port(), free_tcp_port());
        let state_dir = dir.join("state");
        let config = dir.join("gitmirrord.yaml");
        std::fs::write(&config, make(udp_port, http_port, &state_dir)).expect("write config");
        let proc = Proc::new(
            "gitmirrord",
            bin("gitmirrord"),
            vec!["--config".into(), config.clone().into()],
            dir.join("gitmirrord.log"),
        );
        Self {
            dir: dir.to_path_buf(),
            config,
            state_dir,
            udp_port,
            http_port,
            proc,
        }
    }

    pub fn join_token(&self) -> String {
        join_token(&self.config)
    }

    pub fn start(&self) {
        self.proc.start();
    }

    /// Start and wait for `GET /healthz` to answer `200 ok`.
    pub fn start_ready(&self) {
        self.start();
        self.wait_ready();
    }

    pub fn wait_ready(&self) {
        wait_for(Duration::from_secs(30), "coordinator /healthz", || {
            if let Some(status) = self.proc.exited() {
                panic!(
                    "gitmirrord exited ({status}) before it was ready:\n{}",
                    tail(&self.proc.log(), 30)
                );
            }
            match http::get(self.http_port, "/healthz") {
                Ok((200, body)) if body.trim() == "ok" => Ok(()),
                Ok((status, body)) => Err(format!("status {status}: {body:?}")),
                Err(e) => Err(e),
            }
        });
    }

    pub fn kill(&self) {
        self.proc.kill();
    }

    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        http::get(self.http_port, path)
    }

    pub fn post(&self, path: &str, body: &str) -> Result<(u16, String), String> {
        http::post(self.http_port, path, body)
    }

    pub fn json(&self, path: &str) -> Result<Value, String> {
        http::get_json(self.http_port, path)
    }

    pub fn status(&self) -> Result<Value, String> {
        self.json("/api/status")
    }

    pub fn workers(&self) -> Result<Vec<Value>, String> {
        let v = self.json("/api/workers")?;
        v.as_array()
            .cloned()
            .ok_or_else(|| format!("/api/workers is not an array: {v}"))
    }

    pub fn index_status(&self) -> Result<Vec<Value>, String> {
        let v = self.json("/api/index")?;
        v.as_array()
            .cloned()
            .ok_or_else(|| format!("/api/index is not an array: {v}"))
    }

    pub fn repo(&self, id: &str) -> Result<Value, String> {
        self.json(&format!("/api/repos/{id}"))
    }

    /// Every repo summary, following pages.
    pub fn repos(&self) -> Result<Vec<Value>, String> {
        let mut all = Vec::new();
        loop {
            let page = self.json(&format!("/api/repos?limit=10000&offset={}", all.len()))?;
            let total = page["total"]
                .as_u64()
                .ok_or_else(|| format!("/api/repos without total: {page}"))?;
            let repos = page["repos"]
                .as_array()
                .ok_or_else(|| format!("/api/repos without repos: {page}"))?;
            all.extend(repos.iter().cloned());
            if repos.is_empty() || all.len() as u64 >= total {
                return Ok(all);
            }
        }
    }

    /// `GET /api/events?since=<since>&limit=1000` (no `since` for 0, so an event log that
    /// starts at seq 0 is read whole): the events array.
    pub fn events(&self, since: u64) -> Result<Vec<Value>, String> {
        let path = if since == 0 {
            "/api/events?limit=1000".to_owned()
        } else {
            format!("/api/events?since={since}&limit=1000")
        };
        let v = self.json(&path)?;
        v["events"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("/api/events without events: {v}"))
    }

    /// Every event so far, following pages (`/api/events` answers at most 1,000 at a time).
    pub fn all_events(&self) -> Result<Vec<Value>, String> {
        let mut all: Vec<Value> = Vec::new();
        loop {
            let since = all.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
            let page = self.events(since)?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// The first `n` events, once that many are in the log. A repo's state is published
    /// when its outcome is applied; its events become readable a moment later, when the
    /// event log's writer has them (design.md "Event appends off the main loop").
    pub fn wait_events(&self, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for(timeout, &format!("{n} events in the log"), || {
            let events = self.events(0)?;
            if events.len() >= n {
                Ok(events)
            } else {
                Err(format!("{} events: {events:?}", events.len()))
            }
        })
    }

    /// Sequence number of the newest event (0 when none).
    pub fn last_seq(&self) -> Result<u64, String> {
        Ok(self
            .all_events()?
            .last()
            .and_then(|e| e["seq"].as_u64())
            .unwrap_or(0))
    }

    /// The sum of the samples of metric `name` in `/metrics` whose labels include every
    /// pair of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
        let (status, text) = self.get("/metrics")?;
        if status != 200 {
            return Err(format!("GET /metrics: {status} {text}"));
        }
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Repo id → owner worker id (`None` when unassigned), from `/api/repos`.
    pub fn owners(&self) -> Result<BTreeMap<String, Option<u64>>, String> {
        Ok(self
            .repos()?
            .iter()
            .map(|r| (str_field(r, "id"), r["worker"].as_u64()))
            .collect())
    }
}

/// `v[key]` as a string ("" when absent or not a string).
pub fn str_field(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

/// A worker: config in `<dir>/gitmirror-worker.yaml`, mirrors in `<dir>/mirrors`, state in
/// `<dir>/state`, log in `<dir>/worker.log`.
pub struct Worker {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub mirror_dir: PathBuf,
    pub state_dir: PathBuf,
    pub proc: Proc,
}

impl Worker {
    /// The standard test config (SPEC §2.2).
    pub fn standard_yaml(
        name: &str,
        coord_udp: u16,
        token: &str,
        weight: f64,
        mirror_dir: &Path,
        state_dir: &Path,
    ) -> String {
        format!(
            "coordinator: 127.0.0.1:{coord_udp}\n\
             join_token: {token}\n\
             mirror_dir: {mirror}\n\
             state_dir: {state}\n\
             name: {name}\n\
             weight: {weight:?}\n\
             fetch:\n  min_interval: {min}s\n  concurrency: 8\n\
             log_level: info\n",
            token = yaml_str(token),
            mirror = yaml_path(mirror_dir),
            state = yaml_path(state_dir),
            name = yaml_str(name),
            min = MIN_INTERVAL.as_secs(),
        )
    }

    /// A worker with the standard config (not started).
    pub fn new(dir: &Path, name: &str, coord_udp: u16, token: &str, weight: f64) -> Self {
        Self::with_yaml(dir, name, |mirror, state| {
            Self::standard_yaml(name, coord_udp, token, weight, mirror, state)
        })
    }

    /// A worker whose config `make(mirror_dir, state_dir)` writes.
    pub fn with_yaml(dir: &Path, name: &str, make: impl FnOnce(&Path, &Path) -> String) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir worker dir");
        let mirror_dir = dir.join("mirrors");
        let state_dir = dir.join("state");
        let config = dir.join("gitmirror-worker.yaml");
        std::fs::write(&config, make(&mirror_dir, &state_dir)).expect("write worker config");
        let proc = Proc::new(
            &format!("gitmirror-worker {name}"),
            bin("gitmirror-worker"),
            vec!["--config".into(), config.clone().into()],
            dir.join("worker.log"),
        );
        Self {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            config,
            mirror_dir,
            state_dir,
            proc,
        }
    }

    pub fn start(&self) {
        self.proc.start();
    }

    pub fn kill(&self) {
        self.proc.kill();
    }

    /// Final path of the mirror of `id` (SPEC §7.1).
    pub fn mirror_path(&self, id: &str) -> PathBuf {
        self.mirror_dir.join(format!("{id}.git"))
    }

    /// A complete bare repo at the final path of `id`.
    pub fn has_mirror(&self, id: &str) -> bool {
        is_bare_repo(&self.mirror_path(id))
    }

    /// The worker's `.tmp` or `.trash` directory: beside `mirror_dir` (`<mirror_dir>.tmp`)
    /// where the worker put it there (issue 10, SPEC §7.1), else inside it (a mount point).
    pub fn work_dir(&self, name: &str) -> PathBuf {
        let mut beside = self.mirror_dir.clone().into_os_string();
        beside.push(name);
        let beside = PathBuf::from(beside);
        if beside.is_dir() {
            beside
        } else {
            self.mirror_dir.join(name)
        }
    }

    /// Bare repos in the worker's trash directory, at any depth.
    pub fn trash(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        find_bare_repos(&self.work_dir(".trash"), 6, &mut found);
        found
    }
}

fn find_bare_repos(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if is_bare_repo(dir) {
        out.push(dir.to_path_buf());
        return;
    }
    if depth == 0 {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                find_bare_repos(&e.path(), depth - 1, out);
            }
        }
    }
}

/// Repo id → index into [`Fleet::workers`] of its owner.
pub type Owners = BTreeMap<String, usize>;

/// One fleet in one temp dir: an index repo, a coordinator, workers `w0`, `w1`, ….
/// (The upstream `GitDaemon` is separate so tests can share it.)
pub struct Fleet {
    pub workers: Vec<Worker>,
    pub coord: Coordinator,
    pub index: Index,
    pub token: String,
    /// The good entries the index holds now: repo id → URL. Tests keep it current.
    pub repos: BTreeMap<String, String>,
    pub root: TestDir,
}

impl Fleet {
    /// Write `repos` (id → URL) into a new index, start the coordinator and `n` workers.
    pub fn start(label: &str, repos: &BTreeMap<String, String>, n: usize) -> Self {
        Self::start_with(label, repos, n, |yaml, _| yaml)
    }

    /// [`Fleet::start`] with the coordinator's standard config changed by
    /// `edit(yaml, root dir)`.
    pub fn start_with(
        label: &str,
        repos: &BTreeMap<String, String>,
        n: usize,
        edit: impl FnOnce(String, &Path) -> String,
    ) -> Self {
        let root = TestDir::new(label);
        let index = Index::create(&root.path().join("index"));
        for (id, url) in repos {
            index.put_url(id, url);
        }
        index.commit("add repos");
        let coord = Coordinator::with_yaml(&root.path().join("coordinator"), |udp, http, state| {
            edit(
                Coordinator::standard_yaml(udp, http, state, index.path()),
                root.path(),
            )
        });
        let token = coord.join_token();
        coord.start_ready();
        let mut fleet = Self {
            workers: Vec::new(),
            coord,
            index,
            token,
            repos: repos.clone(),
            root,
        };
        for _ in 0..n {
            fleet.add_worker(1.0);
        }
        fleet
    }

    /// Create and start worker `w<N>`; returns its index in `workers`.
    pub fn add_worker(&mut self, weight: f64) -> usize {
        let i = self.create_worker(weight);
        self.workers[i].start();
        i
    }

    /// Create worker `w<N>` without starting it; returns its index in `workers`.
    pub fn create_worker(&mut self, weight: f64) -> usize {
        self.create_worker_with(weight, |yaml| yaml)
    }

    /// Create worker `w<N>` (not started) whose standard config `edit` may change.
    pub fn create_worker_with(
        &mut self,
        weight: f64,
        edit: impl FnOnce(String) -> String,
    ) -> usize {
        let i = self.workers.len();
        let name = format!("w{i}");
        let (udp, token) = (self.coord.udp_port, self.token.clone());
        let w = Worker::with_yaml(&self.root.path().join(&name), &name, |mirror, state| {
            edit(Worker::standard_yaml(
                &name, udp, &token, weight, mirror, state,
            ))
        });
        self.workers.push(w);
        i
    }

    /// Create worker `w<N>` (not started) with `peer_listen` on a free loopback UDP port
    /// (SPEC §13) and the standard config otherwise, changed by `edit`.
    pub fn create_peer_worker_with(
        &mut self,
        weight: f64,
        edit: impl FnOnce(String) -> String,
    ) -> usize {
        let port = free_udp_port();
        self.create_worker_with(weight, |y| {
            edit(format!("{y}peer_listen: 127.0.0.1:{port}\n"))
        })
    }

    /// Create and start a worker with `peer_listen` ([`Fleet::create_peer_worker_with`]);
    /// returns once its peer plane listens.
    pub fn add_peer_worker(&mut self, weight: f64, timeout: Duration) -> usize {
        let i = self.create_peer_worker_with(weight, |y| y);
        self.workers[i].start();
        self.workers[i]
            .proc
            .wait_log(0, "peer plane listening", timeout);
        i
    }

    fn worker_index(&self, name: &str) -> Option<usize> {
        self.workers.iter().position(|w| w.name == name)
    }

    /// API worker id → index into `workers` (matched by name).
    pub fn api_ids(&self) -> Result<BTreeMap<u64, usize>, String> {
        let mut map = BTreeMap::new();
        for w in self.coord.workers()? {
            let name = str_field(&w, "name");
            let id = w["id"]
                .as_u64()
                .ok_or_else(|| format!("worker without id: {w}"))?;
            if let Some(i) = self.worker_index(&name) {
                map.insert(id, i);
            }
        }
        Ok(map)
    }

    /// `/api/workers` entry of worker `i`.
    pub fn api_worker(&self, i: usize) -> Result<Value, String> {
        let name = &self.workers[i].name;
        self.coord
            .workers()?
            .into_iter()
            .find(|w| str_field(w, "name") == *name)
            .ok_or_else(|| format!("{name} not in /api/workers"))
    }

    /// Wait until the workers with these indexes are `alive` in `/api/workers`.
    pub fn wait_alive(&self, which: &[usize], timeout: Duration) {
        wait_for(timeout, "workers alive", || {
            let ws = self.coord.workers()?;
            for &i in which {
                let name = &self.workers[i].name;
                let state = ws
                    .iter()
                    .find(|w| str_field(w, "name") == *name)
                    .map(|w| str_field(w, "state"));
                if state.as_deref() != Some("alive") {
                    return Err(format!("{name} is {state:?}; workers: {ws:?}"));
                }
            }
            Ok(())
        });
    }

    /// `Ok(owners)` when every repo of `self.repos` (and no other) is listed by the API
    /// with its URL, state `mirrored` and an owner among the running workers; the owner
    /// has a final-path mirror and no other running worker has one.
    pub fn settled(&self) -> Result<Owners, String> {
        let ids = self.api_ids()?;
        let listed = self.coord.repos()?;
        let mut owners = Owners::new();
        let mut problems = Vec::new();
        for r in &listed {
            let id = str_field(r, "id");
            let Some(url) = self.repos.get(&id) else {
                problems.push(format!("{id}: listed but not expected"));
                continue;
            };
            if str_field(r, "url") != *url {
                problems.push(format!("{id}: url {} (expected {url})", r["url"]));
            }
            let state = str_field(r, "state");
            if state != "mirrored" {
                problems.push(format!("{id}: state {state}"));
            }
            match r["worker"].as_u64().and_then(|api| ids.get(&api)) {
                Some(&i) if self.workers[i].proc.is_running() => {
                    owners.insert(id, i);
                }
                _ => problems.push(format!(
                    "{id}: owner {} (not a running worker)",
                    r["worker"]
                )),
            }
        }
        for id in self.repos.keys() {
            if !listed.iter().any(|r| str_field(r, "id") == *id) {
                problems.push(format!("{id}: not listed by /api/repos"));
            }
        }
        for (id, &owner) in &owners {
            for (i, w) in self.workers.iter().enumerate() {
                let has = w.has_mirror(id);
                if i == owner && !has {
                    problems.push(format!("{id}: owner {} has no mirror yet", w.name));
                } else if i != owner && has && w.proc.is_running() {
                    problems.push(format!("{id}: non-owner {} still has a mirror", w.name));
                }
            }
        }
        if problems.is_empty() {
            Ok(owners)
        } else {
            let n = problems.len();
            problems.truncate(8);
            Err(format!("{n} problems, first: {problems:#?}"))
        }
    }

    /// Wait for [`Fleet::settled`].
    pub fn wait_settled(&self, timeout: Duration) -> Owners {
        wait_for(timeout, "every repo mirrored exactly once", || {
            self.settled()
        })
    }

    /// Every repo's mirror on its owner: refs equal `git ls-remote` of the upstream and
    /// `origin` is the upstream URL (SPEC §7.1).
    pub fn check_mirrors(&self, owners: &Owners) -> Result<(), String> {
        for (id, &i) in owners {
            let url = &self.repos[id];
            let path = self.workers[i].mirror_path(id);
            let mine = try_mirror_refs(&path)?;
            let theirs = try_ls_remote(url)?;
            if mine != theirs {
                return Err(format!(
                    "{id} on {}: mirror refs {mine:#?} differ from upstream {theirs:#?}",
                    self.workers[i].name
                ));
            }
            let origin = remote_url(&path)?;
            if origin != *url {
                return Err(format!("{id}: origin is {origin}, expected {url}"));
            }
        }
        Ok(())
    }

    /// The repos currently owned by worker `i` per `owners`.
    pub fn owned_by(owners: &Owners, i: usize) -> BTreeSet<String> {
        owners
            .iter()
            .filter(|&(_, &o)| o == i)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// [`crate::mark_mirror`] each of `ids` in worker `i`'s mirror dir: repo id → inode,
    /// for [`crate::same_mirror`] later.
    pub fn mark_mirrors<'a>(
        &self,
        i: usize,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<String, u64> {
        ids.into_iter()
            .map(|id| {
                (
                    id.clone(),
                    crate::mark_mirror(&self.workers[i].mirror_path(id)),
                )
            })
            .collect()
    }
}
