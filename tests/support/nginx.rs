//! nginx in front of the fleet ([`super::fleet`]), in the lab's server
//! namespace, running the shipped `packaging/nginx/resumeproxy.conf` with
//! only its relays' addresses moved to the lab's, its access log into the
//! test's directory, and (on the command line) in the foreground with its
//! pid file there too and its notices on stderr.

#![allow(dead_code)]

use super::fleet::{instance_name, relay_port, BALANCER_PORT, INSTANCES};
use super::netns::NetLab;
use super::process::Lines;
use anyhow::{bail, ensure, Context, Result};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shipped nginx configuration.
pub const SHIPPED_CONFIG: &str = "packaging/nginx/resumeproxy.conf";
/// Where the shipped configuration logs connections.
const SHIPPED_ACCESS_LOG: &str = "/var/log/nginx/resumeproxy.log";
/// The line nginx logs once a worker runs.
const WORKER_STARTED: &str = "start worker process";

/// nginx, in the server namespace; stopped on drop.
pub struct Nginx {
    child: Child,
    /// Its notices (stderr).
    pub notices: Arc<Lines>,
    /// Its configuration file, as run.
    config: PathBuf,
    /// Its access log.
    access_log: PathBuf,
}

impl Nginx {
    /// Starts nginx in `lab`'s server namespace with the shipped
    /// configuration, its relays moved to `relay_ip`; `None` (and why) if
    /// nginx or its stream module is not installed.
    pub fn start(lab: &NetLab, dir: &Path, relay_ip: Ipv4Addr) -> Result<Option<Nginx>> {
        let Some(nginx) = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
        else {
            super::lab::cannot_run(
                "nginx is not installed (apt-get install nginx libnginx-mod-stream)",
            );
            return Ok(None);
        };
        if !Path::new("/usr/share/nginx/modules/ngx_stream_module.so").exists()
            && !Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists()
        {
            super::lab::cannot_run(
                "nginx's stream module is not installed (apt-get install libnginx-mod-stream)",
            );
            return Ok(None);
        }
        let shipped =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED_CONFIG))
                .context("reading the shipped nginx configuration")?;
        let access_log = dir.join("nginx-access.log");
        let config = dir.join("nginx.conf");
        std::fs::write(&config, lab_config(&shipped, relay_ip, &access_log)?)?;
        let mut command = Command::new(nginx);
        command.arg("-c").arg(&config).arg("-g").arg(format!(
            "daemon off; pid {}; error_log stderr notice;",
            dir.join("nginx.pid").display()
        ));
        let mut command = lab.in_server(&command);
        // Its own process group: the master and its workers go together.
        command.process_group(0);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx")?;
        let notices = Lines::collect(child.stderr.take().context("nginx stderr")?);
        let nginx = Nginx {
            child,
            notices,
            config,
            access_log,
        };
        nginx
            .notices
            .wait_for(0, WORKER_STARTED, Duration::from_secs(10))
            .with_context(|| format!("nginx did not start:\n{}", nginx.notices.text()))?;
        Ok(Some(nginx))
    }

    /// What it logged of each connection (the shipped `log_format`).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }

    /// Its configuration as it runs.
    pub fn config(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.config)?)
    }

    /// Replaces its configuration with `text` and reloads it (SIGHUP to
    /// the master, as `nginx -s reload` does); returns once new workers
    /// run.
    pub fn reload(&self, text: &str) -> Result<()> {
        let started = self.notices.count(WORKER_STARTED);
        std::fs::write(&self.config, text)?;
        super::process::signal(self.child.id(), libc::SIGHUP)?;
        self.notices
            .wait_for_nth(0, WORKER_STARTED, started + 1, Duration::from_secs(10))
            .with_context(|| format!("nginx did not reload:\n{}", self.notices.text()))?;
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A fast shutdown (the master stops its workers), then whatever is
        // left of the group.
        let pid = self.child.id();
        let _ = super::process::signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on the process group this test started.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- nginx notices ---\n{}\n--- nginx access log ---\n{}",
                self.notices.text(),
                self.access_log()
            );
        }
    }
}

/// The shipped configuration with its relays on `relay_ip` instead of
/// 127.0.0.1 and its access log at `access_log`. Fails if the shipped
/// file no longer has the shape this relies on.
pub fn lab_config(shipped: &str, relay_ip: Ipv4Addr, access_log: &Path) -> Result<String> {
    let mut config = shipped.to_owned();
    for i in 0..INSTANCES {
        let name = instance_name(i);
        let shipped_addr = format!("127.0.0.1:{}", relay_port(i));
        // In `relays`, in its own upstream, and as a backup of the others.
        let uses = config.matches(&format!("server {shipped_addr}")).count();
        ensure!(
            uses == INSTANCES + 1,
            "{SHIPPED_CONFIG}: {name} at {shipped_addr} {uses} times, not {}",
            INSTANCES + 1
        );
        for needle in [
            format!("        {name} {name};\n"),
            format!("upstream {name} {{\n        server {shipped_addr} max_fails"),
        ] {
            ensure!(
                config.contains(&needle),
                "{SHIPPED_CONFIG} lacks {needle:?}"
            );
        }
        config = config.replace(&shipped_addr, &format!("{relay_ip}:{}", relay_port(i)));
    }
    for needle in [
        format!("listen {BALANCER_PORT};"),
        "proxy_protocol on;".to_owned(),
        "ssl_preread on;".to_owned(),
        SHIPPED_ACCESS_LOG.to_owned(),
    ] {
        ensure!(
            config.contains(&needle),
            "{SHIPPED_CONFIG} lacks {needle:?}"
        );
    }
    if access_log.to_string_lossy().contains(char::is_whitespace) {
        bail!("{} has a space in it", access_log.display());
    }
    Ok(config.replace(SHIPPED_ACCESS_LOG, &access_log.to_string_lossy()))
}
