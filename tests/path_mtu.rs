//! A path that shrinks (as root in network namespaces, with ethtool;
//! skipped with a printed reason otherwise, see `support::lab`). A VPN or
//! tunnel comes up mid-session, the path's MTU drops, and where the ICMP
//! "fragmentation needed" is filtered packets above the new size vanish
//! while small ones pass. The lab drops every packet of [`HOLE_FROM`] bytes
//! or more arriving over the veth, at both ends, with no ICMP, and with the
//! veth's offloads off (packets cross it at the sizes a wire carries). The
//! veth runs at 400 Mbit/s.
//!
//! A 512 MiB download through `ProxyCommand resumeproxy` — over TCP, QUIC
//! and `auto` — must complete within [`WITHIN`] of its start, sha256 equal,
//! ssh exiting 0, through a black hole that comes a moment into the
//! download and stays, and through one that comes and goes. Over TCP the
//! client finds that data stops while small packets pass, says so once,
//! and reconnects with smaller segments, which the relay then sends too
//! (its socket's MSS is checked); QUIC falls back to 1200-byte datagrams
//! by itself. Through a narrower black hole (from [`NARROW_FROM`] bytes)
//! TCP steps down to 536-byte segments, and the reconnect in between,
//! whose handshake passed but which carried nothing, is not told as a
//! resume: the client says "resumed" only once data flows. An upload over
//! TCP meets the session's own rule: the client's data waits
//! unacknowledged while the relay's heartbeats come, and it says so. Plain
//! ssh is measured by the same harness, side by side (printed as
//! `BASELINE`).
//!
//! Nothing else may get slower: over a 1 Mbit/s link, a 3 MiB upload and a
//! 3 MiB download (the relay's replay buffer at its smallest, 64 KiB, so
//! that it is always full) run at once, over TCP and over QUIC, with
//! `--dead-after 2s`: no link is ever taken for dead.

mod support;

use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::data::{sha256_file, write_random_file};
use support::faults::{serial, Bench, PROGRESS_TIMEOUT};
use support::process::{file_len, Watched};
use support::relay::{LOST, RESUMED};

/// The download.
const SIZE: u64 = 512 << 20;
/// The veth's rate, both ways.
const RATE: &str = "400mbit";
/// Packets this long or longer vanish (IP length, headers included).
const HOLE_FROM: u32 = 1300;
/// A narrower black hole, which TCP segments of 1200 bytes do not pass
/// either (nor QUIC, which needs 1200-byte datagrams).
const NARROW_FROM: u32 = 1000;
/// Data at the far end when the black hole comes (some 3 s in).
const BEFORE_HOLE: u64 = 128 << 20;
/// Bound on the whole download, from its start.
const WITHIN: Duration = Duration::from_secs(60);
/// A black hole that comes and goes: this long on, then as long off.
const FLAP: Duration = Duration::from_secs(4);
/// How long plain ssh is watched after the black hole came, when it stays.
const BASELINE_WATCH: Duration = Duration::from_secs(30);
/// What the client says when it takes smaller segments.
const SMALLER: &str = "this session uses TCP segments of at most";

/// How the black hole behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hole {
    /// There is none (for comparison).
    Never,
    /// It comes and stays.
    Stays,
    /// It comes, goes and comes again, [`FLAP`] each, until the end.
    ComesAndGoes,
}

/// What one download did.
struct Download {
    hole: Hole,
    /// Its run time, start to end (or to when it was given up).
    took: Duration,
    /// When the black hole came, from the start.
    hole_at: Duration,
    /// When data stopped arriving after the hole came (nothing for 500 ms).
    stalled_at: Option<Duration>,
    /// When, after that, 4 MiB more had arrived.
    flowing_at: Option<Duration>,
    /// Bytes that arrived.
    arrived: u64,
    /// Whether it completed, ssh exiting 0.
    completed: bool,
    /// The MSS of the relay's TCP connections when data flowed again.
    relay_mss: Vec<u32>,
    /// The client's lines (through ssh's stderr).
    lines: Vec<String>,
}

impl std::fmt::Display for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |t: Option<Duration>| t.map_or_else(|| "never".into(), |t| format!("{t:.1?}"));
        if self.hole == Hole::Never {
            let all = if self.completed { "all" } else { "NOT all" };
            return write!(f, "{all} of {} MiB in {:.1?}", SIZE >> 20, self.took);
        }
        write!(
            f,
            "{} of {} MiB in {:.1?}; black hole at {:.1?}, data stopped at {}, flowing again at {}",
            if self.completed { "all" } else { "NOT all" },
            SIZE >> 20,
            self.took,
            self.hole_at,
            at(self.stalled_at),
            at(self.flowing_at)
        )
    }
}

