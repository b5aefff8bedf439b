//! Authentication and authorization.
//!
//! * AuthN: client certificates signed by the cluster CA (user = CN, groups = O), bearer
//!   tokens (the admin token, the bootstrap token, issued service-account tokens and static
//!   tokens from [`crate::Options`]). Anything else is 401.
//! * AuthZ: a subset of RBAC's default roles plus the Node authorizer: `system:masters` may do
//!   anything, `system:bootstrappers` may only create/read CSRs, nodes get the `system:node`
//!   role with the Node authorizer's object relationships (secrets, configmaps, service
//!   accounts and tokens only for pods bound to the node).
//! * Admission: the NodeRestriction plugin (a node may modify only itself, its Lease, pods
//!   bound to it, and create only mirror pods).

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::meta;
use crate::resources::ResourceDef;
use crate::store::Store;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn new(name: impl Into<String>, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        UserInfo {
            name: name.into(),
            groups,
        }
    }
    pub fn anonymous() -> Self {
        UserInfo {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
    pub fn is_admin(&self) -> bool {
        self.in_group("system:masters")
    }
    /// The node name for node identities (`system:node:<n>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        if self.in_group("system:nodes") {
            self.name.strip_prefix("system:node:")
        } else {
            None
        }
    }
}

/// What a request does, as the authorizer sees it.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub def: &'a ResourceDef,
    pub subresource: &'a str,
    pub namespace: &'a str,
    /// Object name; for list/watch, the name pinned by `fieldSelector=metadata.name=…`.
    pub name: &'a str,
}

/// Upstream's RBAC denial message.
pub fn forbidden(user: &UserInfo, a: &Attributes<'_>, reason: Option<&str>) -> ApiError {
    let resource = if a.subresource.is_empty() {
        a.def.plural.to_string()
    } else {
        format!("{}/{}", a.def.plural, a.subresource)
    };
    let subject = if a.name.is_empty() {
        a.def.qualified()
    } else {
        format!("{} {:?}", a.def.qualified(), a.name)
    };
    let scope = if a.def.namespaced && !a.namespace.is_empty() {
        format!("in the namespace {:?}", a.namespace)
    } else {
        "at the cluster scope".to_string()
    };
    let mut msg = format!(
        "{subject} is forbidden: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        user.name, a.verb, a.def.group
    );
    if let Some(r) = reason {
        msg.push_str(": ");
        msg.push_str(r);
    }
    let mut d = json!({"name": a.name, "kind": a.def.plural});
    if !a.def.group.is_empty() {
        d["group"] = json!(a.def.group);
    }
    ApiError::forbidden(msg, Some(d))
}

/// An admission (NodeRestriction) denial: `pods "x" is forbidden: <msg>`.
pub fn admission_denied(def: &ResourceDef, name: &str, msg: &str) -> ApiError {
    let mut d = json!({"name": name, "kind": def.plural});
    if !def.group.is_empty() {
        d["group"] = json!(def.group);
    }
    ApiError::forbidden(
        format!("{} {name:?} is forbidden: {msg}", def.qualified()),
        Some(d),
    )
}

/// RBAC's `system:node` ClusterRole (roughly), before the Node authorizer's object checks.
fn node_role_allows(verb: &str, def: &ResourceDef, sub: &str) -> bool {
    let v = |vs: &[&str]| vs.contains(&verb);
    match (def.group, def.plural, sub) {
        ("", "pods", "") => v(&["get", "list", "watch", "create", "delete"]),
        ("", "pods", "status") => v(&["update", "patch"]),
        ("", "nodes", "") => v(&[
            "create", "get", "list", "watch", "update", "patch", "delete",
        ]),
        ("", "nodes", "status") => v(&["update", "patch"]),
        ("", "events", "") => v(&["create", "update", "patch"]),
        ("", "services", "") => v(&["get", "list", "watch"]),
        ("", "configmaps" | "secrets", "") => v(&["get", "list", "watch"]),
        ("", "serviceaccounts", "") => v(&["get"]),
        ("", "persistentvolumeclaims", "") | ("", "persistentvolumes", "") => v(&["get"]),
        ("", "persistentvolumeclaims", "status") => v(&["get", "update", "patch"]),
        ("", "serviceaccounts", "token") => v(&["create"]),
        ("coordination.k8s.io", "leases", "") => v(&["get", "create", "update", "patch", "delete"]),
        ("certificates.k8s.io", "certificatesigningrequests", "") => {
            v(&["create", "get", "list", "watch"])
        }
        ("storage.k8s.io", "csinodes", "") => v(&["get", "create", "update", "patch", "delete"]),
        ("storage.k8s.io", "csidrivers", "") => v(&["get", "list", "watch"]),
        ("node.k8s.io", "runtimeclasses", "") => v(&["get", "list", "watch"]),
        ("resource.k8s.io", "resourceslices", "") => true,
        // system:node may delegate authn/authz of its own API (kubelet's webhook modes).
        ("authentication.k8s.io", "tokenreviews", "") => v(&["create"]),
        ("authorization.k8s.io", "subjectaccessreviews", "") => v(&["create"]),
        _ => false,
    }
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["containers", "initContainers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |k| {
            pod.pointer(&format!("/spec/{k}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
}

/// Names of objects of `plural` in the pod's namespace that the pod references.
pub fn pod_references(pod: &Value, plural: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |v: Option<&Value>| {
        if let Some(s) = v.and_then(Value::as_str) {
            out.push(s.to_string());
        }
    };
    let vols = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match plural {
        "configmaps" => {
            for v in &vols {
                push(v.pointer("/configMap/name"));
                for s in v
                    .pointer("/projected/sources")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push(s.pointer("/configMap/name"));
                }
            }
            for c in containers(pod) {
                for e in c
                    .get("envFrom")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push(e.pointer("/configMapRef/name"));
                }
                for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                    push(e.pointer("/valueFrom/configMapKeyRef/name"));
                }
            }
        }
        "secrets" => {
            for v in &vols {
                push(v.pointer("/secret/secretName"));
                for s in v
                    .pointer("/projected/sources")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push(s.pointer("/secret/name"));
                }
            }
            for s in pod
                .pointer("/spec/imagePullSecrets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                push(s.get("name"));
            }
            for c in containers(pod) {
                for e in c
                    .get("envFrom")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push(e.pointer("/secretRef/name"));
                }
                for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                    push(e.pointer("/valueFrom/secretKeyRef/name"));
                }
            }
        }
        "serviceaccounts" => push(pod.pointer("/spec/serviceAccountName")),
        "persistentvolumeclaims" => {
            for v in &vols {
                push(v.pointer("/persistentVolumeClaim/claimName"));
            }
        }
        _ => {}
    }
    out
}

