//! HAProxy in front of the fleet ([`super::fleet`]), in the lab's server
//! namespace, running the shipped `packaging/haproxy/resumeproxy.cfg` with
//! only its addresses moved to the lab's, and a stats socket added for the
//! test to read what HAProxy thinks of each instance.

#![allow(dead_code)]

use super::fleet::{agent_port, instance_name, relay_port, BALANCER_PORT, INSTANCES};
use super::netns::NetLab;
use super::process::Lines;
use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shipped HAProxy configuration.
pub const SHIPPED_CONFIG: &str = "packaging/haproxy/resumeproxy.cfg";

/// HAProxy, in the server namespace; killed on drop.
pub struct HaProxy {
    child: Child,
    /// What it logged (its traffic log and its notices).
    pub log: Arc<Lines>,
    /// Its stats socket.
    socket: PathBuf,
}

impl HaProxy {
    /// Starts HAProxy in `lab`'s server namespace with the shipped
    /// configuration, its relays moved to `relay_ip`; `None` (and why) if
    /// HAProxy is not installed.
    pub fn start(lab: &NetLab, dir: &Path, relay_ip: Ipv4Addr) -> Result<Option<HaProxy>> {
        let Some(haproxy) = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
        else {
            super::lab::cannot_run("haproxy is not installed (apt-get install haproxy)");
            return Ok(None);
        };
        let shipped =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED_CONFIG))
                .context("reading the shipped HAProxy configuration")?;
        let socket = dir.join("haproxy.sock");
        let config = lab_config(&shipped, relay_ip, &socket)?;
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, &config)?;
        let mut command = Command::new(haproxy);
        command.arg("-db").arg("-f").arg(&path);
        let mut child = lab
            .in_server(&command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting haproxy")?;
        let log = Lines::collect(child.stdout.take().context("haproxy stdout")?);
        let notices = Lines::collect(child.stderr.take().context("haproxy stderr")?);
        let haproxy = HaProxy { child, log, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while haproxy.stat().is_err() {
            if Instant::now() >= deadline {
                bail!("haproxy did not start; it said:\n{}", notices.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(haproxy))
    }

    /// A command on the stats socket, and its answer.
    pub fn command(&self, command: &str) -> Result<String> {
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\n").as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// (backend, server, status) of every server, as `show stat` says.
    pub fn stat(&self) -> Result<Vec<(String, String, String)>> {
        let csv = self.command("show stat")?;
        let mut rows = Vec::new();
        for line in csv.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let fields: Vec<&str> = line.split(',').collect();
            ensure!(fields.len() > 17, "a short line of show stat: {line}");
            if matches!(fields[1], "FRONTEND" | "BACKEND") {
                continue;
            }
            rows.push((fields[0].into(), fields[1].into(), fields[17].into()));
        }
        Ok(rows)
    }

    /// The status of `server` in `backend` (`UP`, `DOWN`, `DRAIN`, …).
    pub fn status(&self, backend: &str, server: &str) -> Result<String> {
        self.stat()?
            .into_iter()
            .find(|(b, s, _)| b == backend && s == server)
            .map(|(_, _, status)| status)
            .with_context(|| format!("HAProxy has no server {backend}/{server}"))
    }

    /// Waits until `server` of `backend` has a status starting with
    /// `status`; returns how long that took.
    pub fn wait_status(
        &self,
        backend: &str,
        server: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let now = self.status(backend, server)?;
            if now.starts_with(status) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                bail!("{backend}/{server} is {now}, not {status}, after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- haproxy log ---\n{}", self.log.text());
        }
    }
}

/// The shipped configuration with its relays on `relay_ip` instead of
/// 127.0.0.1, and a stats socket at `socket`. Fails if the shipped file no
/// longer has the shape this relies on.
pub fn lab_config(shipped: &str, relay_ip: Ipv4Addr, socket: &Path) -> Result<String> {
    let mut config = shipped.to_owned();
    for i in 0..INSTANCES {
        let name = instance_name(i);
        let shipped_addr = format!("127.0.0.1:{}", relay_port(i));
        let uses = config.matches(&shipped_addr).count();
        ensure!(
            uses == 2,
            "{SHIPPED_CONFIG}: {name} at {shipped_addr} {uses} times, not twice"
        );
        for needle in [
            format!("use_backend {name} if {{ req.ssl_sni -i {name} }}"),
            format!("agent-port {}", agent_port(i)),
            format!("backend {name}\n"),
        ] {
            ensure!(
                config.contains(&needle),
                "{SHIPPED_CONFIG} lacks {needle:?}"
            );
        }
        config = config.replace(&shipped_addr, &format!("{relay_ip}:{}", relay_port(i)));
    }
    let bind = format!("bind :{BALANCER_PORT}");
    ensure!(config.contains(&bind), "{SHIPPED_CONFIG} lacks {bind:?}");
    let global = "global\n";
    ensure!(
        config.contains(global),
        "{SHIPPED_CONFIG} lacks a global section"
    );
    let stats = format!(
        "global\n    stats socket {} mode 600 level admin\n",
        socket.display()
    );
    Ok(config.replacen(global, &stats, 1))
}
