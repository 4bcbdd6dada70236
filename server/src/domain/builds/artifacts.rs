//! The artifact store: content-addressed files that boards fetch by sum.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::domain::config::Fleet;

/// Content-addressed files: `DIR/ab/cdef…` named by their SHA-256.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
}

impl ArtifactStore {
    pub fn new(dir: PathBuf) -> ArtifactStore {
        ArtifactStore { dir }
    }

    pub fn for_fleet(fleet: &Fleet, data_dir: &Path) -> ArtifactStore {
        ArtifactStore::new(
            fleet
                .server
                .artifact_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("artifacts")),
        )
    }

    /// Where the file with this sum lives, if `sha256` is a well-formed sum.
    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        let ok = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| self.dir.join(&sha256[..2]).join(&sha256[2..]))
    }

    /// Copies `src` into the store; returns its sum and size. Written to a
    /// temporary name and renamed, so a crash never leaves a partial file
    /// under a sum.
    pub fn put_file(&self, src: &Path) -> std::io::Result<(String, u64)> {
        use std::io::{Read, Write};
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(
            ".incoming-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut input = std::fs::File::open(src)?;
        let mut out = std::fs::File::create(&tmp)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
        out.sync_all()?;
        let sum = hex::encode(hasher.finalize());
        let dest = self.path(&sum).expect("a hex digest is a valid sum");
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::rename(&tmp, &dest)?;
        Ok((sum, size))
    }
}
