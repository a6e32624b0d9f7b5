//! `gitmirror-worker`: parse arguments, load the config, run the worker (SPEC §11).

use clap::{Parser, Subcommand};
use gitmirror_common::{EX_CONFIG, install_crypto_provider, logging};
use gitmirror_worker::config::DEFAULT_CONFIG_PATH;
use gitmirror_worker::{WorkerConfig, run_reloadable};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Keeps bare git mirrors of the repos its gitmirrord coordinator assigns.
#[derive(Parser)]
#[command(version, about)]
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
}

fn main() -> ExitCode {
    gitmirror_common::heap::tune(Some(gitmirror_common::heap::WORKER_ARENAS));
    let cli = Cli::parse();
    install_crypto_provider();
    let cfg = match WorkerConfig::load(&cli.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("gitmirror-worker: {e}");
            return exit_config();
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        for w in &cfg.warnings {
            eprintln!("gitmirror-worker: warning: {w}");
        }
        println!("{}: configuration is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    logging::init(&cfg.log_level);
    for w in &cfg.warnings {
        tracing::warn!("{}: {w}", cli.config.display());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gitmirror-worker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(signals(stop_tx, reload_tx, cli.config.clone(), cfg.clone()));
        run_reloadable(cfg, stop_rx, reload_rx).await
    });
    // Blocking git work that ignored its interrupt must not hold the exit (SPEC §11: 10 s).
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("gitmirror-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn exit_config() -> ExitCode {
    ExitCode::from(u8::try_from(EX_CONFIG).unwrap_or(1))
}

/// SIGTERM/SIGINT stop the worker gracefully. SIGHUP re-reads the configuration file:
/// `log_level`, `fetch.*`, `disk.*` and `credentials` take effect at once; other changed keys are named
/// in the log as needing a restart; a bad file keeps the running configuration.
async fn signals(
    stop: tokio::sync::watch::Sender<bool>,
    reload: tokio::sync::mpsc::Sender<WorkerConfig>,
    path: PathBuf,
    mut running: WorkerConfig,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the worker with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let loaded = {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || WorkerConfig::load(&path)).await
                };
                let new = match loaded {
                    Ok(Ok(new)) => new,
                    Ok(Err(e)) => {
                        tracing::error!("SIGHUP: keeping the running configuration: {e}");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!("SIGHUP: keeping the running configuration: {e}");
                        continue;
                    }
                };
                match logging::set_level(&new.log_level) {
                    Ok(logging::LevelChange::OverriddenByEnv) => {
                        tracing::info!("SIGHUP: RUST_LOG is set and overrides log_level")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!("SIGHUP: log_level: {e}"),
                }
                for key in running.restart_needed(&new) {
                    tracing::warn!("SIGHUP: {key} changed; restart the worker to apply it");
                }
                tracing::info!("SIGHUP: reloaded log_level, fetch.*, disk.* and credentials from {}", path.display());
                running = new.clone();
                let _ = reload.send(new).await;
            }
        }
    }
    tracing::info!("stop signal received");
    let _ = stop.send(true);
}
