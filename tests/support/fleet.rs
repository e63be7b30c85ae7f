//! A fleet in the namespace lab: three `resumeproxyd` instances (each its
//! own process, on its own port, with its own config file) and a balancer
//! in front of them on one address — HAProxy ([`super::haproxy`]) or nginx
//! ([`super::nginx`]), each running its shipped configuration with only
//! its addresses moved to the lab's — all in the server namespace beside
//! sshd; the real OpenSSH client in the client namespace reaches sshd
//! through `resumeproxy` and the balancer. Which instance holds a
//! session is read from the relays' logs: the remote command prints
//! `$SSH_CLIENT`, whose port is the relay's local port towards sshd, which
//! the relay logs with every line of the session.

#![allow(dead_code)]

use super::data::{hash_while_reading, SplitMix64};
use super::haproxy::HaProxy;
use super::netns::NetLab;
use super::nginx::Nginx;
use super::process::Watched;
use super::relay::{proxy_command, RelayProcess};
use super::sshd::{SshdOptions, TestSshd};
use anyhow::{ensure, Context, Result};
use resumeproxy::units::hex;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many instances the shipped configurations have.
pub const INSTANCES: usize = 3;
/// The balancer's port, as shipped.
pub const BALANCER_PORT: u16 = 7022;

/// Instance `i` (from 0) as the shipped configuration names it.
pub fn instance_name(i: usize) -> String {
    format!("relay-{}", i + 1)
}

/// Instance `i`'s relay port, as shipped.
pub fn relay_port(i: usize) -> u16 {
    7101 + u16::try_from(i).expect("few")
}

/// Instance `i`'s agent-check port, as shipped.
pub fn agent_port(i: usize) -> u16 {
    7111 + u16::try_from(i).expect("few")
}

/// One relay of the fleet.
pub struct Instance {
    /// Its name (`relay-1`).
    pub name: String,
    /// Its config file (rewritten, then SIGHUP, to drain it).
    pub config: PathBuf,
    pub relay: RelayProcess,
}

impl Instance {
    /// Drains it as an operator would: `draining = true` in its config file,
    /// then a reload; waits until it says so.
    pub fn drain(&self) -> Result<()> {
        self.set_config("draining = true\n")?;
        self.relay
            .wait_for_log(
                "draining: new sessions are refused",
                Duration::from_secs(10),
            )
            .map(drop)
    }

    /// Replaces its config file and reloads it (SIGHUP to its keeper, which
    /// passes it on).
    pub fn set_config(&self, text: &str) -> Result<()> {
        let reloads = self.relay.count("configuration reloaded");
        std::fs::write(&self.config, text)?;
        self.relay.signal(libc::SIGHUP)?;
        self.relay
            .wait_for_count(
                "configuration reloaded",
                reloads + 1,
                Duration::from_secs(10),
            )
            .map(drop)
    }

    /// The relay's local ports towards sshd of the sessions it started.
    pub fn started_ports(&self) -> Vec<u16> {
        ports_of(&self.relay.log(), "session started")
    }

    /// The local ports of the sessions it resumed, one per resume.
    pub fn resumed_ports(&self) -> Vec<u16> {
        ports_of(&self.relay.log(), "session resumed")
    }
}

/// The `local_port=` of every line of `log` containing `needle`.
pub fn ports_of(log: &str, needle: &str) -> Vec<u16> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| field(l, "local_port")?.parse().ok())
        .collect()
}

/// The value of `name=` in a log line.
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split_whitespace().next()
}

/// The balancer in front of the fleet.
pub enum Balancer {
    HaProxy(HaProxy),
    Nginx(Nginx),
}

/// Which balancer a bench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    HaProxy,
    Nginx,
}

/// The lab, sshd, three relays and a balancer.
pub struct FleetBench {
    // Dropped in this order.
    pub balancer: Balancer,
    pub instances: Vec<Instance>,
    pub sshd: TestSshd,
    pub lab: NetLab,
}

impl FleetBench {
    /// Sets it up behind HAProxy, each relay with `extra(i)` flags besides
    /// its name, agent and config file (`{server}` in them is the relays'
    /// address); `None` (and why) if this machine cannot.
    pub fn start(extra: &dyn Fn(usize) -> Vec<String>) -> Result<Option<FleetBench>> {
        FleetBench::start_behind(Kind::HaProxy, extra)
    }

