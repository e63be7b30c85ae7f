//! A two-host network lab for end-to-end tests, as root: two network
//! namespaces ("server" and "client") joined by a veth pair, and the faults a
//! real network has, applied inside the client namespace.
//!
//! * silent partition: iptables DROP on the client's veth, both ways;
//! * middlebox reset: iptables REJECT `--reject-with tcp-reset` on the
//!   client's veth, both ways (a packet going out makes a RST for the local
//!   socket, a packet coming in a RST back to its sender);
//! * address change: the client gets a new address on its veth and loses the
//!   old one (with `promote_secondaries`, so that the new one survives);
//! * a rate limit (tc tbf) on both ends of the veth;
//! * a path that shrinks: large packets dropped on both ends of the veth
//!   while small ones pass, and no ICMP about it ([`NetLab::black_hole`];
//!   the veth's offloads must be off for that to mean anything,
//!   [`NetLab::offloads_off`]);
//! * flapping: a break every so often for a while ([`NetLab::flap`]), in
//!   turn each of the three faults above ([`Fault`], [`NetLab::apply`]).
//!
//! [`NetLab::in_netns`] runs code on a thread inside either namespace, so a
//! test can listen and connect there itself (echo servers, SOCKS clients).
//! Several labs can run at once, in one test process or in several: each
//! has its own namespaces, named after the test process's pid and a counter,
//! and its own /24 that exists only inside them.
//!
//! The subnet (`10.231.N.0/24`) exists only inside the two namespaces, and
//! the veth is created directly inside them: nothing is added to the
//! machine's own network namespace, and traffic goes only to the lab's own
//! addresses or to each namespace's loopback. Dropping the [`NetLab`] deletes
//! both namespaces, which removes the veth pair, its addresses, qdiscs and
//! iptables rules with them, also when a test panics. Labs left behind by a
//! test process that was killed are removed by the next [`NetLab::create`].
//!
//! When the machine cannot host a lab (not root; `ip`, `iptables`,
//! `iptables-restore` or `tc` missing; namespaces not permitted),
//! [`NetLab::create`] prints why and returns `None`, and the test returns
//! without failing.

#![allow(dead_code)]

mod path;

use super::process::{signal, wait_output};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Namespace names start with this, then `<pid>-<n>-server|client`.
const PREFIX: &str = "resumeproxy-test-";
/// The server's end of the veth pair (inside the server namespace).
pub const SERVER_IF: &str = "vserver";
/// The client's end of the veth pair (inside the client namespace).
pub const CLIENT_IF: &str = "vclient";
/// Bound on any one `ip`/`iptables-restore`/`tc` command.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// A fault of the network between the client and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client moves to its other address (add the new, delete the old).
    AddressChange,
    /// Every TCP segment on the client's veth is answered with a RST.
    ResetBurst(Duration),
    /// Every packet on the client's veth is dropped: no RST, no link event.
    Partition(Duration),
}

impl Fault {
    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            Fault::AddressChange => "address change".into(),
            Fault::ResetBurst(d) => format!("reset storm {d:?}"),
            Fault::Partition(d) => format!("silent partition {d:?}"),
        }
    }
}

/// Two namespaces joined by a veth pair; deleted on drop.
pub struct NetLab {
    server_ns: String,
    client_ns: String,
    /// `10.231.N`: the lab's /24.
    net: [u8; 3],
    /// The client's current address (it moves).
    client_addr: Mutex<Ipv4Addr>,
    ip: PathBuf,
    iptables: PathBuf,
    iptables_restore: PathBuf,
    tc: PathBuf,
    /// Not every machine has it; only [`NetLab::offloads_off`] needs it.
    ethtool: Option<PathBuf>,
}

