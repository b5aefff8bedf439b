//! The server's shared state and the API operations (get, list, create, update, patch,
//! delete, deletecollection, binding, TokenRequest) with the real registry's semantics:
//! resourceVersion preconditions, UID preconditions, create-on-update, no-op updates that
//! do not bump the resourceVersion, graceful pod deletion and finalizers. The HTTP layer
//! ([`crate::server`]) authenticates and authorizes, then calls these.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use serde_json::{json, Value};

use crate::auth::{self, UserInfo};
use crate::noderestriction;
use crate::csr;
use crate::error::{ApiError, FieldError};
use crate::meta;
use crate::patch;
use crate::pki::Pki;
use crate::resources::{self, ResourceDef};
use crate::selectors::Filter;
use crate::store::Store;
use crate::strategy::{self, Ctx};
use crate::typed;
use crate::Options;

/// One request as the audit log would record it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestRecord {
    /// get, list, watch, create, update, patch, delete, deletecollection (or the HTTP
    /// method in lower case for non-resource requests).
    pub verb: String,
    /// API group ("" for core).
    pub group: String,
    /// Resource plural ("" for non-resource paths).
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
    pub query: String,
    /// Request Content-Type ("" when there is no body).
    pub content_type: String,
    pub user: String,
    pub user_agent: String,
    /// The `Upgrade` header of a streaming request (`SPDY/3.1`, `websocket`), else "".
    pub upgrade: String,
    /// HTTP status code of the response.
    pub code: u16,
}

/// DeleteOptions that matter here.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub grace_period_seconds: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// The patch flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
}

