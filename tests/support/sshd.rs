//! Test harness that runs a private, throw-away OpenSSH server (`/usr/sbin/sshd`)
//! for end-to-end tests with the real OpenSSH client tools (`ssh`, `scp`, `sftp`,
//! `rsync`).
//!
//! [`TestSshd::start`] creates a fresh temporary directory, generates an ed25519
//! host key and an ed25519 client key (authorized for the current user), writes
//! an `sshd_config` listening on a free `127.0.0.1` port and starts
//! `sshd -D -e` with its log in `<dir>/sshd.log`. Dropping the [`TestSshd`]
//! kills sshd (and any session processes it spawned) and removes the directory.
//!
//! Works as root (creates `/run/sshd` if needed) and as an ordinary user (then
//! sshd can only authenticate that same user, which is what the harness does).
//! As root, [`TestSshd::start_with`] can also run sshd inside a network
//! namespace, and listen on more addresses (see [`SshdOptions`]).
//!
//! Deviations from a stock server worth knowing about: sessions get
//! `SHLVL=1` (so bash does not source `~/.bashrc` for remote commands), the
//! key exchange is limited to curve25519/ECDH (fast), and on OpenSSH >= 9.8
//! `PerSourcePenalties no` is set so abruptly killed connections do not get
//! 127.0.0.1 refused. Remote commands run with sshd's default `PATH`.
//!
//! Include it through `tests/support/mod.rs` (`mod support;`).

// Every test binary includes this file but uses only part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::process::kill_tree;
use anyhow::{Context, Result};

/// Absolute path of the OpenSSH server (sshd re-executes itself and insists on an
/// absolute path).
const SSHD: &str = "/usr/sbin/sshd";
/// How long [`TestSshd::start`] waits for sshd to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Interval between readiness probes.
const READY_POLL: Duration = Duration::from_millis(20);
/// How many times [`TestSshd::start`] tries a new port when sshd cannot bind.
const START_ATTEMPTS: usize = 3;

/// A private sshd instance on `127.0.0.1`, plus the keys and options needed to
/// log into it as the current user.
///
/// Everything lives in [`TestSshd::dir`]; dropping the value kills sshd and its
/// session processes and removes that directory. If the drop happens while the
/// thread is panicking (a failed assertion), the sshd log is printed to stderr.
pub struct TestSshd {
    /// The sshd listener process (`sshd -D -e`).
    child: Child,
    /// Port sshd listens on (127.0.0.1).
    port: u16,
    /// Name of the user the client key is authorized for (the current user).
    user: String,
    /// Client private key.
    client_key: PathBuf,
    /// Client known_hosts file (pre-populated with the host key).
    known_hosts: PathBuf,
    /// sshd's stderr (`-e`) log.
    log_path: PathBuf,
    /// Temporary directory; declared last so it is removed after sshd is gone.
    dir: TempDir,
}

impl TestSshd {
    /// Starts sshd on a free 127.0.0.1 port with a fresh ed25519 host key and a
    /// fresh ed25519 client key, authorized for the current user.
    ///
    /// Waits until sshd has logged that it is listening and a TCP probe receives
    /// its `SSH-2.0-` banner (polling every 20 ms, bounded by a 10 s deadline).
    /// The free port is found by binding `127.0.0.1:0` and releasing it; if
    /// another process grabs it first and sshd fails to bind, up to three ports
    /// are tried. On failure the error (and stderr) contains sshd's log.
    pub fn start() -> Result<TestSshd> {
        Self::start_with(&SshdOptions::default())
    }

