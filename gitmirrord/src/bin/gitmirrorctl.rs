//! gitmirrorctl: ask a running gitmirrord through its HTTP API (SPEC §11, issue 16).
//!
//! Exit codes: 0 ok, 1 API error (or the daemon is down), 2 usage, 3 not found.

use clap::{CommandFactory, Parser, Subcommand};
use gitmirrord::config::{Config, DEFAULT_CONFIG_PATH};
use gitmirrord::ctl::{ApiClient, CallError, cell as s, encode, encode_id, pending_table};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

const AGENT: &str = concat!("gitmirrorctl/", env!("CARGO_PKG_VERSION"));
const EXIT_API: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_FOUND: u8 = 3;

#[derive(Parser)]
#[command(
    name = "gitmirrorctl",
    version,
    about = "Ask a running gitmirrord: status, workers, repos, events, indexes",
    long_about = "Talks to gitmirrord's HTTP API. The address is `http_listen` of the \
                  coordinator's configuration file (or --url); the token is read from its \
                  `api_token_file` (and `api_read_token_file`) when the file is readable. \
                  Exit codes: 0 ok, 1 API error or daemon down, 2 usage, 3 not found."
)]
struct Cli {
    /// The coordinator's configuration file (for `http_listen` and the tokens).
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// The API's base URL, e.g. http://127.0.0.1:8089 (default: from the configuration).
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Workers, repo counts and indexes at a glance.
    Status,
    /// The workers: state, repos, weight, disk, status line (`workers list|approve|remove`
    /// manage enrolment, SPEC §17).
    Workers {
        #[command(subcommand)]
        action: Option<WorkersAction>,
    },
    /// A page of repos, optionally in one state or of one worker.
    Repos {
        /// unassigned, pending, mirrored, failing, gone or waiting.
        #[arg(long)]
        state: Option<String>,
        /// A worker id.
        #[arg(long)]
        worker: Option<u32>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this repo id (the previous page's `next`).
        #[arg(long)]
        after: Option<String>,
    },
    /// One repo explained: state, owner, schedule, last error.
    Repo { id: String },
    /// Ask the repo's owner to fetch it now.
    Fetch { id: String },
    /// Events after a sequence number, oldest first.
    Events {
        /// Start after this event (0: the oldest kept event).
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Keep printing events as they happen (long polls) until interrupted; with
        /// --json one object per line.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// The indexes: commit, last poll, entries, rejected entries, held updates.
    Index,
    /// Apply an index update held back by purge protection.
    Accept { index: String },
    /// Take a worker out of the assignment (SPEC §5): it stays connected and keeps its
    /// repos until their new owners have them mirrored, then drops them.
    Drain {
        /// A worker id or uuid.
        worker: String,
    },
    /// Give a drained worker its share of repos again.
    Undrain {
        /// A worker id or uuid.
        worker: String,
    },
    /// Take a repo down: every worker drops its mirror and no index brings it back until
    /// it is unblocked.
    Block {
        id: String,
        /// Why (kept, logged and shown on the repo page).
        #[arg(long)]
        reason: String,
    },
    /// Lift a block: the repo comes back at once when an index lists it.
    Unblock { id: String },
    /// Print the completion script of a shell (the packages install them).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum WorkersAction {
    /// The workers, and those waiting for approval (`enroll: manual`).
    List,
    /// Let the join token enroll this uuid once: a pending worker, a removed one, or one
    /// that lost its certificate.
    Approve { uuid: uuid::Uuid },
    /// Revoke this worker's certificate, close its connection and move its repos now
    /// (exit 3 when the coordinator never knew the uuid).
    Remove { uuid: uuid::Uuid },
}

/// The longest wait of one long poll of `events --follow` (below the client's timeout).
const FOLLOW_WAIT_SECS: u64 = 25;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "gitmirrorctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let client = match client(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gitmirrorctl: {e}");
            return ExitCode::from(EXIT_API);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gitmirrorctl: {e}");
            return ExitCode::from(EXIT_API);
        }
    };
    rt.block_on(run(&cli, &client))
}

/// The exit code of a failed call, its error printed.
fn failed(e: &CallError) -> ExitCode {
    eprintln!("gitmirrorctl: {e}");
    ExitCode::from(if e.is_not_found() {
        EXIT_NOT_FOUND
    } else {
        EXIT_API
    })
}

