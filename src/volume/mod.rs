//! Pod volumes, prepared before any container starts and torn down after the last
//! one stops (pkg/kubelet/volumemanager, pkg/volume). One file per volume type.

pub mod empty_dir;

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
    #[error("MountVolume.SetUp failed for volume {volume:?} : unsupported volume source (supported: emptyDir)")]
    Unsupported { volume: String },
    /// A sizeLimit that is not a quantity.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {source}")]
    SizeLimit { volume: String, #[source] source: crate::quantity::QuantityError },
    /// Unmounting or removing a volume failed at teardown.
    #[error("UnmountVolume.TearDown failed for volume {volume:?} : {source}")]
    TearDown { volume: String, #[source] source: std::io::Error },
}

/// The host paths of a pod's volumes, by volume name.
pub type VolumePaths = HashMap<String, PathBuf>;

/// Sets up every volume of the pod under `pod_dir/volumes`. Idempotent.
pub fn setup(pod: &Pod, pod_dir: &Path) -> Result<VolumePaths, VolumeError> {
    let mut out = HashMap::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        if let Some(ed) = &v.empty_dir {
            out.insert(v.name.clone(), empty_dir::setup(pod_dir, &v.name, ed)?);
        } else {
            return Err(VolumeError::Unsupported { volume: v.name.clone() });
        }
    }
    Ok(out)
}

/// Unmounts and removes every volume under `pod_dir/volumes`.
pub fn teardown(pod_dir: &Path) -> Result<(), VolumeError> {
    empty_dir::teardown_all(pod_dir)
}
