//! Building a kernel from its tree: the commit checked out from the mirror,
//! `make` with the plan's configuration, the artifacts and the build log
//! into the store.

use super::*;

/// Build log kept per build (the tail beyond is dropped with a marker).
const MAX_BUILD_LOG: u64 = 64 << 20;

/// Appends a command's output to the build log.
struct BuildLog {
    file: tokio::fs::File,
    path: PathBuf,
    written: u64,
}

impl BuildLog {
    async fn create(path: PathBuf) -> std::io::Result<BuildLog> {
        Ok(BuildLog {
            file: tokio::fs::File::create(&path).await?,
            path,
            written: 0,
        })
    }

    async fn note(&mut self, text: &str) {
        if self.written < MAX_BUILD_LOG {
            let _ = self.file.write_all(text.as_bytes()).await;
            self.written += text.len() as u64;
        }
    }

    /// The last lines, for the error message.
    fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Runs `argv` in `dir` (no shell), output into the log; kills its whole
/// process group when `deadline` passes. Returns whether it exited 0.
async fn run_logged(
    log: &mut BuildLog,
    dir: &Path,
    argv: &[String],
    deadline: tokio::time::Instant,
) -> Result<bool, BuildFailure> {
    log.note(&format!("$ {}\n", argv.join(" "))).await;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| BuildFailure::Infra(format!("cannot run {}: {e}", argv[0])))?;
    let pgid = child.id().map(|p| p as i32);
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let readers = futures::future::join(pump(out, tx.clone()), pump(err, tx));
    let collect = async {
        while let Some(chunk) = rx.recv().await {
            log.note(&String::from_utf8_lossy(&chunk)).await;
        }
    };
    let both = futures::future::join(readers, collect);
    let timed_out = tokio::time::timeout_at(deadline, both).await.is_err();
    if timed_out {
        if let Some(pg) = pgid {
            // SAFETY: killpg on the group this build step leads.
            unsafe {
                libc::killpg(pg, libc::SIGKILL);
            }
        }
        let _ = child.wait().await;
        return Err(BuildFailure::Infra(format!(
            "`{}` ran past the build's timeout",
            argv.join(" ")
        )));
    }
    let status = child
        .wait()
        .await
        .map_err(|e| BuildFailure::Infra(format!("waiting for {}: {e}", argv[0])))?;
    log.note(&format!("[exit: {status}]\n")).await;
    Ok(status.success())
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(mut r: R, tx: tokio::sync::mpsc::Sender<Vec<u8>>) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
            break;
        }
    }
}

/// Builds `commit` of the mirror's tree with `cfg` under `work`; the
/// artifacts and the build log go into `store`.
pub(super) async fn make_build(
    mirror: &Mirror,
    commit: &str,
    cfg: &BuildConfig,
    work: &Path,
    store: &ArtifactStore,
) -> (Result<Built, BuildFailure>, Option<String>) {
    if let Err(e) = std::fs::create_dir_all(work) {
        return (
            Err(BuildFailure::Infra(format!(
                "creating {}: {e}",
                work.display()
            ))),
            None,
        );
    }
    let mut log = match BuildLog::create(work.join("build.log")).await {
        Ok(l) => l,
        Err(e) => {
            return (
                Err(BuildFailure::Infra(format!("creating the build log: {e}"))),
                None,
            );
        }
    };
    let result = make_steps(mirror, commit, cfg, work, store, &mut log).await;
    let _ = log.file.flush().await;
    let log_sha = store.put_file(&log.path).ok().map(|(sum, _)| sum);
    let result = result.map_err(|e| match e {
        BuildFailure::Kernel(m) => BuildFailure::Kernel(format!("{m}\n{}", log.tail(15))),
        other => other,
    });
    (result, log_sha)
}

