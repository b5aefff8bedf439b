//! Static pod manifests: decode a file into Pods, apply the defaults and naming the
//! upstream file source applies (pkg/kubelet/config/common.go `applyDefaults`),
//! and validate the fields the agent relies on, with upstream-style field paths.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use md5::{Digest, Md5};
use thiserror::Error;

use crate::config::{is_dns_label, is_dns_subdomain};

/// Why a manifest file did not yield a pod.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read { path: String, #[source] source: std::io::Error },
    /// The file is not YAML/JSON.
    #[error("{path}: not valid YAML or JSON: {source}")]
    Syntax { path: String, #[source] source: serde_yaml::Error },
    /// The document is not a v1 Pod or PodList.
    #[error("{path}: expected apiVersion v1 and kind Pod (or PodList), got apiVersion {api_version:?} kind {kind:?}")]
    Kind { path: String, api_version: String, kind: String },
    /// A field has the wrong type.
    #[error("{path}: {field}: {message}")]
    Decode { path: String, field: String, message: String },
    /// The pod fails validation.
    #[error("{path}: invalid pod {name:?}: {errors}")]
    Invalid { path: String, name: String, errors: String },
}

impl ManifestError {
    /// The file the error is about.
    pub fn path(&self) -> &str {
        match self {
            ManifestError::Read { path, .. }
            | ManifestError::Syntax { path, .. }
            | ManifestError::Kind { path, .. }
            | ManifestError::Decode { path, .. }
            | ManifestError::Invalid { path, .. } => path,
        }
    }
}

/// Annotation keys the upstream kubelet puts on static pods.
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";

/// True for file names the file source reads (hidden files are skipped, like upstream).
pub fn is_manifest_file(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else { return false };
    !name.starts_with('.')
}

/// Reads a manifest file into defaulted, validated static pods.
pub fn load_file(path: &Path, node_name: &str) -> Result<Vec<Pod>, ManifestError> {
    let p = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| ManifestError::Read { path: p.clone(), source })?;
    decode(&data, &p, node_name)
}

/// Decodes manifest bytes (YAML or JSON) into defaulted, validated static pods.
pub fn decode(data: &[u8], path: &str, node_name: &str) -> Result<Vec<Pod>, ManifestError> {
    let value: serde_json::Value =
        serde_yaml::from_slice(data).map_err(|source| ManifestError::Syntax { path: path.into(), source })?;
    let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let docs: Vec<serde_json::Value> = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Pod") => vec![value],
        ("v1", "PodList") | ("v1", "List") => value
            .get("items")
            .and_then(|i| i.as_array())
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut item| {
                if let Some(o) = item.as_object_mut() {
                    o.entry("apiVersion").or_insert("v1".into());
                    o.entry("kind").or_insert("Pod".into());
                }
                item
            })
            .collect(),
        _ => return Err(ManifestError::Kind { path: path.into(), api_version, kind }),
    };
    let mut out = Vec::new();
    for (idx, doc) in docs.into_iter().enumerate() {
        let mut pod: Pod = serde_path_to_error::deserialize(doc).map_err(|e| ManifestError::Decode {
            path: path.into(),
            field: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        apply_defaults(&mut pod, path, idx, node_name);
        let errs = validate(&pod);
        if !errs.is_empty() {
            return Err(ManifestError::Invalid {
                path: path.into(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                errors: errs.join(", "),
            });
        }
        out.push(pod);
    }
    Ok(out)
}

/// Upstream's static pod defaults: name suffixed with the node name, namespace
/// `default`, a UID hashed from the pod, node and file, the config annotations, the
/// node name in the spec, and the API defaults the agent relies on.
pub fn apply_defaults(pod: &mut Pod, path: &str, idx: usize, node_name: &str) {
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    default_spec(spec);
    let md = &mut pod.metadata;
    if md.namespace.as_deref().unwrap_or("").is_empty() {
        md.namespace = Some("default".into());
    }
    if let Some(name) = md.name.as_mut() {
        *name = format!("{name}-{node_name}");
    }
    // The UID is a hash of the defaulted pod, the node and the file (upstream: md5).
    if md.uid.is_none() {
        let mut h = Md5::new();
        h.update(serde_json::to_vec(&*pod).unwrap_or_default());
        h.update(format!("host:{node_name}"));
        h.update(format!("file:{path}#{idx}"));
        let uid = hex::encode(h.finalize());
        pod.metadata.uid = Some(uid);
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(CONFIG_HASH.into(), uid);
    ann.insert(CONFIG_SOURCE.into(), "file".into());
    ann.insert(CONFIG_SEEN.into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node_name.into());
    }
}

/// The API server's defaults for the fields the agent reads (SetDefaults_Pod…).
pub fn default_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
    spec.enable_service_links.get_or_insert(true);
    spec.security_context.get_or_insert_with(Default::default);
    let all = spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut());
    for c in all {
        if c.image_pull_policy.is_none() {
            let img = c.image.clone().unwrap_or_default();
            c.image_pull_policy = Some(
                match crate::runtime::image::PullPolicy::from_k8s(None, &img) {
                    crate::runtime::image::PullPolicy::Always => "Always",
                    crate::runtime::image::PullPolicy::IfNotPresent => "IfNotPresent",
                    crate::runtime::image::PullPolicy::Never => "Never",
                }
                .into(),
            );
        }
        c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy.get_or_insert_with(|| "File".into());
        for p in c.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
        }
    }
}