    /// Like [`TestSshd::start`], placed as `options` say: inside a network
    /// namespace, and/or listening on more addresses.
    pub fn start_with(options: &SshdOptions) -> Result<TestSshd> {
        let dir = TempDir::new("resumeproxy-sshd")?;
        let path = dir.path().to_path_buf();
        let euid = fs::metadata(&path)
            .with_context(|| format!("stat temp dir {}", path.display()))?
            .uid();
        let user = current_user()?;

        if euid == 0 {
            ensure_privsep_dir()?;
        }

        let host_key = path.join("host_ed25519");
        let client_key = path.join("client_ed25519");
        ssh_keygen(&host_key)?;
        ssh_keygen(&client_key)?;

        let authorized_keys = path.join("authorized_keys");
        let client_pub = read_pub_key(&client_key)?;
        fs::write(&authorized_keys, format!("{client_pub}\n"))
            .with_context(|| format!("write {}", authorized_keys.display()))?;
        let host_pub = read_pub_key(&host_key)?;

        let config_path = path.join("sshd_config");
        let log_path = path.join("sshd.log");
        let known_hosts = path.join("known_hosts");
        let penalties = sshd_has_per_source_penalties();

        let mut last_err = None;
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port()?;
            let mut config = sshd_config(port, &host_key, &authorized_keys, penalties);
            for addr in &options.extra_listen {
                let _ = writeln!(config, "ListenAddress {addr}");
            }
            fs::write(&config_path, config)
                .with_context(|| format!("write {}", config_path.display()))?;
            // Pre-populate known_hosts so concurrent clients never need to write it.
            let mut known =
                format!("[127.0.0.1]:{port} {host_pub}\n[localhost]:{port} {host_pub}\n");
            for addr in &options.extra_listen {
                let _ = writeln!(known, "[{addr}]:{port} {host_pub}");
            }
            fs::write(&known_hosts, known)
                .with_context(|| format!("write {}", known_hosts.display()))?;

            match spawn_sshd(&config_path, &log_path, port, options) {
                Ok(child) => {
                    return Ok(TestSshd {
                        child,
                        port,
                        user,
                        client_key,
                        known_hosts,
                        log_path,
                        dir,
                    });
                }
                Err(StartError::BindFailed(err)) => {
                    eprintln!("sshd attempt {attempt} could not bind port {port}; retrying");
                    last_err = Some(err);
                }
                Err(StartError::Fatal(err)) => {
                    eprintln!("{err:#}");
                    return Err(err);
                }
            }
        }
        let err = last_err.unwrap_or_else(|| anyhow::anyhow!("sshd failed to start"));
        eprintln!("{err:#}");
        Err(err.context(format!(
            "sshd could not bind a port in {START_ATTEMPTS} attempts"
        )))
    }

    /// The 127.0.0.1 port sshd is listening on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory owned by this harness for the test's own files (removed on drop).
    ///
    /// It also holds the harness's files: `sshd_config`, `sshd.log`,
    /// `host_ed25519*`, `client_ed25519*`, `authorized_keys`, `known_hosts`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Name of the user the client key logs in as (the user running the test).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Path of the client's private key (authorized on this sshd).
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// Common ssh options as separate argv entries (no host name):
    /// `-F /dev/null -i KEY -o IdentitiesOnly=yes -o UserKnownHostsFile=<dir>/known_hosts
    /// -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o UpdateHostKeys=no
    /// -o BatchMode=yes -o LogLevel=ERROR -p PORT -o User=<user>`.
    ///
    /// `ServerAliveInterval` is not set (OpenSSH default: off). The known_hosts
    /// file is pre-populated for `127.0.0.1` and `localhost` on this port.
    pub fn ssh_opts(&self) -> Vec<String> {
        self.opts("-p")
    }

    /// Same as [`TestSshd::ssh_opts`] but with `-P PORT`, for `scp` and `sftp`.
    ///
    /// Note: OpenSSH 9.x `scp` uses the SFTP protocol by default (the server has
    /// `Subsystem sftp internal-sftp`); add `-O` for the legacy scp protocol.
    pub fn scp_opts(&self) -> Vec<String> {
        self.opts("-P")
    }

    fn opts(&self, port_flag: &str) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            self.client_key.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UpdateHostKeys=no".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            port_flag.into(),
            self.port.to_string(),
            "-o".into(),
            format!("User={}", self.user),
        ]
    }

    /// A complete `ssh [-o ProxyCommand=<proxy>] <ssh_opts> 127.0.0.1 <remote_command>`
    /// ready to spawn. `proxy: None` connects directly.
    ///
    /// ssh expands `%h`/`%p` (and `%%`) in `proxy`, and runs it through the shell
    /// (`exec <proxy>`). stdin is set to null (override with `.stdin(..)` when
    /// the remote command needs input); stdout/stderr are left at their defaults.
    pub fn ssh_command(&self, proxy: Option<&str>, remote_command: &str) -> Command {
        let mut cmd = Command::new(program("ssh"));
        if let Some(proxy) = proxy {
            cmd.arg("-o").arg(format!("ProxyCommand={proxy}"));
        }
        cmd.args(self.ssh_opts())
            .arg("127.0.0.1")
            .arg(remote_command)
            .stdin(Stdio::null());
        self.private_env(&mut cmd);
        cmd
    }

    /// `ssh` through `proxy` running [`IDLE`](super::process::IDLE): a
    /// session open and doing nothing, once it has said it is ready.
    pub fn idle_session(&self, proxy: &str) -> Result<super::process::Watched> {
        super::process::Watched::idle(self.ssh_command(Some(proxy), super::process::IDLE))
    }

    /// Points the client's per-user directories (control sockets, config,
    /// known_relays) into this test's directory, away from the real user's.
    pub fn private_env(&self, cmd: &mut Command) {
        cmd.env("XDG_RUNTIME_DIR", self.dir().join("run"))
            .env("XDG_CONFIG_HOME", self.dir().join("config"))
            .env("XDG_STATE_HOME", self.dir().join("state"));
    }

    /// The remote-shell string for `rsync -e <this>`: `ssh [-o ProxyCommand=<proxy>] <ssh_opts>`,
    /// each word quoted the way rsync splits `-e` (single quotes, `''` for a literal quote).
    /// Use `127.0.0.1:<path>` as the remote side.
    pub fn rsync_rsh(&self, proxy: Option<&str>) -> String {
        let mut words = vec![program("ssh").display().to_string()];
        if let Some(proxy) = proxy {
            words.push("-o".into());
            words.push(format!("ProxyCommand={proxy}"));
        }
        words.extend(self.ssh_opts());
        words
            .iter()
            .map(|w| format!("'{}'", w.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Path of sshd's log file (`sshd -D -e` stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The sshd log so far (sshd runs with `-D -e`, stderr redirected to
    /// `<dir>/sshd.log`, `LogLevel VERBOSE`). Unreadable logs yield a note instead.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Whether the sshd listener process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for TestSshd {
    /// Kills sshd and its session processes, waits for it, and removes the
    /// directory (via the `TempDir` field). Prints the log if a test is panicking.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- sshd log ({}) ----\n{}---- end of sshd log ----",
                self.log_path.display(),
                self.log()
            );
        }
        kill_tree(&mut self.child);
    }
}

