//! Where the app's HMAC keys come from (`SESSION_KEYS`, a key file, or a
//! development key generated into a file) and how the admin page rotates them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use tower_hmac_session::{KeyRing, KeyVersion, SessionManager};
use zeroize::Zeroizing;

/// Where the keys were read, so the admin page can say whether a rotation
/// survives a restart.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// An environment variable: a run-time rotation lasts until the restart.
    Env(&'static str),
    /// A key file the app rewrites on every rotation.
    File { path: PathBuf, generated: bool },
}

/// The app's copy of the key list. A [`KeyRing`] never hands its key bytes
/// back (by design), so to build the next ring the app keeps the
/// `version:base64key` entries it was built from, current first.
#[derive(Debug)]
pub(crate) struct AppKeys {
    pub(crate) source: KeySource,
    entries: Mutex<Vec<(u32, Zeroizing<String>)>>,
}

pub(crate) const ENV_VAR: &str = "SESSION_KEYS";

impl AppKeys {
    /// `SESSION_KEYS` if set; else the key file (`APP_KEY_FILE`, default
    /// `app-keys.txt`); else a fresh development key written to that file.
    pub(crate) fn load(key_file: &Path) -> Result<(Self, KeyRing), String> {
        if let Ok(list) = std::env::var(ENV_VAR) {
            let list = Zeroizing::new(list);
            // `from_env` validates and reports errors by the variable's name,
            // never its value.
            let ring = KeyRing::from_env(ENV_VAR).map_err(|e| e.to_string())?;
            let keys = Self {
                source: KeySource::Env(ENV_VAR),
                entries: Mutex::new(parse_entries(&list)),
            };
            return Ok((keys, ring));
        }
        let (entries, generated) = match std::fs::read_to_string(key_file) {
            Ok(text) => (parse_entries(&Zeroizing::new(text)), false),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let entries = vec![(1, new_key())];
                write_key_file(key_file, &entries).map_err(|e| {
                    format!("cannot write the key file {}: {e}", key_file.display())
                })?;
                tracing::warn!(
                    path = %key_file.display(),
                    "neither SESSION_KEYS nor a key file: generated a DEVELOPMENT key into this file \
                     (keep it secret; in production set SESSION_KEYS from your secret store)"
                );
                (entries, true)
            }
            Err(error) => {
                return Err(format!(
                    "cannot read the key file {}: {error}",
                    key_file.display()
                ));
            }
        };
        let ring = build_ring(&entries)
            .map_err(|e| format!("the key file {}: {e}", key_file.display()))?;
        let keys = Self {
            source: KeySource::File {
                path: key_file.to_owned(),
                generated,
            },
            entries: Mutex::new(entries),
        };
        Ok((keys, ring))
    }

    /// Whether a rotation is written somewhere a restart reads.
    pub(crate) fn persistent(&self) -> bool {
        matches!(self.source, KeySource::File { .. })
    }

    /// Adds a fresh random key under the next version and makes it current.
    /// The file is written before the ring is swapped: a key that signs
    /// sessions must never be one a restart would forget.
    pub(crate) fn add_and_promote(&self, manager: &SessionManager) -> Result<KeyVersion, String> {
        let mut entries = self.lock();
        let version = entries.iter().map(|(v, _)| *v).max().unwrap_or(0) + 1;
        let mut next = vec![(version, new_key())];
        next.extend(entries.iter().cloned());
        let ring = build_ring(&next).map_err(|e| e.to_string())?;
        self.persist(&next)?;
        manager.set_key_ring(ring);
        *entries = next;
        Ok(KeyVersion(version))
    }

    /// Removes `version` (never the current one) from the ring. Sessions
    /// still under it end: their clients' secrets can no longer be looked up.
    pub(crate) fn retire(&self, manager: &SessionManager, version: u32) -> Result<(), String> {
        let mut entries = self.lock();
        match entries.first() {
            Some((current, _)) if *current == version => {
                return Err("the current key cannot be retired".into());
            }
            _ => {}
        }
        if !entries.iter().any(|(v, _)| *v == version) {
            return Err(format!("key version {version} is not in the ring"));
        }
        let next: Vec<_> = entries
            .iter()
            .filter(|(v, _)| *v != version)
            .cloned()
            .collect();
        let ring = build_ring(&next).map_err(|e| e.to_string())?;
        self.persist(&next)?;
        manager.set_key_ring(ring);
        *entries = next;
        Ok(())
    }

    fn persist(&self, entries: &[(u32, Zeroizing<String>)]) -> Result<(), String> {
        match &self.source {
            KeySource::File { path, .. } => write_key_file(path, entries)
                .map_err(|e| format!("cannot write the key file {}: {e}", path.display())),
            // Nothing to write: the page says the change lasts until restart.
            KeySource::Env(_) => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u32, Zeroizing<String>)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// 32 bytes from the OS-seeded CSPRNG, in base64: what `KeyRing` wants.
fn new_key() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(&mut *bytes);
    Zeroizing::new(STANDARD.encode(*bytes))
}

/// The `version:key` entries of a list (or a key file: lines joined, `#`
/// comments skipped). Only used after `KeyRing` has accepted the same text,
/// or to build a ring that will check it, so malformed entries are skipped
/// here and reported by `KeyRing::parse_list`.
fn parse_entries(text: &str) -> Vec<(u32, Zeroizing<String>)> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.split(','))
        .filter_map(|entry| {
            let (version, key) = entry.trim().split_once(':')?;
            Some((
                version.trim().parse().ok()?,
                Zeroizing::new(key.trim().to_owned()),
            ))
        })
        .collect()
}

fn to_list(entries: &[(u32, Zeroizing<String>)]) -> Zeroizing<String> {
    Zeroizing::new(
        entries
            .iter()
            .map(|(v, k)| format!("{v}:{}", k.as_str()))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn build_ring(entries: &[(u32, Zeroizing<String>)]) -> Result<KeyRing, String> {
    KeyRing::parse_list(&to_list(entries)).map_err(|e| e.to_string())
}

/// Writes the list to a temporary file readable only by its owner, then
/// renames it over the old one: a crash mid-write never leaves half a key.
fn write_key_file(path: &Path, entries: &[(u32, Zeroizing<String>)]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    writeln!(
        file,
        "# tower-hmac-session example app: session HMAC keys, `version:base64key`, \
         the first current.\n# Secret: anyone holding it can compute lookup keys."
    )?;
    writeln!(file, "{}", to_list(entries).as_str())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
