//! `downwardAPI` volumes and the downwardAPI source of `projected` volumes
//! (pkg/volume/downwardapi `CollectData`, pkg/fieldpath): pod name, namespace,
//! UID, labels and annotations (whole maps as `key="value"` lines, or one key
//! through `metadata.labels['k']`) and container resources through
//! `resourceFieldRef` with a divisor. Rewritten on every sync, so label and
//! annotation changes reach running pods; the atomic writer swaps `..data` only
//! when something changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, DownwardAPIVolumeSource, Pod};

use super::atomic_writer::{self, Payload};
use super::{Host, VolumeError};

pub const PLUGIN_DIR: &str = "kubernetes.io~downward-api";

/// Go's `%q` for the strings the downward API writes (strconv.Quote): printable
/// characters as they are, `"` and `\` escaped, control characters as escapes.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `key="value"` lines sorted by key (pkg/fieldpath `FormatMap`).
pub fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.map(|m| m.iter().map(|(k, v)| format!("{k}={}", go_quote(v))).collect::<Vec<_>>().join("\n")).unwrap_or_default()
}

/// A `fieldRef` value as the downward API volume writes it
/// (pkg/fieldpath `ExtractFieldPathAsString`).
pub fn field_value(pod: &Pod, path: &str) -> Result<String, String> {
    let md = &pod.metadata;
    let sub = |prefix: &str| path.strip_prefix(prefix).and_then(|r| r.strip_prefix("['")).and_then(|r| r.strip_suffix("']")).map(String::from);
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(md.labels.as_ref()),
        "metadata.annotations" => format_map(md.annotations.as_ref()),
        _ => {
            if let Some(k) = sub("metadata.labels") {
                md.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else if let Some(k) = sub("metadata.annotations") {
                md.annotations.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath: {path}"));
            }
        }
    })
}

/// The files for `items` (paths cleaned, per-item mode over `default_mode`);
/// every failing item is reported, joined like upstream's error aggregate.
pub fn collect(pod: &Pod, items: &[DownwardAPIVolumeFile], default_mode: u32, host: &Host) -> Result<Payload, String> {
    let mut out = Payload::new();
    let mut errs = Vec::new();
    for it in items {
        let mode = it.mode.map(|m| m as u32).unwrap_or(default_mode);
        let path = it.path.split('/').filter(|p| !p.is_empty() && *p != ".").collect::<Vec<_>>().join("/");
        let value = if let Some(f) = &it.field_ref {
            field_value(pod, &f.field_path)
        } else if let Some(r) = &it.resource_field_ref {
            crate::pod::resources::value_by_container_name(pod, r.container_name.as_deref().unwrap_or(""), &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()), host)
        } else {
            Ok(String::new())
        };
        match value {
            Ok(v) => {
                out.insert(path, (v.into_bytes(), mode));
            }
            Err(e) => errs.push(e),
        }
    }
    match errs.len() {
        0 => Ok(out),
        1 => Err(errs.remove(0)),
        _ => Err(format!("[{}]", errs.join(", "))),
    }
}

/// Writes a `downwardAPI` volume under `volumes/kubernetes.io~downward-api/<name>`.
pub fn setup(pod: &Pod, pod_dir: &Path, name: &str, src: &DownwardAPIVolumeSource, host: &Host) -> Result<PathBuf, VolumeError> {
    let dir = pod_dir.join("volumes").join(PLUGIN_DIR).join(name);
    let payload = collect(pod, src.items.as_deref().unwrap_or(&[]), src.default_mode.unwrap_or(0o644) as u32, host)
        .map_err(|message| VolumeError::Source { volume: name.into(), message })?;
    atomic_writer::write(&dir, &payload).map_err(|source| VolumeError::Create { volume: name.into(), source })?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ObjectFieldSelector, PodSpec, ResourceFieldSelector, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn field(path: &str, field_path: &str) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile { path: path.into(), field_ref: Some(ObjectFieldSelector { field_path: field_path.into(), api_version: None }), ..Default::default() }
    }

    #[test]
    fn labels_annotations_and_resources_are_written_like_upstream() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.uid = Some("u1".into());
        pod.metadata.labels = Some([("b".to_string(), "2".to_string()), ("a".to_string(), "x\"y\n".to_string())].into());
        pod.metadata.annotations = Some([("k".to_string(), "v".to_string())].into());
        let limits = [("memory".to_string(), Quantity("64Mi".into())), ("cpu".to_string(), Quantity("250m".into()))].into();
        pod.spec = Some(PodSpec {
            containers: vec![Container { name: "c".into(), resources: Some(ResourceRequirements { limits: Some(limits), ..Default::default() }), ..Default::default() }],
            ..Default::default()
        });
        let items = vec![
            field("labels", "metadata.labels"),
            field("sub/./name", "metadata.name"),
            DownwardAPIVolumeFile { mode: Some(0o400), ..field("ann", "metadata.annotations['k']") },
            DownwardAPIVolumeFile {
                path: "mem".into(),
                resource_field_ref: Some(ResourceFieldSelector { container_name: Some("c".into()), resource: "limits.memory".into(), divisor: Some(Quantity("1Mi".into())) }),
                ..Default::default()
            },
            DownwardAPIVolumeFile {
                path: "cpu".into(),
                resource_field_ref: Some(ResourceFieldSelector { container_name: Some("c".into()), resource: "limits.cpu".into(), divisor: Some(Quantity("1m".into())) }),
                ..Default::default()
            },
        ];
        let host = Host { cpu_milli: 4000, memory: 1 << 30, ephemeral_storage: 0 };
        let p = collect(&pod, &items, 0o644, &host).unwrap();
        assert_eq!(p["labels"], (b"a=\"x\\\"y\\n\"\nb=\"2\"".to_vec(), 0o644));
        assert_eq!(p["sub/name"].0, b"p");
        assert_eq!(p["ann"], (b"v".to_vec(), 0o400));
        assert_eq!(p["mem"].0, b"64");
        assert_eq!(p["cpu"].0, b"250");
        let e = collect(&pod, &[field("x", "spec.bogus"), field("y", "status.nope")], 0o644, &host).unwrap_err();
        assert_eq!(e, "[unsupported fieldPath: spec.bogus, unsupported fieldPath: status.nope]");
    }

    #[test]
    fn go_quote_matches_strconv_quote() {
        assert_eq!(go_quote("plain é"), "\"plain é\"");
        assert_eq!(go_quote("a\\b\"\x00\x1b"), "\"a\\\\b\\\"\\x00\\x1b\"");
    }
}