/// A uniquely named directory under `std::env::temp_dir()`, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let mut last_err = None;
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = base.join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => {
                    let dir = TempDir { path };
                    fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o700))
                        .with_context(|| format!("chmod 0700 {}", dir.path.display()))?;
                    return Ok(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(e).with_context(|| format!("create temp dir {}", path.display()));
                }
            }
        }
        Err(anyhow::anyhow!("{last_err:?}"))
            .with_context(|| format!("create a unique temp dir under {}", base.display()))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("warning: could not remove {}: {e}", self.path.display());
            }
            _ => {}
        }
    }
}

/// Where and how [`TestSshd::start_with`] runs sshd. The default is what
/// [`TestSshd::start`] does.
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// Run sshd inside this network namespace (`ip netns exec NAME sshd ...`,
    /// needs root). It still listens on 127.0.0.1, that namespace's own
    /// loopback; readiness is then its "Server listening" log lines alone, as
    /// the harness cannot probe into the namespace.
    pub netns: Option<String>,
    /// More addresses to listen on (same port), e.g. the address of a veth in
    /// that namespace; `known_hosts` gets entries for them.
    pub extra_listen: Vec<Ipv4Addr>,
}

/// Why one attempt to start sshd failed.
enum StartError {
    /// sshd could not bind its port (someone else took it); try another port.
    BindFailed(anyhow::Error),
    /// Anything else.
    Fatal(anyhow::Error),
}

