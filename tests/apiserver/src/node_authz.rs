//! The Node authorizer (plugin/pkg/auth/authorizer/node, v1.36 with
//! `AuthorizeNodeWithSelectors` on, as it is by default): what a
//! `system:node:<name>` user may do. kubeadm binds no RBAC role to `system:nodes`
//! that matters to a kubelet, so this is all a node gets.
//!
//! * secrets, configmaps: get/list/watch of one named object (a list/watch pinned
//!   by `metadata.name=`) that a pod bound to the node references;
//! * pods: get of a pod bound to the node, list/watch with
//!   `fieldSelector=spec.nodeName=<node>` (or pinned to one such pod by name),
//!   create/delete (NodeRestriction narrows them to mirror pods bound to the
//!   node), `status` update/patch, `eviction` create;
//! * nodes: get/list/watch of its own Node only (by name), create/update/patch
//!   and `status` update/patch (NodeRestriction: only itself);
//! * persistentvolumeclaims, persistentvolumes, resourceclaims,
//!   volumeattachments: get through the graph; claims' `status` update/patch;
//! * serviceaccounts: only `token` create, for accounts of its pods;
//! * leases and csinodes: its own, by name; resourceslices: its own;
//! * anything else: the static node rules (bootstrappolicy.NodeRules).
//!
//! The graph is computed from the store on each request: the real one is fed by
//! informers, so it lags slightly; that lag never makes a request allowed here
//! that the real server would refuse.

use serde_json::Value;

use crate::auth::{forbidden, Attributes, UserInfo};
use crate::error::ApiError;
use crate::meta;
use crate::store::Store;

/// Authorizes a request of the node `node` (the user `system:node:<node>`).
pub fn authorize(node: &str, user: &UserInfo, a: &Attributes<'_>, store: &Store) -> Result<(), ApiError> {
    let decision = match (a.def.group, a.def.plural) {
        ("", "secrets") | ("", "configmaps") => read_namespaced_object(node, a, store),
        ("", "persistentvolumeclaims") if a.subresource == "status" => status_update(node, a, store),
        ("", "persistentvolumeclaims") | ("", "persistentvolumes") | ("resource.k8s.io", "resourceclaims") | ("storage.k8s.io", "volumeattachments") => get(node, a, store),
        ("", "serviceaccounts") => create_token(node, a, store),
        ("coordination.k8s.io", "leases") => lease(node, a),
        ("storage.k8s.io", "csinodes") => csinode(node, a),
        ("resource.k8s.io", "resourceslices") => resource_slice(node, a, store),
        ("", "nodes") => node_object(node, a),
        ("", "pods") => pod(node, a, store),
        _ if node_rules_allow(a.verb, a.def.group, a.def.plural, a.subresource) => Ok(()),
        _ => Err(String::new()),
    };
    decision.map_err(|reason| forbidden(user, a, (!reason.is_empty()).then_some(reason.as_str())))
}

/// `Err(reason)`: no opinion, with the reason upstream gives ("" for none).
type Decision = Result<(), String>;

fn no_relationship(node: &str) -> String {
    format!("no relationship found between node '{node}' and this object")
}

/// authorizeGet: a single named object related to the node, no subresource.
fn get(node: &str, a: &Attributes<'_>, store: &Store) -> Decision {
    if a.verb != "get" {
        return Err("can only get individual resources of this type".into());
    }
    if !a.subresource.is_empty() {
        return Err("cannot get subresource".into());
    }
    related(node, a, store)
}

/// authorizeReadNamespacedObject: get/list/watch of one named object.
fn read_namespaced_object(node: &str, a: &Attributes<'_>, store: &Store) -> Decision {
    if !["get", "list", "watch"].contains(&a.verb) {
        return Err("can only read resources of this type".into());
    }
    if !a.subresource.is_empty() {
        return Err("cannot read subresource".into());
    }
    if a.namespace.is_empty() {
        return Err("can only read namespaced object of this type".into());
    }
    related(node, a, store)
}

fn status_update(node: &str, a: &Attributes<'_>, store: &Store) -> Decision {
    if !["update", "patch"].contains(&a.verb) {
        return Err("can only get/update/patch this type".into());
    }
    related(node, a, store)
}

fn create_token(node: &str, a: &Attributes<'_>, store: &Store) -> Decision {
    if a.verb != "create" || a.name.is_empty() {
        return Err("can only create tokens for individual service accounts".into());
    }
    if a.subresource != "token" {
        return Err("can only create token subresource of serviceaccount".into());
    }
    has_path(store, node, a.def.plural, a.namespace, a.name).then_some(()).ok_or_else(|| no_relationship(node))
}

