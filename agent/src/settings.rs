//! `/etc/armfleet/agent.toml`: the agent's configuration file, and how it
//! combines with flags and the environment.
//!
//! Precedence, highest first: command-line flag, environment variable
//! (`ARMFLEET_SERVER`, …), the file, the built-in default. A file that does
//! not parse, has an unknown field or a wrong type is refused with the
//! file, line and field named.
//!
//! ```toml
//! server = "fleet.lab:2222"
//! board = "kunpeng-01"
//! key = "/etc/armfleet/board.key"
//! server_key = "SHA256:…"
//! state_dir = "/var/lib/armfleet-agent"
//! executor = "auto"            # auto | qemu | replay
//! pstore_dir = "/sys/fs/pstore"
//! journal = true               # read `journalctl -k -b -1` after a reboot
//!
//! [boot]                       # how armfleet builds are booted
//! method = "auto"              # auto | kexec | oneshot | simulated | none
//! install_dir = "/var/lib/armfleet-agent/kernels"
//! oneshot_command = ["/usr/local/sbin/lab-bootonce", "{image}", "{release}"]
//! reboot_command = ["systemctl", "reboot"]
//!
//! [ssh_board]                  # this agent is a lab controller driving a
//! host = "127.0.0.1"           # board that runs only sshd and QEMU
//! port = 2522
//! user = "root"
//! host_key = "ssh-ed25519 AAAA…"   # the board's key, pinned (or SHA256:…)
//! key = "/etc/armfleet/controller.key"
//! guest_dir = "/guest"         # the stress guest on the board
//! emulated = true              # the virtual arm64 board
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Config, ExecutorChoice};

/// Where the agent looks for its file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/armfleet/agent.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/armfleet-agent";
pub const DEFAULT_PSTORE_DIR: &str = "/sys/fs/pstore";

/// The file's contents; every field optional.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub server: Option<String>,
    pub board: Option<String>,
    pub key: Option<PathBuf>,
    pub server_key: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub executor: Option<String>,
    pub pstore_dir: Option<PathBuf>,
    pub journal: Option<bool>,
    pub boot: Option<crate::boot::BootSettings>,
    pub ssh_board: Option<armfleet_migrate_stress::ssh_board::SshBoardConfig>,
}

/// What flags and the environment gave (clap merges those two).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub server: Option<String>,
    pub board: Option<String>,
    pub key: Option<PathBuf>,
    pub server_key: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub executor: Option<String>,
    pub pstore_dir: Option<PathBuf>,
    pub boot_method: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("missing `{field}`: set it in {file} or pass --{flag} (or ${env})")]
    Missing {
        field: &'static str,
        flag: &'static str,
        env: &'static str,
        file: String,
    },
}

