//! The relay's program on Linux, where it runs.

use clap::Parser;
use resumeproxy::cli::config::{ConfigError, RelaySettings};
use resumeproxy::cli::settings::relay::KEY_FILE;
use resumeproxy::cli::{RelayCli, RelayCommand, ServeArgs};
use resumeproxy::proto::fleet::QuicRoute;
use resumeproxy::proto::session::SessionConfig;
use resumeproxy::relay::durable::keeper::{self, EXIT_CONFIG};
use resumeproxy::relay::durable::{Keeper, Store};
use resumeproxy::relay::{Relay, RelayConfig, RelayHandle, Stop};
use resumeproxy::transport::identity::RelayKey;
use resumeproxy::units::count;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How often the counts in systemd's status line are looked at (the line
/// is told when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// `resumeproxyd`'s `main`.
pub(crate) fn main() -> ExitCode {
    let cli = RelayCli::parse();
    match cli.command {
        Some(RelayCommand::Fingerprint { key_file, config }) => fingerprint(key_file, config),
        Some(RelayCommand::CheckConfig { serve, quiet }) => check_config(&serve, quiet),
        None => serve(cli.serve),
    }
}

/// Prints the key's fingerprint, making the key if there is none yet (so an
/// operator can hand the fingerprint to users before the first start).
fn fingerprint(key_file: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    let mut flags = ServeArgs {
        config,
        ..ServeArgs::default()
    };
    if let Some(key_file) = key_file {
        flags.settings.set(&KEY_FILE, key_file);
    }
    let path = match RelaySettings::resolve(&flags) {
        Ok(settings) => settings.key_file,
        Err(e) => {
            eprintln!("resumeproxyd: {e}");
            return ExitCode::FAILURE;
        }
    };
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

/// `resumeproxyd check-config`: validates and prints the effective
/// settings; with `--quiet`, only says what is wrong (`ExecReload=`).
fn check_config(flags: &ServeArgs, quiet: bool) -> ExitCode {
    match RelaySettings::resolve(flags) {
        Ok(settings) => {
            if quiet {
                return ExitCode::SUCCESS;
            }
            print!("{}", settings.to_toml());
            if let Err(e) = RelayKey::load(&settings.key_file) {
                eprintln!("resumeproxyd: note: {e} (a missing key is made on first start)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("resumeproxyd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The relay's runtime configuration from resolved settings.
fn relay_config(
    settings: &RelaySettings,
    tls: Arc<rustls::ServerConfig>,
    quic_reset_key: [u8; 32],
) -> RelayConfig {
    RelayConfig {
        listen: settings.listen,
        targets: settings.targets.clone(),
        grace: settings.grace,
        session: SessionConfig {
            replay_capacity: settings.replay_buffer,
            max_data_len: settings.max_frame,
            ..SessionConfig::default()
        },
        limits: settings.limits,
        tls,
        quic_reset_key,
        fleet: settings.fleet.clone(),
    }
}

fn serve(flags: ServeArgs) -> ExitCode {
    // Started by hand (not by systemd, nor by a keeper): become the keeper,
    // which runs this program again as its worker and holds what must
    // outlive it.
    if keeper::wanted() {
        let settings = match RelaySettings::resolve(&flags) {
            Ok(settings) => settings,
            Err(e) => {
                eprintln!("resumeproxyd: {e}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        init_logging(&settings);
        return keeper::run(std::env::args_os().skip(1).collect());
    }
    worker(flags)
}

/// Logs at the settings' level; journald stamps each line itself.
fn init_logging(settings: &RelaySettings) {
    let level = match settings.log_level.as_str() {
        "debug" => "resumeproxy=debug,info",
        other => other,
    };
    resumeproxy::cli::init_logging(level, !resumeproxy::cli::stderr_is_journal());
}

/// The relay's worker: serves clients, carrying on the sessions an earlier
/// worker left in the store — with the settings of the config file, or,
/// if the file is broken and an earlier worker kept the file as it last
/// read well, with those (a restart must not depend on a file being
/// edited); a first start with a broken file fails.
fn worker(flags: ServeArgs) -> ExitCode {
    let mut store = match Store::from_env() {
        Ok(store) => store,
        Err(e) => {
            eprintln!("resumeproxyd: cannot take the kept descriptors: {e}");
            return ExitCode::FAILURE;
        }
    };
    let kept = store.take_config();
    let kept_text = kept.as_ref().ok().and_then(Option::as_deref);
    let resolved = match RelaySettings::resolve_or_kept(&flags, kept_text) {
        Ok(resolved) => resolved,
        Err(e) => {
            eprintln!("resumeproxyd: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let settings = resolved.settings.clone();
    init_logging(&settings);
    if let Err(e) = &kept {
        tracing::warn!("the configuration an earlier worker kept cannot be read: {e}");
    }
    let broken = resolved.broken.as_ref().map(|e| {
        tracing::error!("{}", broken_file(e));
        e.to_string()
    });
    let key = match RelayKey::load_or_create(&settings.key_file) {
        Ok((key, created)) => {
            if created {
                tracing::info!("created a new key in {}", settings.key_file.display());
            }
            key
        }
        Err(e) => {
            eprintln!("resumeproxyd: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let tls = match resumeproxy::transport::tls::server_config(&key) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!(
                "resumeproxyd: cannot use the key in {}: {e}",
                settings.key_file.display()
            );
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("resumeproxyd: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let reset_key = key.quic_reset_key();
        let config = relay_config(&settings, Arc::clone(&tls), reset_key);
        let relay = match Relay::bind_with(config, store).await {
            Ok(relay) => relay,
            Err(e) => {
                eprintln!("resumeproxyd: cannot listen on {}: {e}", settings.listen);
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        let allowed: Vec<String> = settings
            .targets
            .allowed
            .iter()
            .map(|a| a.to_string())
            .collect();
        let also = if allowed.is_empty() {
            String::new()
        } else {
            format!(" (also allowed: {})", allowed.join(", "))
        };
        let restored = relay.handle().counts().restored;
        let durable = match relay.keeper() {
            Keeper::Nobody => " (sessions end with this process: nobody keeps them)".to_string(),
            keeper => format!(", sessions kept by {keeper} ({restored} restored)"),
        };
        let fleet = &settings.fleet;
        let mut instance = format!("instance {}", fleet.instance);
        if fleet.quic_route != QuicRoute::Direct {
            instance.push_str(&format!(" (QUIC reconnects: {})", fleet.quic_route));
        }
        if let Some(agent) = relay.agent_addr() {
            instance.push_str(&format!(", agent-check on {agent}"));
        }
        if fleet.draining {
            instance.push_str(", draining");
        }
        match relay.local_addr() {
            Ok(addr) => tracing::info!(
                "listening on {addr}, {instance}, sessions go to {}{also}, key {}{durable}",
                settings.targets.default,
                key.fingerprint()
            ),
            Err(e) => tracing::warn!("listening (address unknown: {e})"),
        }
        let handle = relay.handle();
        if resolved.broken.is_none() && kept_text != Some(resolved.text.as_str()) {
            handle.keep_config(&resolved.text);
        }
        let status = status_line(&handle, broken.as_deref());
        handle.notify_status(&format!("READY=1\n{status}"));
        let watching = Watched {
            flags,
            settings,
            text: resolved.text,
            broken,
            status,
        };
        let watcher = tokio::spawn(watch(handle.clone(), watching, tls, reset_key));
        relay.run(shutdown_signal()).await;
        watcher.abort();
        ExitCode::SUCCESS
    })
}

/// What a relay running on its kept configuration says, loudly.
fn broken_file(e: &ConfigError) -> String {
    format!(
        "THE CONFIG FILE IS BROKEN: {e}. Running with the settings of its last good version, \
         kept from before; fix the file (`resumeproxyd check-config` checks it) and reload"
    )
}

/// systemd's (or the keeper's) status line; `broken`, why the config file
/// is not used, if it is not.
fn status_line(handle: &RelayHandle, broken: Option<&str>) -> String {
    let c = handle.counts();
    let restored = if c.restored > 0 {
        format!("; {} restored at start", c.restored)
    } else {
        String::new()
    };
    let waiting = if c.waiting > 0 {
        format!(" ({} more waiting)", c.waiting)
    } else {
        String::new()
    };
    let broken = match broken {
        Some(why) => format!("; CONFIG FILE BROKEN, running on its last good version: {why}"),
        None => String::new(),
    };
    format!(
        "STATUS={} ({} detached), {} in progress{waiting}{restored}{broken}",
        count(c.sessions, "session"),
        c.detached,
        count(c.handshakes, "handshake")
    )
}

/// What the watcher of a running relay holds.
struct Watched {
    flags: ServeArgs,
    /// The settings in force.
    settings: RelaySettings,
    /// The config file's text they came from (kept in the store).
    text: String,
    /// Why the config file is not in force, if it is not.
    broken: Option<String>,
    /// The status line last told.
    status: String,
}

/// Reloads on SIGHUP and keeps systemd's status line current (told only
/// when it changed).
async fn watch(
    handle: RelayHandle,
    mut watched: Watched,
    tls: Arc<rustls::ServerConfig>,
    reset_key: [u8; 32],
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).ok();
    let mut ticks = tokio::time::interval(STATUS_EVERY);
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let mut state = String::new();
        tokio::select! {
            _ = ticks.tick() => {}
            _ = hangup => {
                handle.notify("RELOADING=1");
                reload(&handle, &mut watched, &tls, reset_key);
                state.push_str("READY=1\n");
            }
        }
        let status = status_line(&handle, watched.broken.as_deref());
        if status != watched.status || !state.is_empty() {
            state.push_str(&status);
            handle.notify_status(&state);
            watched.status = status;
        }
    }
}

/// Rereads the config file and applies what may change while running; a
/// broken file changes nothing and is said loudly.
fn reload(
    handle: &RelayHandle,
    watched: &mut Watched,
    tls: &Arc<rustls::ServerConfig>,
    reset_key: [u8; 32],
) {
    let resolved = match RelaySettings::resolve_or_kept(&watched.flags, None) {
        Ok(resolved) => resolved,
        Err(e) => {
            tracing::error!(
                "configuration not reloaded: {e}; the settings in force stay as they were"
            );
            watched.broken = Some(e.to_string());
            return;
        }
    };
    let (settings, mut new) = (&watched.settings, resolved.settings);
    if new.listen != settings.listen || new.key_file != settings.key_file {
        tracing::warn!(
            "listen and key_file change only with a restart; kept {} and {}",
            settings.listen,
            settings.key_file.display()
        );
    }
    if new.log_level != settings.log_level {
        tracing::warn!("log_level changes only with a restart");
    }
    if new.fleet.instance != settings.fleet.instance
        || new.fleet.agent_listen != settings.fleet.agent_listen
    {
        tracing::warn!(
            "instance and agent_listen change only with a restart; kept {}",
            settings.fleet.instance
        );
        new.fleet.instance = settings.fleet.instance.clone();
        new.fleet.agent_listen = settings.fleet.agent_listen;
    }
    match (settings.fleet.draining, new.fleet.draining) {
        (false, true) => tracing::info!(
            "draining: new sessions are refused; the {} here go on",
            handle.counts().sessions
        ),
        (true, false) => tracing::info!("no longer draining: new sessions are taken"),
        _ => {}
    }
    handle.reload(relay_config(&new, Arc::clone(tls), reset_key));
    tracing::info!("configuration reloaded");
    if resolved.text != watched.text {
        handle.keep_config(&resolved.text);
    }
    watched.settings = new;
    watched.text = resolved.text;
    watched.broken = None;
}

/// How the relay is asked to stop: SIGTERM (`systemctl restart` and an
/// upgrade, through the unit's `RestartKillSignal=`; the keeper restarting
/// its worker) keeps every session for the next process; SIGINT
/// (`systemctl stop`, through `KillSignal=`; the keeper stopping for good;
/// Ctrl-C) ends them.
async fn shutdown_signal() -> Stop {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => Stop::Restart,
                _ = int.recv() => Stop::EndAll,
            }
        }
        _ => std::future::pending().await,
    }
}