    /// HAProxy, which this bench runs (a test of HAProxy's own asks).
    pub fn haproxy(&self) -> &HaProxy {
        match &self.balancer {
            Balancer::HaProxy(haproxy) => haproxy,
            Balancer::Nginx(_) => panic!("this bench runs nginx, not HAProxy"),
        }
    }

    /// Sets it up behind the balancer `kind` (see [`start`](Self::start)).
    pub fn start_behind(
        kind: Kind,
        extra: &dyn Fn(usize) -> Vec<String>,
    ) -> Result<Option<FleetBench>> {
        let Some(lab) = NetLab::create()? else {
            return Ok(None);
        };
        let sshd = TestSshd::start_with(&SshdOptions {
            netns: Some(lab.server_ns().to_owned()),
            extra_listen: Vec::new(),
        })?;
        let ip = lab.server_addr();
        let mut instances = Vec::new();
        for i in 0..INSTANCES {
            let name = instance_name(i);
            let config = sshd.dir().join(format!("{name}.toml"));
            std::fs::write(&config, "")?;
            let mut flags = vec![
                "--instance".to_owned(),
                name.clone(),
                "--agent-listen".into(),
                format!("{ip}:{}", agent_port(i)),
                "--config".into(),
                config.display().to_string(),
                // HAProxy connects from the relays' own address.
                "--proxy-protocol-from".into(),
                ip.to_string(),
            ];
            flags.extend(
                extra(i)
                    .into_iter()
                    .map(|flag| flag.replace("{server}", &ip.to_string())),
            );
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let relay = RelayProcess::start_in_netns(
                lab.server_ns(),
                &format!("{ip}:{}", relay_port(i)),
                sshd.port(),
                &flags,
            )?;
            instances.push(Instance {
                name,
                config,
                relay,
            });
        }
        let balancer = match kind {
            Kind::HaProxy => {
                let Some(haproxy) = HaProxy::start(&lab, sshd.dir(), ip)? else {
                    return Ok(None);
                };
                for instance in &instances {
                    haproxy.wait_status("relays", &instance.name, "UP", Duration::from_secs(10))?;
                    haproxy.wait_status(
                        &instance.name,
                        &instance.name,
                        "UP",
                        Duration::from_secs(10),
                    )?;
                }
                Balancer::HaProxy(haproxy)
            }
            Kind::Nginx => {
                let Some(nginx) = Nginx::start(&lab, sshd.dir(), ip)? else {
                    return Ok(None);
                };
                Balancer::Nginx(nginx)
            }
        };
        Ok(Some(FleetBench {
            balancer,
            instances,
            sshd,
            lab,
        }))
    }

    /// The balancer's address: what clients are given.
    pub fn balancer(&self) -> SocketAddr {
        SocketAddr::from((self.lab.server_addr(), BALANCER_PORT))
    }

    /// The client's `ProxyCommand` through the balancer, with `flags`.
    pub fn proxy(&self, flags: &str) -> String {
        proxy_command(self.balancer(), self.sshd.port(), flags)
    }

    /// The instance that started the session whose relay-side port is
    /// `port`, if one did.
    pub fn instance_of(&self, port: u16) -> Option<usize> {
        self.instances
            .iter()
            .position(|instance| instance.started_ports().contains(&port))
    }

