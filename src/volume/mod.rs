//! Pod volumes, prepared before any container starts and torn down after the last
//! one stops (pkg/kubelet/volumemanager, pkg/volume). One file per volume type.

pub mod atomic_writer;
pub mod config_map;
pub mod downward_api;
pub mod empty_dir;
pub mod host_path;
pub mod mounts;
pub mod ownership;
pub mod persistent_claim;
pub mod projected;
pub mod secret;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use thiserror::Error;

/// Why a volume could not be set up; reported as a `FailedMount` event.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// Creating the volume directory failed.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {source}")]
    Create { volume: String, #[source] source: std::io::Error },
    /// Mounting tmpfs failed.
    #[error("MountVolume.SetUp failed for volume {volume:?} : mount tmpfs: {source}")]
    Mount { volume: String, #[source] source: nix::Error },
    /// A volume source rkubelet does not support yet.
    #[error("MountVolume.SetUp failed for volume {volume:?} : unsupported volume source (supported: emptyDir, hostPath, configMap, secret, downwardAPI, projected, persistentVolumeClaim of a hostPath or local volume)")]
    Unsupported { volume: String },
    /// An API-backed source could not be read (missing object, key, API error).
    #[error("MountVolume.SetUp failed for volume {volume:?} : {message}")]
    Source { volume: String, message: String },
    /// A sizeLimit that is not a quantity.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {source}")]
    SizeLimit { volume: String, #[source] source: crate::quantity::QuantityError },
    /// Unmounting or removing a volume failed at teardown.
    #[error("UnmountVolume.TearDown failed for volume {volume:?} : {source}")]
    TearDown { volume: String, #[source] source: std::io::Error },
}

/// True when `p` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mountpoint(p: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let target = p.to_string_lossy();
    info.lines().any(|l| l.split_whitespace().nth(4) == Some(target.as_ref()))
}

/// A prepared volume: its host path and whether containers get it read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The host paths of a pod's volumes, by volume name.
pub type VolumeMap = HashMap<String, Prepared>;

/// What the node offers, for `resourceFieldRef` without a limit.
pub use crate::pod::resources::Allocatable as Host;

/// What volume setup needs besides the pod.
pub struct SetupContext<'a> {
    /// The API server, for tokens and PersistentVolumeClaims.
    pub client: Option<&'a kube::Client>,
    /// ConfigMaps and Secrets (the pod registered in it).
    pub objects: Option<&'a crate::api::objects::ObjectCache>,
    pub host: Host,
}

/// Sets up every volume of the pod under `pod_dir/volumes` (hostPath and PVCs are
/// checked where they are). Idempotent; API-backed volumes are rewritten when
/// their source changed.
pub async fn setup(pod: &Pod, pod_dir: &Path, cx: &SetupContext<'_>) -> Result<VolumeMap, VolumeError> {
    let mut out = HashMap::new();
    let fs_group = pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|s| s.fs_group).map(|g| g as u32);
    for v in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let name = v.name.as_str();
        let rw = |path: PathBuf| Prepared { path, read_only: false };
        let ro = |path: PathBuf| Prepared { path, read_only: true };
        let prepared = if let Some(ed) = &v.empty_dir {
            rw(empty_dir::setup(pod_dir, name, ed)?)
        } else if let Some(h) = &v.host_path {
            rw(host_path::setup(name, h)?)
        } else if let Some(c) = &v.config_map {
            ro(config_map::setup(pod, pod_dir, name, c, cx.objects).await?)
        } else if let Some(sec) = &v.secret {
            ro(secret::setup(pod, pod_dir, name, sec, cx.objects).await?)
        } else if let Some(d) = &v.downward_api {
            ro(downward_api::setup(pod, pod_dir, name, d, &cx.host)?)
        } else if let Some(p) = &v.projected {
            ro(projected::setup(pod, pod_dir, name, p, cx.client, cx.objects, &cx.host).await?)
        } else if let Some(c) = &v.persistent_volume_claim {
            persistent_claim::setup(pod, name, c, cx.client).await?
        } else {
            return Err(VolumeError::Unsupported { volume: v.name.clone() });
        };
        let managed = v.empty_dir.is_some() || v.config_map.is_some() || v.secret.is_some() || v.downward_api.is_some() || v.projected.is_some();
        if let (Some(gid), true) = (fs_group, managed) {
            // emptyDirs once (their content is the app's); API volumes after each write.
            ownership::apply(&prepared.path, gid, prepared.read_only, v.empty_dir.is_some())
                .map_err(|source| VolumeError::Create { volume: v.name.clone(), source })?;
        }
        out.insert(v.name.clone(), prepared);
    }
    Ok(out)
}

/// Unmounts (tmpfs of memory emptyDirs and secrets) and removes every volume
/// under `pod_dir/volumes`; hostPath volumes live elsewhere and are left alone.
pub fn teardown(pod_dir: &Path) -> Result<(), VolumeError> {
    // Sub path binds first: they hold the volumes' directories.
    mounts::remove_sub_paths(pod_dir).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }).map_err(|source| VolumeError::TearDown { volume: mounts::SUBPATHS_DIR.into(), source })?;
    let base = pod_dir.join("volumes");
    let Ok(plugins) = std::fs::read_dir(&base) else { return Ok(()) };
    for plugin in plugins.flatten() {
        let Ok(vols) = std::fs::read_dir(plugin.path()) else { continue };
        for v in vols.flatten() {
            let p = v.path();
            let name = v.file_name().to_string_lossy().to_string();
            if is_mountpoint(&p) {
                nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(|e| VolumeError::TearDown { volume: name.clone(), source: e.into() })?;
            }
            match std::fs::remove_dir_all(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(VolumeError::TearDown { volume: name, source: e }),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Resolves when a ConfigMap or Secret the pod references changed (or when
/// notifications were lost), so its worker rewrites the volumes; never resolves
/// without a cache.
pub async fn referenced_change(rx: &mut Option<tokio::sync::broadcast::Receiver<crate::api::objects::ObjectKey>>, pod: &Pod) {
    use tokio::sync::broadcast::error::RecvError;
    let Some(rx) = rx.as_mut() else { return std::future::pending().await };
    let refs = crate::api::objects::pod_references(pod);
    loop {
        match rx.recv().await {
            Ok(key) if refs.contains(&key) => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::objects::{ObjectKey, ObjectKind};
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, PodSpec, Volume};

    #[tokio::test]
    async fn only_changes_of_referenced_objects_wake_the_pod() {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("ns".into());
        pod.spec = Some(PodSpec {
            volumes: Some(vec![Volume { name: "v".into(), config_map: Some(ConfigMapVolumeSource { name: "mine".into(), ..Default::default() }), ..Default::default() }]),
            ..Default::default()
        });
        let (tx, rx) = tokio::sync::broadcast::channel(4);
        let mut rx = Some(rx);
        tx.send(ObjectKey::new(ObjectKind::ConfigMap, "ns", "other")).unwrap();
        tx.send(ObjectKey::new(ObjectKind::Secret, "ns", "mine")).unwrap();
        tx.send(ObjectKey::new(ObjectKind::ConfigMap, "ns", "mine")).unwrap();
        referenced_change(&mut rx, &pod).await;
        assert!(rx.as_mut().unwrap().try_recv().is_err(), "returned at the referenced key, after skipping the others");
        let woke = futures::FutureExt::now_or_never(referenced_change(&mut rx, &pod));
        assert!(woke.is_none(), "nothing referenced pending: keeps waiting");
        let mut none = None;
        assert!(futures::FutureExt::now_or_never(referenced_change(&mut none, &pod)).is_none(), "no cache: never wakes");
    }
}