impl NetLab {
    /// Creates a lab, or prints why this machine cannot and returns `None`.
    pub fn create() -> Result<Option<NetLab>> {
        if !resumeproxy::paths::is_root() {
            super::lab::cannot_run("network namespaces need root");
            return Ok(None);
        }
        let mut tools = Vec::new();
        for name in ["ip", "iptables", "iptables-restore", "tc"] {
            match find_tool(name) {
                Some(path) => tools.push(path),
                None => {
                    super::lab::cannot_run(&format!("`{name}` is not installed"));
                    return Ok(None);
                }
            }
        }
        let [ip, iptables, iptables_restore, tc] =
            <[PathBuf; 4]>::try_from(tools).expect("four tools");
        remove_stale_labs(&ip);

        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let octet = u8::try_from((pid.wrapping_mul(31).wrapping_add(n)) % 254 + 1).expect("< 255");
        let lab = NetLab {
            server_ns: format!("{PREFIX}{pid}-{n}-server"),
            client_ns: format!("{PREFIX}{pid}-{n}-client"),
            net: [10, 231, octet],
            client_addr: Mutex::new(Ipv4Addr::new(10, 231, octet, 2)),
            ip,
            iptables,
            iptables_restore,
            tc,
            ethtool: find_tool("ethtool"),
        };
        // Namespaces may be forbidden even to root (an unprivileged container).
        let probe = Command::new(&lab.ip)
            .args(["netns", "add", &lab.server_ns])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("run ip netns add")?;
        let out = wait_output(probe, TOOL_TIMEOUT).context("ip netns add")?;
        if !out.0.success() {
            super::lab::cannot_run(&format!(
                "cannot create a network namespace: {}",
                out.1.trim()
            ));
            return Ok(None);
        }
        // From here on, Drop cleans up whatever exists.
        lab.setup()
            .with_context(|| format!("setting up the lab {}", lab.client_ns))?;
        Ok(Some(lab))
    }

