//! The relay's identity: an Ed25519 key made on the relay's first start, kept
//! in a file only its owner can read, and known to clients by its fingerprint
//! (`SHA256:` and the base64 of the SHA-256 of its SubjectPublicKeyInfo, like
//! ssh's key fingerprints).
//!
//! The key is presented in TLS as a raw public key (RFC 7250): there is no
//! certificate, no expiry and no CA; the client trusts a relay by pinning its
//! fingerprint, as ssh trusts a host key.

use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
// The key's file, with Unix permissions: the relay's, which runs on Linux.
#[cfg(unix)]
use std::fs;
#[cfg(unix)]
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
#[cfg(unix)]
use std::path::Path;

/// File name of the key inside its directory.
pub const KEY_FILE_NAME: &str = "relay.key";
/// Where a relay run as root keeps its key when systemd does not say.
pub const SYSTEM_KEY_DIR: &str = "/var/lib/resumeproxy";

/// The SHA-256 of a relay's public key: what clients pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(spki_der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0);
        write!(f, "SHA256:{b64}")
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(text: &str) -> Result<Fingerprint, String> {
        let b64 = text
            .strip_prefix("SHA256:")
            .ok_or_else(|| format!("{text:?} is not a fingerprint: it must start with SHA256:"))?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|e| format!("{text:?} is not a fingerprint: {e}"))?;
        let hash: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("{text:?} is not a fingerprint: wrong length"))?;
        Ok(Fingerprint(hash))
    }
}

/// Why the relay's key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading, creating or writing the file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file is not a key this program made.
    #[error("key file {path} does not hold a usable key: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Others may read the file.
    #[error("key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Unprotected {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The relay's private key.
pub struct RelayKey {
    key_pair: rcgen::KeyPair,
}

impl fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayKey({})", self.fingerprint())
    }
}

impl RelayKey {
    /// A new random key (fails only if the system has no randomness).
    pub fn generate() -> Result<RelayKey, rcgen::Error> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        Ok(RelayKey { key_pair })
    }

    #[cfg(unix)]
    /// Reads the key at `path`, or makes one there (mode 0600, its directory
    /// 0700 if new) if there is none. Returns the key and whether it is new.
    pub fn load_or_create(path: &Path) -> Result<(RelayKey, bool), KeyError> {
        match RelayKey::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other.map(|key| (key, false)),
        }
        let io_error = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error)?;
        }
        let key = RelayKey::generate().map_err(|e| KeyError::Invalid {
            path: path.to_owned(),
            reason: format!("cannot generate one: {e}"),
        })?;
        // Written aside, then linked into place: a relay starting at the same
        // moment either sees no file or a whole one, and never replaces it.
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".new.{}", std::process::id()));
        let aside = PathBuf::from(aside);
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&aside)?;
            file.write_all(key.key_pair.serialize_pem().as_bytes())?;
            file.sync_all()?;
            fs::hard_link(&aside, path)
        })();
        let _ = fs::remove_file(&aside);
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return RelayKey::load(path).map(|key| (key, false));
            }
            Err(source) => return Err(io_error(source)),
        }
        Ok((key, true))
    }

    #[cfg(unix)]
    /// Reads the key at `path`, refusing a file others can read.
    pub fn load(path: &Path) -> Result<RelayKey, KeyError> {
        let io_error = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mode = fs::metadata(path).map_err(io_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Unprotected {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        let pem = fs::read_to_string(path).map_err(io_error)?;
        let key_pair = rcgen::KeyPair::from_pem(&pem).map_err(|e| KeyError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(RelayKey { key_pair })
    }

    /// The public key as a DER-encoded SubjectPublicKeyInfo: what TLS sends.
    pub fn spki_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key_pair)
    }

    /// The private key as PKCS#8 DER.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.key_pair.serialize_der()
    }

    /// The fingerprint clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_spki(&self.spki_der())
    }

    /// The key of QUIC's stateless resets, derived from this key: every
    /// process of the relay has the same one, so a new one can end a
    /// client's connection to the old one (see `transport::quic`).
    pub fn quic_reset_key(&self) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.pkcs8_der());
        let tag = ring::hmac::sign(&key, b"resumeproxy QUIC stateless reset key");
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

#[cfg(unix)]
/// Where the relay keeps its key unless told otherwise: systemd's
/// `$STATE_DIRECTORY`, else `/var/lib/resumeproxy` for root, else
/// `$XDG_STATE_HOME/resumeproxy` (default `~/.local/state/resumeproxy`).
pub fn default_key_path() -> PathBuf {
    let dir = if let Some(state) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several, separated by colons; the first is ours.
        let first = state
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        PathBuf::from(first)
    } else if crate::paths::is_root() {
        PathBuf::from(SYSTEM_KEY_DIR)
    } else {
        crate::paths::state_home().join("resumeproxy")
    };
    dir.join(KEY_FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse_like_ssh() {
        let fp = Fingerprint::of_spki(b"some key");
        let text = fp.to_string();
        assert!(
            text.starts_with("SHA256:") && !text.ends_with('='),
            "{text}"
        );
        assert_eq!(text.len(), "SHA256:".len() + 43);
        assert_eq!(text.parse::<Fingerprint>(), Ok(fp));
        assert!("MD5:abc".parse::<Fingerprint>().is_err());
        assert!("SHA256:abc".parse::<Fingerprint>().is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_key_is_made_once_private_and_then_reused() {
        let dir = std::env::temp_dir().join(format!("resumeproxy-key-test-{}", std::process::id()));
        let path = dir.join("sub").join(KEY_FILE_NAME);
        let _ = fs::remove_dir_all(&dir);
        let (first, created) = RelayKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (second, created) = RelayKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first.fingerprint(), second.fingerprint());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            RelayKey::load(&path),
            Err(KeyError::Unprotected { mode: 0o644, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            RelayKey::load(&path),
            Err(KeyError::Invalid { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
