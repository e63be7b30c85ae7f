//! Which relay keys the client trusts: a fingerprint given on the command
//! line, or the pins of the known_relays file with trust on first use (see
//! `known_relays.rs`), as ssh does with known_hosts.

use super::known_relays::{self, KnownRelays, Lookup, Pin};
use crate::transport::identity::Fingerprint;
use std::fmt;
use std::io;
use std::path::PathBuf;

/// Where trust comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustSource {
    /// Exactly these keys, any of them (`--relay-fingerprint`, repeated
    /// for the instances of a fleet that each have their own).
    Fingerprints(Vec<Fingerprint>),
    /// The pins in this file; a relay it does not name is pinned on first use.
    KnownRelays(PathBuf),
}

/// What one connection to a relay must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expectation {
    /// Keys accepted; empty on first use (any key, then pinned).
    pub accepted: Vec<Fingerprint>,
    /// The file lines those keys come from, if from a file.
    pins: Vec<Pin>,
    /// Whether the key is the one a live session was opened with (a
    /// reconnect), not one the user gave.
    session: bool,
}

impl Expectation {
    /// What `source` says about the relay named `relay` (`host:port`).
    pub fn for_relay(source: &TrustSource, relay: &str) -> io::Result<Expectation> {
        match source {
            TrustSource::Fingerprints(fingerprints) => Ok(Expectation {
                accepted: fingerprints.clone(),
                pins: Vec::new(),
                session: false,
            }),
            TrustSource::KnownRelays(path) => {
                let known = KnownRelays::load(path)?;
                for (line, why) in &known.bad_lines {
                    tracing::warn!("{}:{line}: ignored: {why}", path.display());
                }
                Ok(match known.lookup(relay) {
                    Lookup::Unknown => Expectation {
                        accepted: Vec::new(),
                        pins: Vec::new(),
                        session: false,
                    },
                    Lookup::Pinned(pins) => Expectation {
                        accepted: pins.iter().map(|p| p.fingerprint).collect(),
                        pins,
                        session: false,
                    },
                })
            }
        }
    }

    /// Exactly `fingerprint`: for reconnects, which must meet the key the
    /// session was opened with.
    pub fn exactly(fingerprint: Fingerprint) -> Expectation {
        Expectation {
            accepted: vec![fingerprint],
            pins: Vec::new(),
            session: true,
        }
    }

    /// Whether this is a first use (any key goes, and is then pinned).
    pub fn is_first_use(&self) -> bool {
        self.accepted.is_empty()
    }

    /// Whether `seen` is acceptable.
    pub fn accepts(&self, seen: &Fingerprint) -> bool {
        self.is_first_use() || self.accepted.contains(seen)
    }

    /// Whether `seen` is pinned (not trusted on first use): a reconnect that
    /// meets it where its session's key was expected has reached another
    /// instance of a fleet whose keys are all pinned, or a relay whose key
    /// was rotated — not an impostor.
    pub fn pins_another(&self, seen: &Fingerprint) -> bool {
        !self.is_first_use() && self.accepts(seen)
    }

    /// The error for a relay that presented `seen` instead.
    pub fn changed(&self, source: &TrustSource, relay: &str, seen: Fingerprint) -> KeyChanged {
        KeyChanged {
            relay: relay.to_owned(),
            seen,
            expected: self.accepted.clone(),
            file: match source {
                TrustSource::KnownRelays(path) if !self.pins.is_empty() => Some(path.clone()),
                _ => None,
            },
            lines: self.pins.iter().map(|p| p.line).collect(),
            session: self.session,
        }
    }
}

/// Pins `seen` for `relay` if `source` is a file that does not name it yet.
/// Returns the file written to.
pub(crate) fn pin_first_use(
    source: &TrustSource,
    expectation: &Expectation,
    relay: &str,
    seen: &Fingerprint,
) -> io::Result<Option<PathBuf>> {
    match source {
        TrustSource::KnownRelays(path) if expectation.is_first_use() => {
            known_relays::append(path, relay, seen)?;
            Ok(Some(path.clone()))
        }
        _ => Ok(None),
    }
}

/// A relay presented a key other than the one pinned: loud, like ssh's
/// "REMOTE HOST IDENTIFICATION HAS CHANGED".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChanged {
    /// `host:port`.
    pub relay: String,
    /// What it presented.
    pub seen: Fingerprint,
    /// What was expected.
    pub expected: Vec<Fingerprint>,
    /// The known_relays file, if the pin came from one.
    pub file: Option<PathBuf>,
    /// The lines of that file that pin this relay.
    pub lines: Vec<usize>,
    /// Whether what was expected is the key a live session was opened with,
    /// rather than a `--relay-fingerprint` (when no file is named).
    pub session: bool,
}

