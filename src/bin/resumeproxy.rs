//! `resumeproxy`: the client. See `resumeproxy --help` and `man resumeproxy`.

use clap::CommandFactory;
use clap::Parser;
use resumeproxy::cli::config::ClientSettings;
use resumeproxy::cli::{ClientCli, ClientCommand, ConnectArgs, LinkOptions};
use resumeproxy::client::control::{self, ControlSocket, LinkState};
use resumeproxy::client::direct::{self, Fallback};
use resumeproxy::client::trust::TrustSource;
use resumeproxy::client::{self, ClientConfig, ClientError, ClientEvent};
use resumeproxy::proto::session::SessionConfig;
use resumeproxy::units::{format_bytes, format_duration, host_port};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
        #[cfg(target_os = "linux")]
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
        Some(ClientCommand::Status { json }) => {
            init_logging(0, false);
            runtime.block_on(status(json))
        }
        Some(ClientCommand::Resume { id, all: _ }) => {
            init_logging(0, false);
            runtime.block_on(resume(id))
        }
        Some(ClientCommand::Wrap { options, command }) => wrap(&options, &command),
        Some(ClientCommand::Completions { shell }) => {
            let mut command = ClientCli::command();
            clap_complete::generate(shell, &mut command, "resumeproxy", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        None => runtime.block_on(connect(cli.connect)),
    }
}

/// `resumeproxy status`: one line (or JSON object) per live session.
async fn status(json: bool) -> ExitCode {
    let reports = control::status_all(&control::runtime_dir()).await;
    if json {
        for report in &reports {
            match serde_json::to_string(report) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("resumeproxy: {e}"),
            }
        }
        return ExitCode::SUCCESS;
    }
    if reports.is_empty() {
        println!("no live sessions");
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<16} {:<22} {:<14} {:<9} {:<34} {:>9} {:>10} {:>10} {:>5} {:>5} {:>9} {:>10}",
        "ID",
        "RELAY",
        "INSTANCE",
        "TRANSPORT",
        "STATE",
        "UPTIME",
        "SENT",
        "RECEIVED",
        "RECON",
        "MOVED",
        "RTT",
        "UNACKED"
    );
    for r in &reports {
        let state = match r.link {
            LinkState::Connected => "connected".to_string(),
            LinkState::Reconnecting { since_ms, attempts } => format!(
                "reconnecting for {} ({attempts} attempts)",
                format_duration(Duration::from_millis(since_ms))
            ),
        };
        let rtt = r
            .rtt_us
            .map_or("-".to_string(), |us| format!("{:.1}ms", us as f64 / 1000.0));
        println!(
            "{:<16} {:<22} {:<14} {:<9} {:<34} {:>9} {:>10} {:>10} {:>5} {:>5} {:>9} {:>10}",
            r.id,
            r.relay,
            r.instance,
            r.transport,
            state,
            format_duration(Duration::from_millis(r.uptime_ms)),
            format_bytes(r.bytes_sent),
            format_bytes(r.bytes_received),
            r.reconnects,
            r.moves,
            rtt,
            format_bytes(r.unacked)
        );
    }
    ExitCode::SUCCESS
}

/// `resumeproxy resume`: ask reconnecting clients to try now.
async fn resume(id: Option<String>) -> ExitCode {
    let asked = control::resume(&control::runtime_dir(), id.as_deref()).await;
    if asked.is_empty() {
        match id {
            Some(id) => say(&format!(
                "no live session with an id starting {id:?} (see resumeproxy status)"
            )),
            None => say("no live sessions"),
        }
        return ExitCode::FAILURE;
    }
    for id in asked {
        println!("{id}: trying now");
    }
    ExitCode::SUCCESS
}