    fn setup(&self) -> Result<()> {
        let (s, c) = (self.server_ns.as_str(), self.client_ns.as_str());
        self.ip(&["netns", "add", c])?;
        self.ip(&[
            "link", "add", SERVER_IF, "netns", s, "type", "veth", "peer", "name", CLIENT_IF,
            "netns", c,
        ])?;
        // Deleting the client's primary address must promote the secondary
        // (its new address) instead of deleting it too.
        self.sh(
            c,
            &format!(
                "echo 1 > /proc/sys/net/ipv4/conf/all/promote_secondaries && \
                 echo 1 > /proc/sys/net/ipv4/conf/{CLIENT_IF}/promote_secondaries"
            ),
        )?;
        let server = format!("{}/24", self.server_addr());
        let client = format!("{}/24", self.client_addr());
        self.ip(&["-n", s, "addr", "add", &server, "dev", SERVER_IF])?;
        self.ip(&["-n", c, "addr", "add", &client, "dev", CLIENT_IF])?;
        for (ns, dev) in [(s, SERVER_IF), (c, CLIENT_IF)] {
            self.ip(&["-n", ns, "link", "set", "lo", "up"])?;
            self.ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // The kernel reports carrier on the veth a moment after both ends
        // are up; until then packets on it are lost.
        let deadline = Instant::now() + TOOL_TIMEOUT;
        for (ns, dev) in [(s, SERVER_IF), (c, CLIENT_IF)] {
            loop {
                let link = self.output(&self.ip, &["-n", ns, "-o", "link", "show", "dev", dev])?;
                if link.contains("state UP") && !link.contains("NO-CARRIER") {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("{dev} in {ns} never came up: {link}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Name of the server namespace.
    pub fn server_ns(&self) -> &str {
        &self.server_ns
    }

    /// Name of the client namespace.
    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    /// The server's address on the veth (`10.231.N.1`).
    pub fn server_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.net;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The client's current address on the veth (`10.231.N.2` or `.3`).
    pub fn client_addr(&self) -> Ipv4Addr {
        *self.client_addr.lock().unwrap()
    }

    /// `command` (program, arguments, environment and working directory; not its stdio)
    /// run in the server namespace through `ip netns exec`, which execs it in
    /// place: the child's pid is the program's.
    pub fn in_server(&self, command: &Command) -> Command {
        self.wrap(&self.server_ns, command)
    }

    /// Like [`in_server`](Self::in_server), in the client namespace.
    pub fn in_client(&self, command: &Command) -> Command {
        self.wrap(&self.client_ns, command)
    }

    fn wrap(&self, ns: &str, command: &Command) -> Command {
        let mut wrapped = Command::new(&self.ip);
        wrapped
            .args(["netns", "exec", ns])
            .arg(command.get_program())
            .args(command.get_args());
        // `ip netns exec` passes its environment on: so do the variables
        // set on `command` (e.g. the client's private XDG directories).
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// Runs `f` on a thread that has entered the network namespace `ns`:
    /// sockets it makes (listeners, connections) belong to that namespace
    /// and stay there, whichever thread uses them later.
    pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = Path::new("/run/netns").join(ns);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path)
                        .with_context(|| format!("open {}", path.display()))?;
                    // SAFETY: setns on a valid namespace fd changes only this
                    // thread's network namespace.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns into {ns}: {}", std::io::Error::last_os_error());
                    }
                    f()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("a thread in {ns} panicked"))?
        })
    }

    /// Applies `fault` to the client for its whole duration (returns when
    /// the network is back); says what it did.
    pub fn apply(&self, fault: Fault) -> Result<String> {
        match fault {
            Fault::AddressChange => {
                let (old, new) = self.move_client()?;
                Ok(format!("client address {old} -> {new}"))
            }
            Fault::ResetBurst(how_long) => {
                let burst = self.reset_burst()?;
                std::thread::sleep(how_long);
                burst.lift()?;
                Ok(format!("TCP answered with RST for {how_long:?}"))
            }
            Fault::Partition(how_long) => {
                let partition = self.partition()?;
                std::thread::sleep(how_long);
                partition.lift()?;
                Ok(format!("all packets dropped for {how_long:?}"))
            }
        }
    }

    /// Flapping: a break every `every`, for `total` (or until `stop` is
    /// set), each `down` long, in turn a silent partition, a reset burst and
    /// an address change. Returns the breaks applied. The breaks are a
    /// schedule, so this sleeps between them.
    pub fn flap(
        &self,
        every: Duration,
        down: Duration,
        total: Duration,
        stop: &AtomicBool,
    ) -> Result<Vec<Fault>> {
        let kinds = [
            Fault::Partition(down),
            Fault::ResetBurst(down),
            Fault::AddressChange,
        ];
        let started = Instant::now();
        let mut applied = Vec::new();
        for (i, fault) in kinds.iter().copied().cycle().enumerate() {
            let at = every * u32::try_from(i).unwrap_or(u32::MAX);
            if at >= total || stop.load(Ordering::SeqCst) {
                break;
            }
            if let Some(wait) = at.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            self.apply(fault)?;
            applied.push(fault);
        }
        Ok(applied)
    }

    /// Limits the veth to `rate` (tc syntax, e.g. `400mbit`) both ways.
    pub fn rate_limit(&self, rate: &str) -> Result<()> {
        self.rate_limit_with_burst(rate, "256kb")
    }

    /// Like [`rate_limit`](Self::rate_limit), with a bucket of `burst`
    /// (tc syntax): the queue holds that much more than 50 ms at the rate.
    /// At 1 Mbit/s the usual 256 KiB is two seconds of queue, more than a
    /// test's `--dead-after 1s` can wait for a retransmission behind it.
    pub fn rate_limit_with_burst(&self, rate: &str, burst: &str) -> Result<()> {
        for (ns, dev) in [
            (self.server_ns.as_str(), SERVER_IF),
            (self.client_ns.as_str(), CLIENT_IF),
        ] {
            self.tool(
                &self.tc,
                &[
                    "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst",
                    burst, "latency", "50ms",
                ],
            )?;
        }
        Ok(())
    }

    /// Starts a silent partition of the client: every packet on its veth is
    /// dropped, both ways, until the returned guard is lifted or dropped.
    pub fn partition(&self) -> Result<Blocked<'_>> {
        self.block(vec![
            format!("INPUT -i {CLIENT_IF} -j DROP"),
            format!("OUTPUT -o {CLIENT_IF} -j DROP"),
        ])
    }

