//! `configMap` volumes (pkg/volume/configmap): the ConfigMap's `data` and
//! `binaryData` (or the `items` chosen, key → path with their own mode) written
//! with the atomic writer under `volumes/kubernetes.io~configmap/<name>`, read
//! from the watch-based cache. Rewritten on every sync, so changes reach running
//! pods; `..data` is swapped only when the content changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, KeyToPath, Pod};

use super::atomic_writer::{self, Payload};
use super::VolumeError;
use crate::api::objects::ObjectCache;

pub const PLUGIN_DIR: &str = "kubernetes.io~configmap";

/// The files for an object's data (configmap/secret `MakePayload`): every key at
/// `default_mode`, or only `items` (a missing key fails unless `optional`, with
/// `missing_key` + the key as the message).
pub fn make_payload(data: &BTreeMap<String, Vec<u8>>, items: Option<&[KeyToPath]>, default_mode: u32, optional: bool, missing_key: &str) -> Result<Payload, String> {
    let mut out = Payload::new();
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                let Some(v) = data.get(&it.key) else {
                    if optional {
                        continue;
                    }
                    return Err(format!("{missing_key}{}", it.key));
                };
                out.insert(it.path.clone(), (v.clone(), it.mode.map(|m| m as u32).unwrap_or(default_mode)));
            }
        }
        _ => {
            for (k, v) in data {
                out.insert(k.clone(), (v.clone(), default_mode));
            }
        }
    }
    Ok(out)
}

/// `data` and `binaryData` as bytes.
pub fn data_of(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut d: BTreeMap<String, Vec<u8>> = cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    d.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
    d
}

/// The payload of a ConfigMap reference in `namespace` (volume or projected source).
pub async fn payload(
    objects: Option<&ObjectCache>,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, String> {
    let objects = objects.ok_or_else(|| format!("couldn't get configMap {namespace}/{name}, no kubeClient defined"))?;
    let data = match objects.config_map(namespace, name).await.map_err(|e| e.to_string())? {
        Some(cm) => data_of(&cm),
        None if optional => BTreeMap::new(),
        None => return Err(format!("configmap {name:?} not found")),
    };
    make_payload(&data, items, default_mode, optional, "configmap references non-existent config key: ")
}

/// Writes the volume; returns its directory.
pub async fn setup(pod: &Pod, pod_dir: &Path, volume: &str, src: &ConfigMapVolumeSource, objects: Option<&ObjectCache>) -> Result<PathBuf, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let dir = pod_dir.join("volumes").join(PLUGIN_DIR).join(volume);
    let p = payload(objects, ns, &src.name, src.items.as_deref(), src.default_mode.unwrap_or(0o644) as u32, src.optional == Some(true))
        .await
        .map_err(|message| VolumeError::Source { volume: volume.into(), message })?;
    atomic_writer::write(&dir, &p).map_err(|source| VolumeError::Create { volume: volume.into(), source })?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ktp(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath { key: key.into(), path: path.into(), mode }
    }

    #[test]
    fn items_map_keys_to_paths_with_their_modes() {
        let data: BTreeMap<String, Vec<u8>> = [("a".to_string(), b"1".to_vec()), ("b".to_string(), b"2".to_vec())].into();
        let all = make_payload(&data, None, 0o644, false, "x: ").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["a"], (b"1".to_vec(), 0o644));
        let some = make_payload(&data, Some(&[ktp("b", "dir/b.txt", Some(0o400)), ktp("a", "a", None)]), 0o640, false, "x: ").unwrap();
        assert_eq!(some.len(), 2);
        assert_eq!(some["dir/b.txt"], (b"2".to_vec(), 0o400));
        assert_eq!(some["a"], (b"1".to_vec(), 0o640));
        let e = make_payload(&data, Some(&[ktp("zz", "z", None)]), 0o644, false, "configmap references non-existent config key: ").unwrap_err();
        assert_eq!(e, "configmap references non-existent config key: zz");
        assert!(make_payload(&data, Some(&[ktp("zz", "z", None)]), 0o644, true, "").unwrap().is_empty(), "optional: missing keys skipped");
    }

    #[test]
    fn binary_data_is_written_too() {
        let cm = ConfigMap {
            data: Some([("t".to_string(), "text".to_string())].into()),
            binary_data: Some([("b".to_string(), k8s_openapi::ByteString(vec![0, 1]))].into()),
            ..Default::default()
        };
        let d = data_of(&cm);
        assert_eq!(d["t"], b"text");
        assert_eq!(d["b"], vec![0, 1]);
    }
}
