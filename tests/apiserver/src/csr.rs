//! The certificate controllers of kube-controller-manager, reduced to what node
//! bootstrapping needs: the auto-approver (kubelet client certificates requested by a
//! bootstrapper or renewed by the node itself) and the signer for
//! `kubernetes.io/kube-apiserver-client-kubelet` and `kubernetes.io/kubelet-serving`, which
//! checks the request like upstream and marks it `Failed` when it does not conform.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::meta;
use crate::pki::{self, CsrInfo, Pki};

pub const CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
pub const APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";

fn usages(csr: &Value) -> Vec<String> {
    csr.pointer("/spec/usages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect()
}

/// Decode and parse `spec.request`.
pub fn request_info(csr: &Value) -> Result<CsrInfo, String> {
    let b64 = csr
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| e.to_string())?;
    pki::parse_csr(&bytes)
}

fn check_node_subject(info: &CsrInfo) -> Result<(), String> {
    if info.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if !info.common_name.starts_with("system:node:")
        || info.common_name.len() <= "system:node:".len()
    {
        return Err("subject common name does not begin with system:node:".into());
    }
    if !info.emails.is_empty() {
        return Err("email subjectAltNames are not allowed".into());
    }
    if !info.uris.is_empty() {
        return Err("URI subjectAltNames are not allowed".into());
    }
    Ok(())
}

/// Upstream's `ValidateKubeletClientCSR`.
pub fn validate_kubelet_client(info: &CsrInfo, usages: &[String]) -> Result<(), String> {
    check_node_subject(info)?;
    if !info.dns_names.is_empty() {
        return Err("DNS subjectAltNames are not allowed".into());
    }
    if !info.ip_addresses.is_empty() {
        return Err("IP subjectAltNames are not allowed".into());
    }
    let allowed = ["key encipherment", "digital signature", "client auth"];
    if !usages.iter().any(|u| u == "client auth")
        || usages.iter().any(|u| !allowed.contains(&u.as_str()))
    {
        return Err(format!(
            "usages did not match [digital signature client auth] (got {usages:?})"
        ));
    }
    Ok(())
}

/// Upstream's `ValidateKubeletServingCSR`.
pub fn validate_kubelet_serving(info: &CsrInfo, usages: &[String]) -> Result<(), String> {
    check_node_subject(info)?;
    if info.dns_names.is_empty() && info.ip_addresses.is_empty() {
        return Err("DNS or IP subjectAltName is required".into());
    }
    let allowed = ["key encipherment", "digital signature", "server auth"];
    if !usages.iter().any(|u| u == "server auth")
        || usages.iter().any(|u| !allowed.contains(&u.as_str()))
    {
        return Err(format!(
            "usages did not match [digital signature server auth] (got {usages:?})"
        ));
    }
    Ok(())
}

fn has_condition(csr: &Value, t: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.get("type").and_then(Value::as_str) == Some(t))
        })
}

pub fn is_approved(csr: &Value) -> bool {
    has_condition(csr, "Approved")
}
pub fn is_finished(csr: &Value) -> bool {
    has_condition(csr, "Denied")
        || has_condition(csr, "Failed")
        || csr
            .pointer("/status/certificate")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty())
}

/// Whether the auto-approver would approve this CSR; returns the approval message.
pub fn auto_approval(csr: &Value) -> Option<&'static str> {
    if csr.pointer("/spec/signerName").and_then(Value::as_str) != Some(CLIENT_KUBELET)
        || is_approved(csr)
        || is_finished(csr)
    {
        return None;
    }
    let info = request_info(csr).ok()?;
    validate_kubelet_client(&info, &usages(csr)).ok()?;
    let username = csr
        .pointer("/spec/username")
        .and_then(Value::as_str)
        .unwrap_or("");
    let groups: Vec<&str> = csr
        .pointer("/spec/groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if username == info.common_name {
        Some("Auto approving self kubelet client certificate after SubjectAccessReview.")
    } else if groups.contains(&"system:bootstrappers") || groups.contains(&"system:masters") {
        Some("Auto approving kubelet client certificate after SubjectAccessReview.")
    } else {
        None
    }
}

/// Add an Approved condition.
pub fn add_approval(csr: &mut Value, reason: &str, message: &str) {
    let now = meta::now();
    let st = csr
        .as_object_mut()
        .expect("object")
        .entry("status")
        .or_insert_with(|| json!({}));
    let conds = st
        .as_object_mut()
        .expect("status object")
        .entry("conditions")
        .or_insert_with(|| json!([]));
    if let Some(a) = conds.as_array_mut() {
        a.push(json!({"type": "Approved", "status": "True", "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": now}));
    }
}

/// What the signer does with an approved CSR: `Ok(certificate PEM)` or `Err(failure message)`.
pub fn sign(pki: &Pki, csr: &Value, ttl: Duration) -> Result<String, String> {
    let info = request_info(csr)?;
    let usages = usages(csr);
    match csr
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or("")
    {
        CLIENT_KUBELET => validate_kubelet_client(&info, &usages)?,
        KUBELET_SERVING => validate_kubelet_serving(&info, &usages)?,
        APISERVER_CLIENT => {
            if !usages.iter().any(|u| u == "client auth") {
                return Err("usages must include client auth".into());
            }
        }
        other => {
            return Err(format!(
                "signer {other:?} is not served by this test cluster"
            ))
        }
    }
    let mut ttl = ttl;
    if let Some(e) = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_u64)
    {
        ttl = ttl.min(Duration::from_secs(e.max(600)));
    }
    pki.sign_csr(&info, &usages, ttl).map_err(|e| e.to_string())
}

/// Apply the signer's outcome to the CSR's status.
pub fn apply_signing(csr: &mut Value, outcome: Result<String, String>) {
    let st = csr
        .as_object_mut()
        .expect("object")
        .entry("status")
        .or_insert_with(|| json!({}));
    let st = st.as_object_mut().expect("status object");
    match outcome {
        Ok(pem) => {
            st.insert(
                "certificate".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(pem)),
            );
        }
        Err(msg) => {
            let now = meta::now();
            let conds = st.entry("conditions").or_insert_with(|| json!([]));
            if let Some(a) = conds.as_array_mut() {
                a.push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": msg, "lastUpdateTime": now, "lastTransitionTime": now}));
            }
        }
    }
}
