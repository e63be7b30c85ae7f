//! The relay's systemd unit (`systemd/resumeproxyd.service`), read as
//! systemd reads it, so that the tests follow the file: its
//! `FileDescriptorStoreMax=`, the system calls its `SystemCallFilter=`
//! lines allow (the `@sets` expanded by `systemd-analyze syscall-filter`),
//! and the socket families `RestrictAddressFamilies=` allows.

#![allow(dead_code)]

use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The unit file, as the repository has it.
pub fn unit_file() -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/resumeproxyd.service");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Every value of `key=` in the `[Service]` section of `text`, in order.
pub fn service_values(text: &str, key: &str) -> Vec<String> {
    let mut section = "";
    let mut values = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[Service]" {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                values.push(v.trim().to_owned());
            }
        }
    }
    values
}

/// `FileDescriptorStoreMax=` of the unit.
pub fn unit_store_max() -> Result<usize> {
    let text = unit_file()?;
    let value = service_values(&text, "FileDescriptorStoreMax")
        .pop()
        .context("no FileDescriptorStoreMax= in the unit")?;
    value
        .parse()
        .with_context(|| format!("FileDescriptorStoreMax={value}"))
}

/// A list setting as systemd merges its lines (`SystemCallFilter=`,
/// `RestrictAddressFamilies=`): the first line decides whether it is an
/// allow-list or (with `~`) a deny-list; each later line adds to that list
/// (its own kind) or takes out of it (the other kind); an empty value
/// starts again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSetting {
    /// Whether the names are the only ones allowed (else the ones denied).
    pub allow: bool,
    /// The names.
    pub names: BTreeSet<String>,
}

impl ListSetting {
    /// Merges `values` (each line's value, in order); `expand` turns one
    /// word into names, and `seed` gives what an allow-list starts with.
    pub fn merge(
        values: &[String],
        mut expand: impl FnMut(&str) -> Result<BTreeSet<String>>,
        seed: BTreeSet<String>,
    ) -> Result<Option<ListSetting>> {
        let mut setting: Option<ListSetting> = None;
        for value in values {
            if value.is_empty() {
                setting = None;
                continue;
            }
            let (invert, words) = match value.strip_prefix('~') {
                Some(rest) => (true, rest),
                None => (false, value.as_str()),
            };
            let setting = setting.get_or_insert_with(|| ListSetting {
                allow: !invert,
                names: if invert {
                    BTreeSet::new()
                } else {
                    seed.clone()
                },
            });
            // A line of the list's own kind adds; of the other, takes out.
            let adds = invert != setting.allow;
            for word in words.split_whitespace() {
                // `name:errno` sets the error a call gets; the name counts.
                let word = word.split(':').next().unwrap_or(word);
                for name in expand(word)? {
                    if adds {
                        setting.names.insert(name);
                    } else {
                        setting.names.remove(&name);
                    }
                }
            }
        }
        Ok(setting)
    }

    /// Whether `name` passes.
    pub fn allows(&self, name: &str) -> bool {
        self.names.contains(name) == self.allow
    }
}

/// The system call sets of the installed systemd, as `systemd-analyze
/// syscall-filter` lists them, expanded (a set names other sets).
pub struct SyscallSets {
    analyze: std::path::PathBuf,
    cache: BTreeMap<String, BTreeSet<String>>,
}

impl SyscallSets {
    /// Sets listed by the `systemd-analyze` at `analyze`.
    pub fn new(analyze: &Path) -> SyscallSets {
        SyscallSets {
            analyze: analyze.to_owned(),
            cache: BTreeMap::new(),
        }
    }

    /// The calls `word` stands for: a call's name, or every call of a
    /// `@set`.
    pub fn expand(&mut self, word: &str) -> Result<BTreeSet<String>> {
        if !word.starts_with('@') {
            return Ok(BTreeSet::from([word.to_owned()]));
        }
        if let Some(names) = self.cache.get(word) {
            return Ok(names.clone());
        }
        let out = Command::new(&self.analyze)
            .args(["--no-pager", "syscall-filter", word])
            .output()
            .with_context(|| format!("running {}", self.analyze.display()))?;
        ensure!(
            out.status.success(),
            "systemd-analyze syscall-filter {word}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(word) {
            bail!("systemd-analyze does not know {word}:\n{text}");
        }
        let mut names = BTreeSet::new();
        for line in lines {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with('@') {
                names.extend(self.expand(line)?);
            } else {
                names.insert(line.to_owned());
            }
        }
        self.cache.insert(word.to_owned(), names.clone());
        Ok(names)
    }

    /// The unit's `SystemCallFilter=`: an allow-list starts with
    /// `@default`, as systemd's does.
    pub fn unit_filter(&mut self, unit: &str) -> Result<ListSetting> {
        let values = service_values(unit, "SystemCallFilter");
        let seed = self.expand("@default")?;
        ListSetting::merge(&values, |word| self.expand(word), seed)?
            .context("the unit has no SystemCallFilter=")
    }
}

/// The unit's `RestrictAddressFamilies=`.
pub fn unit_families(unit: &str) -> Result<ListSetting> {
    let values = service_values(unit, "RestrictAddressFamilies");
    ListSetting::merge(
        &values,
        |word| Ok(BTreeSet::from([word.to_owned()])),
        BTreeSet::new(),
    )?
    .context("the unit has no RestrictAddressFamilies=")
}

/// The signal the unit's `key=` (`KillSignal`, `RestartKillSignal`) names,
/// read as systemd reads it (`SIGINT` or `INT`, or a number); when the
/// unit does not set it, systemd's default: `KillSignal=` is SIGTERM, and
/// `RestartKillSignal=` is whatever `KillSignal=` is.
pub fn unit_signal(key: &str) -> Result<libc::c_int> {
    let text = unit_file()?;
    let value = match service_values(&text, key).pop() {
        Some(value) => value,
        None if key == "RestartKillSignal" => return unit_signal("KillSignal"),
        None => return Ok(libc::SIGTERM),
    };
    let name = value.strip_prefix("SIG").unwrap_or(&value);
    Ok(match name {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        other => other
            .parse()
            .with_context(|| format!("{key}={value}: a signal this test does not know"))?,
    })
}

/// The unit's `ExecReload=` command lines, each as its words (systemd's
/// prefixes and `$MAINPID` left as they are).
pub fn unit_exec_reload() -> Result<Vec<Vec<String>>> {
    let text = unit_file()?;
    Ok(service_values(&text, "ExecReload")
        .iter()
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect())
}