async fn run(cli: &Cli, client: &ApiClient) -> ExitCode {
    match &cli.command {
        Command::Events {
            since,
            limit,
            follow: true,
        } => return follow(client, *since, *limit, cli.json).await,
        Command::Workers {
            action: Some(WorkersAction::List),
        } => return workers_list(client, cli.json).await,
        _ => {}
    }
    let (post, path) = match request(&cli.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gitmirrorctl: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let answer = match &cli.command {
        Command::Block { reason, .. } => {
            client
                .post_json(&path, &serde_json::json!({ "reason": reason }))
                .await
        }
        _ => client.call(post, &path).await,
    };
    match answer {
        Ok(body) => {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
            if let Command::Workers {
                action: Some(WorkersAction::Remove { uuid }),
            } = &cli.command
                && v["known"] == false
            {
                eprintln!("gitmirrorctl: the coordinator knows no worker {uuid}");
                return ExitCode::from(EXIT_NOT_FOUND);
            }
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_human(&cli.command, &v);
            }
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    }
}

/// `workers list`: the workers and those waiting for approval; `--json` is
/// `{"workers": [...], "pending": [...]}`.
async fn workers_list(client: &ApiClient, json: bool) -> ExitCode {
    let parse = |b: String| serde_json::from_str::<Value>(&b).unwrap_or(Value::Null);
    let workers = match client.call(false, "/api/workers").await {
        Ok(b) => parse(b),
        Err(e) => return failed(&e),
    };
    let pending = match client.call(false, "/api/workers/pending").await {
        Ok(b) => parse(b),
        Err(e) => return failed(&e),
    };
    if json {
        let v = serde_json::json!({ "workers": workers, "pending": pending });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    print_workers(&workers);
    print!("{}", pending_table(&pending, "gitmirrorctl"));
    ExitCode::SUCCESS
}

/// `events --follow`: long polls from the last event printed, each event printed as it
/// arrives, until SIGINT/SIGTERM (exit 0) or stdout closes (exit 0, SIGPIPE's reading).
async fn follow(client: &ApiClient, mut since: u64, limit: usize, json: bool) -> ExitCode {
    use std::io::Write;
    let stop = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                },
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::pin!(stop);
    loop {
        let path = format!("/api/events?since={since}&limit={limit}&wait={FOLLOW_WAIT_SECS}");
        let answer = tokio::select! {
            a = client.call(false, &path) => a,
            () = &mut stop => return ExitCode::SUCCESS,
        };
        let body = match answer {
            Ok(b) => b,
            // Fell behind retention: say so and go on from the oldest kept event.
            Err(CallError::Status {
                status: 410,
                message,
                ..
            }) => {
                eprintln!("gitmirrorctl: {message}; going on from the oldest kept event");
                since = 0;
                continue;
            }
            Err(e) => return failed(&e),
        };
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut out = String::new();
        for e in v["events"].as_array().into_iter().flatten() {
            since = since.max(e["seq"].as_u64().unwrap_or(since));
            if json {
                out.push_str(&e.to_string());
                out.push('\n');
            } else {
                out.push_str(&event_line(e));
            }
        }
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The reader went away (`| head`).
            return ExitCode::SUCCESS;
        }
    }
}

/// One event as a table line.
fn event_line(e: &Value) -> String {
    format!(
        "{}\t{}\t{}\t{}\tworker {}\t{} refs\n",
        s(&e["seq"]),
        s(&e["time"]),
        s(&e["kind"]),
        s(&e["repo"]),
        s(&e["worker"]),
        e["ref_count"]
            .as_u64()
            .unwrap_or(e["refs"].as_array().map_or(0, |r| r.len() as u64))
    )
}

