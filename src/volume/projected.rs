//! `projected` volumes — what the API server's ServiceAccount admission injects as
//! `kube-api-access-*`: a bound service-account token (TokenRequest), the
//! `kube-root-ca.crt` ConfigMap and the namespace via downwardAPI — plus plain
//! `configMap`, `secret` and `downwardAPI` sources inside it (ConfigMaps and
//! Secrets read from the watch-based [`ObjectCache`]). Written with the atomic
//! writer, read-only to containers.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ProjectedVolumeSource, ServiceAccount};
use kube::api::{Api, PostParams};

use super::atomic_writer::{self, Payload};
use super::VolumeError;
use crate::api::objects::ObjectCache;

pub const PLUGIN_DIR: &str = "kubernetes.io~projected";

fn err(volume: &str, msg: impl Into<String>) -> VolumeError {
    VolumeError::Source { volume: volume.into(), message: msg.into() }
}

/// Builds and writes the volume's files. Needs the API for tokens (`client`) and
/// the object cache for ConfigMaps and Secrets (the pod must be registered in it).
pub async fn setup(
    pod: &Pod,
    pod_dir: &Path,
    name: &str,
    src: &ProjectedVolumeSource,
    client: Option<&kube::Client>,
    objects: Option<&ObjectCache>,
) -> Result<PathBuf, VolumeError> {
    let dir = pod_dir.join("volumes").join(PLUGIN_DIR).join(name);
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let default_mode = src.default_mode.unwrap_or(0o644) as u32;
    let mut payload = Payload::new();
    for s in src.sources.iter().flatten() {
        if let Some(t) = &s.service_account_token {
            let client = client.ok_or_else(|| err(name, "service account tokens need an API server"))?;
            let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
            let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
            let req = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: Some(t.audience.clone().map(|a| vec![a]).unwrap_or_default()),
                    expiration_seconds: Some(t.expiration_seconds.unwrap_or(3607)),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: pod.metadata.name.clone(),
                        uid: pod.metadata.uid.clone(),
                    }),
                }),
                ..Default::default()
            };
            let resp: TokenRequest = api
                .create_subresource("token", &sa, &PostParams::default(), &req)
                .await
                .map_err(|e| err(name, format!("failed to fetch token: {e}")))?;
            let token = resp.status.and_then(|s| s.token).unwrap_or_default();
            payload.insert(t.path.clone(), (token.into_bytes(), default_mode));
        }
        if let Some(c) = &s.config_map {
            let objects = objects.ok_or_else(|| err(name, "configMap sources need an API server"))?;
            let cm_name = c.name.clone();
            // Cache errors are reported as upstream's projected volume reports them: their own text.
            match objects.config_map(&ns, &cm_name).await.map_err(|e| err(name, e.to_string()))? {
                Some(cm) => {
                    let data = cm.data.unwrap_or_default();
                    add_items(&mut payload, name, &data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(), c.items.as_deref(), default_mode, "configmap", &cm_name)?;
                }
                None if c.optional == Some(true) => {}
                None => return Err(err(name, format!("configmap {cm_name:?} not found"))),
            }
        }
        if let Some(sec) = &s.secret {
            let objects = objects.ok_or_else(|| err(name, "secret sources need an API server"))?;
            let sname = sec.name.clone();
            match objects.secret(&ns, &sname).await.map_err(|e| err(name, e.to_string()))? {
                Some(obj) => {
                    let data = obj.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                    add_items(&mut payload, name, &data, sec.items.as_deref(), default_mode, "secret", &sname)?;
                }
                None if sec.optional == Some(true) => {}
                None => return Err(err(name, format!("secret {sname:?} not found"))),
            }
        }
        if let Some(d) = &s.downward_api {
            for item in d.items.iter().flatten() {
                let Some(f) = &item.field_ref else { continue };
                let v = match f.field_path.as_str() {
                    "metadata.namespace" => ns.clone(),
                    "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                    "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                    "metadata.labels" => kv_lines(pod.metadata.labels.as_ref()),
                    "metadata.annotations" => kv_lines(pod.metadata.annotations.as_ref()),
                    other => return Err(err(name, format!("unsupported fieldPath {other:?}"))),
                };
                payload.insert(item.path.clone(), (v.into_bytes(), item.mode.map(|m| m as u32).unwrap_or(default_mode)));
            }
        }
    }
    atomic_writer::write(&dir, &payload).map_err(|source| VolumeError::Create { volume: name.into(), source })?;
    Ok(dir)
}

/// `key="value"` lines, as the downward API writes label and annotation maps.
fn kv_lines(m: Option<&std::collections::BTreeMap<String, String>>) -> String {
    m.map(|m| m.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join("\n")).unwrap_or_default()
}

fn add_items(
    payload: &mut Payload,
    volume: &str,
    data: &std::collections::BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    default_mode: u32,
    kind: &str,
    obj: &str,
) -> Result<(), VolumeError> {
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                let v = data.get(&it.key).ok_or_else(|| err(volume, format!("{kind} {obj:?}: key {:?} not found", it.key)))?;
                payload.insert(it.path.clone(), (v.clone(), it.mode.map(|m| m as u32).unwrap_or(default_mode)));
            }
        }
        _ => {
            for (k, v) in data {
                payload.insert(k.clone(), (v.clone(), default_mode));
            }
        }
    }
    Ok(())
}
