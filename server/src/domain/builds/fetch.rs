//! Artifacts built elsewhere: fetched by URL into the store, each sum checked.

use super::*;

/// Fetches artifacts built elsewhere into the store, checking each sum.
pub(super) async fn fetch_urls(
    build: &UrlBuild,
    work: &Path,
    store: &ArtifactStore,
) -> Result<Built, BuildFailure> {
    std::fs::create_dir_all(work)
        .map_err(|e| BuildFailure::Infra(format!("creating {}: {e}", work.display())))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()
        .map_err(|e| BuildFailure::Infra(format!("HTTP client: {e}")))?;
    let mut artifacts = Vec::new();
    for a in &build.artifacts {
        let dest = work.join(&a.name);
        if let Some(path) = a
            .url
            .strip_prefix("file://")
            .or(a.url.starts_with('/').then_some(a.url.as_str()))
        {
            std::fs::copy(path, &dest).map_err(|e| {
                BuildFailure::Infra(format!("artifact {}: reading {path}: {e}", a.name))
            })?;
        } else if a.url.starts_with("http://") || a.url.starts_with("https://") {
            let mut resp = client
                .get(&a.url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| {
                    BuildFailure::Infra(format!("artifact {}: fetching {}: {e}", a.name, a.url))
                })?;
            let mut file = tokio::fs::File::create(&dest)
                .await
                .map_err(|e| BuildFailure::Infra(format!("artifact {}: {e}", a.name)))?;
            while let Some(chunk) = resp.chunk().await.map_err(|e| {
                BuildFailure::Infra(format!("artifact {}: reading {}: {e}", a.name, a.url))
            })? {
                file.write_all(&chunk)
                    .await
                    .map_err(|e| BuildFailure::Infra(format!("artifact {}: {e}", a.name)))?;
            }
            file.flush().await.ok();
        } else {
            return Err(BuildFailure::Infra(format!(
                "artifact {}: unsupported URL `{}` (http://, https://, file:// or an absolute path)",
                a.name, a.url
            )));
        }
        let (sha256, size) = store
            .put_file(&dest)
            .map_err(|e| BuildFailure::Infra(format!("storing {}: {e}", a.name)))?;
        if !sha256.eq_ignore_ascii_case(&a.sha256) {
            return Err(BuildFailure::Infra(format!(
                "artifact {}: checksum mismatch: {} has sha256 {sha256}, the trigger said {}",
                a.name, a.url, a.sha256
            )));
        }
        artifacts.push(Artifact {
            name: a.name.clone(),
            url: format!("/api/v1/artifacts/{sha256}"),
            sha256,
            size,
        });
    }
    Ok(Built {
        kernel_release: build.kernel_release.clone(),
        artifacts,
    })
}
