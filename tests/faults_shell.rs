//! The fault suite, an interactive shell (as root in network namespaces,
//! with tmux; skipped with a printed reason otherwise): ssh through
//! `ProxyCommand resumeproxy` runs in a tmux pane in the client namespace,
//! with a remote bash on a pty; the test types into it with `tmux
//! send-keys` and reads the screen with `tmux capture-pane`.
//!
//! What it proves: input typed while the link is broken (a silent
//! partition past `--dead-after`, a reset storm, an address change) is not
//! echoed while it is broken, and is echoed — and run — exactly once after
//! the link is back, within a few seconds; the shell then exits and ssh
//! exits 0.

mod support;

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::faults::{Bench, FLOWING_AGAIN};
use support::process::output_within;
use support::relay::{LOST, RESUMED};

/// Bound on waiting for something to show on the screen.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(20);

/// A tmux server of our own (its socket in the test's directory), in the
/// client namespace; killed on drop.
struct Tmux<'a> {
    bench: &'a Bench,
    socket: PathBuf,
}

impl Tmux<'_> {
    fn run(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new("tmux");
        command.arg("-S").arg(&self.socket).args(args);
        let (status, stderr, stdout) =
            output_within(&mut self.bench.in_client(&command), Duration::from_secs(10))?;
        ensure!(status.success(), "tmux {args:?}: {status}: {stderr}");
        Ok(stdout)
    }

    /// Types `text` and Enter.
    fn type_line(&self, text: &str) -> Result<()> {
        self.run(&["send-keys", "-t", "fault", "-l", text])?;
        self.run(&["send-keys", "-t", "fault", "Enter"]).map(drop)
    }

    /// The whole pane, history included, wrapped lines joined.
    fn screen(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "fault"])
    }

    /// Waits until a line of the screen satisfies `want`.
    fn wait_for(&self, what: &str, want: &dyn Fn(&str) -> bool) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let screen = self.screen()?;
            if screen.lines().any(want) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= SCREEN_TIMEOUT {
                bail!("{what} did not show within {SCREEN_TIMEOUT:?}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tmux<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(screen) = self.screen() {
                eprintln!("--- the pane ---\n{screen}");
            }
        }
        let _ = self.run(&["kill-server"]);
    }
}

/// `word` quoted for sh.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Waits until `path` has a line containing `needle` after the first
/// `from` such lines; returns how many there are then.
fn wait_in_file(path: &Path, needle: &str, from: usize, timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let n = text.lines().filter(|l| l.contains(needle)).count();
        if n > from {
            return Ok(n);
        }
        if Instant::now() >= deadline {
            bail!(
                "no new {needle:?} in {} within {timeout:?}:\n{text}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn typed_input_is_echoed_exactly_once_after_each_break() -> Result<()> {
    let Some(bench) = Bench::start("", &[])? else {
        return Ok(());
    };
    let tmux_ok = Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !tmux_ok {
        support::lab::cannot_run("tmux is not installed");
        return Ok(());
    }
    let dir = bench.sshd.dir();
    let (err, status) = (dir.join("ssh.err"), dir.join("ssh.status"));
    let ssh = bench.client("ssh", false);
    let mut words: Vec<String> = ssh
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v?.to_str()?)))
        .map(|kv| quote(&kv))
        .collect();
    words.insert(0, "env".into());
    words.push("ssh".into());
    words.push("-tt".into());
    words.extend(ssh.get_args().map(|a| quote(&a.to_string_lossy())));
    words.push("127.0.0.1".into());
    words.push(quote("env TERM=xterm PS1='$ ' bash --norc --noprofile -i"));
    let line = format!(
        "{} 2>{}; echo $? > {}",
        words.join(" "),
        err.display(),
        status.display()
    );
    let tmux = Tmux {
        bench: &bench,
        socket: dir.join("tmux.sock"),
    };
    tmux.run(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        "fault",
        "-x",
        "200",
        "-y",
        "50",
        &line,
    ])?;
    tmux.wait_for("the prompt", &|l| l.starts_with("$ "))
        .with_context(|| std::fs::read_to_string(&err).unwrap_or_default())?;
    tmux.type_line("echo one-$((1+1))")?;
    tmux.wait_for("one-2", &|l| l == "one-2")?;

    let (lost, resumed) = (LOST, RESUMED);
    for (n, kind) in ["partition", "reset storm", "address change"]
        .iter()
        .enumerate()
    {
        let n = n + 1;
        let typed = format!("echo typed-{n}-$(({n}*111))");
        let output = format!("typed-{n}-{}", n * 111);
        let lost_before = count_in(&err, lost);
        let resumed_before = count_in(&err, resumed);
        let back = match *kind {
            "partition" => {
                let partition = bench.lab.partition()?;
                wait_in_file(&err, lost, lost_before, Duration::from_secs(10))?;
                tmux.type_line(&typed)?;
                ensure!(
                    !tmux.screen()?.contains(&typed),
                    "typed input was echoed while the link was down"
                );
                partition.lift()?;
                Instant::now()
            }
            "reset storm" => {
                let burst = bench.lab.reset_burst()?;
                tmux.type_line(&typed)?;
                wait_in_file(&err, lost, lost_before, Duration::from_secs(10))?;
                burst.lift()?;
                Instant::now()
            }
            _ => {
                bench.lab.move_client()?;
                tmux.type_line(&typed)?;
                Instant::now()
            }
        };
        tmux.wait_for(&output, &|l| l == output)?;
        let shown = back.elapsed();
        wait_in_file(&err, resumed, resumed_before, Duration::ZERO)
            .with_context(|| format!("{kind}: echoed without a resume?"))?;
        ensure!(
            shown <= FLOWING_AGAIN,
            "{kind}: the echo took {shown:?} after the network was back"
        );
        let screen = tmux.screen()?;
        let typed_lines = screen.lines().filter(|l| l.contains(&typed)).count();
        let output_lines = screen.lines().filter(|l| *l == output).count();
        ensure!(
            typed_lines == 1 && output_lines == 1,
            "{kind}: typed input shown {typed_lines} times, its output {output_lines} times:\n{screen}"
        );
        eprintln!("{kind}: typed during the break, echoed and run once, {shown:.2?} after the network was back");
    }
    tmux.type_line("exit")?;
    let deadline = Instant::now() + SCREEN_TIMEOUT;
    let code = loop {
        if let Ok(code) = std::fs::read_to_string(&status) {
            if code.ends_with('\n') {
                break code.trim().to_owned();
            }
        }
        ensure!(Instant::now() < deadline, "ssh did not exit after `exit`");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&err).unwrap_or_default();
    ensure!(code == "0", "ssh exited {code}; its stderr:\n{log}");
    ensure!(count_in(&err, resumed) >= 3, "fewer than 3 resumes:\n{log}");
    Ok(())
}

/// Lines of `path` containing `needle`.
fn count_in(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}
