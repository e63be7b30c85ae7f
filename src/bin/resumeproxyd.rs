//! `resumeproxyd`: the relay. See `resumeproxyd --help` and `man resumeproxyd`.

use clap::Parser;
use resumeproxy::cli::{RelayCli, RelayCommand, ServeArgs};
use resumeproxy::identity::{default_key_path, RelayKey};
use resumeproxy::relay::{Limits, Relay, RelayConfig};
use resumeproxy::session::SessionConfig;
use resumeproxy::target_policy::TargetPolicy;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = RelayCli::parse();
    match cli.command {
        Some(RelayCommand::Fingerprint { key_file }) => fingerprint(key_file),
        None => serve(cli.serve),
    }
}

/// Prints the key's fingerprint, making the key if there is none yet (so an
/// operator can hand the fingerprint to users before the first start).
fn fingerprint(key_file: Option<PathBuf>) -> ExitCode {
    let path = key_file.unwrap_or_else(default_key_path);
    match RelayKey::load_or_create(&path) {
        Ok((key, created)) => {
            if created {
                eprintln!("resumeproxyd: created a new key in {}", path.display());
            }
            println!("{}", key.fingerprint());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("resumeproxyd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let level = match args.verbose {
        0 => "info",
        1 => "resumeproxy=debug,info",
        _ => "trace",
    };
    resumeproxy::cli::init_logging(level, true);
    let key_path = args.key_file.clone().unwrap_or_else(default_key_path);
    let key = match RelayKey::load_or_create(&key_path) {
        Ok((key, created)) => {
            if created {
                tracing::info!("created a new key in {}", key_path.display());
            }
            key
        }
        Err(e) => {
            eprintln!("resumeproxyd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tls = match resumeproxy::tls::server_config(&key) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!(
                "resumeproxyd: cannot use the key in {}: {e}",
                key_path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let config = RelayConfig {
        listen: args.listen,
        targets: TargetPolicy {
            default: args.target,
            allowed: args.allow.clone(),
        },
        grace: args.grace,
        session: SessionConfig {
            replay_capacity: usize::try_from(args.replay_buffer).unwrap_or(usize::MAX),
            max_data_len: usize::try_from(args.max_frame).unwrap_or(usize::MAX),
            ..SessionConfig::default()
        },
        limits: Limits {
            handshake_timeout: args.handshake_timeout,
            max_sessions: args.max_sessions as usize,
            max_detached: args.max_detached as usize,
            max_handshakes: args.max_handshakes as usize,
            max_handshakes_per_source: args.max_handshakes_per_source as usize,
        },
        tls,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("resumeproxyd: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let relay = match Relay::bind(config).await {
            Ok(relay) => relay,
            Err(e) => {
                eprintln!("resumeproxyd: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let allowed: Vec<String> = args.allow.iter().map(|a| a.to_string()).collect();
        let also = if allowed.is_empty() {
            String::new()
        } else {
            format!(" (also allowed: {})", allowed.join(", "))
        };
        match relay.local_addr() {
            Ok(addr) => tracing::info!(
                "listening on {addr}, sessions go to {}{also}, key {}",
                args.target,
                key.fingerprint()
            ),
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