thread_local! {
    static STRICT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `fieldValidation=Strict` for the (synchronous) operation running on this thread: unknown
/// fields are then a 400 instead of being dropped. Reset when the guard drops.
pub struct FieldValidation(bool);

impl FieldValidation {
    pub fn set(strict: bool) -> FieldValidation {
        FieldValidation(STRICT.with(|c| c.replace(strict)))
    }
    pub fn strict() -> bool {
        STRICT.with(|c| c.get())
    }
}

impl Drop for FieldValidation {
    fn drop(&mut self) {
        STRICT.with(|c| c.set(self.0));
    }
}

/// State shared by the HTTP server and the test API.
pub struct Shared {
    pub store: Mutex<Store>,
    pub pki: Pki,
    pub opts: Options,
    pub admin_token: String,
    /// Bearer tokens: service-account tokens issued by TokenRequest and static tokens.
    pub tokens: Mutex<HashMap<String, UserInfo>>,
    pub records: Mutex<Vec<RequestRecord>>,
    pub violations: Mutex<Vec<String>>,
    pub auto_approve: AtomicBool,
    pub server_address: Mutex<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn strip_type(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    v
}

fn with_rv(v: &Value, rv: &str) -> Value {
    let mut v = v.clone();
    meta::meta_mut(&mut v).insert("resourceVersion".into(), json!(rv));
    v
}

impl Shared {
    pub fn new(pki: Pki, opts: Options, admin_token: String) -> Shared {
        let mut tokens = HashMap::new();
        for t in &opts.static_tokens {
            let groups: Vec<&str> = t.groups.iter().map(String::as_str).collect();
            tokens.insert(t.token.clone(), UserInfo::new(t.user.clone(), &groups));
        }
        Shared {
            store: Mutex::new(Store::new(opts.watch_history)),
            pki,
            auto_approve: AtomicBool::new(opts.auto_approve_csrs),
            opts,
            admin_token,
            tokens: Mutex::new(tokens),
            records: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            server_address: Mutex::new(String::new()),
        }
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }
    pub fn record(&self, r: RequestRecord) {
        lock(&self.records).push(r);
    }
    pub fn records(&self) -> Vec<RequestRecord> {
        lock(&self.records).clone()
    }
    pub fn clear_records(&self) {
        lock(&self.records).clear();
    }
    pub fn add_violations(&self, v: Vec<String>) {
        if !v.is_empty() {
            lock(&self.violations).extend(v);
        }
    }
    pub fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }
    pub fn clear_violations(&self) {
        lock(&self.violations).clear();
    }
    pub fn token_user(&self, token: &str) -> Option<UserInfo> {
        if token == self.admin_token {
            return Some(UserInfo::new("kubernetes-admin", &["system:masters"]));
        }
        if let Some((id, secret)) = token.split_once('.') {
            if let Some((bid, bsecret)) = self.opts.bootstrap_token.split_once('.') {
                if id == bid && secret == bsecret {
                    return Some(UserInfo::new(
                        format!("system:bootstrap:{id}"),
                        &[
                            "system:bootstrappers",
                            "system:bootstrappers:kubeadm:default-node-token",
                        ],
                    ));
                }
            }
        }
        lock(&self.tokens).get(token).cloned()
    }
    pub fn set_server_address(&self, a: String) {
        *lock(&self.server_address) = a;
    }
    pub fn server_address(&self) -> String {
        lock(&self.server_address).clone()
    }

    // ------------------------------------------------------------ bootstrap objects

    /// Namespaces and objects a fresh cluster has.
    pub fn seed(self: &Arc<Self>) {
        let admin = UserInfo::new("system:apiserver", &["system:masters"]);
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            if self.store().get("namespaces", "", ns).is_none() {
                let _ = self.create(
                    &admin,
                    res("namespaces"),
                    "",
                    json!({"metadata": {"name": ns}}),
                );
            }
        }
        if self
            .store()
            .get("services", "default", "kubernetes")
            .is_none()
        {
            let _ = self.create(
                &admin,
                res("services"),
                "default",
                json!({"metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                       "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"], "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}),
            );
        }
    }

    /// What the namespace and root-CA controllers add to a new namespace.
    fn namespace_created(&self, store: &mut Store, ns: &str) {
        let mut v = Vec::new();
        let admin = UserInfo::new("system:kube-controller-manager", &["system:masters"]);
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": ns,
            "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
            "data": {"ca.crt": self.pki.ca_pem()}});
        for (r, obj) in [("serviceaccounts", sa), ("configmaps", cm)] {
            let _ = self.create_locked(store, &admin, res(r), ns, obj, &mut v);
        }
    }

    // ------------------------------------------------------------ reads

    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        self.store()
            .get(&def.qualified(), ns, name)
            .ok_or_else(|| ApiError::not_found(def, name))
    }

    /// List matching objects and the list's resourceVersion.
    pub fn list(&self, def: &ResourceDef, filter: &Filter) -> (Vec<Arc<Value>>, u64) {
        let store = self.store();
        let items = store
            .list(&def.qualified(), filter.namespace.as_deref())
            .into_iter()
            .filter(|o| filter.matches(o))
            .collect();
        (items, store.resource_version())
    }

    /// The `<Kind>List` document.
    pub fn list_doc(def: &ResourceDef, items: &[Arc<Value>], rv: u64) -> Value {
        json!({
            "kind": format!("{}List", def.kind),
            "apiVersion": def.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items.iter().map(|o| strip_type(o)).collect::<Vec<_>>(),
        })
    }

    // ------------------------------------------------------------ decoding helpers

    /// Check/default kind+apiVersion, decode as the typed object, report dropped fields.
    fn decode(
        &self,
        def: &ResourceDef,
        mut body: Value,
        v: &mut Vec<String>,
        what: &str,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "Object 'Kind' is missing in the request body",
            ));
        }
        let av = def.api_version();
        match body.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => body["apiVersion"] = json!(av),
            Some(x) if x == av => {}
            Some(x) => return Err(ApiError::bad_request(format!(
                "the API version in the data ({x}) does not match the expected API version ({av})"
            ))),
        }
        match body.get("kind").and_then(Value::as_str) {
            None | Some("") => body["kind"] = json!(def.kind),
            Some(k) if k == def.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    def.kind
                )))
            }
        }
        let (out, dropped) = typed::decode(&av, def.kind, &body)?;
        if FieldValidation::strict() && !dropped.is_empty() {
            let list: Vec<String> = dropped
                .iter()
                .map(|d| format!("unknown field {d:?}"))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
        for d in dropped {
            v.push(format!(
                "{what}: unknown field {d:?} is dropped by the real server"
            ));
        }
        Ok(out)
    }

    fn finish(&self, v: Vec<String>) {
        for x in &v {
            tracing::warn!(violation = %x);
        }
        self.add_violations(v);
    }

    // ------------------------------------------------------------ create

    /// POST a new object into `ns` ("" for cluster-scoped).
    pub fn create(
        self: &Arc<Self>,
        user: &UserInfo,
        def: &ResourceDef,
        ns: &str,
        body: Value,
    ) -> Result<Value, ApiError> {
        let mut v = Vec::new();
        let mut store = self.store();
        let r = self.create_locked(&mut store, user, def, ns, body, &mut v);
        drop(store);
        self.finish(v);
        if let Ok(obj) = &r {
            self.after_write(def, obj);
        }
        r
    }

    fn create_locked(
        &self,
        store: &mut Store,
        user: &UserInfo,
        def: &ResourceDef,
        ns: &str,
        body: Value,
        v: &mut Vec<String>,
    ) -> Result<Value, ApiError> {
        let what = format!("create {} {ns}/{}", def.plural, meta::name(&body));
        let mut obj = self.decode(def, body, v, &what)?;
        if def.namespaced {
            let body_ns = meta::namespace(&obj).to_string();
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
            meta::meta_mut(&mut obj).insert("namespace".into(), json!(ns));
        } else {
            meta::meta_mut(&mut obj).remove("namespace");
        }
        if !meta::resource_version(&obj).is_empty() {
            v.push(format!(
                "{what}: resourceVersion set on create (the real server fails this with 500)"
            ));
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if meta::name(&obj).is_empty() {
            let gen = meta::meta_str(&obj, "generateName").to_string();
            if !gen.is_empty() {
                let n = format!("{gen}{}", meta::random_suffix(5));
                meta::meta_mut(&mut obj).insert("name".into(), json!(n));
            }
        }
        let name = meta::name(&obj).to_string();
        if def.namespaced && store.get("namespaces", "", ns).is_none() {
            return Err(ApiError::namespace_not_found(ns));
        }
        noderestriction::admit(
            user,
            &noderestriction::Admission {
                verb: "create",
                def,
                subresource: "",
                namespace: ns,
                name: &name,
                new: Some(&obj),
                old: None,
            },
            store,
        )?;
        let mut ctx = Ctx {
            user,
            store,
            violations: v,
            service_account_admission: self.opts.service_account_admission,
            what: what.clone(),
        };
        let errs = strategy::prepare_create(def, &mut obj, &mut ctx);
        if let Some(e) = errs
            .iter()
            .find(|e| (e.field == "spec.serviceAccountName" || e.field == "spec.runtimeClassName") && e.reason == "FieldValueForbidden")
        {
            return Err(auth::admission_denied(
                def,
                &name,
                e.message.trim_start_matches("Forbidden: "),
            ));
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid(def, &name, errs));
        }
        if store.get(&def.qualified(), ns, &name).is_some() {
            return Err(ApiError::already_exists(def, &name));
        }
        let stored = store.insert(&def.qualified(), ns, &name, obj);
        if def.plural == "namespaces" {
            self.namespace_created(store, &name);
        }
        Ok((*stored).clone())
    }

    // ------------------------------------------------------------ update / patch

    /// PUT the object (main resource or `status`/`approval` subresource).
    pub fn update(
        self: &Arc<Self>,
        user: &UserInfo,
        def: &ResourceDef,
        sub: &str,
        ns: &str,
        name: &str,
        body: Value,
    ) -> Result<(Value, bool), ApiError> {
        let mut v = Vec::new();
        let what = format!(
            "update {}{} {ns}/{name}",
            def.plural,
            if sub.is_empty() {
                String::new()
            } else {
                format!("/{sub}")
            }
        );
        let mut store = self.store();
        let r = (|| {
            let mut obj = self.decode(def, body, &mut v, &what)?;
            let body_name = meta::name(&obj);
            if !body_name.is_empty() && body_name != name {
                return Err(ApiError::bad_request(format!("the name of the object ({body_name}) does not match the name on the URL ({name})")));
            }
            meta::meta_mut(&mut obj).insert("name".into(), json!(name));
            if def.namespaced {
                let body_ns = meta::namespace(&obj);
                if !body_ns.is_empty() && body_ns != ns {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                }
                meta::meta_mut(&mut obj).insert("namespace".into(), json!(ns));
            }
            let Some(old) = store.get(&def.qualified(), ns, name) else {
                if def.create_on_update && sub.is_empty() {
                    meta::meta_mut(&mut obj).remove("resourceVersion");
                    let created = self.create_locked(&mut store, user, def, ns, obj, &mut v)?;
                    return Ok((created, true));
                }
                return Err(ApiError::not_found(def, name));
            };
            let rv = meta::resource_version(&obj).to_string();
            if rv.is_empty() {
                if !def.unconditional_update {
                    return Err(ApiError::invalid(
                        &ResourceDef {
                            kind: def.plural,
                            ..*def
                        },
                        name,
                        vec![FieldError::invalid(
                            "metadata.resourceVersion",
                            &json!(0),
                            "must be specified for an update",
                        )],
                    ));
                }
            } else if rv != meta::resource_version(&old) {
                return Err(ApiError::stale(def, name));
            }
            let uid = meta::uid(&obj);
            if !uid.is_empty() && uid != meta::uid(&old) {
                return Err(ApiError::conflict(
                    def,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta::uid(&old)
                    ),
                ));
            }
            self.write_update(
                &mut store,
                user,
                def,
                sub,
                ns,
                name,
                obj,
                &old,
                &mut v,
                what.clone(),
            )
            .map(|o| (o, false))
        })();
        drop(store);
        self.finish(v);
        if let Ok((obj, _)) = &r {
            self.after_write(def, obj);
        }
        r
    }

    /// PATCH the object.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        self: &Arc<Self>,
        user: &UserInfo,
        def: &ResourceDef,
        sub: &str,
        ns: &str,
        name: &str,
        pt: PatchType,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let mut v = Vec::new();
        let what = format!(
            "patch {}{} {ns}/{name}",
            def.plural,
            if sub.is_empty() {
                String::new()
            } else {
                format!("/{sub}")
            }
        );
        let mut store = self.store();
        let r = (|| {
            let old = store
                .get(&def.qualified(), ns, name)
                .ok_or_else(|| ApiError::not_found(def, name))?;
            let patched = match pt {
                PatchType::Merge => {
                    if !body.is_object() {
                        return Err(ApiError::bad_request(
                            "json: cannot unmarshal into Go value of type map[string]interface {}",
                        ));
                    }
                    patch::merge_patch(&old, body)
                }
                PatchType::Strategic => patch::strategic_merge_patch(def.kind, &old, body)?,
                PatchType::Json => patch::json_patch(&old, body)?,
            };
            let mut obj = self.decode(def, patched, &mut v, &what)?;
            if meta::name(&obj) != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    meta::name(&obj)
                )));
            }
            if def.namespaced && meta::namespace(&obj) != ns {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
            let rv = meta::resource_version(&obj).to_string();
            if !rv.is_empty() && rv != meta::resource_version(&old) {
                return Err(ApiError::stale(def, name));
            }
            if rv.is_empty() {
                meta::meta_mut(&mut obj).insert(
                    "resourceVersion".into(),
                    json!(meta::resource_version(&old)),
                );
            }
            let uid = meta::uid(&obj).to_string();
            if uid != meta::uid(&old) {
                return Err(ApiError::invalid(
                    def,
                    name,
                    vec![FieldError::invalid(
                        "metadata.uid",
                        &json!(uid),
                        "field is immutable",
                    )],
                ));
            }
            self.write_update(
                &mut store,
                user,
                def,
                sub,
                ns,
                name,
                obj,
                &old,
                &mut v,
                what.clone(),
            )
        })();
        drop(store);
        self.finish(v);
        if let Ok(obj) = &r {
            self.after_write(def, obj);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn write_update(
        &self,
        store: &mut Store,
        user: &UserInfo,
        def: &ResourceDef,
        sub: &str,
        ns: &str,
        name: &str,
        mut obj: Value,
        old: &Value,
        v: &mut Vec<String>,
        what: String,
    ) -> Result<Value, ApiError> {
        let verb = "update";
        noderestriction::admit(
            user,
            &noderestriction::Admission {
                verb,
                def,
                subresource: sub,
                namespace: ns,
                name,
                new: Some(&obj),
                old: Some(old),
            },
            store,
        )?;
        let mut ctx = Ctx {
            user,
            store,
            violations: v,
            service_account_admission: self.opts.service_account_admission,
            what,
        };
        let errs = strategy::prepare_update(def, sub, &mut obj, old, &mut ctx);
        if !errs.is_empty() {
            return Err(ApiError::invalid(def, name, errs));
        }
        // A no-op update does not write (no new resourceVersion, no watch event).
        if with_rv(&obj, meta::resource_version(old)) == *old {
            return Ok(old.clone());
        }
        let stored = store.replace(&def.qualified(), ns, name, obj);
        // An object being deleted whose finalizers are gone is deleted now.
        let deleting = stored.pointer("/metadata/deletionTimestamp").is_some();
        let no_finalizers = stored
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        let grace_done = stored
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0;
        if deleting
            && no_finalizers
            && grace_done
            && old
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty())
        {
            if let Some(last) = store.remove(&def.qualified(), ns, name) {
                return Ok((*last).clone());
            }
        }
        Ok((*stored).clone())
    }

    // ------------------------------------------------------------ delete

    /// DELETE one object. Returns the object (pods, namespaces, services) or a Status.
    pub fn delete(
        &self,
        user: &UserInfo,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let mut store = self.store();
        self.delete_locked(&mut store, user, def, ns, name, opts)
    }

    fn delete_locked(
        &self,
        store: &mut Store,
        user: &UserInfo,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let key = def.qualified();
        let old = store
            .get(&key, ns, name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        if let Some(uid) = &opts.uid {
            if uid != meta::uid(&old) {
                return Err(ApiError::conflict(
                    def,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta::uid(&old)
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.resource_version {
            if rv != meta::resource_version(&old) {
                return Err(ApiError::conflict(
                    def,
                    name,
                    &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", meta::resource_version(&old)),
                ));
            }
        }
        noderestriction::admit(
            user,
            &noderestriction::Admission {
                verb: "delete",
                def,
                subresource: "",
                namespace: ns,
                name,
                new: None,
                old: Some(&old),
            },
            store,
        )?;
        if def.plural == "namespaces" && ["default", "kube-system", "kube-public"].contains(&name) {
            return Err(auth::admission_denied(
                def,
                name,
                "this namespace may not be deleted",
            ));
        }
        let finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let result = |obj: &Value| -> Value {
            if def.return_deleted {
                obj.clone()
            } else {
                let mut d = json!({"name": name, "kind": def.plural, "uid": meta::uid(obj)});
                if !def.group.is_empty() {
                    d["group"] = json!(def.group);
                }
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
            }
        };
        if def.plural == "pods" {
            // rest.BeforeDelete with the pod's CheckGracefulDelete.
            let mut pod = (*old).clone();
            let cur_grace = old
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            let mut write = false;
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                match (cur_grace, opts.grace_period_seconds) {
                    (None | Some(0), _) => {}
                    (Some(cur), Some(g)) if g < cur => {
                        let dt = meta::parse_time(meta::meta_str(&old, "deletionTimestamp"))
                            .unwrap_or_else(chrono::Utc::now);
                        let new_dt = dt - chrono::Duration::seconds(cur)
                            + chrono::Duration::seconds(g.max(0));
                        let m = meta::meta_mut(&mut pod);
                        m.insert(
                            "deletionTimestamp".into(),
                            json!(new_dt.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                        );
                        m.insert("deletionGracePeriodSeconds".into(), json!(g.max(0)));
                        write = true;
                    }
                    _ => return Ok(result(&old)), // graceful deletion pending
                }
            } else {
                let period = strategy::pod_grace_period(&old, opts.grace_period_seconds);
                let m = meta::meta_mut(&mut pod);
                m.insert("deletionTimestamp".into(), json!(meta::now_plus(period)));
                m.insert("deletionGracePeriodSeconds".into(), json!(period));
                let g = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
                if g > 0 {
                    m.insert("generation".into(), json!(g + 1));
                }
                write = true;
            }
            let current = if write {
                store.replace(&key, ns, name, pod)
            } else {
                old.clone()
            };
            let grace = current
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if grace == 0 && !finalizers {
                let last = store.remove(&key, ns, name).unwrap_or(current);
                return Ok(result(&last));
            }
            return Ok(result(&current));
        }
        if finalizers {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(result(&old));
            }
            let mut o = (*old).clone();
            let m = meta::meta_mut(&mut o);
            m.insert("deletionTimestamp".into(), json!(meta::now()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            let cur = store.replace(&key, ns, name, o);
            return Ok(result(&cur));
        }
        if def.plural == "namespaces" {
            for r in resources::RESOURCES.iter().filter(|r| r.namespaced) {
                for o in store.list(&r.qualified(), Some(name)) {
                    store.remove(&r.qualified(), name, meta::name(&o));
                }
            }
        }
        let last = store.remove(&key, ns, name).expect("object exists");
        let mut shown = (*last).clone();
        if def.plural == "namespaces" {
            shown["status"] = json!({"phase": "Terminating"});
        }
        Ok(result(&shown))
    }

    /// DELETE a collection: each matching object is deleted as by `delete`.
    pub fn delete_collection(
        &self,
        user: &UserInfo,
        def: &ResourceDef,
        filter: &Filter,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let mut store = self.store();
        let items: Vec<Arc<Value>> = store
            .list(&def.qualified(), filter.namespace.as_deref())
            .into_iter()
            .filter(|o| filter.matches(o))
            .collect();
        let mut out = Vec::new();
        for o in items {
            let r = self.delete_locked(
                &mut store,
                user,
                def,
                meta::namespace(&o),
                meta::name(&o),
                opts,
            )?;
            out.push(Arc::new(
                if r.get("kind").and_then(Value::as_str) == Some("Status") {
                    (*o).clone()
                } else {
                    r
                },
            ));
        }
        let rv = store.resource_version();
        Ok(Self::list_doc(def, &out, rv))
    }

    // ------------------------------------------------------------ subresources

    /// POST pods/<name>/binding: what the scheduler does.
    pub fn bind(&self, ns: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
        let def = res("pods");
        let node = body
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if node.is_empty() {
            return Err(ApiError::invalid(
                &ResourceDef {
                    kind: "Binding",
                    ..*def
                },
                name,
                vec![FieldError::required("target.name", "")],
            ));
        }
        let mut store = self.store();
        let old = store
            .get("pods", ns, name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        if let Some(uid) = body.pointer("/metadata/uid").and_then(Value::as_str) {
            if uid != meta::uid(&old) {
                return Err(ApiError::conflict(
                    def,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta::uid(&old)
                    ),
                ));
            }
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict(
                def,
                name,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        if let Some(n) = meta::str_at(&old, "spec.nodeName").filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                def,
                name,
                &format!("pod {name} is already assigned to node {n:?}"),
            ));
        }
        let mut pod = (*old).clone();
        pod["spec"]["nodeName"] = json!(node);
        let now = meta::now();
        let st = pod
            .as_object_mut()
            .expect("pod")
            .entry("status")
            .or_insert_with(|| json!({}));
        let conds = st
            .as_object_mut()
            .expect("status")
            .entry("conditions")
            .or_insert_with(|| json!([]));
        if let Some(a) = conds.as_array_mut() {
            a.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            a.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
        }
        store.replace("pods", ns, name, pod);
        Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }

    /// POST tokenreviews / subjectaccessreviews: answered, never stored.
    pub fn review(&self, def: &ResourceDef, body: Value) -> Result<Value, ApiError> {
        let (obj, dropped) = typed::decode(&def.api_version(), def.kind, &body)?;
        if !dropped.is_empty() {
            lock(&self.violations).extend(dropped.into_iter().map(|d| format!("create {}: unknown field {d:?} is dropped by the real server", def.plural)));
        }
        let mut out = obj.clone();
        out["metadata"] = json!({"creationTimestamp": null});
        match def.plural {
            "tokenreviews" => {
                let token = obj.pointer("/spec/token").and_then(Value::as_str).unwrap_or("");
                if token.is_empty() {
                    return Err(ApiError::invalid(def, "", vec![crate::error::FieldError::required("spec.token", "")]));
                }
                out["status"] = match self.token_user(token) {
                    Some(u) => json!({"authenticated": true, "user": {"username": u.name, "groups": u.groups}, "audiences": obj.pointer("/spec/audiences").cloned().unwrap_or(json!([]))}),
                    None => json!({"user": {}, "error": "invalid bearer token"}),
                };
            }
            _ => {
                let user = obj.pointer("/spec/user").and_then(Value::as_str).unwrap_or("");
                let groups: Vec<&str> = obj.pointer("/spec/groups").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
                let ra = obj.pointer("/spec/resourceAttributes").cloned().unwrap_or(json!({}));
                let info = crate::auth::UserInfo::new(user, &groups);
                let (allowed, reason) = crate::auth::review_kubelet_access(&info, &self.opts.kubelet_api_users, &ra);
                out["status"] = if allowed { json!({"allowed": true, "reason": reason}) } else { json!({"allowed": false}) };
            }
        }
        Ok(out)
    }

    /// POST serviceaccounts/<name>/token: a TokenRequest.
    pub fn token_request(
        &self,
        user: &UserInfo,
        ns: &str,
        sa_name: &str,
        body: Value,
    ) -> Result<Value, ApiError> {
        let mut v = Vec::new();
        let def = res("serviceaccounts");
        let what = format!("create serviceaccounts/token {ns}/{sa_name}");
        let tr_def = ResourceDef {
            group: "authentication.k8s.io",
            kind: "TokenRequest",
            ..*def
        };
        let r = (|| {
            let mut body = body;
            if body.get("apiVersion").is_none() {
                body["apiVersion"] = json!("authentication.k8s.io/v1");
            }
            if body.get("kind").is_none() {
                body["kind"] = json!("TokenRequest");
            }
            let (req, dropped) = typed::decode("authentication.k8s.io/v1", "TokenRequest", &body)?;
            v.extend(
                dropped
                    .into_iter()
                    .map(|d| format!("{what}: unknown field {d:?} is dropped by the real server")),
            );
            let store = self.store();
            let sa = store
                .get("serviceaccounts", ns, sa_name)
                .ok_or_else(|| ApiError::not_found(def, sa_name))?;
            noderestriction::admit(
                user,
                &noderestriction::Admission {
                    verb: "create",
                    def,
                    subresource: "token",
                    namespace: ns,
                    name: sa_name,
                    new: Some(&req),
                    old: None,
                },
                &store,
            )?;
            let exp = req
                .pointer("/spec/expirationSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(3600);
            if exp < 600 {
                return Err(ApiError::invalid(
                    &tr_def,
                    sa_name,
                    vec![FieldError::invalid(
                        "spec.expirationSeconds",
                        &json!(exp),
                        "may not specify a duration less than 10 minutes",
                    )],
                ));
            }
            let mut claims_k8s = json!({"namespace": ns, "serviceaccount": {"name": sa_name, "uid": meta::uid(&sa)}});
            if let Some(bref) = req.pointer("/spec/boundObjectRef") {
                let kind = bref.get("kind").and_then(Value::as_str).unwrap_or("");
                let bname = bref.get("name").and_then(Value::as_str).unwrap_or("");
                if kind == "Pod" {
                    let pod = store
                        .get("pods", ns, bname)
                        .ok_or_else(|| ApiError::not_found(res("pods"), bname))?;
                    if let Some(uid) = bref
                        .get("uid")
                        .and_then(Value::as_str)
                        .filter(|u| !u.is_empty())
                    {
                        if uid != meta::uid(&pod) {
                            return Err(ApiError::conflict(
                                res("pods"),
                                bname,
                                &format!("the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"),
                            ));
                        }
                    }
                    claims_k8s["pod"] = json!({"name": bname, "uid": meta::uid(&pod)});
                    if let Some(n) = meta::str_at(&pod, "spec.nodeName").filter(|n| !n.is_empty()) {
                        if let Some(node) = store.get("nodes", "", n) {
                            claims_k8s["node"] = json!({"name": n, "uid": meta::uid(&node)});
                        }
                    }
                } else if kind != "Secret" && kind != "Node" {
                    return Err(ApiError::invalid(
                        &tr_def,
                        sa_name,
                        vec![FieldError::not_supported(
                            "spec.boundObjectRef.kind",
                            &json!(kind),
                            &["Pod", "Secret", "Node"],
                        )],
                    ));
                }
            }
            drop(store);
            let audiences = req
                .pointer("/spec/audiences")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty())
                .cloned()
                .unwrap_or_else(|| vec![json!("https://kubernetes.default.svc.cluster.local")]);
            let now = chrono::Utc::now().timestamp();
            let sub = format!("system:serviceaccount:{ns}:{sa_name}");
            let claims = json!({
                "aud": audiences, "exp": now + exp, "iat": now, "nbf": now,
                "iss": "https://kubernetes.default.svc.cluster.local",
                "jti": meta::new_uid(), "kubernetes.io": claims_k8s, "sub": sub,
            });
            let token = jwt(&claims, self.pki.ca_pem());
            self.tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    token.clone(),
                    UserInfo::new(
                        sub,
                        &[
                            "system:serviceaccounts",
                            &format!("system:serviceaccounts:{ns}"),
                        ],
                    ),
                );
            let mut out = req.clone();
            out["metadata"] =
                json!({"name": sa_name, "namespace": ns, "creationTimestamp": meta::now()});
            out["spec"]["audiences"] = json!(audiences);
            out["spec"]["expirationSeconds"] = json!(exp);
            out["status"] = json!({"token": token, "expirationTimestamp": meta::now_plus(exp)});
            Ok(out)
        })();
        self.finish(v);
        r
    }

    // ------------------------------------------------------------ controllers

    /// Runs after successful writes: the CSR approver/signer, and the node
    /// lifecycle controller's taints by condition.
    fn after_write(self: &Arc<Self>, def: &ResourceDef, obj: &Value) {
        if def.plural == "nodes" && def.group.is_empty() {
            if condition_taints(obj).is_some() {
                let name = meta::name(obj).to_string();
                match tokio::runtime::Handle::try_current() {
                    Ok(h) => {
                        let this = self.clone();
                        h.spawn(async move {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            this.taint_node_now(&name);
                        });
                    }
                    _ => self.taint_node_now(&name),
                }
            }
            return;
        }
        if def.plural != "certificatesigningrequests" {
            return;
        }
        let name = meta::name(obj).to_string();
        if csr::is_approved(obj) && !csr::is_finished(obj) {
            self.sign_csr(&name);
        } else if self.auto_approve.load(Ordering::SeqCst) && csr::auto_approval(obj).is_some() {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    let this = self.clone();
                    h.spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        let _ = this.auto_approve_now(&name);
                    });
                }
                _ => {
                    let _ = self.auto_approve_now(&name);
                }
            }
        }
    }

    /// kube-controller-manager's node lifecycle controller (TaintNodesByCondition):
    /// brings the node's condition taints in line with its conditions.
    fn taint_node_now(&self, name: &str) {
        let def = res("nodes");
        let mut store = self.store();
        let Some(cur) = store.get(&def.qualified(), "", name) else { return };
        if let Some(taints) = condition_taints(&cur) {
            let mut o = (*cur).clone();
            o["spec"]["taints"] = json!(taints);
            if taints.is_empty() {
                if let Some(spec) = o["spec"].as_object_mut() {
                    spec.remove("taints");
                }
            }
            store.replace(&def.qualified(), "", name, o);
        }
    }

    fn auto_approve_now(&self, name: &str) -> Result<(), ApiError> {
        let cur = self.get(res("certificatesigningrequests"), "", name)?;
        if let Some(msg) = csr::auto_approval(&cur) {
            self.approve(name, "AutoApproved", msg)?;
        }
        Ok(())
    }

    /// Approve (as kube-controller-manager would) and sign.
    pub fn approve(&self, name: &str, reason: &str, message: &str) -> Result<(), ApiError> {
        let def = res("certificatesigningrequests");
        {
            let mut store = self.store();
            let cur = store
                .get(&def.qualified(), "", name)
                .ok_or_else(|| ApiError::not_found(def, name))?;
            if !csr::is_approved(&cur) {
                let mut o = (*cur).clone();
                csr::add_approval(&mut o, reason, message);
                store.replace(&def.qualified(), "", name, o);
            }
        }
        self.sign_csr(name);
        Ok(())
    }

    fn sign_csr(&self, name: &str) {
        let def = res("certificatesigningrequests");
        let mut store = self.store();
        let Some(cur) = store.get(&def.qualified(), "", name) else {
            return;
        };
        if !csr::is_approved(&cur) || csr::is_finished(&cur) {
            return;
        }
        let outcome = csr::sign(&self.pki, &cur, self.opts.cert_ttl);
        let mut o = (*cur).clone();
        csr::apply_signing(&mut o, outcome);
        store.replace(&def.qualified(), "", name, o);
    }

    /// Test backdoor: create or replace an object as stored (status included), keeping
    /// uid/creationTimestamp of an existing object.
    pub fn apply_raw(
        self: &Arc<Self>,
        def: &ResourceDef,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let ns = if def.namespaced {
            meta::namespace(&obj).to_string()
        } else {
            String::new()
        };
        let name = meta::name(&obj).to_string();
        let existing = self.store().get(&def.qualified(), &ns, &name);
        match existing {
            None => {
                if let Some(m) = obj.as_object_mut() {
                    m.entry("status").or_insert(json!(null));
                }
                let status = obj.get("status").cloned().filter(|s| !s.is_null());
                let admin = UserInfo::new("system:apiserver", &["system:masters"]);
                let created = self.create(&admin, def, &ns, obj)?;
                match status {
                    Some(s) if def.has_status() => {
                        let mut o = created.clone();
                        o["status"] = s;
                        let mut store = self.store();
                        Ok((*store.replace(&def.qualified(), &ns, &name, o)).clone())
                    }
                    _ => Ok(created),
                }
            }
            Some(old) => {
                let mut v = Vec::new();
                let mut o = self.decode(def, obj, &mut v, "apply")?;
                let m = meta::meta_mut(&mut o);
                for k in ["uid", "creationTimestamp", "namespace"] {
                    if let Some(x) = old.pointer(&format!("/metadata/{k}")) {
                        m.insert(k.into(), x.clone());
                    }
                }
                let mut store = self.store();
                Ok((*store.replace(&def.qualified(), &ns, &name, o)).clone())
            }
        }
    }
}