/// Whether a pod bound to `node` in `ns` references `plural/name` (the Node authorizer's graph;
/// a PersistentVolume through the bound claim a pod on the node uses).
fn node_has_relationship(store: &Store, node: &str, ns: &str, plural: &str, name: &str) -> bool {
    if plural == "persistentvolumes" {
        return store
            .list("pods", None)
            .iter()
            .filter(|p| meta::str_at(p, "spec.nodeName") == Some(node))
            .any(|p| {
                let pns = meta::str_at(p, "metadata.namespace").unwrap_or("");
                pod_references(p, "persistentvolumeclaims").iter().any(|c| {
                    store
                        .get("persistentvolumeclaims", pns, c)
                        .is_some_and(|pvc| meta::str_at(&pvc, "spec.volumeName") == Some(name))
                })
            });
    }
    store
        .list("pods", Some(ns))
        .iter()
        .filter(|p| meta::str_at(p, "spec.nodeName") == Some(node))
        .any(|p| pod_references(p, plural).iter().any(|n| n == name))
}

/// Authorize a resource request. `Ok` or a 403 in upstream's words.
pub fn authorize(user: &UserInfo, a: &Attributes<'_>, store: &Store) -> Result<(), ApiError> {
    if user.is_admin() {
        return Ok(());
    }
    if let Some(node) = user.node_name() {
        if !node_role_allows(a.verb, a.def, a.subresource) {
            return Err(forbidden(user, a, None));
        }
        // The Node authorizer's object graph.
        let graph_kind = match (a.def.plural, a.subresource) {
            ("configmaps", "") | ("secrets", "") => Some(a.def.plural),
            ("serviceaccounts", "") | ("serviceaccounts", "token") => Some("serviceaccounts"),
            ("persistentvolumeclaims", "") | ("persistentvolumeclaims", "status") => Some("persistentvolumeclaims"),
            ("persistentvolumes", "") => Some("persistentvolumes"),
            _ => None,
        };
        if let Some(kind) = graph_kind {
            if a.name.is_empty() {
                return Err(forbidden(
                    user,
                    a,
                    Some("can only get individual resources of this type"),
                ));
            }
            if !node_has_relationship(store, node, a.namespace, kind, a.name) {
                return Err(forbidden(
                    user,
                    a,
                    Some(&format!(
                        "no relationship found between node '{node}' and this object"
                    )),
                ));
            }
        }
        return Ok(());
    }
    if user.in_group("system:bootstrappers")
        && a.def.plural == "certificatesigningrequests"
        && a.subresource.is_empty()
        && ["create", "get", "list", "watch"].contains(&a.verb)
    {
        return Ok(());
    }
    Err(forbidden(user, a, None))
}

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

