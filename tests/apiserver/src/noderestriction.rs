//! The NodeRestriction admission plugin (plugin/pkg/admission/noderestriction):
//! what a `system:node:<name>` user may write, once the Node authorizer let the
//! request through. A node may create only mirror pods bound to itself (owned by
//! its Node, with its UID, referencing no secret, configmap, claim, service
//! account or cluster trust bundle), delete and update the status of only pods
//! bound to it (not their labels), modify only its own Node (not its taints, not
//! restricted labels), Lease and CSINode, and request tokens only bound to its
//! own pods.

use serde_json::Value;

use crate::auth::{admission_denied, UserInfo};
use crate::error::ApiError;
use crate::meta;
use crate::resources::ResourceDef;
use crate::store::Store;

/// Labels a node may set on itself (NodeRestriction).
fn node_label_allowed(key: &str) -> bool {
    const ALLOWED: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    let Some((prefix, _)) = key.split_once('/') else {
        return true;
    };
    let restricted_ns = |d: &str| {
        d == "kubernetes.io"
            || d.ends_with(".kubernetes.io")
            || d == "k8s.io"
            || d.ends_with(".k8s.io")
    };
    if prefix == "node-restriction.kubernetes.io"
        || prefix.ends_with(".node-restriction.kubernetes.io")
    {
        return false;
    }
    if !restricted_ns(prefix) {
        return true;
    }
    ALLOWED.contains(&key)
        || prefix == "kubelet.kubernetes.io"
        || prefix.ends_with(".kubelet.kubernetes.io")
        || prefix == "node.kubernetes.io"
        || prefix.ends_with(".node.kubernetes.io")
}

fn labels(v: Option<&Value>) -> serde_json::Map<String, Value> {
    v.and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// One admission check.
pub struct Admission<'a> {
    pub verb: &'a str,
    pub def: &'a ResourceDef,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub new: Option<&'a Value>,
    pub old: Option<&'a Value>,
}