/// `resumeproxy wrap -- COMMAND …`: runs the command through resumeproxy.
fn wrap(options: &LinkOptions, command: &[String]) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe.display().to_string(),
        Err(e) => {
            say(&format!("wrap: cannot find this program's path: {e}"));
            return ExitCode::from(EXIT_CONNECTION_LOST);
        }
    };
    let wrapped = match resumeproxy::cli::wrap::wrap(&exe, &options.to_args(), command, |key| {
        std::env::var(key).ok()
    }) {
        Ok(wrapped) => wrapped,
        Err(e) => {
            say(&e);
            return ExitCode::from(2);
        }
    };
    let status = std::process::Command::new(&wrapped.program)
        .args(&wrapped.args)
        .envs(wrapped.env.iter().map(|(k, v)| (k, v)))
        .status();
    match status {
        Ok(status) => match status.code() {
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            // Killed by a signal: the shell's convention.
            None => ExitCode::from(128 + killed_by(&status)),
        },
        Err(e) => {
            say(&format!("wrap: cannot run {}: {e}", wrapped.program));
            ExitCode::from(127)
        }
    }
}

/// Logging to stderr, which is the user's terminal (through ssh). At the
/// default verbosity only this program speaks, in its own lines
/// (`resumeproxy: …`); the libraries' logs (quinn, rustls) and the log's
/// levels appear with `-v` or `RESUMEPROXY_LOG`.
fn init_logging(verbose: u8, quiet: bool) {
    let filter = match (quiet, verbose) {
        (true, _) => "resumeproxy=error",
        (false, 0) => "resumeproxy=warn",
        (false, 1) => "resumeproxy=debug,info",
        (false, _) => "trace",
    };
    if verbose > 0 || std::env::var_os("RESUMEPROXY_LOG").is_some() {
        resumeproxy::cli::init_logging(filter, false);
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .event_format(OwnLines)
        .init();
}

/// Formats a log event as one of this program's own lines:
/// `resumeproxy: MESSAGE`.
struct OwnLines;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for OwnLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "resumeproxy: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

async fn connect(args: ConnectArgs) -> ExitCode {
    let options = args.options;
    let settings = match ClientSettings::resolve(&options) {
        Ok(settings) => settings,
        Err(e) => {
            init_logging(0, false);
            say(&e.to_string());
            return ExitCode::from(EXIT_CONNECTION_LOST);
        }
    };
    init_logging(options.verbose, settings.quiet);
    let (Some(host), Some(port)) = (args.host, args.port) else {
        say("HOST and PORT are required (see resumeproxy --help)");
        return ExitCode::from(EXIT_CONNECTION_LOST);
    };
    // With --relay, HOST is the target the relay is asked for by name;
    // without, HOST runs the relay and PORT is its own target's port.
    let (relay_host, target_host) = match options.relay {
        Some(relay) => (relay, host.clone()),
        None => (host.clone(), String::new()),
    };
    let trust = if options.relay_fingerprint.is_empty() {
        TrustSource::KnownRelays(settings.known_relays.clone())
    } else {
        TrustSource::Fingerprints(options.relay_fingerprint.clone())
    };
    let config = ClientConfig {
        relay_host,
        relay_port: settings.relay_port,
        target_host,
        target_port: port,
        session: SessionConfig {
            dead_after: settings.dead_after,
            ..SessionConfig::default()
        },
        connect_timeout: settings.connect_timeout,
        trust,
        transport: settings.transport,
        udp_memory: resumeproxy::client::udp_memory::default_path(),
        fallback: settings.fallback,
    };
    // ssh sends SIGHUP when it exits; programs closing their ProxyCommand
    // send SIGTERM; a user presses Ctrl-C (on Windows also: Ctrl-Break, the
    // console closing, logoff). Each ends the session (on the relay too),
    // and from then on the client says nothing more: ssh has gone, or
    // whoever asked is not waiting for words. The handlers are in place
    // before the first connection.
    let ended = Arc::new(AtomicBool::new(false));
    let end_request = {
        let ended = Arc::clone(&ended);
        let signal = resumeproxy::client::ending::end_requested();
        async move {
            let signal = signal.await;
            ended.store(true, Ordering::SeqCst);
            signal
        }
    };
    let quiet = settings.quiet;
    let silenced = || quiet || ended.load(Ordering::SeqCst);
    let on_event = |event: ClientEvent| {
        if silenced() {
            return;
        }
        match event {
            ClientEvent::Connected { .. } => {}
            // With a fallback, the outcome gets the one line.
            ClientEvent::StartSlow { .. } if settings.fallback == Fallback::Direct => {}
            ClientEvent::StartSlow { relay, reason } => match reason {
                Some(reason) => say(&format!(
                    "relay at {relay} not answering yet ({reason}), retrying…"
                )),
                None => say(&format!("relay at {relay} not answering yet, retrying…")),
            },
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
            ClientEvent::SmallerSegments { mss } => eprintln!(
                "resumeproxy: large packets to and from {host} are lost while small ones pass (a smaller path MTU: a VPN or tunnel?); this session uses TCP segments of at most {mss} bytes from now on"
            ),
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
    let (mut stdin, mut stdout) = resumeproxy::client::stdio::take();
    // `resumeproxy status` and `resume` reach this client here; without it
    // the session still works.
    let control = match ControlSocket::serve(&control::runtime_dir()) {
        Ok((socket, requests)) => Some((socket, requests)),
        Err(e) => {
            tracing::info!("no control socket (status and resume will not see this session): {e}");
            None
        }
    };
    let (_socket, requests) = match control {
        Some((socket, requests)) => (Some(socket), Some(requests)),
        None => (None, None),
    };
    let result = client::run(
        config,
        &mut stdin,
        &mut stdout,
        end_request,
        requests,
        on_event,
    )
    .await;
    match result {
        Ok(_) => ExitCode::SUCCESS,
        // No relay there: straight to the target, if asked for.
        Err(ClientError::NoRelay { addr, reason })
            if settings.fallback == Fallback::Direct && !ended.load(Ordering::SeqCst) =>
        {
            if !quiet {
                say(&format!(
                    "no relay at {addr} ({reason}); connecting straight to {}: this connection \
                     will not survive a network break",
                    host_port(&host, port)
                ));
            }
            direct(&host, port, settings.connect_timeout, stdin, stdout).await
        }
        Err(e) => {
            if ended.load(Ordering::SeqCst) {
                tracing::debug!("after the signal: {e}");
            } else {
                say(&e.to_string());
            }
            ExitCode::from(EXIT_CONNECTION_LOST)
        }
    }
}

/// `--fallback direct`: a plain TCP connection to `host:port`, carried
/// until both ends have closed it, or until a request to end (a signal, or
/// on Windows a console event) ends the client.
async fn direct(
    host: &str,
    port: u16,
    timeout: Duration,
    stdin: resumeproxy::client::stdio::Stdin,
    stdout: resumeproxy::client::stdio::Stdout,
) -> ExitCode {
    let end_request = resumeproxy::client::ending::end_requested();
    tokio::select! {
        piped = direct::pipe(host, port, timeout, stdin, stdout) => match piped {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                say(&e.to_string());
                ExitCode::from(EXIT_CONNECTION_LOST)
            }
        },
        _ = end_request => ExitCode::from(EXIT_CONNECTION_LOST),
    }
}

/// The signal that ended a process that has no exit code (Unix only).
#[cfg(unix)]
fn killed_by(status: &std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    status
        .signal()
        .and_then(|s| u8::try_from(s).ok())
        .unwrap_or(0)
}

/// Windows processes always have an exit code.
#[cfg(not(unix))]
fn killed_by(_status: &std::process::ExitStatus) -> u8 {
    0
}

/// Writes one line to stderr in one write, so that it does not interleave
/// with ssh's own messages on the same terminal.
fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("resumeproxy: {line}\n").as_bytes());
}
