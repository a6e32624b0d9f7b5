//! gitmirrord: the coordinator daemon and its commands (SPEC §11).

use clap::{Parser, Subcommand};
use gitmirror_common::{EX_CONFIG, notify};
use gitmirrord::config::{Config, DEFAULT_CONFIG_PATH};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// How long a stop may take before the process exits anyway (SPEC §11: within 10 s).
const STOP_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "gitmirrord",
    version,
    about = "gitmirror coordinator: assigns upstream repos to mirror workers and serves status",
    long_about = "gitmirror coordinator: reads the indexes of upstream repos, assigns each repo to \
                  one live worker, watches worker liveness over QUIC, records ref-change events and \
                  serves the HTTP status API. Without a command it runs the daemon."
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check the configuration file: exit 0 when valid, 78 with the reason otherwise.
    CheckConfig,
    /// Print the join token workers need (creates the identity in state_dir if missing).
    JoinToken {
        /// Replace the join secret first, so the tokens printed before stop working: new
        /// connections must present the new token (a running coordinator picks it up at
        /// once); connected workers stay connected. The certificate pin stays the same.
        #[arg(long)]
        rotate: bool,
    },
    /// Manage enrolled workers (SPEC §17) through the running daemon's API (`http_listen`,
    /// with `api_token_file`'s token when set).
    Workers {
        #[command(subcommand)]
        action: WorkersAction,
    },
}

#[derive(Subcommand)]
enum WorkersAction {
    /// List the workers, and those waiting for approval (`enroll: manual`).
    List,
    /// Let the join token enroll this uuid once: a pending worker, a removed one, or one
    /// that lost its certificate.
    Approve { uuid: uuid::Uuid },
    /// Revoke this worker's certificate, close its connection and move its repos now.
    Remove { uuid: uuid::Uuid },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    gitmirror_common::install_crypto_provider();
    match cli.command {
        Some(Command::CheckConfig) => check_config(&cli.config),
        Some(Command::JoinToken { rotate }) => join_token(&cli.config, rotate),
        Some(Command::Workers { action }) => workers(&cli.config, action),
        None => daemon(&cli.config),
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("gitmirrord: {e}");
        ExitCode::from(EX_CONFIG as u8)
    })
}

fn check_config(path: &Path) -> ExitCode {
    match load(path) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("gitmirrord: warning: {w}");
            }
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `gitmirrord workers …`: one call to the daemon's API, whose answer is printed.
fn workers(path: &Path, action: WorkersAction) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let calls: Vec<(bool, String)> = match &action {
        WorkersAction::List => vec![
            (false, "/api/workers".to_owned()),
            (false, "/api/workers/pending".to_owned()),
        ],
        WorkersAction::Approve { uuid } => vec![(true, format!("/api/workers/{uuid}/approve"))],
        WorkersAction::Remove { uuid } => vec![(true, format!("/api/workers/{uuid}/remove"))],
    };
    let run = async move {
        let client = gitmirrord::ctl::ApiClient::for_config(
            &cfg,
            concat!("gitmirrord/", env!("CARGO_PKG_VERSION")),
        )?;
        let mut out = Vec::new();
        for (post, path) in calls {
            out.push(client.call(post, &path).await?);
        }
        Ok::<_, gitmirrord::ctl::CallError>(out)
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gitmirrord: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run) {
        Ok(bodies) => {
            match action {
                WorkersAction::List => print_workers(&bodies[0], &bodies[1]),
                _ => println!("{}", bodies[0].trim()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gitmirrord: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One line per worker, then one per worker waiting for approval.
fn print_workers(workers: &str, pending: &str) {
    let parse = |s: &str| serde_json::from_str::<Vec<serde_json::Value>>(s).unwrap_or_default();
    let field = |v: &serde_json::Value, k: &str| gitmirrord::ctl::cell(&v[k]);
    println!("ID\tUUID\tNAME\tSTATE\tENROLLED\tREPOS");
    for w in parse(workers) {
        let state = if w["removed"] == true {
            "removed".to_owned()
        } else {
            field(&w, "state")
        };
        println!(
            "{}\t{}\t{}\t{state}\t{}\t{}",
            field(&w, "id"),
            field(&w, "uuid"),
            field(&w, "name"),
            if w["enrolled"] == true {
                "yes"
            } else {
                "no (join token)"
            },
            field(&w, "repos"),
        );
    }
    let pending = serde_json::from_str(pending).unwrap_or(serde_json::Value::Null);
    print!("{}", gitmirrord::ctl::pending_table(&pending, "gitmirrord"));
}

fn join_token(path: &Path, rotate: bool) -> ExitCode {
    use gitmirror_common::trust;
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Every file is written with the owner of the state dir (statefile::write_atomic), so
    // root running this in the service user's directory leaves files the daemon can read;
    // a directory root creates here is root's, which the operator must know.
    let created_by_root =
        rustix::process::geteuid().is_root() && std::fs::symlink_metadata(&cfg.state_dir).is_err();
    let token = gitmirror_common::statefile::ensure_dir(&cfg.state_dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            if rotate {
                trust::rotate_secret(&cfg.state_dir)
            } else {
                trust::Identity::load_or_create(&cfg.state_dir).map(|id| id.join_token())
            }
        });
    match token {
        Ok(token) => {
            if created_by_root {
                eprintln!(
                    "gitmirrord: warning: created {d} as root: if the daemon runs as another \
                     user (the package's `gitmirror`), run `chown -R gitmirror: {d}` before \
                     starting it",
                    d = cfg.state_dir.display()
                );
            }
            if rotate {
                eprintln!(
                    "gitmirrord: replaced the join secret in {}: the old token no longer admits or enrolls \
                     workers; connected workers stay connected, enrolled ones reconnect with their \
                     certificates, a reconnecting worker not enrolled yet needs this token",
                    cfg.state_dir.join(trust::SECRET_FILE).display()
                );
            }
            println!("{}", token.format());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gitmirrord: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn daemon(path: &Path) -> ExitCode {
    gitmirror_common::heap::tune(None);
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    gitmirror_common::logging::init(&cfg.log_level);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let listeners = match gitmirrord::Listeners::bind(&cfg) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let (handle, ctl) = gitmirrord::control();
        signals(handle.clone())?;
        let mut stop = handle.stop_requested();
        let run = gitmirrord::run(cfg, listeners, ctl);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => r,
            _ = async {
                let _ = stop.wait_for(|s| *s).await;
                tokio::time::sleep(STOP_DEADLINE).await;
            } => Err(anyhow::anyhow!("did not stop within {STOP_DEADLINE:?}; exiting anyway")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM/SIGINT stop gracefully; SIGHUP reloads the configuration and polls the indexes.
fn signals(handle: gitmirrord::ControlHandle) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    handle.reload();
                    continue;
                }
            };
            tracing::info!("{name}: stopping gracefully");
            notify::stopping();
            handle.shutdown();
        }
    });
    Ok(())
}
