//! The client's pins of relay keys, like ssh's `known_hosts`:
//! `$XDG_CONFIG_HOME/resumeproxy/known_relays` (default
//! `~/.config/resumeproxy/known_relays`).
//!
//! One relay per line: its name as the client was given it (`host:port`,
//! `[v6addr]:port`), a space, and a fingerprint (`SHA256:…`). `#` starts a
//! comment. A relay may have several lines — any of their keys is accepted —
//! which is how a key is rotated without a gap: add the new key's line before
//! the relay changes keys, remove the old one after.

use crate::transport::identity::Fingerprint;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// File name inside the configuration directory.
pub const FILE_NAME: &str = "known_relays";

/// The default file.
pub fn default_path() -> PathBuf {
    crate::paths::config_dir().join(FILE_NAME)
}

/// One pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Line number in the file, from 1.
    pub line: usize,
    /// The relay's name, `host:port`.
    pub relay: String,
    /// Its key's fingerprint.
    pub fingerprint: Fingerprint,
}

/// What the file says about one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No line names it: trust on first use.
    Unknown,
    /// These lines name it; one of their keys must match.
    Pinned(Vec<Pin>),
}

/// The pins of a file, parsed. Lines that are not pins are reported, not
/// fatal, so one bad line does not lock the user out of every relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownRelays {
    /// The pins, in file order.
    pub pins: Vec<Pin>,
    /// Lines that could not be read: (line number, why).
    pub bad_lines: Vec<(usize, String)>,
}

impl KnownRelays {
    /// Parses the text of a file.
    pub fn parse(text: &str) -> KnownRelays {
        let mut known = KnownRelays::default();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let content = line.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let mut fields = content.split_whitespace();
            let (Some(relay), Some(fp), None) = (fields.next(), fields.next(), fields.next())
            else {
                known
                    .bad_lines
                    .push((number, "expected: HOST:PORT SHA256:…".into()));
                continue;
            };
            match fp.parse() {
                Ok(fingerprint) => known.pins.push(Pin {
                    line: number,
                    relay: relay.to_owned(),
                    fingerprint,
                }),
                Err(e) => known.bad_lines.push((number, e)),
            }
        }
        known
    }

    /// Reads `path`; a missing file has no pins.
    pub fn load(path: &Path) -> io::Result<KnownRelays> {
        match fs::read_to_string(path) {
            Ok(text) => Ok(KnownRelays::parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(KnownRelays::default()),
            Err(e) => Err(e),
        }
    }

    /// What the file says about `relay` (`host:port`).
    pub fn lookup(&self, relay: &str) -> Lookup {
        let pins: Vec<Pin> = self
            .pins
            .iter()
            .filter(|pin| pin.relay.eq_ignore_ascii_case(relay))
            .cloned()
            .collect();
        if pins.is_empty() {
            Lookup::Unknown
        } else {
            Lookup::Pinned(pins)
        }
    }
}

/// Adds a pin to the end of `path`, creating the file and its directory
/// private to this user (modes 0600 and 0700 on Unix) if needed.
pub fn append(path: &Path, relay: &str, fingerprint: &Fingerprint) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::paths::create_private_dir(dir)?;
    }
    let mut file = crate::paths::append_private(path)?;
    // One write, so that two clients pinning at once do not interleave.
    file.write_all(format!("{relay} {fingerprint}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(seed: &[u8]) -> Fingerprint {
        Fingerprint::of_spki(seed)
    }

    #[test]
    fn pins_are_found_by_name_with_their_line() {
        let text = format!(
            "# pins\n\nrelay.example:7022 {}\nother:7022 {} # comment\nrelay.example:7022 {}\nbroken line here\nx:1 SHA256:nope\n",
            fp(b"a"),
            fp(b"b"),
            fp(b"c")
        );
        let known = KnownRelays::parse(&text);
        assert_eq!(known.bad_lines.len(), 2, "{:?}", known.bad_lines);
        assert_eq!(known.bad_lines[0].0, 6);
        match known.lookup("RELAY.example:7022") {
            Lookup::Pinned(pins) => {
                let lines: Vec<usize> = pins.iter().map(|p| p.line).collect();
                assert_eq!(lines, [3, 5]);
                assert_eq!(pins[1].fingerprint, fp(b"c"));
            }
            other => panic!("expected pins, got {other:?}"),
        }
        assert_eq!(known.lookup("relay.example:7023"), Lookup::Unknown);
    }

    #[cfg(unix)]
    #[test]
    fn appending_creates_a_private_file_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("resumeproxy-known-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("cfg").join(FILE_NAME);
        append(&path, "[::1]:7022", &fp(b"k")).unwrap();
        append(&path, "h:1", &fp(b"j")).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let known = KnownRelays::load(&path).unwrap();
        assert_eq!(known.pins.len(), 2);
        assert_eq!(known.pins[0].relay, "[::1]:7022");
        assert_eq!(known.pins[1].line, 2);
        assert_eq!(
            KnownRelays::load(&dir.join("missing")).unwrap(),
            KnownRelays::default()
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
