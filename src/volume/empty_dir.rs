//! `emptyDir`: a directory under the pod's directory
//! (`volumes/kubernetes.io~empty-dir/<name>`, as upstream), or a tmpfs for
//! `medium: Memory` sized by `sizeLimit`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::EmptyDirVolumeSource;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{is_mountpoint, VolumeError};

/// The plugin directory name upstream uses.
pub const PLUGIN_DIR: &str = "kubernetes.io~empty-dir";

/// Creates the volume directory (mode 0777 like upstream) and mounts tmpfs for `Memory`.
pub fn setup(pod_dir: &Path, name: &str, src: &EmptyDirVolumeSource) -> Result<PathBuf, VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = pod_dir.join("volumes").join(PLUGIN_DIR).join(name);
    std::fs::create_dir_all(&dir).map_err(|source| VolumeError::Create { volume: name.into(), source })?;
    if src.medium.as_deref() == Some("Memory") && !is_mountpoint(&dir) {
        let mut opts = String::from("mode=0777");
        if let Some(limit) = &src.size_limit {
            let bytes = crate::quantity::to_value(&limit.0)
                .map_err(|source| VolumeError::SizeLimit { volume: name.into(), source })?;
            if bytes > 0 {
                opts.push_str(&format!(",size={bytes}"));
            }
        }
        mount(Some("tmpfs"), &dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(opts.as_str()))
            .map_err(|source| VolumeError::Mount { volume: name.into(), source })?;
    }
    // 0777 regardless of the umask; bits added later (fsGroup's setgid) are kept.
    let mode = std::fs::metadata(&dir).map_err(|source| VolumeError::Create { volume: name.into(), source })?.permissions().mode();
    if mode & 0o777 != 0o777 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode((mode & 0o7000) | 0o777))
            .map_err(|source| VolumeError::Create { volume: name.into(), source })?;
    }
    Ok(dir)
}

/// Unmounts any tmpfs and removes every emptyDir of the pod.
pub fn teardown_all(pod_dir: &Path) -> Result<(), VolumeError> {
    let base = pod_dir.join("volumes").join(PLUGIN_DIR);
    let Ok(rd) = std::fs::read_dir(&base) else { return Ok(()) };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if is_mountpoint(&p) {
            umount2(&p, MntFlags::MNT_DETACH)
                .map_err(|e| VolumeError::TearDown { volume: name.clone(), source: e.into() })?;
        }
        std::fs::remove_dir_all(&p).map_err(|source| VolumeError::TearDown { volume: name, source })?;
    }
    Ok(())
}

/// Disk space a directory tree uses, in bytes (allocated blocks, like `du`).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: a pathological tree is cut off rather than walked forever.
    let mut budget = 200_000usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return total;
            }
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// Upstream's eviction message when a disk-backed emptyDir outgrows its
/// `sizeLimit` (pkg/kubelet/eviction: emptyDirLimitEviction), or None.
pub fn over_limit(pod: &k8s_openapi::api::core::v1::Pod, pod_dir: &Path) -> Option<String> {
    for v in pod.spec.as_ref()?.volumes.iter().flatten() {
        let Some(ed) = v.empty_dir.as_ref().filter(|e| e.medium.as_deref() != Some("Memory")) else { continue };
        let Some(limit) = ed.size_limit.as_ref() else { continue };
        let Ok(bytes) = crate::quantity::to_value(&limit.0) else { continue };
        let used = disk_usage(&pod_dir.join("volumes").join(PLUGIN_DIR).join(&v.name));
        if used as i64 > bytes {
            return Some(format!("Usage of EmptyDir volume {:?} exceeds the limit {:?}. ", v.name, limit.0));
        }
    }
    None
}

/// True when the pod has a disk-backed emptyDir with a `sizeLimit` to watch.
pub fn has_disk_limit(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(|vs| vs.iter().any(|v| v.empty_dir.as_ref().map(|e| e.medium.as_deref() != Some("Memory") && e.size_limit.is_some()).unwrap_or(false)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_backed_empty_dirs_are_created_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let p = setup(t.path(), "data", &EmptyDirVolumeSource::default()).unwrap();
        assert!(p.ends_with("volumes/kubernetes.io~empty-dir/data"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o777);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o2777)).unwrap();
        setup(t.path(), "data", &EmptyDirVolumeSource::default()).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o2777, "setgid from fsGroup kept");
        std::fs::write(p.join("f"), "x").unwrap();
        teardown_all(t.path()).unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn a_disk_empty_dir_over_its_size_limit_gives_upstreams_eviction_message() {
        let t = tempfile::tempdir().unwrap();
        let mut pod = k8s_openapi::api::core::v1::Pod::default();
        let src = EmptyDirVolumeSource { size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Ki".into())), ..Default::default() };
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            volumes: Some(vec![k8s_openapi::api::core::v1::Volume { name: "scratch".into(), empty_dir: Some(src.clone()), ..Default::default() }]),
            ..Default::default()
        });
        assert!(has_disk_limit(&pod));
        let dir = setup(t.path(), "scratch", &src).unwrap();
        std::fs::write(dir.join("small"), vec![1u8; 4096]).unwrap();
        assert_eq!(over_limit(&pod, t.path()), None);
        std::fs::write(dir.join("big"), vec![1u8; 200 * 1024]).unwrap();
        assert_eq!(over_limit(&pod, t.path()).as_deref(), Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"64Ki\". "));
    }
}
