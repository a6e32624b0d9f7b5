//! `gitmirror-worker`: parse arguments, load the config, run the worker (SPEC §11).

use clap::{Parser, Subcommand};
use gitmirror_common::{EX_CONFIG, install_crypto_provider, logging};
use gitmirror_worker::config::DEFAULT_CONFIG_PATH;
use gitmirror_worker::{WorkerConfig, run};
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
        tokio::spawn(signals(stop_tx));
        run(cfg, stop_rx).await
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

/// SIGTERM/SIGINT stop the worker gracefully; SIGHUP is logged (nothing reloads yet).
async fn signals(stop: tokio::sync::watch::Sender<bool>) {
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
            _ = hup.recv() => tracing::info!("SIGHUP received: reloading the configuration is not supported yet; restart the worker to apply changes"),
        }
    }
    tracing::info!("stop signal received");
    let _ = stop.send(true);
}