/// authorize: the named object must have a path to the node in the graph.
fn related(node: &str, a: &Attributes<'_>, store: &Store) -> Decision {
    if a.name.is_empty() {
        return Err("No Object name found".into());
    }
    has_path(store, node, a.def.plural, a.namespace, a.name).then_some(()).ok_or_else(|| no_relationship(node))
}

fn lease(node: &str, a: &Attributes<'_>) -> Decision {
    if !["get", "create", "update", "patch", "delete"].contains(&a.verb) {
        return Err("can only get, create, update, patch, or delete a node lease".into());
    }
    if a.namespace != "kube-node-lease" {
        return Err("can only access leases in the \"kube-node-lease\" system namespace".into());
    }
    if a.verb != "create" && a.name != node {
        return Err("can only access node lease with the same name as the requesting node".into());
    }
    Ok(())
}

fn csinode(node: &str, a: &Attributes<'_>) -> Decision {
    if !["get", "create", "update", "patch", "delete"].contains(&a.verb) {
        return Err("can only get, create, update, patch, or delete a CSINode".into());
    }
    if !a.subresource.is_empty() {
        return Err("cannot authorize CSINode subresources".into());
    }
    if a.verb != "create" && a.name != node {
        return Err("can only access CSINode with the same name as the requesting node".into());
    }
    Ok(())
}

fn resource_slice(node: &str, a: &Attributes<'_>, store: &Store) -> Decision {
    if !a.subresource.is_empty() {
        return Err("cannot authorize ResourceSlice subresources".into());
    }
    match a.verb {
        "create" => Ok(()),
        "get" | "update" | "patch" | "delete" => related(node, a, store),
        "watch" | "list" | "deletecollection" => {
            // v1 selects on spec.nodeName (the v1alpha field was nodeName).
            let scoped = a.fields.is_some_and(|f| f.required("spec.nodeName") == Some(node) || f.required("nodeName") == Some(node));
            scoped.then_some(()).ok_or_else(|| "can only list/watch/deletecollection resourceslices with nodeName field selector".into())
        }
        _ => Err("only the following verbs are allowed for a ResourceSlice: get, watch, list, create, update, patch, delete, deletecollection".into()),
    }
}

fn node_object(node: &str, a: &Attributes<'_>) -> Decision {
    match (a.subresource, a.verb) {
        ("", "create" | "update" | "patch") => Ok(()),
        ("", "get" | "list" | "watch") => match a.name {
            n if n == node => Ok(()),
            "" => Err(format!("node '{node}' cannot read all nodes, only its own Node object")),
            other => Err(format!("node '{node}' cannot read '{other}', only its own Node object")),
        },
        ("status", "update" | "patch") => Ok(()),
        _ => Err(String::new()),
    }
}

fn pod(node: &str, a: &Attributes<'_>, store: &Store) -> Decision {
    match (a.subresource, a.verb) {
        ("", "get") => get(node, a, store),
        ("", "list" | "watch") => {
            if a.fields.is_some_and(|f| f.required("spec.nodeName") == Some(node)) {
                return Ok(());
            }
            if !a.name.is_empty() {
                return related(node, a, store);
            }
            Err("can only list/watch pods with spec.nodeName field selector".into())
        }
        ("", "create" | "delete") | ("status", "update" | "patch") | ("eviction", "create") => Ok(()),
        _ => Err(String::new()),
    }
}

/// bootstrappolicy.NodeRules() for the resources the authorizer does not subdivide.
fn node_rules_allow(verb: &str, group: &str, plural: &str, sub: &str) -> bool {
    let v = |vs: &[&str]| vs.contains(&verb);
    match (group, plural, sub) {
        ("authentication.k8s.io", "tokenreviews", "") => v(&["create"]),
        ("authorization.k8s.io", "subjectaccessreviews" | "localsubjectaccessreviews", "") => v(&["create"]),
        ("", "services", "") => v(&["get", "list", "watch"]),
        ("" | "events.k8s.io", "events", "") => v(&["create", "update", "patch"]),
        ("", "endpoints", "") => v(&["get"]),
        ("certificates.k8s.io", "certificatesigningrequests", "") => v(&["create", "get", "list", "watch"]),
        ("storage.k8s.io", "csidrivers", "") => v(&["get", "list", "watch"]),
        ("node.k8s.io", "runtimeclasses", "") => v(&["get", "list", "watch"]),
        _ => false,
    }
}