    /// Starts a burst of TCP resets: every TCP segment on the client's veth
    /// is rejected with a RST, both ways (the client's own socket gets one
    /// for what it sends, the server one for what it sends), until the guard
    /// is lifted or dropped.
    pub fn reset_burst(&self) -> Result<Blocked<'_>> {
        let reject = "-j REJECT --reject-with tcp-reset";
        // The RST made for a segment coming in goes out through OUTPUT
        // too: let RSTs pass there, so that the sender (the server) is
        // reset as a middlebox would reset it, not only the client.
        self.block(vec![
            format!("INPUT -i {CLIENT_IF} -p tcp {reject}"),
            format!("OUTPUT -o {CLIENT_IF} -p tcp ! --tcp-flags RST RST {reject}"),
        ])
    }

    /// Drops every UDP packet on the client's veth, both ways (a network
    /// that lets only TCP through), until the guard is lifted or dropped.
    pub fn block_udp(&self) -> Result<Blocked<'_>> {
        self.block(vec![
            format!("INPUT -i {CLIENT_IF} -p udp -j DROP"),
            format!("OUTPUT -o {CLIENT_IF} -p udp -j DROP"),
        ])
    }

    fn block(&self, rules: Vec<String>) -> Result<Blocked<'_>> {
        self.filter_batch("-I", &rules)?;
        Ok(Blocked {
            lab: self,
            rules,
            server_rules: Vec::new(),
        })
    }

    /// Applies `op` (`-I` or `-D`) to all `rules` of the client's filter
    /// table in one transaction, so that both directions start and stop
    /// at the same instant.
    fn filter_batch(&self, op: &str, rules: &[String]) -> Result<()> {
        self.filter_batch_in(&self.client_ns, op, rules)
    }

    /// Like [`filter_batch`](Self::filter_batch), in the namespace `ns`.
    fn filter_batch_in(&self, ns: &str, op: &str, rules: &[String]) -> Result<()> {
        let mut batch = String::from("*filter\n");
        for rule in rules {
            batch.push_str(&format!("{op} {rule}\n"));
        }
        batch.push_str("COMMIT\n");
        let restore = self
            .iptables_restore
            .to_str()
            .context("iptables-restore path")?;
        let args = ["netns", "exec", ns, restore, "-w", "--noflush"];
        self.run(&self.ip, &args, Some(&batch)).map(drop)
    }

    /// Runs `iptables ARGS` in the server namespace (rules there go with
    /// the namespace).
    pub fn server_iptables(&self, args: &[&str]) -> Result<()> {
        let iptables = self.iptables.to_str().context("iptables path")?;
        let mut all = vec!["netns", "exec", &self.server_ns, iptables, "-w"];
        all.extend_from_slice(args);
        self.ip(&all)
    }

    /// Moves the client to its other address (`.2` ↔ `.3`): adds the new one,
    /// then deletes the old one. Established connections keep the old source
    /// address, which is no longer the client's: for them the network goes
    /// silent. Returns (old, new).
    pub fn move_client(&self) -> Result<(Ipv4Addr, Ipv4Addr)> {
        let mut current = self.client_addr.lock().unwrap();
        let old = *current;
        let [a, b, c] = self.net;
        let new = Ipv4Addr::new(a, b, c, if old.octets()[3] == 2 { 3 } else { 2 });
        let ns = self.client_ns.as_str();
        let (old_net, new_net) = (format!("{old}/24"), format!("{new}/24"));
        self.ip(&["-n", ns, "addr", "add", &new_net, "dev", CLIENT_IF])?;
        self.ip(&["-n", ns, "addr", "del", &old_net, "dev", CLIENT_IF])?;
        *current = new;
        let show = ["-n", ns, "-4", "-o", "addr", "show", "dev", CLIENT_IF];
        let shown = self.output(&self.ip, &show)?;
        if !shown.contains(&format!("inet {new}/")) || shown.contains(&format!("inet {old}/")) {
            bail!("moving the client from {old} to {new} left: {shown}");
        }
        Ok((old, new))
    }

    /// What the lab looks like now (addresses, rules, sockets), for failure reports.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        let c = self.client_ns.as_str();
        let s = self.server_ns.as_str();
        let ipt = self.iptables.display().to_string();
        let probes: [(&str, Vec<&str>); 4] = [
            ("client addresses", vec!["-n", c, "-4", "addr"]),
            (
                "client iptables",
                vec!["netns", "exec", c, &ipt, "-w", "-S"],
            ),
            ("client sockets", vec!["netns", "exec", c, "ss", "-tnio"]),
            ("server sockets", vec!["netns", "exec", s, "ss", "-tnio"]),
        ];
        for (what, args) in probes {
            let out = self
                .output(&self.ip, &args)
                .unwrap_or_else(|e| format!("({e:#})"));
            text.push_str(&format!("--- {what} ---\n{out}\n"));
        }
        text
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        self.tool(&self.ip, args)
    }

    fn sh(&self, ns: &str, script: &str) -> Result<()> {
        self.ip(&["netns", "exec", ns, "/bin/sh", "-c", script])
    }

    fn tool(&self, program: &Path, args: &[&str]) -> Result<()> {
        self.output(program, args).map(drop)
    }

    fn output(&self, program: &Path, args: &[&str]) -> Result<String> {
        self.run(program, args, None)
    }

    /// Runs `program args` with `input` on its stdin (bounded by
    /// [`TOOL_TIMEOUT`]); its stdout, or an error with its stderr.
    fn run(&self, program: &Path, args: &[&str], input: Option<&str>) -> Result<String> {
        let line = format!("{} {}", program.display(), args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {line}"))?;
        if let Some(input) = input {
            // Small enough for the pipe's buffer; dropping the pipe ends it.
            let mut stdin = child.stdin.take().context("stdin")?;
            stdin
                .write_all(input.as_bytes())
                .with_context(|| format!("write to {line}"))?;
        }
        let (status, stderr, stdout) =
            wait_output(child, TOOL_TIMEOUT).with_context(|| line.clone())?;
        if !status.success() {
            bail!("{line} failed with {status}: {}", stderr.trim());
        }
        Ok(stdout)
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- network lab at failure ---\n{}", self.describe());
        }
        for ns in [&self.client_ns, &self.server_ns] {
            // Whatever the test started in there and did not end (say, a
            // ProxyCommand orphaned by a killed ssh) would keep the namespace
            // alive, unnamed, after its deletion.
            kill_all_in(&self.ip, ns);
            if let Err(e) = self.ip(&["netns", "delete", ns]) {
                // Only the server namespace may be missing (setup failed early).
                if !format!("{e:#}").contains("No such file") {
                    eprintln!("warning: could not delete network namespace {ns}: {e:#}");
                }
            }
        }
    }
}

