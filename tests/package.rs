//! The Debian package: built with cargo-deb, installed, upgraded, removed
//! and purged with dpkg, as an operator would.
//!
//! * It puts the binaries, the systemd unit, the man pages, the default
//!   config and the documentation in place; the installed relay validates
//!   its default config and carries a real ssh session; the unit passes
//!   `systemd-analyze verify`.
//! * Its maintainer scripts (`packaging/debian/`, with cargo-deb's systemd
//!   part at `#DEBHELPER#`): a first install enables the unit and starts
//!   it; an upgrade restarts it — `systemctl restart`, never a stop and a
//!   start, so the relay leaves its sessions in systemd's descriptor store
//!   (what `restart` then does is tested in `tests/systemd_ops.rs` and
//!   `tests/durable_systemd.rs`); a removal stops it (`systemctl stop`,
//!   which ends the sessions in words) and masks it; a purge forgets it and
//!   removes the relay's state (its key) and config.
//!
//! systemd does not run as PID 1 on the test machines, so the scripts'
//! calls to it are checked against a stand-in: dpkg runs in a mount
//! namespace of its own where `/run/systemd/system` exists (the scripts'
//! test for a running systemd), where a container's `policy-rc.d` that
//! forbids starting services is replaced by one that allows it, and where
//! a `systemctl` first in `$PATH` logs what it is asked (and says the unit
//! is enabled and active, as systemd would after the install).
//! `deb-systemd-helper`'s links in `/etc/systemd/system` are the real ones.
//!
//! Needs root, dpkg and cargo-deb (`.ci/run` installs it); otherwise it says
//! why and skips. Without `unshare` (util-linux) the scripts run without the
//! stand-in and their systemd calls are not checked (it says so). Under
//! `RESUMEPROXY_LAB=required` either is a failure (`support::lab`).

mod support;

use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::relay::test_key;
use support::sshd::TestSshd;

/// The unit, as the package names it.
const UNIT: &str = "resumeproxyd.service";
/// Where `deb-systemd-helper enable` links it (its `WantedBy=`).
const ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/resumeproxyd.service";
/// Where `deb-systemd-helper mask` links it to /dev/null.
const MASKED: &str = "/etc/systemd/system/resumeproxyd.service";
/// The relay's state under systemd (`StateDirectory=` with `DynamicUser=`).
const STATE: &str = "/var/lib/private/resumeproxy";

/// Removes the package again, whatever happens.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "resumeproxy"])
            .stdout(Stdio::null())
            .status();
    }
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn has(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn skip_reason() -> Option<String> {
    if !resumeproxy::paths::is_root() {
        return Some("not root (dpkg -i needs it)".into());
    }
    if !has("dpkg", "--version") {
        return Some("no dpkg".into());
    }
    if !has("cargo-deb", "--version") {
        return Some("no cargo-deb (cargo install cargo-deb)".into());
    }
    None
}

/// Builds the package with Debian revision `revision` (`build`: compiling
/// the release binaries first); returns the `.deb`.
fn build(revision: u32, build: bool) -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    // Each in a directory of its own: cargo-deb clears its output
    // directory of older versions.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("debian-{revision}"));
    let mut command = Command::new("cargo");
    command
        .args(["deb", "--quiet", "--fast", "--deb-revision"])
        .arg(revision.to_string())
        .arg("--output")
        .arg(&out)
        .arg("--manifest-path")
        .arg(&manifest);
    if !build {
        command.arg("--no-build");
    }
    let built = run(&mut command)?;
    let deb = PathBuf::from(String::from_utf8(built.stdout)?.trim());
    ensure!(
        deb.extension().is_some_and(|e| e == "deb"),
        "cargo deb printed {deb:?}"
    );
    Ok(deb)
}

/// dpkg, with systemd played by a logging `systemctl` (see the module's
/// doc) when the machine allows.
struct Dpkg {
    /// The stand-in's directory: `bin/systemctl`, and `calls`, its log.
    dir: PathBuf,
    /// Whether the stand-in is used.
    stand_in: bool,
}