/// The client: `--url` (tokens from the configuration when it loads), else the
/// configuration's `http_listen`.
fn client(cli: &Cli) -> Result<ApiClient, CallError> {
    let cfg = Config::load(&cli.config);
    match (&cli.url, cfg) {
        (Some(url), cfg) => {
            let cfg = cfg.ok();
            ApiClient::new(
                url.clone(),
                cfg.as_ref()
                    .and_then(|c| c.api_token.as_ref().map(|t| t.0.clone())),
                cfg.as_ref()
                    .and_then(|c| c.api_read_token.as_ref().map(|t| t.0.clone())),
                AGENT,
            )
        }
        (None, Ok(cfg)) => ApiClient::for_config(&cfg, AGENT),
        (None, Err(e)) => Err(CallError::Other(format!(
            "{e} (give the daemon's address with --url, or a readable --config)"
        ))),
    }
}

/// The method and path of a command.
fn request(c: &Command) -> Result<(bool, String), String> {
    Ok(match c {
        Command::Status => (false, "/api/status".into()),
        Command::Workers { action: None } => (false, "/api/workers".into()),
        Command::Workers {
            action: Some(WorkersAction::List),
        } => return Err("workers list takes two calls".into()),
        Command::Workers {
            action: Some(WorkersAction::Approve { uuid }),
        } => (true, format!("/api/workers/{uuid}/approve")),
        Command::Workers {
            action: Some(WorkersAction::Remove { uuid }),
        } => (true, format!("/api/workers/{uuid}/remove")),
        Command::Repos {
            state,
            worker,
            limit,
            after,
        } => {
            let mut q = format!("/api/repos?limit={limit}");
            if let Some(s) = state {
                q.push_str(&format!("&state={}", encode(s)));
            }
            if let Some(w) = worker {
                q.push_str(&format!("&worker={w}"));
            }
            if let Some(a) = after {
                q.push_str(&format!("&after={}", encode(a)));
            }
            (false, q)
        }
        Command::Repo { id } => (false, format!("/api/repos/{}", repo_id(id)?)),
        Command::Fetch { id } => (true, format!("/api/repos/{}/fetch", repo_id(id)?)),
        Command::Events { since, limit, .. } => {
            (false, format!("/api/events?since={since}&limit={limit}"))
        }
        Command::Index => (false, "/api/index".into()),
        Command::Accept { index } => (true, format!("/api/index/{}/accept", encode(index))),
        Command::Drain { worker } => (true, format!("/api/workers/{}/drain", encode(worker))),
        Command::Undrain { worker } => (true, format!("/api/workers/{}/undrain", encode(worker))),
        Command::Block { id, reason } => {
            if reason.trim().is_empty() {
                return Err("--reason must say why".into());
            }
            (true, format!("/api/repos/{}/block", repo_id(id)?))
        }
        Command::Unblock { id } => (true, format!("/api/repos/{}/unblock", repo_id(id)?)),
        Command::Completions { .. } => return Err("completions need no daemon".into()),
    })
}

/// A repo id has three parts (`a/abc/abc`).
fn repo_id(id: &str) -> Result<String, String> {
    let parts = id.split('/').count();
    if parts != 3 || id.split('/').any(str::is_empty) {
        return Err(format!(
            "{id:?} is not a repo id: one has three parts, like a/abc/abc"
        ));
    }
    Ok(encode_id(id))
}