/// Whether the graph has a path from `plural/ns/name` to the node: a pod bound
/// to it; an object such a pod references; a PV bound to a claim such a pod
/// uses; a volume attachment or resource slice of the node.
pub fn has_path(store: &Store, node: &str, plural: &str, ns: &str, name: &str) -> bool {
    let on_node = |p: &Value| meta::str_at(p, "spec.nodeName") == Some(node);
    match plural {
        "pods" => store.get("pods", ns, name).is_some_and(|p| on_node(&p)),
        "persistentvolumes" => store.list("pods", None).iter().filter(|p| on_node(p)).any(|p| {
            let pns = meta::str_at(p, "metadata.namespace").unwrap_or("");
            pod_references(p, "persistentvolumeclaims")
                .iter()
                .any(|c| store.get("persistentvolumeclaims", pns, c).is_some_and(|pvc| meta::str_at(&pvc, "spec.volumeName") == Some(name)))
        }),
        "volumeattachments" => store.get("volumeattachments.storage.k8s.io", "", name).is_some_and(|v| meta::str_at(&v, "spec.nodeName") == Some(node)),
        "resourceslices" => store.get("resourceslices.resource.k8s.io", "", name).is_some_and(|s| meta::str_at(&s, "spec.nodeName") == Some(node)),
        _ => store.list("pods", Some(ns)).iter().filter(|p| on_node(p)).any(|p| pod_references(p, plural).iter().any(|n| n == name)),
    }
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["containers", "initContainers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array).into_iter().flatten())
}

fn array<'a>(v: &'a Value, pointer: &str) -> impl Iterator<Item = &'a Value> {
    v.pointer(pointer).and_then(Value::as_array).into_iter().flatten()
}

/// Names of objects of `plural` in the pod's namespace that the pod references
/// (podutil.VisitPodSecretNames / VisitPodConfigmapNames, the service account,
/// claims including generic ephemeral volumes' `<pod>-<volume>`, resource claims).
pub fn pod_references(pod: &Value, plural: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |v: Option<&Value>| {
        if let Some(s) = v.and_then(Value::as_str).filter(|s| !s.is_empty()) {
            out.push(s.to_string());
        }
    };
    let vols: Vec<&Value> = array(pod, "/spec/volumes").collect();
    match plural {
        "configmaps" => {
            for v in &vols {
                push(v.pointer("/configMap/name"));
                for s in array(v, "/projected/sources") {
                    push(s.pointer("/configMap/name"));
                }
            }
            for c in containers(pod) {
                for e in array(c, "/envFrom") {
                    push(e.pointer("/configMapRef/name"));
                }
                for e in array(c, "/env") {
                    push(e.pointer("/valueFrom/configMapKeyRef/name"));
                }
            }
        }
        "secrets" => {
            for v in &vols {
                push(v.pointer("/secret/secretName"));
                for s in array(v, "/projected/sources") {
                    push(s.pointer("/secret/name"));
                }
                for p in ["/csi/nodePublishSecretRef/name", "/cephfs/secretRef/name", "/rbd/secretRef/name", "/iscsi/secretRef/name", "/flexVolume/secretRef/name", "/azureFile/secretName"] {
                    push(v.pointer(p));
                }
            }
            for s in array(pod, "/spec/imagePullSecrets") {
                push(s.get("name"));
            }
            for c in containers(pod) {
                for e in array(c, "/envFrom") {
                    push(e.pointer("/secretRef/name"));
                }
                for e in array(c, "/env") {
                    push(e.pointer("/valueFrom/secretKeyRef/name"));
                }
            }
        }
        "serviceaccounts" => push(pod.pointer("/spec/serviceAccountName")),
        "persistentvolumeclaims" => {
            let pod_name = meta::name(pod);
            for v in &vols {
                push(v.pointer("/persistentVolumeClaim/claimName"));
                if v.get("ephemeral").is_some() {
                    let claim = v.get("name").and_then(Value::as_str).map(|vn| Value::String(format!("{pod_name}-{vn}")));
                    push(claim.as_ref());
                }
            }
        }
        "resourceclaims" => {
            for c in array(pod, "/spec/resourceClaims") {
                push(c.get("resourceClaimName"));
            }
            for s in array(pod, "/status/resourceClaimStatuses") {
                push(s.get("resourceClaimName"));
            }
        }
        _ => {}
    }
    out
}