impl Dpkg {
    fn new() -> Result<Dpkg> {
        let dir = std::env::temp_dir().join(format!("rp-package-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin"))?;
        // What works without a running systemd (`--root=`: deb-systemd-
        // helper's `preset` of a first install, which makes the links) is
        // passed on to the real systemctl.
        let real = ["/usr/bin/systemctl", "/bin/systemctl"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("false");
        let systemctl = dir.join("bin/systemctl");
        std::fs::write(
            &systemctl,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\n\
                 case \"$*\" in\n\
                 *--root=*) exec {real} \"$@\" ;;\n\
                 *is-enabled*) echo enabled ;;\n\
                 esac\nexit 0\n",
                dir.join("calls").display()
            ),
        )?;
        // A container's policy-rc.d may forbid starting anything (exit
        // 101): the stand-in's machine allows it.
        let policy = dir.join("bin/policy-rc.d");
        std::fs::write(&policy, "#!/bin/sh\nexit 0\n")?;
        use std::os::unix::fs::PermissionsExt;
        for script in [&systemctl, &policy] {
            std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755))?;
        }
        let stand_in = has("unshare", "--version")
            && Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "true"])
                .status()
                .is_ok_and(|s| s.success());
        if !stand_in {
            support::lab::cannot_check(
                "no mount namespace (unshare): the maintainer scripts' systemd calls",
            );
        }
        Ok(Dpkg { dir, stand_in })
    }

    /// Runs dpkg with `args`; returns the `systemctl` calls it made, one a
    /// line.
    fn run(&self, args: &[&str]) -> Result<Vec<String>> {
        let calls = self.dir.join("calls");
        let _ = std::fs::remove_file(&calls);
        let mut command = if self.stand_in {
            let path = format!(
                "{}:{}",
                self.dir.join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            );
            let mut command = Command::new("unshare");
            command
                .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(
                    "mkdir -p /run/systemd && mount -t tmpfs rp-package /run/systemd \
                     && mkdir /run/systemd/system \
                     && { [ ! -e /usr/sbin/policy-rc.d ] \
                          || mount --bind \"$0\" /usr/sbin/policy-rc.d; } \
                     && exec \"$@\"",
                )
                .arg(self.dir.join("bin/policy-rc.d"))
                .arg("dpkg")
                .env("PATH", path);
            command
        } else {
            Command::new("dpkg")
        };
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        // Another dpkg or apt on the machine holds its lock for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            let out = command
                .output()
                .with_context(|| format!("running {command:?}"))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                break;
            }
            ensure!(
                stderr.contains("lock") && std::time::Instant::now() < deadline,
                "{command:?} failed: {}\n{stderr}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        let log = std::fs::read_to_string(&calls).unwrap_or_default();
        Ok(log.lines().map(str::to_owned).collect())
    }

    /// Whether `calls` asked systemd to `action` the unit (`start`,
    /// `restart`, `stop`; not `is-active` and the like).
    fn asked(calls: &[String], action: &str) -> bool {
        calls.iter().any(|call| {
            let words: Vec<&str> = call.split_whitespace().collect();
            words.contains(&action) && words.contains(&UNIT)
        })
    }
}