impl fmt::Display for KeyChanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let banner = "@".repeat(59);
        writeln!(f, "\n{banner}")?;
        writeln!(
            f,
            "@    WARNING: RELAY IDENTIFICATION HAS CHANGED!           @"
        )?;
        writeln!(f, "{banner}")?;
        writeln!(f, "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!")?;
        writeln!(
            f,
            "Someone could be intercepting the connection to the relay at {} right now,",
            self.relay
        )?;
        writeln!(f, "or its key has been replaced.")?;
        writeln!(f, "The relay presented the key {}.", self.seen)?;
        let expected: Vec<String> = self.expected.iter().map(|e| e.to_string()).collect();
        match &self.file {
            Some(path) => {
                let lines: Vec<String> = self.lines.iter().map(|l| l.to_string()).collect();
                writeln!(
                    f,
                    "Pinned in {} (line {}): {}",
                    path.display(),
                    lines.join(", "),
                    expected.join(", ")
                )?;
                let sed: Vec<String> = self.lines.iter().map(|l| format!("{l}d")).collect();
                writeln!(
                    f,
                    "If you know the relay's key was changed, remove those lines (sed -i '{}' {})",
                    sed.join(";"),
                    path.display()
                )?;
                write!(f, "and connect again. Refusing to connect.")
            }
            None => {
                let origin = if self.session {
                    "the key this session was opened with"
                } else {
                    "--relay-fingerprint"
                };
                writeln!(f, "Expected ({origin}): {}", expected.join(", "))?;
                write!(f, "Refusing to connect.")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warning_names_the_file_and_lines_to_remove() {
        let old = Fingerprint::of_spki(b"old");
        let new = Fingerprint::of_spki(b"new");
        let dir = std::env::temp_dir().join(format!("resumeproxy-trust-{}", std::process::id()));
        let path = dir.join("known_relays");
        let _ = std::fs::remove_dir_all(&dir);
        let source = TrustSource::KnownRelays(path.clone());

        let first = Expectation::for_relay(&source, "r:7022").unwrap();
        assert!(first.is_first_use() && first.accepts(&new));
        assert_eq!(
            pin_first_use(&source, &first, "r:7022", &old).unwrap(),
            Some(path.clone())
        );

        let later = Expectation::for_relay(&source, "r:7022").unwrap();
        assert!(later.accepts(&old) && !later.accepts(&new));
        assert_eq!(
            pin_first_use(&source, &later, "r:7022", &new).unwrap(),
            None
        );
        let text = later.changed(&source, "r:7022", new).to_string();
        assert!(text.contains("RELAY IDENTIFICATION HAS CHANGED"), "{text}");
        assert!(
            text.contains(&format!("{} (line 1)", path.display())),
            "{text}"
        );
        assert!(text.contains("sed -i '1d'"), "{text}");
        assert!(text.contains(&new.to_string()) && text.contains(&old.to_string()));
        std::fs::remove_dir_all(&dir).unwrap();

        let given = TrustSource::Fingerprints(vec![old]);
        let exp = Expectation::for_relay(&given, "r:7022").unwrap();
        assert!(!exp.is_first_use());
        let text = exp.changed(&given, "r:7022", new).to_string();
        assert!(text.contains("--relay-fingerprint"), "{text}");

        let text = Expectation::exactly(old)
            .changed(&source, "r:7022", new)
            .to_string();
        assert!(
            text.contains(&format!(
                "Expected (the key this session was opened with): {old}"
            )),
            "{text}"
        );
        assert!(!text.contains("--relay-fingerprint"), "{text}");
    }

    #[test]
    fn another_pinned_key_is_told_from_an_impostor() {
        let [a, b, stranger] = [b"a", b"b", b"c"].map(|k| Fingerprint::of_spki(k));
        let fleet = Expectation::for_relay(&TrustSource::Fingerprints(vec![a, b]), "r:7022")
            .expect("an expectation");
        assert!(fleet.pins_another(&b) && fleet.pins_another(&a));
        assert!(!fleet.pins_another(&stranger));
        let first_use = Expectation {
            accepted: Vec::new(),
            pins: Vec::new(),
            session: false,
        };
        assert!(!first_use.pins_another(&stranger), "nothing is pinned yet");
    }
}