    /// Waits until an instance has logged the start of the session on
    /// `port`; returns which.
    pub fn wait_instance_of(&self, port: u16, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.instance_of(port) {
                return Ok(i);
            }
            ensure!(
                Instant::now() < deadline,
                "no instance logged the session on local port {port}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Checks that every resume each instance logged is of a session it
    /// started, and that none was refused as unknown; returns the resumes
    /// per instance.
    pub fn check_resumes_went_home(&self) -> Result<Vec<usize>> {
        let mut per_instance = Vec::new();
        for instance in &self.instances {
            let started = instance.started_ports();
            let resumed = instance.resumed_ports();
            for port in &resumed {
                ensure!(
                    started.contains(port),
                    "{} resumed the session on port {port}, which it did not start",
                    instance.name
                );
            }
            let log = instance.relay.log();
            ensure!(
                !log.contains("no such session"),
                "{} refused a resume of a session it does not hold:\n{log}",
                instance.name
            );
            per_instance.push(resumed.len());
        }
        Ok(per_instance)
    }
}

/// What each instance carried: from its `session ended` lines.
#[derive(Debug, Default, Clone, Copy)]
pub struct Carried {
    pub sessions: usize,
    pub from_clients: u64,
    pub to_clients: u64,
}

impl Instance {
    /// Sessions ended and bytes carried, from its log.
    pub fn carried(&self) -> Carried {
        let log = self.relay.log();
        let mut carried = Carried::default();
        for line in log.lines().filter(|l| l.contains("session ended")) {
            carried.sessions += 1;
            let bytes = |name| field(line, name).and_then(|v| v.parse::<u64>().ok());
            carried.from_clients += bytes("bytes_from_client").unwrap_or(0);
            carried.to_clients += bytes("bytes_to_client").unwrap_or(0);
        }
        carried
    }
}

/// One ssh session through the fleet running `cat` remotely: `len` bytes
/// written to it (at most `rate` bytes a second, if given), the same read
/// back, both sides hashed.
pub struct EchoSsh {
    pub ssh: Watched,
    /// The relay's local port towards sshd (from `$SSH_CLIENT`).
    pub port: u16,
    received: Arc<AtomicU64>,
    writer: JoinHandle<Result<String>>,
    reader: JoinHandle<Result<(u64, String)>>,
    pub len: u64,
    pub started: Instant,
}

/// Bound on the wait for a session to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

impl EchoSsh {
    /// Starts it through `proxy` (a `ProxyCommand`) and waits until it is
    /// open.
    pub fn start(
        bench: &FleetBench,
        proxy: &str,
        len: u64,
        seed: u64,
        rate: Option<u64>,
    ) -> Result<EchoSsh> {
        let mut session = EchoSsh::spawn(bench, proxy, len, seed, rate)?;
        session.wait_open()?;
        Ok(session)
    }

    /// Starts it through `proxy` (a `ProxyCommand`); [`wait_open`]
    /// (Self::wait_open) learns its port.
    pub fn spawn(
        bench: &FleetBench,
        proxy: &str,
        len: u64,
        seed: u64,
        rate: Option<u64>,
    ) -> Result<EchoSsh> {
        let command = bench
            .sshd
            .ssh_command(Some(proxy), "echo \"port=${SSH_CLIENT#* }\" >&2; exec cat");
        let mut ssh = Watched::spawn(
            bench.lab.in_client(&command),
            Stdio::piped(),
            Stdio::piped(),
        )?;
        let started = Instant::now();
        let mut input = ssh.child.stdin.take().context("ssh stdin")?;
        let output = ssh.child.stdout.take().context("ssh stdout")?;
        let writer = std::thread::spawn(move || -> Result<String> {
            // Made as it is written (nothing held in memory).
            let mut stream = SplitMix64(seed);
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 << 10];
            let mut sent = 0u64;
            let begun = Instant::now();
            while sent < len {
                let n = usize::try_from((len - sent).min(buf.len() as u64)).expect("small");
                let whole = n.next_multiple_of(8).min(buf.len());
                stream.fill(&mut buf[..whole]);
                hasher.update(&buf[..n]);
                input.write_all(&buf[..n]).context("writing to ssh")?;
                sent += n as u64;
                if let Some(rate) = rate {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(begun.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            drop(input);
            Ok(hex(&hasher.finalize()))
        });
        let (received, reader) = hash_while_reading(output, "from ssh");
        Ok(EchoSsh {
            ssh,
            port: 0,
            received,
            writer,
            reader,
            len,
            started,
        })
    }

    /// Waits until the session is open (the remote command said its port).
    pub fn wait_open(&mut self) -> Result<u16> {
        let line = self
            .ssh
            .stderr
            .wait_for(0, "port=", OPEN_TIMEOUT)
            .context("the session did not open")?;
        self.port = line
            .split("port=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no port in {line:?}"))?;
        Ok(self.port)
    }

    /// Bytes echoed back so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Whether ssh still runs.
    pub fn running(&mut self) -> bool {
        self.ssh.running().unwrap_or(false)
    }

    /// Waits (at most `timeout`) for ssh to exit 0 with every byte back
    /// once, in order; returns how long the session took.
    pub fn finish(self, timeout: Duration) -> Result<Duration> {
        let EchoSsh {
            mut ssh,
            writer,
            reader,
            len,
            started,
            ..
        } = self;
        let status = ssh.wait(timeout)?;
        let took = started.elapsed();
        ensure!(
            status.success(),
            "ssh exited with {status}; its stderr:\n{}",
            ssh.stderr.text()
        );
        let sent = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        let (got, echoed) = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        ensure!(got == len, "{got} bytes came back of {len}");
        ensure!(
            echoed == sent,
            "sha256 of the echo differs from what was sent"
        );
        Ok(took)
    }
}