impl Drop for Dpkg {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The maintainer scripts of `deb`, by name.
fn scripts(deb: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let dir = std::env::temp_dir().join(format!("rp-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&dir))?;
    let mut scripts = std::collections::BTreeMap::new();
    for name in ["postinst", "prerm", "postrm"] {
        let text = std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("the package has no {name}"))?;
        scripts.insert(name.to_owned(), text);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(scripts)
}

/// The scripts say what the module's doc says they do.
fn check_scripts(deb: &Path) -> Result<()> {
    let scripts = scripts(deb)?;
    let (postinst, prerm, postrm) = (&scripts["postinst"], &scripts["prerm"], &scripts["postrm"]);
    ensure!(
        postinst.contains(&format!("deb-systemd-helper enable {UNIT}"))
            && postinst.contains("_dh_action=restart")
            && postinst.contains("_dh_action=start")
            && !postinst.contains("invoke stop"),
        "postinst does not enable, start, and restart on upgrade:\n{postinst}"
    );
    ensure!(
        prerm.contains(&format!(
            "[ \"$1\" = remove ]; then\n\tdeb-systemd-invoke stop {UNIT}"
        )),
        "prerm must stop the unit on a removal only:\n{prerm}"
    );
    ensure!(
        postrm.contains(&format!("deb-systemd-helper mask {UNIT}"))
            && postrm.contains(&format!("deb-systemd-helper purge {UNIT}"))
            && postrm.contains(&format!("rm -rf {STATE} /var/lib/resumeproxy")),
        "postrm does not mask on removal, and forget and purge the state on purge:\n{postrm}"
    );
    for (name, text) in &scripts {
        ensure!(
            !text.contains("#DEBHELPER#") && text.starts_with("#!/bin/sh\n"),
            "{name} was not filled in:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn the_debian_package_installs_upgrades_and_removes_as_a_service() -> Result<()> {
    if let Some(why) = skip_reason() {
        support::lab::cannot_run(&why);
        return Ok(());
    }
    let first = build(1, true)?;
    let second = build(2, false)?;

    let contents = run(Command::new("dpkg").arg("--contents").arg(&first))?;
    let listing = String::from_utf8_lossy(&contents.stdout);
    for file in [
        "./usr/bin/resumeproxy",
        "./usr/bin/resumeproxyd",
        UNIT,
        "./usr/share/man/man1/resumeproxy.1",
        "./usr/share/man/man8/resumeproxyd.8",
        "./usr/share/man/man5/resumeproxy.toml.5",
        "./etc/resumeproxy/resumeproxyd.toml",
        "./usr/share/doc/resumeproxy/README.md",
        "./usr/share/doc/resumeproxy/SECURITY.md",
        "./usr/share/doc/resumeproxy/docs/operating.md",
        "./usr/share/doc/resumeproxy/docs/troubleshooting.md",
    ] {
        assert!(
            listing.contains(file),
            "{file} missing from the package:\n{listing}"
        );
    }
    check_scripts(&first)?;

    let dpkg = Dpkg::new()?;
    let installed = Installed;
    let calls = dpkg.run(&["-i", &first.to_string_lossy()])?;
    println!("install: systemctl {calls:?}");
    ensure!(
        Path::new(ENABLED).exists(),
        "the install did not enable the unit"
    );
    if dpkg.stand_in {
        ensure!(
            Dpkg::asked(&calls, "start") && !Dpkg::asked(&calls, "stop"),
            "the install did not start the unit: {calls:?}"
        );
    }
    let check = run(Command::new("/usr/bin/resumeproxyd").arg("check-config"))?;
    let effective = String::from_utf8_lossy(&check.stdout);
    assert!(
        effective.contains("listen = \"0.0.0.0:7022\""),
        "{effective}"
    );
    let unit = [
        "/lib/systemd/system/resumeproxyd.service",
        "/usr/lib/systemd/system/resumeproxyd.service",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .context("the unit was not installed")?;
    if Path::new("/usr/bin/systemd-analyze").exists() {
        // verify looks up the unit's Documentation= pages with `man`; a
        // machine without it (a minimal image) has the rest checked.
        let man = if Path::new("/usr/bin/man").exists() {
            "--man=yes"
        } else {
            println!("no /usr/bin/man: systemd-analyze verify skips the Documentation= pages");
            "--man=no"
        };
        let verify = Command::new("systemd-analyze")
            .args(["verify", man, unit])
            .output()?;
        let complaints = String::from_utf8_lossy(&verify.stderr);
        assert!(
            verify.status.success() && complaints.trim().is_empty(),
            "systemd-analyze verify: {complaints}"
        );
    }
    carries_a_session()?;

    // An upgrade restarts the unit, and never stops it.
    let calls = dpkg.run(&["-i", &second.to_string_lossy()])?;
    println!("upgrade: systemctl {calls:?}");
    let version = run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "resumeproxy"]))?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    ensure!(version.ends_with("-2"), "upgraded to {version}");
    if dpkg.stand_in {
        ensure!(
            Dpkg::asked(&calls, "restart") && !Dpkg::asked(&calls, "stop"),
            "the upgrade did not restart the unit without a stop: {calls:?}"
        );
    }
    ensure!(Path::new(ENABLED).exists(), "the upgrade disabled the unit");

    // A removal stops the unit and masks it; the config stays.
    let calls = dpkg.run(&["-r", "resumeproxy"])?;
    println!("removal: systemctl {calls:?}");
    if dpkg.stand_in {
        ensure!(
            Dpkg::asked(&calls, "stop"),
            "the removal did not stop the unit: {calls:?}"
        );
    }
    ensure!(
        std::fs::read_link(MASKED).is_ok_and(|target| target == Path::new("/dev/null")),
        "the removal did not mask the unit"
    );
    ensure!(
        !Path::new("/usr/bin/resumeproxyd").exists(),
        "the removal left the binary"
    );
    ensure!(
        Path::new("/etc/resumeproxy/resumeproxyd.toml").exists(),
        "the removal took the config (only a purge should)"
    );

    // A purge takes the rest: the config, the unit's links, the relay's key.
    std::fs::create_dir_all(STATE)?;
    std::fs::write(Path::new(STATE).join("relay.key"), "a key")?;
    dpkg.run(&["--purge", "resumeproxy"])?;
    drop(installed);
    for gone in [
        "/etc/resumeproxy/resumeproxyd.toml",
        ENABLED,
        MASKED,
        STATE,
        "/var/lib/resumeproxy",
    ] {
        ensure!(
            std::fs::symlink_metadata(gone).is_err(),
            "the purge left {gone}"
        );
    }
    Ok(())
}

/// The installed programs carry a real session.
fn carries_a_session() -> Result<()> {
    let sshd = TestSshd::start()?;
    let mut relay = Command::new("/usr/bin/resumeproxyd")
        .args(["--listen", "127.0.0.1:0", "--target"])
        .arg(format!("127.0.0.1:{}", sshd.port()))
        .arg("--key-file")
        .arg(&test_key().0)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = relay.stderr.take().context("relay stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.split(',').next().unwrap_or_default().to_owned());
            }
        }
    });
    let result = (|| -> Result<()> {
        let addr: std::net::SocketAddr = rx.recv_timeout(Duration::from_secs(10))?.parse()?;
        let proxy = format!(
            "/usr/bin/resumeproxy --relay-port {} --relay-fingerprint {} %h %p",
            addr.port(),
            test_key().1
        );
        let out = run(&mut sshd.ssh_command(Some(&proxy), "echo installed-and-working"))?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).trim() == "installed-and-working",
            "the session did not carry the command's output"
        );
        Ok(())
    })();
    let _ = relay.kill();
    let _ = relay.wait();
    result
}
