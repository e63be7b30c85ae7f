//! `resumeproxy`: the client. See `resumeproxy --help` and `man resumeproxy`.

use clap::Parser;
use resumeproxy::cli::{format_bytes, format_duration, ClientCli, ClientCommand, ConnectArgs};
use resumeproxy::client::{self, ClientConfig, ClientEvent};
use resumeproxy::session::SessionConfig;
use resumeproxy::trust::TrustSource;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// ssh's own exit status for a lost connection; scripts rely on it.
const EXIT_CONNECTION_LOST: u8 = 255;

fn main() -> ExitCode {
    let cli = ClientCli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("resumeproxy: cannot start: {e}");
            return ExitCode::from(EXIT_CONNECTION_LOST);
        }
    };
    match cli.command {
        Some(ClientCommand::Demo(args)) => {
            init_logging(0, false);
            match runtime.block_on(resumeproxy::demo::run(&args)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("resumeproxy demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        None => runtime.block_on(connect(cli.connect)),
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let filter = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "resumeproxy=debug,info",
        (false, _) => "trace",
    };
    resumeproxy::cli::init_logging(filter, false);
}

async fn connect(args: ConnectArgs) -> ExitCode {
    init_logging(args.verbose, args.quiet);
    let (Some(host), Some(port)) = (args.host, args.port) else {
        eprintln!("resumeproxy: HOST and PORT are required (see resumeproxy --help)");
        return ExitCode::from(EXIT_CONNECTION_LOST);
    };
    // With --relay, HOST is the target the relay is asked for by name;
    // without, HOST runs the relay and PORT is its own target's port.
    let (relay_host, target_host) = match args.relay {
        Some(relay) => (relay, host.clone()),
        None => (host.clone(), String::new()),
    };
    let trust = match (args.relay_fingerprint, args.known_relays) {
        (Some(fingerprint), _) => TrustSource::Fingerprint(fingerprint),
        (None, Some(file)) => TrustSource::KnownRelays(file),
        (None, None) => TrustSource::KnownRelays(resumeproxy::known_relays::default_path()),
    };
    let config = ClientConfig {
        relay_host,
        relay_port: args.relay_port,
        target_host,
        target_port: port,
        session: SessionConfig {
            dead_after: args.dead_after,
            ..SessionConfig::default()
        },
        connect_timeout: args.connect_timeout,
        trust,
    };
    // ssh sends SIGHUP when it exits. From then on nobody is reading: the
    // client only tries to tell the relay, and says nothing more.
    let hung_up = Arc::new(AtomicBool::new(false));
    let hangup = {
        let hung_up = Arc::clone(&hung_up);
        async move {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(mut signal) => {
                    signal.recv().await;
                    hung_up.store(true, Ordering::SeqCst);
                }
                Err(_) => std::future::pending().await,
            }
        }
    };
    let quiet = args.quiet;
    let silenced = || quiet || hung_up.load(Ordering::SeqCst);
    let on_event = |event: ClientEvent| {
        if silenced() {
            return;
        }
        match event {
            ClientEvent::Connected { .. } => {}
            ClientEvent::Pinned {
                relay,
                fingerprint,
                file,
            } => say(&format!(
                "pinned the key of relay {relay} ({fingerprint}) in {}",
                file.display()
            )),
            ClientEvent::Lost { reason } => {
                eprintln!("resumeproxy: link to {host} lost ({reason}), reconnecting…")
            }
            ClientEvent::Resumed {
                after, replayed, ..
            } => eprintln!(
                "resumeproxy: resumed after {}, {} replayed",
                format_duration(after),
                format_bytes(replayed)
            ),
        }
    };
    // Held until the error line is out: ssh prints its own as soon as our
    // stdout closes, and the user should read ours first.
    let (mut stdin, mut stdout) = resumeproxy::stdio::take();
    let result = client::run(config, &mut stdin, &mut stdout, hangup, on_event).await;
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            if hung_up.load(Ordering::SeqCst) {
                tracing::debug!("after ssh left: {e}");
            } else {
                say(&e.to_string());
            }
            ExitCode::from(EXIT_CONNECTION_LOST)
        }
    }
}

/// Writes one line to stderr in one write, so that it does not interleave
/// with ssh's own messages on the same terminal.
fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("resumeproxy: {line}\n").as_bytes());
}