/// Runs the plugin for `user`: `Ok` for anyone but a node.
pub fn admit(user: &UserInfo, a: &Admission<'_>, store: &Store) -> Result<(), ApiError> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    let deny = |msg: String| Err(admission_denied(a.def, a.name, &msg));
    match (a.def.group, a.def.plural, a.subresource) {
        ("", "pods", "") => match a.verb {
            "create" => admit_pod_create(node, a, store),
            "delete" => {
                if a.old.and_then(|p| meta::str_at(p, "spec.nodeName")) != Some(node) {
                    return deny(format!("node {node:?} can only delete pods with spec.nodeName set to itself"));
                }
                Ok(())
            }
            op => deny(format!("unexpected operation {:?}, node {node:?} can only create and delete mirror pods", operation(op))),
        },
        ("", "pods", "status") => {
            if a.verb != "update" {
                return deny(format!("unexpected operation {:?}", operation(a.verb)));
            }
            let (old, new) = (a.old.unwrap_or(&Value::Null), a.new.unwrap_or(&Value::Null));
            if meta::str_at(old, "spec.nodeName") != Some(node) {
                return deny(format!("node {node:?} can only update pod status for pods with spec.nodeName set to itself"));
            }
            if labels(Some(old)) != labels(Some(new)) {
                return deny(format!("node {node:?} cannot update labels through pod status"));
            }
            let claims = |p: &Value| p.pointer("/status/resourceClaimStatuses").filter(|v| v.as_array().is_some_and(|a| !a.is_empty())).cloned();
            if claims(old) != claims(new) {
                return deny(format!("node {node:?} cannot update resource claim statues"));
            }
            Ok(())
        }
        ("", "pods", "eviction") => Ok(()),
        ("", "pods", sub) => deny(format!("unexpected pod subresource {sub:?}, only 'status' and 'eviction' are allowed")),
        ("", "nodes", sub) => admit_node(node, a, sub).or_else(deny),
        ("", "persistentvolumeclaims", "status") => Ok(()),
        ("", "persistentvolumeclaims", _) => deny("may only update PVC status".into()),
        ("", "serviceaccounts", "token") if a.verb == "create" => admit_token(node, a, store),
        ("coordination.k8s.io", "leases", _) => {
            if a.namespace != "kube-node-lease" {
                return deny("can only access leases in the \"kube-node-lease\" system namespace".into());
            }
            if object_name(a) != node {
                return deny("can only access node lease with the same name as the requesting node".into());
            }
            Ok(())
        }
        ("storage.k8s.io", "csinodes", _) => {
            if object_name(a) != node {
                return deny("can only access CSINode with the same name as the requesting node".into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The admission operation of a verb (patch is an update).
fn operation(verb: &str) -> &'static str {
    match verb {
        "create" => "CREATE",
        "delete" | "deletecollection" => "DELETE",
        _ => "UPDATE",
    }
}

/// The name the plugin compares: from the object on create, else the request's.
fn object_name<'a>(a: &'a Admission<'_>) -> &'a str {
    match (a.verb, a.new) {
        ("create", Some(o)) => meta::name(o),
        _ => a.name,
    }
}

fn admit_pod_create(node: &str, a: &Admission<'_>, store: &Store) -> Result<(), ApiError> {
    let pod = a.new.unwrap_or(&Value::Null);
    let forbid = |m: String| Err(admission_denied(a.def, a.name, &m));
    if pod.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_none() {
        return forbid(format!("pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods"));
    }
    if meta::str_at(pod, "spec.nodeName") != Some(node) {
        return forbid(format!("node {node:?} can only create pods with spec.nodeName set to itself"));
    }
    let owners: Vec<&Value> = pod.pointer("/metadata/ownerReferences").and_then(Value::as_array).into_iter().flatten().collect();
    match owners.as_slice() {
        [] => return forbid(format!("node {node:?} can only create pods with an owner reference set to itself")),
        [o] => {
            let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("");
            if s("apiVersion") != "v1" || s("kind") != "Node" || s("name") != node {
                return forbid(format!("node {node:?} can only create pods with an owner reference set to itself"));
            }
            if o.get("controller").and_then(Value::as_bool) != Some(true) {
                return forbid(format!("node {node:?} can only create pods with a controller owner reference set to itself"));
            }
            if o.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true) {
                return forbid(format!("node {node:?} must not set blockOwnerDeletion on an owner reference"));
            }
            let node_uid = store.get("nodes", "", node).map(|n| meta::uid(&n).to_string());
            match node_uid {
                // The plugin returns the node lister's NotFound as is.
                None => return Err(ApiError::not_found(crate::state::res("nodes"), node)),
                Some(uid) if uid != s("uid") => return forbid(format!("node {node} UID mismatch: expected {} got {uid}", s("uid"))),
                Some(_) => {}
            }
        }
        _ => return forbid(format!("node {node:?} can only create pods with a single owner reference set to itself")),
    }
    if pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
        return forbid(format!("node {node:?} can not create pods that reference a service account"));
    }
    for kind in ["secrets", "configmaps"] {
        if !crate::node_authz::pod_references(pod, kind).is_empty() {
            return forbid(format!("node {node:?} can not create pods that reference {kind}"));
        }
    }
    let vols: Vec<&Value> = pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten().collect();
    if vols.iter().any(|v| v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten().any(|s| s.get("clusterTrustBundle").is_some())) {
        return forbid(format!("node {node:?} can not create pods that reference clustertrustbundles"));
    }
    if vols.iter().any(|v| v.get("persistentVolumeClaim").is_some()) {
        return forbid(format!("node {node:?} can not create pods that reference persistentvolumeclaims"));
    }
    Ok(())
}

fn admit_node(node: &str, a: &Admission<'_>, sub: &str) -> Result<(), String> {
    let requested = object_name(a);
    if requested != node {
        return Err(format!("node {node:?} is not allowed to modify node {requested:?}"));
    }
    if !sub.is_empty() || a.verb == "delete" {
        return Ok(());
    }
    let new = a.new.unwrap_or(&Value::Null);
    let forbidden = |new_l: &serde_json::Map<String, Value>, old_l: &serde_json::Map<String, Value>| {
        let mut bad: Vec<String> = new_l
            .iter()
            .filter(|(k, v)| old_l.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .chain(old_l.keys().filter(|k| !new_l.contains_key(*k)))
            .filter(|k| !node_label_allowed(k))
            .cloned()
            .collect();
        bad.sort();
        bad.dedup();
        bad
    };
    if a.verb == "create" {
        if new.pointer("/spec/configSource").is_some_and(|c| !c.is_null()) {
            return Err(format!("node {node:?} is not allowed to create pods with a non-nil configSource"));
        }
        let bad = forbidden(&labels(Some(new)), &Default::default());
        if !bad.is_empty() {
            return Err(format!("node {node:?} is not allowed to set the following labels: {}", bad.join(", ")));
        }
        return Ok(());
    }
    let old = a.old.unwrap_or(&Value::Null);
    let config_source = new.pointer("/spec/configSource").filter(|c| !c.is_null());
    if config_source.is_some() && config_source != old.pointer("/spec/configSource") {
        return Err(format!("node {node:?} is not allowed to update configSource to a new non-nil configSource"));
    }
    let taints = |n: &Value| n.pointer("/spec/taints").filter(|t| t.as_array().is_some_and(|a| !a.is_empty())).cloned();
    if taints(new) != taints(old) {
        return Err(format!("node {node:?} is not allowed to modify taints"));
    }
    let bad = forbidden(&labels(Some(new)), &labels(Some(old)));
    if !bad.is_empty() {
        return Err(format!("is not allowed to modify labels: {}", bad.join(", ")));
    }
    Ok(())
}

fn admit_token(node: &str, a: &Admission<'_>, store: &Store) -> Result<(), ApiError> {
    let deny = |msg: String| Err(admission_denied(a.def, a.name, &msg));
    let req = a.new.unwrap_or(&Value::Null);
    let r = |k: &str| req.pointer(&format!("/spec/boundObjectRef/{k}")).and_then(Value::as_str).unwrap_or("");
    if req.pointer("/spec/boundObjectRef").is_none_or(Value::is_null) || r("apiVersion") != "v1" || r("kind") != "Pod" || r("name").is_empty() {
        return deny("node requested token not bound to a pod".into());
    }
    if r("uid").is_empty() {
        return deny("node requested token with a pod binding without a uid".into());
    }
    let Some(pod) = store.get("pods", a.namespace, r("name")) else {
        return Err(ApiError::not_found(crate::state::res("pods"), r("name")));
    };
    if meta::uid(&pod) != r("uid") {
        return deny(format!("the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated", r("uid")));
    }
    if meta::str_at(&pod, "spec.nodeName") != Some(node) {
        return deny("node requested token bound to a pod scheduled on a different node".into());
    }
    Ok(())
}