impl AgentFile {
    pub fn parse(path: &Path, text: &str) -> Result<AgentFile, SettingsError> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| {
                text[..s.start.min(text.len())]
                    .bytes()
                    .filter(|&b| b == b'\n')
                    .count()
                    + 1
            });
            let field = e.span().and_then(|s| {
                // The key at the start of the offending line, when there is one.
                let line_start = text[..s.start.min(text.len())]
                    .rfind('\n')
                    .map(|i| i + 1)
                    .unwrap_or(0);
                let rest = &text[line_start..];
                let key = rest.split(['=', '\n']).next()?.trim();
                (!key.is_empty() && rest.contains('=') && !key.starts_with('['))
                    .then(|| key.to_owned())
            });
            let msg = e.message().trim().to_owned();
            let message = match (line, field) {
                (Some(l), Some(f)) => format!("line {l}, field `{f}`: {msg}"),
                (Some(l), None) => format!("line {l}: {msg}"),
                _ => msg,
            };
            SettingsError::Invalid {
                path: path.display().to_string(),
                message,
            }
        })
    }

    /// Reads `path`. A missing file is an error only when `required`
    /// (the operator named it); the default path may be absent.
    pub fn load(path: &Path, required: bool) -> Result<Option<AgentFile>, SettingsError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(AgentFile::parse(path, &text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
            Err(source) => Err(SettingsError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

/// Combines flags/environment over the file over the defaults.
pub fn resolve(
    over: Overrides,
    file: Option<AgentFile>,
    file_path: &Path,
) -> Result<Config, SettingsError> {
    let file = file.unwrap_or_default();
    let file_name = file_path.display().to_string();
    let missing = |field, flag, env| SettingsError::Missing {
        field,
        flag,
        env,
        file: file_name.clone(),
    };
    let executor_text = over
        .executor
        .or(file.executor)
        .unwrap_or_else(|| "auto".into());
    let executor = ExecutorChoice::parse(&executor_text).map_err(|e| SettingsError::Invalid {
        path: file_name.clone(),
        message: format!("field `executor`: {e}"),
    })?;
    let boot = file.boot.unwrap_or_default();
    let boot_method = over
        .boot_method
        .or(boot.method.clone())
        .map(|m| crate::boot::BootMethod::parse(&m))
        .transpose()
        .map_err(|e| SettingsError::Invalid {
            path: file_name.clone(),
            message: format!("field `boot.method`: {e}"),
        })?
        .flatten();
    Ok(Config {
        boot_method,
        boot,
        server: over
            .server
            .or(file.server)
            .ok_or_else(|| missing("server", "server", "ARMFLEET_SERVER"))?,
        board: over
            .board
            .or(file.board)
            .ok_or_else(|| missing("board", "board", "ARMFLEET_BOARD"))?,
        key_path: over
            .key
            .or(file.key)
            .ok_or_else(|| missing("key", "key", "ARMFLEET_KEY"))?,
        server_key: over.server_key.or(file.server_key),
        state_dir: over
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
        executor,
        pstore_dir: over
            .pstore_dir
            .or(file.pstore_dir)
            .unwrap_or_else(|| DEFAULT_PSTORE_DIR.into()),
        journal: file.journal.unwrap_or(true),
        ssh_board: file.ssh_board,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "server = \"fleet.lab:2222\"\nboard = \"kunpeng-01\"\nkey = \"/etc/armfleet/board.key\"\n\
                        server_key = \"SHA256:abc\"\nstate_dir = \"/srv/agent\"\nexecutor = \"replay\"\n\
                        pstore_dir = \"/tmp/pstore\"\njournal = false\n";

    #[test]
    fn a_full_file_is_read() {
        let f = AgentFile::parse(Path::new("agent.toml"), FULL).unwrap();
        let c = resolve(Overrides::default(), Some(f), Path::new("agent.toml")).unwrap();
        assert_eq!(c.server, "fleet.lab:2222");
        assert_eq!(c.board, "kunpeng-01");
        assert_eq!(c.key_path, PathBuf::from("/etc/armfleet/board.key"));
        assert_eq!(c.server_key.as_deref(), Some("SHA256:abc"));
        assert_eq!(c.state_dir, PathBuf::from("/srv/agent"));
        assert_eq!(c.executor, ExecutorChoice::Replay);
        assert_eq!(c.pstore_dir, PathBuf::from("/tmp/pstore"));
        assert!(!c.journal);
    }

    #[test]
    fn flags_and_environment_override_the_file_and_the_file_overrides_defaults() {
        let f = AgentFile::parse(
            Path::new("agent.toml"),
            "server = \"a:1\"\nboard = \"b\"\nkey = \"/k\"\n",
        )
        .unwrap();
        let over = Overrides {
            server: Some("flag:2".into()),
            state_dir: Some("/flag/state".into()),
            ..Default::default()
        };
        let c = resolve(over, Some(f), Path::new("agent.toml")).unwrap();
        assert_eq!(c.server, "flag:2", "flag wins over the file");
        assert_eq!(c.board, "b", "file wins over nothing");
        assert_eq!(c.state_dir, PathBuf::from("/flag/state"));
        assert_eq!(
            c.pstore_dir,
            PathBuf::from(DEFAULT_PSTORE_DIR),
            "default when neither says"
        );
        assert_eq!(c.executor, ExecutorChoice::Auto);
        assert!(c.journal);
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let bad_type = "server = \"a:1\"\nboard = 42\n";
        let e = AgentFile::parse(Path::new("/etc/armfleet/agent.toml"), bad_type)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/armfleet/agent.toml") && e.contains("line 2") && e.contains("`board`"),
            "{e}"
        );
        let unknown = "server = \"a:1\"\n\nbord = \"x\"\n";
        let e = AgentFile::parse(Path::new("agent.toml"), unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("bord"), "{e}");
        let e = resolve(
            Overrides::default(),
            None,
            Path::new("/etc/armfleet/agent.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("missing `server`") && e.contains("--server") && e.contains("agent.toml"),
            "{e}"
        );
        let f = AgentFile::parse(
            Path::new("a.toml"),
            "executor = \"kvm\"\nserver=\"s\"\nboard=\"b\"\nkey=\"k\"",
        )
        .unwrap();
        let e = resolve(Overrides::default(), Some(f), Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("executor") && e.contains("kvm"), "{e}");
    }

    #[test]
    fn a_missing_default_file_is_fine_but_a_named_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.toml");
        assert!(AgentFile::load(&p, false).unwrap().is_none());
        assert!(
            AgentFile::load(&p, true)
                .unwrap_err()
                .to_string()
                .contains("none.toml")
        );
    }
}