/// A lab with offloads off, sshd and the relay, and the file to download;
/// `None` (said why) if this machine cannot host it.
fn bench(client_flags: &str) -> Result<Option<Bench>> {
    let Some(bench) = Bench::start_with(RATE, &[], client_flags)? else {
        return Ok(None);
    };
    if !bench.lab.offloads_off()? {
        return Ok(None);
    }
    write_random_file(&bench.sshd.dir().join("src"), SIZE, 23)?;
    Ok(Some(bench))
}

/// Downloads the file through the relay (or straight, `direct`), the
/// black hole coming once [`BEFORE_HOLE`] arrived. Gives up after
/// `give_up` from the start (a failure unless `direct`).
fn download(
    bench: &Bench,
    direct: bool,
    hole: Hole,
    from: u32,
    give_up: Duration,
) -> Result<Download> {
    let src = bench.sshd.dir().join("src");
    let dst = bench.sshd.dir().join("dst");
    let _ = std::fs::remove_file(&dst);
    let command = bench.ssh(direct, &[], &format!("cat {}", src.display()));
    let started = Instant::now();
    let mut ssh = Watched::spawn(command, Stdio::null(), Stdio::from(File::create(&dst)?))?;
    ssh.wait_for_bytes(&dst, BEFORE_HOLE, PROGRESS_TIMEOUT)?;
    let hole_at = started.elapsed();
    let mut guard = match hole {
        Hole::Never => None,
        Hole::Stays | Hole::ComesAndGoes => Some(bench.lab.black_hole(from)?),
    };
    let mut toggled_at = Instant::now();
    let (mut last, mut last_change) = (file_len(&dst), Instant::now());
    let (mut stalled_at, mut flowing_at, mut stalled_len) = (None, None, 0);
    let mut mss = Vec::new();
    let status = loop {
        if let Some(status) = ssh.child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= give_up {
            break None;
        }
        let len = file_len(&dst);
        if len != last {
            (last, last_change) = (len, Instant::now());
        }
        if stalled_at.is_none() && last_change.elapsed() >= Duration::from_millis(500) {
            stalled_at = Some(last_change - started);
            stalled_len = len;
        }
        if stalled_at.is_some() && flowing_at.is_none() && len >= stalled_len + (4 << 20) {
            flowing_at = Some(started.elapsed());
            if !direct {
                mss = relay_mss(bench)?;
            }
        }
        // The schedule of a black hole that comes and goes.
        if hole == Hole::ComesAndGoes && toggled_at.elapsed() >= FLAP {
            toggled_at = Instant::now();
            match guard.take() {
                Some(on) => on.lift()?,
                None => guard = Some(bench.lab.black_hole(from)?),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    drop(guard);
    let completed = status.is_some_and(|s| s.success()) && file_len(&dst) == SIZE;
    if completed {
        ensure!(
            sha256_file(&dst)? == sha256_file(&src)?,
            "sha256 of what arrived differs"
        );
    } else if !direct {
        bail!(
            "the download did not complete within {give_up:?} ({status:?}, {} of {SIZE} bytes); stderr:\n{}",
            file_len(&dst),
            ssh.stderr.text()
        );
    }
    if status.is_some() {
        ssh.stderr.wait_for_end(Duration::from_secs(2));
    }
    Ok(Download {
        hole,
        took,
        hole_at,
        stalled_at,
        flowing_at,
        arrived: file_len(&dst),
        completed,
        relay_mss: mss,
        lines: ssh.stderr.text().lines().map(str::to_owned).collect(),
    })
}

/// The relay's TCP connections to clients, as `ss` shows them: the MSS
/// each sends with.
fn relay_mss(bench: &Bench) -> Result<Vec<u32>> {
    let port = bench.relay.addr().port().to_string();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            bench.lab.server_ns(),
            "ss",
            "-tni",
            "state",
        ])
        .args(["established", "sport", "=", &format!(":{port}")])
        .output()
        .context("running ss")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .filter_map(|field| field.strip_prefix("mss:"))
        .filter_map(|mss| mss.parse().ok())
        .collect())
}