/// A subset of ValidatePod, with upstream's field paths and messages.
pub fn validate(pod: &Pod) -> Vec<String> {
    let mut errs = Vec::new();
    let name = pod.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        errs.push("metadata.name: Required value: name or generateName is required".to_string());
    } else if !is_dns_subdomain(&name) {
        errs.push(format!("metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"));
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    if !is_dns_label(&ns) {
        errs.push(format!("metadata.namespace: Invalid value: {ns:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"));
    }
    let Some(spec) = pod.spec.as_ref() else {
        errs.push("spec: Required value".into());
        return errs;
    };
    if spec.containers.is_empty() {
        errs.push("spec.containers: Required value".into());
    }
    match spec.restart_policy.as_deref() {
        Some("Always") | Some("OnFailure") | Some("Never") => {}
        other => errs.push(format!(
            "spec.restartPolicy: Unsupported value: {:?}: supported values: \"Always\", \"OnFailure\", \"Never\"",
            other.unwrap_or("")
        )),
    }
    let mut vol_names = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if !is_dns_label(&v.name) {
            errs.push(format!("spec.volumes[{i}].name: Invalid value: {:?}", v.name));
        }
        if !vol_names.insert(v.name.clone()) {
            errs.push(format!("spec.volumes[{i}].name: Duplicate value: {:?}", v.name));
        }
    }
    let mut names = HashSet::new();
    let groups = [("initContainers", spec.init_containers.as_deref().unwrap_or(&[])), ("containers", &spec.containers[..])];
    for (field, list) in groups {
        for (i, c) in list.iter().enumerate() {
            let at = format!("spec.{field}[{i}]");
            if c.name.is_empty() {
                errs.push(format!("{at}.name: Required value"));
            } else if !is_dns_label(&c.name) {
                errs.push(format!("{at}.name: Invalid value: {:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'", c.name));
            } else if !names.insert(c.name.clone()) {
                errs.push(format!("{at}.name: Duplicate value: {:?}", c.name));
            }
            if c.image.as_deref().unwrap_or("").trim().is_empty() {
                errs.push(format!("{at}.image: Required value"));
            }
            match c.image_pull_policy.as_deref() {
                Some("Always") | Some("IfNotPresent") | Some("Never") | None => {}
                Some(p) => errs.push(format!("{at}.imagePullPolicy: Unsupported value: {p:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\"")),
            }
            for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
                if !vol_names.contains(&m.name) {
                    errs.push(format!("{at}.volumeMounts[{j}].name: Not found: {:?}", m.name));
                }
                if m.mount_path.is_empty() {
                    errs.push(format!("{at}.volumeMounts[{j}].mountPath: Required value"));
                }
            }
            for (j, e) in c.env.iter().flatten().enumerate() {
                if e.name.is_empty() {
                    errs.push(format!("{at}.env[{j}].name: Required value"));
                }
            }
            for (j, p) in c.ports.iter().flatten().enumerate() {
                if !(1..=65535).contains(&p.container_port) {
                    errs.push(format!("{at}.ports[{j}].containerPort: Invalid value: {}: must be between 1 and 65535, inclusive", p.container_port));
                }
            }
        }
    }
    errs.extend(super::validation::validate(pod));
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: app
    image: localhost/test/busybox:1.0
"#;

    #[test]
    fn static_pods_get_node_suffix_namespace_uid_and_annotations() {
        let pods = decode(GOOD.as_bytes(), "/m/web.yaml", "node-1").unwrap();
        let p = &pods[0];
        assert_eq!(p.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        let ann = p.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[CONFIG_HASH], uid);
        assert_eq!(ann[CONFIG_SOURCE], "file");
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.containers[0].image_pull_policy.as_deref(), Some("IfNotPresent"));
    }

    #[test]
    fn the_uid_is_stable_and_changes_with_the_content() {
        let a = decode(GOOD.as_bytes(), "/m/web.yaml", "n").unwrap()[0].metadata.uid.clone();
        let b = decode(GOOD.as_bytes(), "/m/web.yaml", "n").unwrap()[0].metadata.uid.clone();
        let c = decode(GOOD.replace("1.0", "2.0").as_bytes(), "/m/web.yaml", "n").unwrap()[0].metadata.uid.clone();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn json_manifests_and_pod_lists_decode() {
        let j = r#"{"apiVersion":"v1","kind":"PodList","items":[{"metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"x:1"}]}}]}"#;
        let pods = decode(j.as_bytes(), "/m/l.json", "n").unwrap();
        assert_eq!(pods[0].metadata.name.as_deref(), Some("a-n"));
    }

    #[test]
    fn a_wrong_field_type_names_the_field() {
        let bad = GOOD.replace("image: localhost/test/busybox:1.0", "image: x\n    ports: [{containerPort: eighty}]");
        let e = decode(bad.as_bytes(), "/m/bad.yaml", "n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("spec.containers[0].ports[0].containerPort"), "{msg}");
    }

    #[test]
    fn syntax_errors_and_wrong_kinds_are_reported() {
        assert!(matches!(decode(b"{{{not yaml", "/m/x", "n"), Err(ManifestError::Syntax { .. })));
        let e = decode(b"apiVersion: apps/v1\nkind: Deployment\n", "/m/x", "n").unwrap_err();
        assert!(matches!(e, ManifestError::Kind { .. }));
    }

    #[test]
    fn validation_reports_upstream_field_paths() {
        let bad = r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  restartPolicy: Sometimes
  containers:
  - name: app
  - name: app
    image: x
    volumeMounts: [{name: nope, mountPath: /x}]
"#;
        let e = decode(bad.as_bytes(), "/m/x", "n").unwrap_err().to_string();
        assert!(e.contains("spec.containers[0].image: Required value"), "{e}");
        assert!(e.contains("spec.containers[1].name: Duplicate value"), "{e}");
        assert!(e.contains("spec.restartPolicy: Unsupported value: \"Sometimes\""), "{e}");
        assert!(e.contains("spec.containers[1].volumeMounts[0].name: Not found"), "{e}");
    }
}