/// Spawns sshd and waits for it to be ready; kills it again on failure.
fn spawn_sshd(
    config: &Path,
    log_path: &Path,
    port: u16,
    options: &SshdOptions,
) -> std::result::Result<Child, StartError> {
    let fatal = StartError::Fatal;
    let log = File::create(log_path)
        .with_context(|| format!("create {}", log_path.display()))
        .map_err(fatal)?;
    // `ip netns exec` execs sshd in place: the child is sshd itself.
    let mut command = match &options.netns {
        Some(netns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", netns, SSHD]);
            c
        }
        None => Command::new(SSHD),
    };
    let mut child = command
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("spawn {SSHD} -D -e -f {}", config.display()))
        .map_err(fatal)?;

    match wait_ready(&mut child, log_path, port, options) {
        Ok(()) => Ok(child),
        Err(err) => {
            kill_tree(&mut child);
            let log = read_log(log_path);
            let bind_failed =
                log.contains("Address already in use") || log.contains("Cannot bind any address");
            let err = err.context(format!(
                "sshd on 127.0.0.1:{port} did not become ready; sshd log ({}):\n{log}",
                log_path.display()
            ));
            Err(if bind_failed {
                StartError::BindFailed(err)
            } else {
                StartError::Fatal(err)
            })
        }
    }
}

/// Polls until sshd logs "Server listening" (for each address) and a TCP probe
/// reads its banner; inside a network namespace, the log lines alone.
fn wait_ready(child: &mut Child, log_path: &Path, port: u16, options: &SshdOptions) -> Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    let mut all_listening = vec![format!("Server listening on 127.0.0.1 port {port}")];
    all_listening.extend(
        options
            .extra_listen
            .iter()
            .map(|addr| format!("Server listening on {addr} port {port}")),
    );
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let mut last_probe_err = String::from("sshd has not logged that it is listening");
    loop {
        if let Some(status) = child.try_wait().context("wait for sshd")? {
            anyhow::bail!("sshd exited during startup with {status}");
        }
        let log = read_log(log_path);
        if all_listening.iter().all(|l| log.contains(l.as_str())) {
            if options.netns.is_some() {
                // sshd logs this once it listens: connections queue from then on.
                return Ok(());
            }
            match probe_banner(addr) {
                Ok(()) => return Ok(()),
                Err(e) => last_probe_err = format!("{e:#}"),
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "sshd not ready after {:?} (last: {last_probe_err})",
                READY_DEADLINE
            );
        }
        std::thread::sleep(READY_POLL);
    }
}

