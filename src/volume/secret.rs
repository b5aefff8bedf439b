//! `secret` volumes (pkg/volume/secret): like `configMap`, but the volume
//! directory `volumes/kubernetes.io~secret/<name>` is a tmpfs (upstream wraps
//! a memory-medium emptyDir), so secret data never touches the node's disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{KeyToPath, Pod, SecretVolumeSource};
use nix::mount::{mount, MsFlags};

use super::atomic_writer::{self, Payload};
use super::config_map::make_payload;
use super::{is_mountpoint, VolumeError};
use crate::api::objects::ObjectCache;

pub const PLUGIN_DIR: &str = "kubernetes.io~secret";

/// The payload of a Secret reference in `namespace` (volume or projected source).
pub async fn payload(
    objects: Option<&ObjectCache>,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, String> {
    let objects = objects.ok_or_else(|| format!("couldn't get secret {namespace}/{name}, no kubeClient defined"))?;
    let data: BTreeMap<String, Vec<u8>> = match objects.secret(namespace, name).await.map_err(|e| e.to_string())? {
        Some(s) => s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect(),
        None if optional => BTreeMap::new(),
        None => return Err(format!("secret {name:?} not found")),
    };
    make_payload(&data, items, default_mode, optional, "references non-existent secret key: ")
}

/// Mounts the tmpfs (once) and writes the volume; returns its directory.
pub async fn setup(pod: &Pod, pod_dir: &Path, volume: &str, src: &SecretVolumeSource, objects: Option<&ObjectCache>) -> Result<PathBuf, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let dir = pod_dir.join("volumes").join(PLUGIN_DIR).join(volume);
    let name = src.secret_name.as_deref().unwrap_or("");
    let p = payload(objects, ns, name, src.items.as_deref(), src.default_mode.unwrap_or(0o644) as u32, src.optional == Some(true))
        .await
        .map_err(|message| VolumeError::Source { volume: volume.into(), message })?;
    std::fs::create_dir_all(&dir).map_err(|source| VolumeError::Create { volume: volume.into(), source })?;
    if !is_mountpoint(&dir) {
        mount(Some("tmpfs"), &dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))
            .map_err(|source| VolumeError::Mount { volume: volume.into(), source })?;
    }
    atomic_writer::write(&dir, &p).map_err(|source| VolumeError::Create { volume: volume.into(), source })?;
    Ok(dir)
}
