//! The Debian package: built with cargo-deb, installed with dpkg, it puts the
//! binaries, the systemd unit, the man pages, the default config and the
//! documentation in place; the installed relay validates its default config
//! and carries a real ssh session; the unit passes `systemd-analyze verify`; removing the
//! package takes it all away again.
//!
//! Needs root, dpkg and cargo-deb (`.ci/run` installs it); otherwise it says
//! why and skips.

mod support;

use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::relay::test_key;
use support::sshd::TestSshd;

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

fn skip_reason() -> Option<String> {
    if !resumeproxy::paths::is_root() {
        return Some("not root (dpkg -i needs it)".into());
    }
    let has = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has("dpkg", "--version") {
        return Some("no dpkg".into());
    }
    if !has("cargo-deb", "--version") {
        return Some("no cargo-deb (cargo install cargo-deb)".into());
    }
    None
}

#[test]
fn the_debian_package_installs_a_working_relay_and_removes_cleanly() -> Result<()> {
    if let Some(why) = skip_reason() {
        support::lab::cannot_run(&why);
        return Ok(());
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = run(Command::new("cargo")
        .args(["deb", "--quiet", "--manifest-path"])
        .arg(manifest.join("Cargo.toml")))?;
    let deb = PathBuf::from(String::from_utf8(built.stdout)?.trim());
    ensure!(
        deb.extension().is_some_and(|e| e == "deb"),
        "cargo deb printed {deb:?}"
    );

    let contents = run(Command::new("dpkg").arg("--contents").arg(&deb))?;
    let listing = String::from_utf8_lossy(&contents.stdout);
    for file in [
        "./usr/bin/resumeproxy",
        "./usr/bin/resumeproxyd",
        "resumeproxyd.service",
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

    let installed = Installed;
    run(Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
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

    // The installed programs carry a real session.
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
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "installed-and-working"
        );
        Ok(())
    })();
    let _ = relay.kill();
    let _ = relay.wait();
    result?;

    drop(installed);
    assert!(
        !Path::new("/usr/bin/resumeproxyd").exists(),
        "purge left the binary"
    );
    assert!(
        !Path::new("/etc/resumeproxy/resumeproxyd.toml").exists(),
        "purge left the config"
    );
    Ok(())
}