/// Connects to `addr` and reads until the SSH identification string arrives.
fn probe_banner(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .with_context(|| format!("connect to {addr}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .context("set probe read timeout")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("read SSH banner from {addr}"))?;
        if n == 0 {
            anyhow::bail!(
                "{addr} closed before sending an SSH banner (got {:?})",
                String::from_utf8_lossy(&got)
            );
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(8).any(|w| w == b"SSH-2.0-") && got.contains(&b'\n') {
            return Ok(());
        }
    }
    anyhow::bail!("{addr} sent no SSH banner in {} bytes", got.len())
}

fn sshd_config(
    port: u16,
    host_key: &Path,
    authorized_keys: &Path,
    per_source_penalties: bool,
) -> String {
    let mut c = String::new();
    let mut line = |s: String| {
        c.push_str(&s);
        c.push('\n');
    };
    line("ListenAddress 127.0.0.1".into());
    line(format!("Port {port}"));
    line(format!("HostKey {}", host_key.display()));
    line(format!("AuthorizedKeysFile {}", authorized_keys.display()));
    line("PidFile none".into());
    line("UsePAM no".into());
    line("StrictModes no".into());
    line("PasswordAuthentication no".into());
    line("KbdInteractiveAuthentication no".into());
    line("PubkeyAuthentication yes".into());
    line("PermitRootLogin prohibit-password".into());
    line("AllowTcpForwarding yes".into());
    line("Subsystem sftp internal-sftp".into());
    line("ClientAliveInterval 0".into());
    line("MaxStartups 1000".into());
    line("MaxSessions 100".into());
    line("LogLevel VERBOSE".into());
    line("UseDNS no".into());
    line("PrintMotd no".into());
    line("PrintLastLog no".into());
    line("X11Forwarding no".into());
    // Debian's bash sources ~/.bashrc for non-interactive commands started by
    // sshd unless SHLVL says it is nested; ~/.bashrc may be slow or noisy
    // (e.g. pyenv init), which would slow every session and could corrupt
    // scp/rsync streams.
    line("SetEnv SHLVL=1".into());
    // The default sntrup761 hybrid key exchange costs ~100 ms of CPU per side
    // per connection; plain curve25519 keeps many-connection tests fast.
    line("KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256".into());
    if per_source_penalties {
        // OpenSSH >= 9.8 would otherwise refuse 127.0.0.1 for a while after
        // connections that end before authentication (e.g. killed proxies).
        line("PerSourcePenalties no".into());
    }
    c
}

/// Whether this sshd understands `PerSourcePenalties` (OpenSSH >= 9.8).
fn sshd_has_per_source_penalties() -> bool {
    let Ok(out) = Command::new(SSHD).arg("-V").output() else {
        return false;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let Some(rest) = text.split("OpenSSH_").nth(1) else {
        return false;
    };
    let mut nums = rest
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = nums.next().unwrap_or(0);
    let minor = nums.next().unwrap_or(0);
    (major, minor) >= (9, 8)
}

/// Reserves a free port by binding 127.0.0.1:0 and releasing it again
/// (nothing listens on it once this returns).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("local address of 127.0.0.1:0 listener")?
        .port())
}

/// The privilege separation directory sshd needs when it runs as root.
fn ensure_privsep_dir() -> Result<()> {
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 0755 {}", dir.display()))?;
    }
    Ok(())
}

fn ssh_keygen(path: &Path) -> Result<()> {
    let out = Command::new(program("ssh-keygen"))
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "resumeproxy-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("run ssh-keygen")?;
    if !out.status.success() {
        anyhow::bail!(
            "ssh-keygen -t ed25519 -f {} failed with {}: {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn read_pub_key(private_key: &Path) -> Result<String> {
    let mut p = private_key.as_os_str().to_owned();
    p.push(".pub");
    let path = PathBuf::from(p);
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// Name of the current (effective) user.
fn current_user() -> Result<String> {
    if let Ok(out) = Command::new("id").arg("-un").stdin(Stdio::null()).output() {
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !name.is_empty() {
            return Ok(name);
        }
    }
    for var in ["USER", "LOGNAME"] {
        if let Some(name) = std::env::var(var).ok().filter(|n| !n.is_empty()) {
            return Ok(name);
        }
    }
    anyhow::bail!(
        "cannot determine the current user name (`id -un` failed and USER/LOGNAME are unset)"
    )
}

/// Absolute path of an OpenSSH tool in /usr/bin if present, else the bare name
/// (looked up in PATH).
fn program(name: &str) -> PathBuf {
    let abs = Path::new("/usr/bin").join(name);
    if abs.exists() {
        abs
    } else {
        PathBuf::from(OsStr::new(name))
    }
}

fn read_log(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<could not read {}: {e}>\n", path.display()),
    }
}

/// `resumeproxy status --json` as the user of `sshd`'s sessions (with its
/// private directories) sees it: one report per live session.
pub fn client_status(
    sshd: &TestSshd,
) -> anyhow::Result<Vec<resumeproxy::client::control::StatusReport>> {
    use anyhow::{ensure, Context};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resumeproxy"));
    cmd.args(["status", "--json"]);
    sshd.private_env(&mut cmd);
    let out = cmd.output().context("resumeproxy status")?;
    ensure!(out.status.success(), "status failed: {out:?}");
    String::from_utf8(out.stdout)?
        .lines()
        .map(|line| serde_json::from_str(line).context("status line"))
        .collect()
}