/// The download over `transport` through the black hole for packets of
/// `from` bytes or more.
fn through_black_hole(transport: &str, hole: Hole, from: u32) -> Result<Option<Download>> {
    let _serial = serial();
    let Some(bench) = bench(&format!("--transport {transport}"))? else {
        return Ok(None);
    };
    let run = download(&bench, false, hole, from, WITHIN)?;
    eprintln!("{transport}, black hole that {hole:?}: {run}");
    for line in &run.lines {
        eprintln!("  {line}");
    }
    let said = |needle: &str| run.lines.iter().filter(|l| l.contains(needle)).count();
    // Told once, and a resume only once data flows.
    ensure!(said(SMALLER) <= 1, "said more than once: {:#?}", run.lines);
    let lost = said(LOST);
    let resumed = said(RESUMED);
    ensure!(
        resumed <= lost,
        "more resumes than losses told: {:#?}",
        run.lines
    );
    if transport == "tcp" && hole == Hole::Stays {
        ensure!(said(SMALLER) == 1, "no smaller segments: {:#?}", run.lines);
        ensure!(resumed == 1, "resumes told: {:#?}", run.lines);
        if from == HOLE_FROM {
            // The first loss already stepped down: the relay's kernel still
            // acknowledged the client's heartbeats while its data stopped.
            ensure!(lost == 1, "{:#?}", run.lines);
        }
        // The relay sends small segments too: the client's SYN said so.
        // (IP and TCP headers with timestamps: 52 bytes.)
        let mss = &run.relay_mss;
        ensure!(
            !mss.is_empty() && mss.iter().all(|&mss| mss + 52 < from),
            "the relay sends segments of {mss:?} bytes"
        );
    }
    Ok(Some(run))
}

#[test]
fn a_tcp_download_goes_on_through_a_black_hole_that_stays() -> Result<()> {
    through_black_hole("tcp", Hole::Stays, HOLE_FROM).map(drop)
}

#[test]
fn a_quic_download_goes_on_through_a_black_hole_that_stays() -> Result<()> {
    through_black_hole("quic", Hole::Stays, HOLE_FROM).map(drop)
}

#[test]
fn an_auto_download_goes_on_through_a_black_hole_that_stays() -> Result<()> {
    through_black_hole("auto", Hole::Stays, HOLE_FROM).map(drop)
}

#[test]
fn a_tcp_download_goes_on_through_a_black_hole_that_comes_and_goes() -> Result<()> {
    through_black_hole("tcp", Hole::ComesAndGoes, HOLE_FROM).map(drop)
}

#[test]
fn a_quic_download_goes_on_through_a_black_hole_that_comes_and_goes() -> Result<()> {
    through_black_hole("quic", Hole::ComesAndGoes, HOLE_FROM).map(drop)
}

#[test]
fn an_auto_download_goes_on_through_a_black_hole_that_comes_and_goes() -> Result<()> {
    through_black_hole("auto", Hole::ComesAndGoes, HOLE_FROM).map(drop)
}

/// An upload over TCP through a black hole that stays: here the client's
/// data stops while the relay's heartbeats (and acks of nothing) still
/// come, and the client says so — the session layer's own rule, whatever
/// the transport — and steps down.
#[test]
fn a_tcp_upload_goes_on_through_a_black_hole_that_stays() -> Result<()> {
    let _serial = serial();
    let Some(bench) = bench("--transport tcp")? else {
        return Ok(());
    };
    let src = bench.sshd.dir().join("src");
    let dst = bench.sshd.dir().join("up");
    let command = bench.ssh(false, &[], &format!("cat > {}", dst.display()));
    let started = Instant::now();
    let mut ssh = Watched::spawn(command, Stdio::from(File::open(&src)?), Stdio::null())?;
    ssh.wait_for_bytes(&dst, BEFORE_HOLE, PROGRESS_TIMEOUT)?;
    let hole_at = started.elapsed();
    let _hole = bench.lab.black_hole(HOLE_FROM)?;
    let status = ssh.wait(WITHIN.saturating_sub(started.elapsed()))?;
    let took = started.elapsed();
    ssh.stderr.wait_for_end(Duration::from_secs(2));
    ensure!(status.success(), "{status}: {}", ssh.stderr.text());
    ensure!(
        sha256_file(&dst)? == sha256_file(&src)?,
        "sha256 of what arrived differs"
    );
    let text = ssh.stderr.text();
    eprintln!(
        "tcp upload, black hole that stays: all of {} MiB in {took:.1?}; black hole at {hole_at:.1?}\n{text}",
        SIZE >> 20
    );
    ensure!(
        text.contains("data stopped for") && text.matches(SMALLER).count() == 1,
        "{text}"
    );
    Ok(())
}

/// The same download without a black hole, for comparison.
#[test]
fn the_same_download_without_a_black_hole() -> Result<()> {
    for transport in ["tcp", "quic"] {
        through_black_hole(transport, Hole::Never, HOLE_FROM)?;
    }
    Ok(())
}

/// Through a narrower black hole, segments of 1200 bytes are lost too:
/// the client steps down to 536. The reconnect at 1200 passes its
/// handshake and carries nothing; it is not told as a resume — the one
/// resume told is the one over which data flows again.
#[test]
fn a_tcp_download_steps_down_further_through_a_narrower_black_hole() -> Result<()> {
    let Some(run) = through_black_hole("tcp", Hole::Stays, NARROW_FROM)? else {
        return Ok(());
    };
    let said = |needle: &str| run.lines.iter().filter(|l| l.contains(needle)).count();
    ensure!(
        said("on the new link, though its handshake passed") == 1 && said(LOST) == 2,
        "{:#?}",
        run.lines
    );
    ensure!(
        run.lines.iter().any(|l| l.contains("at most 1200 bytes")),
        "told the first step down, once: {:#?}",
        run.lines
    );
    Ok(())
}

