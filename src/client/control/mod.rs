//! The client's control socket: how `resumeproxy status` and `resumeproxy
//! resume` reach the running clients of this user.
//!
//! Each client serves a UNIX socket `<pid>.sock` in a private per-user
//! directory (`$XDG_RUNTIME_DIR/resumeproxy`, else
//! `~/.local/state/resumeproxy/run`; mode 0700, so only the user can talk to
//! their clients). One request line, one reply line: `status` is answered
//! with a JSON [`StatusReport`], `resume` with `ok`. A socket nobody answers
//! on belongs to a client that died: listing removes it.
//!
//! On Windows the channel is a named pipe that only the user may open, and
//! the directory (`%LOCALAPPDATA%\resumeproxy\run`, private to the user)
//! holds a `<pid>.pipe` file with its name (`windows.rs`); everything else
//! is the same. The platform's part is the endpoint: how one is bound,
//! accepted on and connected to (`unix.rs`, `windows.rs`).

use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

/// Longest request or reply line.
pub const MAX_LINE: usize = 64 * 1024;
/// How long a query may take, per client.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What one client reports about its session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Session id (hex).
    pub id: String,
    /// The client's process id.
    pub pid: u32,
    /// The relay, `host:port`.
    pub relay: String,
    /// The relay's instance that holds the session (its `instance`: in a
    /// fleet, the one every reconnect names).
    #[serde(default)]
    pub instance: String,
    /// The target asked for (`host:port`, host empty for the relay's own).
    pub target: String,
    /// Transport kind (`tls`).
    pub transport: String,
    /// Connected or reconnecting.
    pub link: LinkState,
    /// Time since the session opened, in milliseconds.
    pub uptime_ms: u64,
    /// Bytes read from ssh and sent.
    pub bytes_sent: u64,
    /// Bytes received for ssh.
    pub bytes_received: u64,
    /// Transport breaks survived.
    pub reconnects: u32,
    /// Moves from TCP back onto QUIC, without a break (`auto`).
    #[serde(default)]
    pub moves: u32,
    /// Latest heartbeat round trip, in microseconds.
    pub rtt_us: Option<u64>,
    /// Bytes sent and not yet acknowledged by the relay.
    pub unacked: u64,
}

/// The state of a session's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LinkState {
    /// A transport is attached.
    Connected,
    /// Lost; trying to resume.
    Reconnecting {
        /// Time since the loss, in milliseconds.
        since_ms: u64,
        /// Attempts so far.
        attempts: u32,
    },
}

/// A request for the running client.
#[derive(Debug)]
pub enum Request {
    /// Report status on this channel.
    Status(oneshot::Sender<StatusReport>),
    /// Try to reconnect now, skipping the backoff.
    Resume,
}

/// The directory of this user's control sockets.
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("resumeproxy"),
        _ => crate::paths::xdg_dir("XDG_STATE_HOME", ".local/state")
            .join("resumeproxy")
            .join("run"),
    }
}

/// A served control socket; removed when dropped.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
}

impl ControlSocket {
    /// Serves this process's socket in `dir`; requests arrive on the returned
    /// channel. The accept loop runs as a task until the runtime ends.
    pub fn serve(dir: &Path) -> io::Result<(ControlSocket, mpsc::Receiver<Request>)> {
        // Made if missing; refused (Unix) or made private (Windows) if
        // others can enter it.
        crate::paths::private_dir(dir)?;
        let path = entry(dir, std::process::id());
        let listener = imp::Listener::bind(&path)?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(accept_loop(listener, tx));
        Ok((ControlSocket { path }, rx))
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the client with process id `pid` serves, in `dir`.
fn entry(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{pid}.{}", imp::EXTENSION))
}

async fn accept_loop(mut listener: imp::Listener, requests: mpsc::Sender<Request>) {
    loop {
        let Ok(stream) = listener.accept().await else {
            // Out of descriptors: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(QUERY_TIMEOUT, answer(stream, requests)).await;
        });
    }
}

/// Reads one request line and writes the answer.
async fn answer<S>(stream: S, requests: mpsc::Sender<Request>) -> io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut line = String::new();
    BufReader::new(read.take(MAX_LINE as u64))
        .read_line(&mut line)
        .await?;
    let reply = match line.trim() {
        "status" => {
            let (tx, rx) = oneshot::channel();
            if requests.send(Request::Status(tx)).await.is_err() {
                return Ok(());
            }
            match rx.await {
                Ok(report) => serde_json::to_string(&report).map_err(io::Error::other)?,
                Err(_) => return Ok(()),
            }
        }
        "resume" => {
            if requests.send(Request::Resume).await.is_err() {
                return Ok(());
            }
            "ok".to_string()
        }
        other => format!("error: unknown request {other:?}"),
    };
    write.write_all(format!("{reply}\n").as_bytes()).await?;
    write.shutdown().await
}