/// A JWT-shaped token (header.claims.signature). Not verifiable; the server only looks it up.
fn jwt(claims: &Value, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = e(br#"{"alg":"RS256","kid":"rkubelet-test-apiserver"}"#);
    let body = e(claims.to_string().as_bytes());
    let sig = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update(header.as_bytes())
        .chain_update(body.as_bytes())
        .finalize();
    let mut sig2 = sig.to_vec();
    sig2.extend_from_slice(&Sha256::digest(sig)[..]);
    format!("{header}.{body}.{}", e(&sig2))
}

/// The registry entry for a core/known plural (panics on a typo in this crate).
pub fn res(plural: &str) -> &'static ResourceDef {
    resources::lookup(plural).unwrap_or_else(|| panic!("unknown resource {plural}"))
}

/// The taints the node lifecycle controller keeps in line with a node's
/// conditions (`node.kubernetes.io/<memory|disk|pid>-pressure`, `not-ready`,
/// `unreachable`, `network-unavailable`, `unschedulable`, all NoSchedule):
/// the node's whole taint list when it must change, `None` when it is right.
pub fn condition_taints(node: &Value) -> Option<Vec<Value>> {
    let cond = |t: &str| {
        node["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == t)).and_then(|c| c["status"].as_str()).unwrap_or("").to_string()
    };
    let mut want: Vec<&str> = Vec::new();
    for (t, status, key) in [
        ("MemoryPressure", "True", "node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
        ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
        ("NetworkUnavailable", "True", "node.kubernetes.io/network-unavailable"),
        ("Ready", "False", "node.kubernetes.io/not-ready"),
        ("Ready", "Unknown", "node.kubernetes.io/unreachable"),
    ] {
        if cond(t) == status {
            want.push(key);
        }
    }
    if node["spec"]["unschedulable"] == true {
        want.push("node.kubernetes.io/unschedulable");
    }
    const MANAGED: [&str; 6] = [
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/pid-pressure",
        "node.kubernetes.io/network-unavailable",
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ];
    let current: Vec<Value> = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
    let managed = |t: &Value| t["effect"] == "NoSchedule" && (MANAGED.contains(&t["key"].as_str().unwrap_or("")) || t["key"] == "node.kubernetes.io/unschedulable");
    let have: Vec<&str> = current.iter().filter(|t| managed(t)).filter_map(|t| t["key"].as_str()).collect();
    let mut sorted_have = have.clone();
    sorted_have.sort();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    if sorted_have == sorted_want {
        return None;
    }
    let mut out: Vec<Value> = current.into_iter().filter(|t| !managed(t)).collect();
    for k in want {
        let existing = node["spec"]["taints"].as_array().and_then(|ts| ts.iter().find(|t| t["key"] == k && t["effect"] == "NoSchedule").cloned());
        out.push(existing.unwrap_or_else(|| json!({"key": k, "effect": "NoSchedule"})));
    }
    Some(out)
}

#[cfg(test)]
mod taint_tests {
    use super::*;

    #[test]
    fn condition_taints_follow_the_node_lifecycle_controller() {
        let node = |conds: Value, taints: Value| json!({"spec": {"taints": taints}, "status": {"conditions": conds}});
        let ready = json!({"type": "Ready", "status": "True"});
        let mem = json!({"type": "MemoryPressure", "status": "True"});
        let own = json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"});
        let t = condition_taints(&node(json!([ready, mem]), json!([own]))).unwrap();
        assert_eq!(t, vec![own.clone(), json!({"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"})], "the node's own taint stays");
        assert_eq!(condition_taints(&node(json!([ready, mem]), json!(t))), None, "already right");
        let t = condition_taints(&node(json!([ready, {"type": "MemoryPressure", "status": "False"}]), json!(t))).unwrap();
        assert_eq!(t, vec![own], "gone with the pressure");
        let t = condition_taints(&node(json!([{"type": "Ready", "status": "False"}]), json!(null))).unwrap();
        assert_eq!(t[0]["key"], "node.kubernetes.io/not-ready");
    }
}
