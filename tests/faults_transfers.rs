//! The fault suite, file transfers (as root in network namespaces; skipped
//! with a printed reason otherwise): scp upload and download, rsync of a tree
//! of many files plus one large file, and an sftp batch, each through
//! `ProxyCommand resumeproxy` while the client's address changes, TCP is
//! answered with resets for a second, and the link goes silent for longer
//! than `--dead-after` — each injected while data flows. Then an upload
//! through flapping (a break every 2 s for 30 s), and a silent partition of a
//! whole minute, side by side with plain ssh over the same veth.
//!
//! What it proves, every time: sha256 of every file equal at both ends (and
//! no file missing or extra), the tool and ssh exit 0, and data flowing
//! again within a few seconds of the network being back. The minute-long
//! partition also shows that the default `--grace` is not hit and how plain
//! ssh fares (measured, printed as `BASELINE`).

mod support;

use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use support::data::{sha256_file, write_random_file};
use support::faults::{
    inject_while_flowing, serial, side_by_side, tree_bytes, Bench, Injected, EVERY_FAULT,
    PARTITION, RESET_STORM, RESUME_TIMEOUT, RUN_TIMEOUT,
};
use support::netns::Fault;
use support::process::Watched;
use support::relay::RESUMED;

/// The veth's rate for the transfers, both ways.
const RATE: &str = "400mbit";
/// Each scp transfer.
const SCP_SIZE: u64 = 192 << 20;
/// Bytes between faults.
const STEP: u64 = 40 << 20;

/// Runs `command` (in the client namespace) to its end, injecting `faults`
/// while `progress` (bytes at the far end, of `total`) grows; checks it
/// exited 0. Returns what the faults did.
fn run_through_faults(
    bench: &Bench,
    what: &str,
    command: Command,
    progress: &dyn Fn() -> Result<u64>,
    faults: &[Fault],
    total: u64,
) -> Result<Vec<Injected>> {
    let started = Instant::now();
    let mut run = Watched::spawn(bench.in_client(&command), Stdio::null(), Stdio::null())?;
    let outcomes = {
        let mut running = || run.running();
        inject_while_flowing(bench, progress, &mut running, faults, STEP, total)
            .with_context(|| format!("{what}; its stderr:\n{}", run.stderr.text()))?
    };
    let status = run.wait(RUN_TIMEOUT)?;
    ensure!(
        status.success(),
        "{what} exited with {status}; its stderr:\n{}",
        run.stderr.text()
    );
    ensure!(
        outcomes.len() == faults.len(),
        "{what}: only {} of {} faults came while it ran",
        outcomes.len(),
        faults.len()
    );
    let resumed = run.stderr.count(RESUMED);
    ensure!(
        resumed >= outcomes.len(),
        "{what}: the client said it resumed {resumed} times for {} faults",
        outcomes.len()
    );
    eprintln!(
        "{what}: {} MiB in {:.1?}, {} faults",
        total >> 20,
        started.elapsed(),
        outcomes.len()
    );
    for o in &outcomes {
        eprintln!("  {o}");
    }
    Ok(outcomes)
}

fn scp(upload: bool) -> Result<()> {
    let _serial = serial();
    let Some(bench) = Bench::start(RATE, &[])? else {
        return Ok(());
    };
    let src = bench.sshd.dir().join("src");
    let dst = bench.sshd.dir().join("dst");
    write_random_file(&src, SCP_SIZE, 11 + upload as u64)?;
    let remote = |p: &Path| format!("127.0.0.1:{}", p.display());
    let mut command = bench.client("scp", false);
    if upload {
        command.arg(&src).arg(remote(&dst));
    } else {
        command.arg(remote(&src)).arg(&dst);
    }
    let what = if upload { "scp upload" } else { "scp download" };
    let progress = || Ok(tree_bytes(&dst));
    run_through_faults(&bench, what, command, &progress, &EVERY_FAULT, SCP_SIZE)?;
    assert_eq!(sha256_file(&dst)?, sha256_file(&src)?, "{what}: sha256");
    Ok(())
}

#[test]
fn scp_upload_survives_every_fault() -> Result<()> {
    scp(true)
}

#[test]
fn scp_download_survives_every_fault() -> Result<()> {
    scp(false)
}

/// sha256 of every file under `root`, by relative path.
fn tree_hashes(root: &Path) -> Result<BTreeMap<PathBuf, String>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.insert(path.strip_prefix(root)?.to_path_buf(), sha256_file(&path)?);
            }
        }
    }
    Ok(out)
}

