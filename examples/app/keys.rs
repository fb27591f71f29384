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
            let entries = parse_entries(&list).map_err(|e| format!("{ENV_VAR}: {e}"))?;
            let keys = Self {
                source: KeySource::Env(ENV_VAR),
                entries: Mutex::new(entries),
            };
            return Ok((keys, ring));
        }
        let (entries, generated) = match std::fs::read_to_string(key_file) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                warn_if_shared(key_file);
                let entries = parse_entries(&text)
                    .map_err(|e| format!("the key file {}: {e}", key_file.display()))?;
                (entries, false)
            }
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

/// The `version:key` entries of a list (or a key file: comma-separated
/// entries on any number of lines, blank lines and `#` comments skipped).
///
/// # Errors
///
/// The first malformed entry, by its line number and what is wrong with it:
/// never its text, which may hold key bytes. (`KeyRing::parse_list` checks
/// the keys themselves once the entries are joined into its list format.)
fn parse_entries(text: &str) -> Result<Vec<(u32, Zeroizing<String>)>, String> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let problem = match entry.split_once(':') {
                None => "an entry is not of the form `version:base64key`",
                Some((version, key)) => match version.trim().parse() {
                    Err(_) => "a version is not a whole number",
                    Ok(_) if key.trim().is_empty() => "an entry has no key after `version:`",
                    Ok(version) => {
                        entries.push((version, Zeroizing::new(key.trim().to_owned())));
                        continue;
                    }
                },
            };
            return Err(format!("line {}: {problem}", index + 1));
        }
    }
    Ok(entries)
}

/// Warns when group or others may read (or write) an existing key file:
/// anyone who reads it can compute every session's lookup key. The app
/// still starts (the file may be on a volume that reports odd modes), but
/// its own rewrites are always 0600.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = %format_args!("{mode:04o}"),
                    "the key file is accessible to group or others: `chmod 600` it \
                     (anyone who reads it can compute session lookup keys)"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
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
/// Both the file and its directory are synced before this returns, so a key
/// promoted after it is never one a crash or restart could forget.
fn write_key_file(path: &Path, entries: &[(u32, Zeroizing<String>)]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = temp_path(path);
    // A temp left by a crash, or planted there (a symlink to somewhere the
    // keys must not go): removed (a symlink itself, not its target), then
    // created anew with `create_new` (O_EXCL), which never follows a symlink
    // and fails if anything got there in between.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    let written = (|| {
        writeln!(
            file,
            "# tower-hmac-session example app: session HMAC keys, `version:base64key`, \
             the first current.\n# Secret: anyone holding it can compute lookup keys."
        )?;
        writeln!(file, "{}", to_list(entries).as_str())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_dir(path)
}

/// `app-keys.txt` → `app-keys.txt.tmp`, in the same directory (a rename
/// across file systems would not be atomic).
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Syncs the directory holding `path`, which makes a rename into it durable.
#[cfg(unix)]
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Windows cannot open a directory as a file; its renames are metadata
/// writes NTFS journals.
#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ths-app-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn key_file_entries_across_lines_and_comments() {
        let text = "# keys\n2:bbbb, 1:aaaa\n\n  # old\n3:cccc,\n";
        let entries = parse_entries(text).unwrap();
        let versions: Vec<u32> = entries.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, [2, 1, 3]);
        assert_eq!(entries[0].1.as_str(), "bbbb");
    }

    #[test]
    fn malformed_entry_names_its_line_never_its_text() {
        for (text, line) in [
            ("1:aaaa\nSECRETBYTES", 2),
            ("# c\n1:aaaa,x1:SECRETBYTES", 2),
            ("\n\n1:aaaa\n2:", 4),
        ] {
            let error = parse_entries(text).unwrap_err();
            assert!(error.starts_with(&format!("line {line}:")), "{error}");
            assert!(
                !error.contains("SECRET") && !error.contains("aaaa"),
                "{error}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_written_0600_through_a_fresh_temp_never_a_planted_symlink() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("write");
        let path = dir.join("keys.txt");
        let target = dir.join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, temp_path(&path)).unwrap();

        write_key_file(&path, &[(1, Zeroizing::new("aaaa".into()))]).unwrap();

        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert!(!temp_path(&path).exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse_entries(&written).unwrap()[0].1.as_str(), "aaaa");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
