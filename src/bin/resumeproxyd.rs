//! `resumeproxyd`: the relay. See `resumeproxyd --help` and `man resumeproxyd`.

use clap::Parser;
use resumeproxy::cli::RelayCli;
use resumeproxy::relay::{Relay, RelayConfig};
use resumeproxy::session::SessionConfig;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = RelayCli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "resumeproxy=debug,info",
        _ => "trace",
    };
    resumeproxy::cli::init_logging(level, true);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("resumeproxyd: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let config = RelayConfig {
            listen: cli.listen,
            target: cli.target,
            grace: cli.grace,
            session: SessionConfig::default(),
        };
        let relay = match Relay::bind(config).await {
            Ok(relay) => relay,
            Err(e) => {
                eprintln!("resumeproxyd: cannot listen on {}: {e}", cli.listen);
                return ExitCode::FAILURE;
            }
        };
        match relay.local_addr() {
            Ok(addr) => tracing::info!("listening on {addr}, sessions go to {}", cli.target),
            Err(e) => tracing::warn!("listening (address unknown: {e})"),
        }
        relay.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
