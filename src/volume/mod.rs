//! Pod volumes, prepared before any container starts and torn down after the last
//! one stops (pkg/kubelet/volumemanager, pkg/volume). One file per volume type.

pub mod atomic_writer;
pub mod empty_dir;
pub mod projected;

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
    #[error("MountVolume.SetUp failed for volume {volume:?} : unsupported volume source (supported: emptyDir, projected)")]
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

/// Sets up every volume of the pod under `pod_dir/volumes`. Idempotent.
/// API-backed sources need `client` (tokens) and `objects` (ConfigMaps, Secrets;
/// the pod registered in it).
pub async fn setup(pod: &Pod, pod_dir: &Path, client: Option<&kube::Client>, objects: Option<&crate::api::objects::ObjectCache>) -> Result<VolumeMap, VolumeError> {
    let mut out = HashMap::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let prepared = if let Some(ed) = &v.empty_dir {
            Prepared { path: empty_dir::setup(pod_dir, &v.name, ed)?, read_only: false }
        } else if let Some(p) = &v.projected {
            Prepared { path: projected::setup(pod, pod_dir, &v.name, p, client, objects).await?, read_only: true }
        } else {
            return Err(VolumeError::Unsupported { volume: v.name.clone() });
        };
        out.insert(v.name.clone(), prepared);
    }
    Ok(out)
}

/// Unmounts and removes every volume under `pod_dir/volumes`.
pub fn teardown(pod_dir: &Path) -> Result<(), VolumeError> {
    empty_dir::teardown_all(pod_dir)?;
    let projected = pod_dir.join("volumes").join(projected::PLUGIN_DIR);
    match std::fs::remove_dir_all(&projected) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(VolumeError::TearDown { volume: projected::PLUGIN_DIR.into(), source: e }),
        _ => Ok(()),
    }
}
