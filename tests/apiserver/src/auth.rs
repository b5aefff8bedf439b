//! Authentication and authorization.
//!
//! * AuthN: client certificates signed by the cluster CA (user = CN, groups = O), bearer
//!   tokens (the admin token, the bootstrap token, issued service-account tokens and static
//!   tokens from [`crate::Options`]). Anything else is 401.
//! * AuthZ: a subset of RBAC's default roles plus the Node authorizer: `system:masters` may do
//!   anything, `system:bootstrappers` may only create/read CSRs, nodes get exactly what
//!   upstream's Node authorizer gives them ([`crate::node_authz`]).
//! * Admission: the NodeRestriction plugin ([`crate::noderestriction`]).

use serde_json::{json, Value};

use crate::error::ApiError;
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
    /// The field selector of a list/watch/deletecollection (the Node authorizer
    /// allows a node's pod watch by `spec.nodeName`).
    pub fields: Option<&'a crate::selectors::FieldSelector>,
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

/// Authorize a resource request. `Ok` or a 403 in upstream's words.
pub fn authorize(user: &UserInfo, a: &Attributes<'_>, store: &Store) -> Result<(), ApiError> {
    if user.is_admin() {
        return Ok(());
    }
    if let Some(node) = user.node_name() {
        return crate::node_authz::authorize(node, user, a, store);
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
