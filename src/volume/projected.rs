//! `projected` volumes — what the API server's ServiceAccount admission injects as
//! `kube-api-access-*`: a bound service-account token (TokenRequest), the
//! `kube-root-ca.crt` ConfigMap and the namespace via downwardAPI — plus plain
//! `configMap`, `secret` and `downwardAPI` sources inside it (the same code as
//! those volume types). Written with the atomic writer, read-only to containers.
//! Tokens are kept until 80% of their life (or 24 h) has passed
//! (pkg/kubelet/token/token_manager.go `requiresRefresh`), read back from the
//! volume, so a sync does not ask for a new token every time.

use std::path::{Path, PathBuf};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ProjectedVolumeSource, ServiceAccount};
use kube::api::{Api, PostParams};

use super::atomic_writer::{self, Payload};
use super::{Host, VolumeError};
use crate::api::objects::ObjectCache;

pub const PLUGIN_DIR: &str = "kubernetes.io~projected";

/// Tokens live at most this long before a refresh (upstream's maxTTL).
const MAX_TTL_SECS: i64 = 24 * 3600;

fn err(volume: &str, msg: impl Into<String>) -> VolumeError {
    VolumeError::Source { volume: volume.into(), message: msg.into() }
}

/// The `iat` and `exp` claims of a JWT (no signature check: it is our own token).
pub fn jwt_times(token: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(token).ok()?;
    let payload = s.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((v.get("iat")?.as_i64()?, v.get("exp")?.as_i64()?))
}

/// Whether a token issued at `iat` expiring at `exp` needs replacing at `now`
/// (seconds): after 80% of its life or after 24 h (upstream without the jitter).
pub fn requires_refresh(iat: i64, exp: i64, now: i64) -> bool {
    let ttl = (exp - iat).max(0);
    now >= iat + MAX_TTL_SECS || now >= exp - ttl * 20 / 100
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
    host: &Host,
) -> Result<PathBuf, VolumeError> {
    let dir = pod_dir.join("volumes").join(PLUGIN_DIR).join(name);
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let default_mode = src.default_mode.unwrap_or(0o644) as u32;
    let mut payload = Payload::new();
    for s in src.sources.iter().flatten() {
        if let Some(t) = &s.service_account_token {
            let mode = default_mode;
            let current = atomic_writer::read_current(&dir, &t.path);
            let fresh = current.as_deref().and_then(jwt_times).filter(|(iat, exp)| !requires_refresh(*iat, *exp, chrono::Utc::now().timestamp()));
            if let (Some(_), Some(tok)) = (fresh, current) {
                payload.insert(t.path.clone(), (tok, mode));
                continue;
            }
            let client = client.ok_or_else(|| err(name, "service account tokens need an API server"))?;
            let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
            let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
            let req = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: Some(t.audience.clone().filter(|a| !a.is_empty()).map(|a| vec![a]).unwrap_or_default()),
                    expiration_seconds: Some(t.expiration_seconds.unwrap_or(3600)),
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
            payload.insert(t.path.clone(), (token.into_bytes(), mode));
        }
        if let Some(c) = &s.config_map {
            let p = super::config_map::payload(objects, &ns, &c.name, c.items.as_deref(), default_mode, c.optional == Some(true))
                .await
                .map_err(|m| err(name, m))?;
            payload.extend(p);
        }
        if let Some(sec) = &s.secret {
            let p = super::secret::payload(objects, &ns, &sec.name, sec.items.as_deref(), default_mode, sec.optional == Some(true))
                .await
                .map_err(|m| err(name, m))?;
            payload.extend(p);
        }
        if let Some(d) = &s.downward_api {
            let p = super::downward_api::collect(pod, d.items.as_deref().unwrap_or(&[]), default_mode, host).map_err(|m| err(name, m))?;
            payload.extend(p);
        }
    }
    atomic_writer::write(&dir, &payload).map_err(|source| VolumeError::Create { volume: name.into(), source })?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_after_eighty_percent_of_their_life_or_a_day() {
        // One hour: kept for 48 minutes.
        assert!(!requires_refresh(1000, 4600, 1000));
        assert!(!requires_refresh(1000, 4600, 1000 + 2879));
        assert!(requires_refresh(1000, 4600, 1000 + 2880));
        // A year-long token is refreshed after 24 h.
        assert!(!requires_refresh(0, 365 * 86400, 86399));
        assert!(requires_refresh(0, 365 * 86400, 86400));
        // Already expired or nonsense.
        assert!(requires_refresh(5000, 4000, 4500));
    }

    #[test]
    fn jwt_claims_are_read_from_the_payload() {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let t = format!("{}.{}.sig", enc(r#"{"alg":"RS256"}"#), enc(r#"{"iat":10,"exp":610,"sub":"x"}"#));
        assert_eq!(jwt_times(t.as_bytes()), Some((10, 610)));
        assert_eq!(jwt_times(b"not-a-token"), None);
        assert_eq!(jwt_times(b"a.!!!.c"), None);
    }
}