/// The NodeRestriction admission plugin.
pub fn admit(user: &UserInfo, a: &Admission<'_>, store: &Store) -> Result<(), ApiError> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    let deny = |msg: String| Err(admission_denied(a.def, a.name, &msg));
    match (a.def.group, a.def.plural, a.subresource) {
        ("", "pods", "") => match a.verb {
            "create" => {
                let pod = a.new.expect("create has an object");
                let mirror = pod
                    .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                    .is_some();
                if !mirror {
                    return deny(format!("pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods"));
                }
                if meta::str_at(pod, "spec.nodeName") != Some(node) {
                    return deny(format!(
                        "node {node:?} can only create pods with spec.nodeName set to itself"
                    ));
                }
                if let Some(owners) = pod
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                {
                    let ok = owners.len() == 1
                        && owners[0].get("kind").and_then(Value::as_str) == Some("Node")
                        && owners[0].get("name").and_then(Value::as_str) == Some(node);
                    if !ok {
                        return deny(format!("node {node:?} can only create pods with an owner reference set to itself"));
                    }
                }
                if pod
                    .pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
                {
                    return deny(format!(
                        "node {node:?} can not create pods that reference a service account"
                    ));
                }
                for kind in ["secrets", "configmaps", "persistentvolumeclaims"] {
                    if !pod_references(pod, kind).is_empty() {
                        return deny(format!(
                            "node {node:?} can not create pods that reference {kind}"
                        ));
                    }
                }
                Ok(())
            }
            "delete" => {
                if a.old.and_then(|p| meta::str_at(p, "spec.nodeName")) != Some(node) {
                    return deny(format!(
                        "node {node:?} can only delete pods with spec.nodeName set to itself"
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        },
        ("", "pods", "status") => {
            if a.old.and_then(|p| meta::str_at(p, "spec.nodeName")) != Some(node) {
                return deny(format!("node {node:?} can only update pod status for pods with spec.nodeName set to itself"));
            }
            Ok(())
        }
        ("", "nodes", sub) => {
            if a.name != node {
                return deny(format!(
                    "node {node:?} is not allowed to modify node {:?}",
                    a.name
                ));
            }
            if sub.is_empty() {
                let new_l = labels(a.new);
                let old_l = labels(a.old);
                let mut bad: Vec<String> = Vec::new();
                for (k, v) in &new_l {
                    let changed = old_l.get(k) != Some(v);
                    if changed && !node_label_allowed(k) {
                        bad.push(k.clone());
                    }
                }
                for k in old_l.keys() {
                    if !new_l.contains_key(k) && !node_label_allowed(k) {
                        bad.push(k.clone());
                    }
                }
                if !bad.is_empty() {
                    bad.sort();
                    let what = if a.verb == "create" {
                        "set the following labels"
                    } else {
                        "modify labels"
                    };
                    return deny(format!(
                        "node {node:?} is not allowed to {what}: {}",
                        bad.join(", ")
                    ));
                }
                if a.verb != "create" {
                    if let (Some(n), Some(o)) = (a.new, a.old) {
                        if n.pointer("/spec/taints") != o.pointer("/spec/taints") {
                            return deny(format!("node {node:?} is not allowed to modify taints"));
                        }
                    }
                }
            }
            Ok(())
        }
        ("coordination.k8s.io", "leases", _) => {
            if a.namespace != "kube-node-lease" {
                return deny("can only access leases in the kube-node-lease namespace".into());
            }
            if a.name != node {
                return deny(
                    "can only access node lease with the same name as the requesting node".into(),
                );
            }
            Ok(())
        }
        ("storage.k8s.io", "csinodes", _) => {
            if a.name != node {
                return deny(format!(
                    "node {node:?} is not allowed to modify object {:?}",
                    a.name
                ));
            }
            Ok(())
        }
        ("", "serviceaccounts", "token") => {
            let req = a.new.expect("token request body");
            let Some(bref) = req.pointer("/spec/boundObjectRef") else {
                return deny("node requested token not bound to a pod".into());
            };
            if bref.get("kind").and_then(Value::as_str) != Some("Pod") {
                return deny("node requested token not bound to a pod".into());
            }
            let pod_name = bref.get("name").and_then(Value::as_str).unwrap_or("");
            match store.get("pods", a.namespace, pod_name) {
                Some(p) if meta::str_at(&p, "spec.nodeName") == Some(node) => Ok(()),
                Some(_) => {
                    deny("node requested token bound to a pod scheduled on a different node".into())
                }
                None => Ok(()), // the token REST answers 404 for a missing pod
            }
        }
        _ => Ok(()),
    }
}

/// The answer to a SubjectAccessReview about the kubelet API (`nodes/proxy`,
/// `nodes/log`, …): RBAC's `system:kubelet-api-admin` for `kubelet_api_users`,
/// everything for `system:masters`, nothing else.
pub fn review_kubelet_access(user: &UserInfo, kubelet_api_users: &[String], resource: &Value) -> (bool, String) {
    let group = resource.get("group").and_then(Value::as_str).unwrap_or("");
    let plural = resource.get("resource").and_then(Value::as_str).unwrap_or("");
    if user.is_admin() {
        return (true, "allowed by group system:masters".into());
    }
    if group.is_empty() && plural == "nodes" && kubelet_api_users.contains(&user.name) {
        return (true, format!("RBAC: allowed by ClusterRoleBinding \"kubelet-api\" of ClusterRole \"system:kubelet-api-admin\" to User \"{}\"", user.name));
    }
    (false, String::new())
}