#[test]
fn rsync_of_many_files_and_a_large_one_survives_every_fault() -> Result<()> {
    let _serial = serial();
    let Some(bench) = Bench::start(RATE, &[])? else {
        return Ok(());
    };
    if !Path::new("/usr/bin/rsync").exists() {
        support::lab::cannot_run("rsync is not installed");
        return Ok(());
    }
    let src = bench.sshd.dir().join("tree");
    let dst = bench.sshd.dir().join("copy");
    // 600 files of 1 to 160 KiB in 20 directories, then one of 160 MiB.
    let mut total = 0;
    for i in 0..600u64 {
        let dir = src.join(format!("d{:02}", i % 20));
        std::fs::create_dir_all(&dir)?;
        let len = 1024 + (i * 7919) % (159 << 10);
        write_random_file(&dir.join(format!("f{i:03}")), len, 1000 + i)?;
        total += len;
    }
    let large = 160 << 20;
    write_random_file(&src.join("zz-large"), large, 99)?;
    total += large;
    let command = rsync_tree(&bench, &src, &dst);
    let progress = || Ok(tree_bytes(&dst));
    let faults = [PARTITION, Fault::AddressChange, RESET_STORM, PARTITION];
    run_through_faults(&bench, "rsync", command, &progress, &faults, total)?;
    let (want, got) = (tree_hashes(&src)?, tree_hashes(&dst)?);
    ensure!(want.len() == 601, "{} files in the source", want.len());
    assert!(
        want == got,
        "rsync: the trees differ ({} files sent, {} arrived)",
        want.len(),
        got.len()
    );
    Ok(())
}

#[test]
fn an_sftp_batch_survives_every_fault() -> Result<()> {
    let _serial = serial();
    let Some(bench) = Bench::start(RATE, &[])? else {
        return Ok(());
    };
    let dir = bench.sshd.dir();
    let size = 64 << 20;
    let (up1, up2, down) = (dir.join("up1"), dir.join("up2"), dir.join("down"));
    write_random_file(&up1, size, 21)?;
    write_random_file(&up2, size, 22)?;
    write_random_file(&down, size, 23)?;
    let (remote, local) = (dir.join("remote"), dir.join("local"));
    std::fs::create_dir(&local)?;
    let batch = dir.join("batch");
    std::fs::write(
        &batch,
        format!(
            "mkdir {r}\nput {u1} {r}/a\nput {u2} {r}/b\nget {d} {l}/c\nrename {r}/a {r}/a2\nls -l {r}\n",
            r = remote.display(),
            u1 = up1.display(),
            u2 = up2.display(),
            d = down.display(),
            l = local.display()
        ),
    )?;
    let mut command = bench.client("sftp", false);
    command.arg("-b").arg(&batch).arg("127.0.0.1");
    let progress = || Ok(tree_bytes(&remote) + tree_bytes(&local));
    let faults = [RESET_STORM, PARTITION, Fault::AddressChange, RESET_STORM];
    run_through_faults(&bench, "sftp batch", command, &progress, &faults, 3 * size)?;
    let names: Vec<_> = std::fs::read_dir(&remote)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    let mut names = names;
    names.sort();
    assert_eq!(names, ["a2", "b"], "files on the server");
    assert_eq!(
        sha256_file(&remote.join("a2"))?,
        sha256_file(&up1)?,
        "put a"
    );
    assert_eq!(sha256_file(&remote.join("b"))?, sha256_file(&up2)?, "put b");
    assert_eq!(sha256_file(&local.join("c"))?, sha256_file(&down)?, "get c");
    Ok(())
}

/// Flapping: a break every 2 s for 30 s (in turn a 1 s partition, 1 s of
/// resets and an address change) while an upload runs; it must still be
/// running when the flapping ends, and end whole.
#[test]
fn an_upload_survives_flapping_every_2s_for_30s() -> Result<()> {
    let _serial = serial();
    let Some(bench) = Bench::start("40mbit", &[])? else {
        return Ok(());
    };
    // About 40 MiB get through 30 s of flapping at this rate.
    let size = 72 << 20;
    let src = bench.sshd.dir().join("src");
    let dst = bench.sshd.dir().join("dst");
    write_random_file(&src, size, 31)?;
    let started = Instant::now();
    let mut ssh = Watched::spawn(
        bench.ssh(false, &[], &format!("cat > {}", dst.display())),
        Stdio::from(File::open(&src)?),
        Stdio::null(),
    )?;
    ssh.wait_for_bytes(&dst, 4 << 20, Duration::from_secs(30))?;
    let stop = AtomicBool::new(false);
    let breaks = bench.lab.flap(
        Duration::from_secs(2),
        Duration::from_secs(1),
        Duration::from_secs(30),
        &stop,
    )?;
    let at_end = tree_bytes(&dst);
    ensure!(
        ssh.running()?,
        "the upload ended before the flapping did ({} MiB): make it larger",
        at_end >> 20
    );
    ensure!(breaks.len() == 15, "{} breaks", breaks.len());
    let back = Instant::now();
    ssh.wait_for_bytes(&dst, at_end + (64 << 10), support::faults::FLOWING_AGAIN)
        .context("data did not flow again after the flapping")?;
    let flowing = back.elapsed();
    let status = ssh.wait(RUN_TIMEOUT)?;
    ensure!(status.success(), "ssh: {status}; {}", ssh.stderr.text());
    assert_eq!(
        sha256_file(&dst)?,
        sha256_file(&src)?,
        "sha256 after flapping"
    );
    let resumes = ssh.stderr.count(RESUMED);
    eprintln!(
        "flapping: {} breaks in 30 s during a {} MiB upload ({} MiB when it ended), {resumes} resumes, \
         flowing {flowing:.2?} after the last; upload took {:.1?}",
        breaks.len(),
        size >> 20,
        at_end >> 20,
        started.elapsed()
    );
    // Breaks 1 s apart can merge into one outage (a resume still under way
    // when the next break comes), so fewer resumes than breaks is normal.
    ensure!(resumes >= 3, "only {resumes} resumes in 15 breaks");
    Ok(())
}

