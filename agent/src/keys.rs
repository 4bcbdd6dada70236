//! The board's SSH identity and the server's pinned host key.

use std::path::Path;

use anyhow::Context;
use russh::keys::{HashAlg, PrivateKey};

/// Writes a new ed25519 key pair (`PATH` 0600 and `PATH.pub`); returns the
/// public line to paste into fleet.toml. Refuses to overwrite a key.
pub fn keygen(path: &Path) -> anyhow::Result<String> {
    if path.exists() {
        anyhow::bail!(
            "{} exists; refusing to overwrite a board key",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut key = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    key.set_comment(format!("armfleet-agent@{}", host.trim()));
    let private = key.to_openssh(russh::keys::ssh_key::LineEnding::LF)?;
    write_private(path, private.as_bytes(), false)?;
    let public = key.public_key().to_openssh()?;
    let pub_path = path.with_extension("pub");
    std::fs::write(&pub_path, format!("{public}\n"))?;
    Ok(public)
}

/// Writes a secret (a private key, an initramfs holding one) readable by
/// its owner only; `replace` allows overwriting an existing file.
pub fn write_private(path: &Path, bytes: &[u8], replace: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

pub fn load(path: &Path) -> anyhow::Result<PrivateKey> {
    russh::keys::load_secret_key(path, None)
        .with_context(|| format!("loading the board key {}", path.display()))
}

pub fn fingerprint(key: &russh::keys::PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// How the agent decides to trust the server.
#[derive(Debug, Clone)]
pub enum HostKeyPolicy {
    /// Exactly this fingerprint.
    Pinned(String),
    /// Trust on first use, remembered in this file (one line per server
    /// address: `ADDR FINGERPRINT`).
    KnownHosts {
        file: std::path::PathBuf,
        server: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error(
        "SERVER HOST KEY MISMATCH for {server}: expected {expected}, got {got}. \
         Someone may be impersonating the server, or its key changed. Refusing to connect."
    )]
    Mismatch {
        server: String,
        expected: String,
        got: String,
    },
    #[error("cannot record the server's host key in {0}: {1}")]
    Io(String, std::io::Error),
}

impl HostKeyPolicy {
    pub fn check(&self, got: &str) -> Result<(), HostKeyError> {
        match self {
            HostKeyPolicy::Pinned(expected) => {
                if expected == got {
                    Ok(())
                } else {
                    Err(HostKeyError::Mismatch {
                        server: "pinned".into(),
                        expected: expected.clone(),
                        got: got.into(),
                    })
                }
            }
            HostKeyPolicy::KnownHosts { file, server } => {
                let text = std::fs::read_to_string(file).unwrap_or_default();
                for line in text.lines() {
                    let mut parts = line.split_whitespace();
                    if parts.next() == Some(server.as_str()) {
                        let expected = parts.next().unwrap_or_default();
                        return if expected == got {
                            Ok(())
                        } else {
                            Err(HostKeyError::Mismatch {
                                server: server.clone(),
                                expected: expected.to_owned(),
                                got: got.into(),
                            })
                        };
                    }
                }
                tracing::warn!(server, fingerprint = got, file = %file.display(), "trusting the server's host key on first use");
                if let Some(dir) = file.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                use std::io::Write;
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .and_then(|mut f| writeln!(f, "{server} {got}"))
                    .map_err(|e| HostKeyError::Io(file.display().to_string(), e))
            }
        }
    }
}