fn print_human(c: &Command, v: &Value) {
    match c {
        Command::Status => {
            println!(
                "gitmirrord {} up {} s, {} workers",
                s(&v["version"]),
                s(&v["uptime_secs"]),
                s(&v["worker_count"])
            );
            let r = &v["repos"];
            println!(
                "repos: {} total, {} mirrored, {} pending, {} failing, {} gone, {} waiting, {} unassigned, {} blocked",
                s(&r["total"]),
                s(&r["mirrored"]),
                s(&r["pending"]),
                s(&r["failing"]),
                s(&r["gone"]),
                s(&r["waiting"]),
                s(&r["unassigned"]),
                s(&r["blocked"])
            );
            print_workers(&v["workers"]);
            for i in v["index"].as_array().into_iter().flatten() {
                println!(
                    "index {}: {} entries, commit {}, last poll {}{}",
                    s(&i["name"]),
                    s(&i["entries"]),
                    s(&i["commit"]),
                    s(&i["last_poll"]),
                    if i["held"].is_null() {
                        String::new()
                    } else {
                        " — an update is held (gitmirrorctl accept NAME)".into()
                    }
                );
            }
        }
        Command::Workers { action: None }
        | Command::Workers {
            action: Some(WorkersAction::List),
        } => print_workers(v),
        Command::Workers {
            action: Some(WorkersAction::Approve { uuid }),
        } => println!(
            "approved {uuid}: the join token may enroll it once{}",
            if v["was_pending"] == true {
                " (it was waiting)"
            } else {
                ""
            }
        ),
        Command::Workers {
            action: Some(WorkersAction::Remove { uuid }),
        } => println!("removed {uuid}: its certificate is revoked and its repos move"),
        Command::Repos { .. } => {
            println!("ID\tSTATE\tWORKER\tLAST SUCCESS\tURL");
            for r in v["repos"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    s(&r["id"]),
                    s(&r["state"]),
                    s(&r["worker"]),
                    s(&r["last_success"]),
                    s(&r["url"])
                );
            }
            println!("({} matching", s(&v["total"]));
            if let Some(n) = v["next"].as_str() {
                println!(" — next page: --after {n})");
            } else {
                println!(")");
            }
        }
        Command::Repo { .. } => {
            if v["state"] == "blocked" {
                for k in [
                    "id",
                    "state",
                    "url",
                    "index",
                    "reason",
                    "blocked_at",
                    "blocked_by",
                ] {
                    println!("{k:<13}{}", s(&v[k]));
                }
                return;
            }
            for k in [
                "id",
                "url",
                "index",
                "state",
                "worker",
                "holders",
                "clone_url",
                "last_fetch",
                "last_success",
                "last_change",
                "next_due",
                "fetches",
                "failures",
                "refs",
            ] {
                println!("{k:<13}{}", s(&v[k]));
            }
            if let Some(e) = v["last_error"].as_object() {
                println!(
                    "{:<13}{} at {}: {}",
                    "last_error",
                    s(&e["class"]),
                    s(&e["time"]),
                    s(&e["message"])
                );
            }
        }
        Command::Fetch { id } => println!("asked the owner of {id} to fetch it now"),
        Command::Events { .. } => {
            let events = v["events"].as_array().or_else(|| v.as_array());
            for e in events.into_iter().flatten() {
                print!("{}", event_line(e));
            }
        }
        Command::Index => {
            println!("NAME\tENTRIES\tCOMMIT\tLAST POLL\tREJECTED\tHELD\tLAST ERROR");
            for i in v.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    s(&i["name"]),
                    s(&i["entries"]),
                    s(&i["commit"]),
                    s(&i["last_poll"]),
                    i["rejected"].as_array().map_or(0, Vec::len),
                    if i["held"].is_null() { "no" } else { "yes" },
                    s(&i["last_error"])
                );
            }
        }
        Command::Accept { index } => println!("applied the held update of index {index}"),
        Command::Drain { worker } => {
            if v["changed"] == true {
                println!(
                    "drained worker {worker}: its {} repos move to other workers, make before break",
                    s(&v["moving"])
                );
            } else {
                println!("worker {worker} was drained already");
            }
        }
        Command::Undrain { worker } => {
            if v["changed"] == true {
                println!("undrained worker {worker}: it takes its share of repos again");
            } else {
                println!("worker {worker} was not drained");
            }
        }
        Command::Block { id, .. } => {
            if v["changed"] == true {
                println!("blocked {id}: every worker is told to drop its mirror");
            } else {
                println!("{id} was blocked already (the first reason is kept)");
            }
        }
        Command::Unblock { id } => {
            if v["back"] == true {
                println!("unblocked {id}: an index lists it, so it is assigned again");
            } else {
                println!("unblocked {id}: it comes back when an index lists it");
            }
        }
        Command::Completions { .. } => {}
    }
}

fn print_workers(v: &Value) {
    println!("ID\tNAME\tSTATE\tREPOS\tWEIGHT\tDISK FREE\tLAST SEEN\tSTATUS");
    for w in v.as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}{}\t{}\t{}\t{}\t{} s\t{}",
            s(&w["id"]),
            s(&w["name"]),
            s(&w["state"]),
            if w["drained"] == true { ",drained" } else { "" },
            s(&w["repos"]),
            s(&w["weight"]),
            s(&w["disk_free_bytes"]),
            s(&w["last_seen_secs"]),
            s(&w["status"])
        );
    }
}