/// iptables rules in the client namespace (and perhaps the server's),
/// deleted when lifted or dropped.
pub struct Blocked<'a> {
    lab: &'a NetLab,
    /// Rule specifications (chain first); empty once deleted.
    rules: Vec<String>,
    /// The same, in the server namespace.
    server_rules: Vec<String>,
}

impl Blocked<'_> {
    /// Deletes the rules.
    pub fn lift(mut self) -> Result<()> {
        self.delete()
    }

    fn delete(&mut self) -> Result<()> {
        let server_rules = std::mem::take(&mut self.server_rules);
        if !server_rules.is_empty() {
            self.lab
                .filter_batch_in(&self.lab.server_ns, "-D", &server_rules)?;
        }
        if self.rules.is_empty() {
            return Ok(());
        }
        let rules = std::mem::take(&mut self.rules);
        self.lab.filter_batch("-D", &rules)
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            eprintln!("warning: could not delete iptables rules: {e:#}");
        }
    }
}

/// `name` from PATH, or from the sbin directories (not always in a PATH).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .filter(|candidate| {
            let version = if name.starts_with("iptables") || name == "ethtool" {
                "--version"
            } else {
                "-V"
            };
            Command::new(candidate)
                .arg(version)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
                .and_then(|child| wait_output(child, TOOL_TIMEOUT).ok())
                .is_some_and(|(status, _, _)| status.success())
        })
}

/// Output of a quick `ip` query, or nothing.
fn ip_query(ip: &Path, args: &[&str]) -> String {
    Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()
        .and_then(|child| wait_output(child, TOOL_TIMEOUT).ok())
        .map(|(_, _, stdout)| stdout)
        .unwrap_or_default()
}

/// Kills (SIGKILL) every process in the lab namespace `ns`: all of them
/// were started by the test that made it.
fn kill_all_in(ip: &Path, ns: &str) {
    for pid in ip_query(ip, &["netns", "pids", ns])
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        let _ = signal(pid, libc::SIGKILL);
    }
}

/// Deletes labs whose test process no longer exists (killed before its
/// drop ran), and what still runs in them. Only names with this harness's
/// prefix are considered.
fn remove_stale_labs(ip: &Path) {
    for line in ip_query(ip, &["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            eprintln!("removing the stale network namespace {name}");
            kill_all_in(ip, name);
            ip_query(ip, &["netns", "delete", name]);
        }
    }
}