/// Sends one request line to the socket at `path` and reads the reply line.
async fn ask(path: &Path, request: &str) -> io::Result<String> {
    let exchange = async {
        let stream = imp::connect(path).await?;
        let (read, mut write) = tokio::io::split(stream);
        write.write_all(format!("{request}\n").as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(read.take(MAX_LINE as u64))
            .read_line(&mut line)
            .await?;
        Ok(line.trim_end().to_owned())
    };
    tokio::time::timeout(QUERY_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

/// The sockets (or on Windows, the files naming pipes) in `dir`.
fn sockets(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == imp::EXTENSION))
        .collect();
    paths.sort();
    paths
}

/// Whether a failed connection means nobody serves the socket any more.
fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
    )
}

/// Status of every live client in `dir`; stale sockets are removed.
pub async fn status_all(dir: &Path) -> Vec<StatusReport> {
    let mut reports = Vec::new();
    for path in sockets(dir) {
        match ask(&path, "status").await {
            Ok(line) => match serde_json::from_str(&line) {
                Ok(report) => reports.push(report),
                Err(e) => tracing::warn!("{}: unreadable status: {e}", path.display()),
            },
            Err(e) if is_stale(&e) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => tracing::warn!("{}: {e}", path.display()),
        }
    }
    reports
}

/// Asks the clients whose session id starts with `id` (all, if `None`) to
/// reconnect now. Returns the ids asked.
pub async fn resume(dir: &Path, id: Option<&str>) -> Vec<String> {
    let mut asked = Vec::new();
    for report in status_all(dir).await {
        if id.is_some_and(|id| !report.id.starts_with(id)) {
            continue;
        }
        let path = entry(dir, report.pid);
        match ask(&path, "resume").await {
            Ok(reply) if reply == "ok" => asked.push(report.id),
            Ok(reply) => tracing::warn!("{}: {reply}", path.display()),
            Err(e) => tracing::warn!("{}: {e}", path.display()),
        }
    }
    asked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pid: u32) -> StatusReport {
        StatusReport {
            id: "ab12".into(),
            pid,
            relay: "relay:7022".into(),
            instance: "relay-1".into(),
            target: ":22".into(),
            transport: "tls".into(),
            link: LinkState::Reconnecting {
                since_ms: 1200,
                attempts: 3,
            },
            uptime_ms: 5000,
            bytes_sent: 1,
            bytes_received: 2,
            reconnects: 1,
            moves: 0,
            rtt_us: Some(250),
            unacked: 7,
        }
    }

    #[tokio::test]
    async fn status_and_resume_reach_the_client_and_stale_sockets_go() {
        let dir = std::env::temp_dir().join(format!("resumeproxy-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (socket, mut requests) = ControlSocket::serve(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        // A socket left by a client that died.
        let stale = entry(&dir, 999_999_999);
        imp::leave_stale(&stale);

        let me = std::process::id();
        let client = tokio::spawn(async move {
            let mut resumes = 0;
            while let Some(request) = requests.recv().await {
                match request {
                    Request::Status(reply) => {
                        let _ = reply.send(report(me));
                    }
                    Request::Resume => {
                        resumes += 1;
                        if resumes == 1 {
                            return resumes;
                        }
                    }
                }
            }
            resumes
        });
        let reports = status_all(&dir).await;
        assert_eq!(reports, vec![report(me)]);
        assert!(!stale.exists(), "stale socket removed");
        assert!(resume(&dir, Some("ff")).await.is_empty());
        assert_eq!(resume(&dir, Some("ab")).await, vec!["ab12".to_string()]);
        assert_eq!(client.await.unwrap(), 1);
        let path = socket.path().to_owned();
        drop(socket);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