/// The baseline: plain ssh, straight to sshd over the same veth, through
/// the same black holes. When it stays, plain ssh stalls for good (without
/// `net.ipv4.tcp_mtu_probing`, the kernel's default); when it comes and
/// goes, it completes, each time some seconds after the hole went.
#[test]
fn plain_ssh_through_the_same_black_holes() -> Result<()> {
    let _serial = serial();
    let Some(bench) = bench("")? else {
        return Ok(());
    };
    let stays = download(&bench, true, Hole::Stays, HOLE_FROM, BASELINE_WATCH)?;
    ensure!(
        !stays.completed && stays.flowing_at.is_none(),
        "plain ssh got through a black hole that stays: {stays}"
    );
    let flaps = download(
        &bench,
        true,
        Hole::ComesAndGoes,
        HOLE_FROM,
        Duration::from_secs(240),
    )?;
    ensure!(
        flaps.completed,
        "plain ssh did not get through a black hole that comes and goes: {flaps}"
    );
    eprintln!(
        "BASELINE plain ssh, black hole that stays: {} MiB arrived, {stays}",
        stays.arrived >> 20
    );
    eprintln!("BASELINE plain ssh, black hole that comes and goes: {flaps}");
    Ok(())
}

/// A slow but moving link is never taken for dead: 1 Mbit/s, a 3 MiB
/// upload and a 3 MiB download at once, the relay's replay buffer at its
/// smallest, `--dead-after 2s`. The link's queue holds a quarter of a
/// second: a loss repaired behind a deeper one (a retransmission waits its
/// turn) would keep any byte from arriving for longer than a second, and
/// the silence of the other end would end the link, as it always did.
fn slow_link(transport: &str) -> Result<()> {
    const SLOW: u64 = 3 << 20;
    let _serial = serial();
    // 2 s, not the shortest interval: on this saturated link TCP's own
    // retransmission backoff (200, 400, 800 ms, …) held an upload's data
    // back for over a second now and then, which the stall rule at
    // `--dead-after 1s` took for a black hole (a needless reconnect).
    let flags = format!("--transport {transport} --dead-after 2s");
    let Some(bench) = Bench::start_with("", &["--replay-buffer", "64KiB"], &flags)? else {
        return Ok(());
    };
    bench.lab.rate_limit_with_burst("1mbit", "24kb")?;
    let dir = bench.sshd.dir();
    let (up_src, up_dst) = (dir.join("up.src"), dir.join("up.dst"));
    let (down_src, down_dst) = (dir.join("down.src"), dir.join("down.dst"));
    write_random_file(&up_src, SLOW, 31)?;
    write_random_file(&down_src, SLOW, 32)?;
    let started = Instant::now();
    let mut up = Watched::spawn(
        bench.ssh(false, &[], &format!("cat > {}", up_dst.display())),
        Stdio::from(File::open(&up_src)?),
        Stdio::null(),
    )?;
    let mut down = Watched::spawn(
        bench.ssh(false, &[], &format!("cat {}", down_src.display())),
        Stdio::null(),
        Stdio::from(File::create(&down_dst)?),
    )?;
    // 3 MiB each way at 1 Mbit/s takes some 26 s; four times that at most.
    let bound = Duration::from_secs(120);
    for (what, ssh) in [("upload", &mut up), ("download", &mut down)] {
        let status = ssh.wait(bound)?;
        ssh.stderr.wait_for_end(Duration::from_secs(2));
        ensure!(
            status.success() && ssh.stderr.count(LOST) == 0,
            "{transport} {what}: {status}; the client said:\n{}",
            ssh.stderr.text()
        );
    }
    let took = started.elapsed();
    assert_eq!(sha256_file(&up_dst)?, sha256_file(&up_src)?, "upload");
    assert_eq!(sha256_file(&down_dst)?, sha256_file(&down_src)?, "download");
    ensure!(
        bench.relay.count("client lost") == 0,
        "the relay lost its client: {}",
        bench.relay.log()
    );
    eprintln!(
        "{transport}: {} MiB up and down at once at 1 Mbit/s in {took:.1?}, no link lost",
        SLOW >> 20
    );
    Ok(())
}

#[test]
fn a_slow_link_is_never_taken_for_dead_over_tcp() -> Result<()> {
    slow_link("tcp")
}

#[test]
fn a_slow_link_is_never_taken_for_dead_over_quic() -> Result<()> {
    slow_link("quic")
}