async fn make_steps(
    mirror: &Mirror,
    commit: &str,
    cfg: &BuildConfig,
    work: &Path,
    store: &ArtifactStore,
    log: &mut BuildLog,
) -> Result<Built, BuildFailure> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.timeout_s);
    let has_commit = |m: &Mirror| {
        let path = m.path.clone();
        let spec = format!("{commit}^{{commit}}");
        async move {
            crate::domain::mirror::git(
                Some(&path),
                &["cat-file", "-e", &spec],
                Duration::from_secs(30),
            )
            .await
            .is_ok()
        }
    };
    if !has_commit(mirror).await {
        log.note(&format!("fetching {} into its mirror\n", mirror.url))
            .await;
        mirror
            .fetch()
            .await
            .map_err(|e| BuildFailure::Infra(format!("mirroring {}: {e}", mirror.url)))?;
        if !has_commit(mirror).await {
            return Err(BuildFailure::Infra(format!(
                "commit {commit} is not in {}",
                mirror.url
            )));
        }
    }
    let src = work.join("src");
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mirror_path = mirror.path.display().to_string();
    let src_path = src.display().to_string();
    for step in [
        argv(&[
            "git",
            "clone",
            "--quiet",
            "--shared",
            "--no-checkout",
            &mirror_path,
            &src_path,
        ]),
        argv(&[
            "git",
            "-C",
            &src_path,
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            commit,
        ]),
    ] {
        if !run_logged(log, work, &step, deadline).await? {
            return Err(BuildFailure::Infra(format!("`{}` failed", step.join(" "))));
        }
    }
    let mut make = vec!["make".to_owned(), format!("ARCH={}", cfg.arch)];
    if let Some(cc) = &cfg.cross_compile {
        make.push(format!("CROSS_COMPILE={cc}"));
    }
    let make_with = |extra: &[String]| {
        let mut v = make.clone();
        v.extend_from_slice(extra);
        v
    };
    let kernel_step = |what: &str| BuildFailure::Kernel(format!("`make {what}` failed"));
    if !run_logged(log, &src, &make_with(&[cfg.defconfig.clone()]), deadline).await? {
        return Err(kernel_step(&cfg.defconfig));
    }
    if !cfg.fragments.is_empty() {
        let mut paths = Vec::new();
        for (i, (name, text)) in cfg.fragments.iter().enumerate() {
            let p = work.join(format!("fragment-{i}.config"));
            std::fs::write(&p, text)
                .map_err(|e| BuildFailure::Infra(format!("writing fragment {name}: {e}")))?;
            paths.push(p.display().to_string());
        }
        let merge = src.join("scripts/kconfig/merge_config.sh");
        if merge.is_file() {
            let mut step = vec![
                "sh".to_owned(),
                merge.display().to_string(),
                "-m".into(),
                ".config".into(),
            ];
            step.extend(paths);
            let mut cmd = step.clone();
            // merge_config.sh reads ARCH and CROSS_COMPILE from the environment.
            cmd.insert(0, format!("ARCH={}", cfg.arch));
            cmd.insert(0, "env".into());
            if !run_logged(log, &src, &cmd, deadline).await? {
                return Err(BuildFailure::Kernel(
                    "merging the config fragments failed".into(),
                ));
            }
        } else {
            let mut config = std::fs::read_to_string(src.join(".config")).unwrap_or_default();
            for (_, text) in &cfg.fragments {
                config.push('\n');
                config.push_str(text);
            }
            std::fs::write(src.join(".config"), config)
                .map_err(|e| BuildFailure::Infra(format!("writing .config: {e}")))?;
            log.note("appended the config fragments to .config\n").await;
        }
        if !run_logged(log, &src, &make_with(&["olddefconfig".into()]), deadline).await? {
            return Err(kernel_step("olddefconfig"));
        }
    }
    let jobs = if cfg.jobs > 0 {
        cfg.jobs as usize
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    };
    let mut build = make_with(&[format!("-j{jobs}")]);
    build.extend(cfg.targets.iter().cloned());
    if !run_logged(log, &src, &build, deadline).await? {
        return Err(kernel_step(&cfg.targets.join(" ")));
    }
    let release_out = tokio::process::Command::new("make")
        .args(make_with(&["-s".into(), "kernelrelease".into()])[1..].iter())
        .current_dir(&src)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| BuildFailure::Infra(format!("make kernelrelease: {e}")))?;
    let kernel_release = String::from_utf8_lossy(&release_out.stdout)
        .trim()
        .to_owned();
    if !release_out.status.success()
        || kernel_release.is_empty()
        || kernel_release.contains(char::is_whitespace)
    {
        return Err(BuildFailure::Kernel(format!(
            "`make kernelrelease` gave no release ({})",
            String::from_utf8_lossy(&release_out.stderr).trim()
        )));
    }
    log.note(&format!("kernelrelease: {kernel_release}\n"))
        .await;
    let image = src.join(&cfg.image);
    if !image.is_file() {
        return Err(BuildFailure::Kernel(format!(
            "the build made no {}",
            cfg.image
        )));
    }
    let mut files: Vec<(String, PathBuf)> = vec![
        ("Image".into(), image),
        ("config".into(), src.join(".config")),
    ];
    for (target, install, var, name) in [
        (
            "modules",
            "modules_install",
            "INSTALL_MOD_PATH",
            "modules.tar.gz",
        ),
        ("dtbs", "dtbs_install", "INSTALL_DTBS_PATH", "dtbs.tar.gz"),
    ] {
        if !cfg.targets.iter().any(|t| t == target) {
            continue;
        }
        let stage = work.join(format!("stage-{target}"));
        let _ = std::fs::create_dir_all(&stage);
        if !run_logged(
            log,
            &src,
            &make_with(&[install.into(), format!("{var}={}", stage.display())]),
            deadline,
        )
        .await?
        {
            return Err(kernel_step(install));
        }
        let tarball = work.join(name);
        let tar = argv(&[
            "tar",
            "-czf",
            &tarball.display().to_string(),
            "-C",
            &stage.display().to_string(),
            ".",
        ]);
        if !run_logged(log, work, &tar, deadline).await? {
            return Err(BuildFailure::Infra(format!("packing {name} failed")));
        }
        files.push((name.into(), tarball));
    }
    let mut artifacts = Vec::new();
    for (name, path) in files {
        let (sha256, size) = store
            .put_file(&path)
            .map_err(|e| BuildFailure::Infra(format!("storing {name}: {e}")))?;
        log.note(&format!("artifact {name}: sha256 {sha256}, {size} bytes\n"))
            .await;
        artifacts.push(Artifact {
            url: format!("/api/v1/artifacts/{sha256}"),
            name,
            sha256,
            size,
        });
    }
    Ok(Built {
        kernel_release,
        artifacts,
    })
}