/// A minute of silence (runs beside the heavy tests: it is light). The
/// relay runs with its default `--grace`; the client neither gives up nor
/// is given up on. Plain ssh gets the same minute over the same veth.
#[test]
fn a_minute_long_partition_is_survived_and_flows_again_within_seconds() -> Result<()> {
    let Some(bench) = Bench::start("40mbit", &[])? else {
        return Ok(());
    };
    let minute = Fault::Partition(Duration::from_secs(60));
    let (proxied, plain, detail) =
        side_by_side(&bench, 24 << 20, 2 << 20, Duration::from_secs(60), &|| {
            bench.lab.apply(minute)
        })?;
    eprintln!(
        "BASELINE {} ({detail}):\n  resumeproxy: {proxied}\n  plain ssh:   {plain}",
        minute.name()
    );
    ensure!(
        bench.relay.count("expired") == 0,
        "the relay gave up: {}",
        bench.relay.log()
    );
    Ok(())
}

/// The soak, run only when `RESUMEPROXY_SOAK_GIB` is set (say 20): rsync of
/// that many GiB (files of 1 GiB) at 1 Gbit/s with a fault every 10 s, in
/// turn an address change, a reset storm and a silent partition, each
/// resumed before the next. Checked like the others: every file's sha256,
/// rsync's exit 0.
#[test]
fn soak_rsync_with_a_fault_every_10s() -> Result<()> {
    let Ok(gib) = std::env::var("RESUMEPROXY_SOAK_GIB") else {
        eprintln!("skipping: the soak runs only with RESUMEPROXY_SOAK_GIB set (e.g. 20)");
        return Ok(());
    };
    let gib: u64 = gib
        .parse()
        .context("RESUMEPROXY_SOAK_GIB must be a number")?;
    let _serial = serial();
    let Some(bench) = Bench::start("1gbit", &[])? else {
        return Ok(());
    };
    let src = bench.sshd.dir().join("soak");
    let dst = bench.sshd.dir().join("soak-copy");
    std::fs::create_dir(&src)?;
    for i in 0..gib {
        write_random_file(&src.join(format!("part{i:03}")), 1 << 30, 500 + i)?;
    }
    let command = rsync_tree(&bench, &src, &dst);
    let started = Instant::now();
    let bound = Duration::from_secs(600 + gib * 300);
    let mut rsync = Watched::spawn(bench.in_client(&command), Stdio::null(), Stdio::null())?;
    let mut faults = 0;
    'soak: for fault in EVERY_FAULT.iter().copied().cycle() {
        let tick = started + Duration::from_secs(10 * (faults + 1));
        while Instant::now() < tick {
            if !rsync.running()? {
                break 'soak;
            }
            ensure!(
                started.elapsed() < bound,
                "the soak took longer than {bound:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let resumes = bench.relay.count("session resumed");
        let detail = bench.lab.apply(fault)?;
        faults += 1;
        if rsync.running()? {
            bench
                .relay
                .wait_for_count("session resumed", resumes + 1, RESUME_TIMEOUT)
                .with_context(|| format!("fault {faults}, {detail}: no resume"))?;
        }
        eprintln!(
            "soak: fault {faults} at {:.0?}, {} MiB across: {detail}",
            started.elapsed(),
            tree_bytes(&dst) >> 20
        );
    }
    let status = rsync.wait(bound)?;
    ensure!(status.success(), "rsync: {status}: {}", rsync.stderr.text());
    assert!(tree_hashes(&src)? == tree_hashes(&dst)?, "the trees differ");
    eprintln!(
        "soak: {gib} GiB in {:.0?} through {faults} faults",
        started.elapsed()
    );
    Ok(())
}

/// `rsync -a SRC/ 127.0.0.1:DST/` through the bench's client, with the
/// client's private directories.
fn rsync_tree(bench: &Bench, src: &Path, dst: &Path) -> Command {
    let mut command = Command::new("rsync");
    command
        .arg("-a")
        .arg("-e")
        .arg(bench.sshd.rsync_rsh(Some(&bench.proxy)))
        .arg(format!("{}/", src.display()))
        .arg(format!("127.0.0.1:{}/", dst.display()));
    bench.sshd.private_env(&mut command);
    command
}
