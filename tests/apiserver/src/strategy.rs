//! Per-resource storage strategies, like the registries in `pkg/registry/*`:
//! `PrepareForCreate`/defaulting/validation on create, `PrepareForUpdate` (what the main
//! resource and each subresource may change) and update validation. Fields a write may not
//! change are reset to the stored values exactly as upstream does, and each such silent
//! drop is reported as a violation so agent tests can assert that none happened.

use serde_json::{json, Map, Value};

use crate::auth::UserInfo;
use crate::error::FieldError;
use crate::meta;
use crate::resources::ResourceDef;
use crate::store::Store;

/// Inputs a strategy may need besides the object.
pub struct Ctx<'a> {
    pub user: &'a UserInfo,
    pub store: &'a Store,
    pub violations: &'a mut Vec<String>,
    /// Emulate the ServiceAccount admission plugin (SA defaulting + token volume).
    pub service_account_admission: bool,
    /// `verb resource/subresource ns/name` for violation messages.
    pub what: String,
}

impl Ctx<'_> {
    pub fn violation(&mut self, msg: impl AsRef<str>) {
        self.violations
            .push(format!("{}: {}", self.what, msg.as_ref()));
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    v[key].as_object_mut().expect("object")
}

fn set_default(m: &mut Map<String, Value>, key: &str, val: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.into(), val);
    }
}

// ---------------------------------------------------------------- pods

fn default_probe(p: &mut Value) {
    if let Some(m) = p.as_object_mut() {
        set_default(m, "timeoutSeconds", json!(1));
        set_default(m, "periodSeconds", json!(10));
        set_default(m, "successThreshold", json!(1));
        set_default(m, "failureThreshold", json!(3));
        if let Some(h) = m.get_mut("httpGet").and_then(Value::as_object_mut) {
            set_default(h, "path", json!("/"));
            set_default(h, "scheme", json!("HTTP"));
        }
    }
}

/// `fieldRef.apiVersion` defaults to v1; an unset `resourceFieldRef.divisor` is a
/// zero Quantity, which the real server serializes as `"0"` (the field is not a
/// pointer).
fn default_field_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(fr)) = m.get_mut("fieldRef") {
                set_default(fr, "apiVersion", json!("v1"));
            }
            if let Some(Value::Object(rf)) = m.get_mut("resourceFieldRef") {
                set_default(rf, "divisor", json!("0"));
            }
            for c in m.values_mut() {
                default_field_refs(c);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(default_field_refs),
        _ => {}
    }
}

/// Upstream's image pull policy default: Always for `:latest` or no tag, else IfNotPresent.
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_container(c: &mut Value, host_network: bool, ephemeral: bool) {
    let Some(m) = c.as_object_mut() else { return };
    set_default(m, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(m, "terminationMessagePolicy", json!("File"));
    let image = m
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    set_default(m, "imagePullPolicy", json!(default_pull_policy(&image)));
    if !ephemeral {
        set_default(m, "resources", json!({}));
    }
    if let Some(res) = m.get_mut("resources").and_then(Value::as_object_mut) {
        // Requests default to limits.
        if let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() {
            let req = res.entry("requests").or_insert_with(|| json!({}));
            if let Some(r) = req.as_object_mut() {
                for (k, v) in limits {
                    r.entry(k).or_insert(v);
                }
            }
        }
    }
    if let Some(ports) = m.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if host_network {
                if let Some(cp) = p.get("containerPort").cloned() {
                    set_default(p, "hostPort", cp);
                }
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe) {
            default_probe(p);
        }
    }
    if let Some(env) = m.get_mut("env") {
        default_field_refs(env);
    }
}

fn qos_class(pod: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    let all: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| {
            pod.pointer(&format!("/spec/{k}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    for c in &all {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        for r in ["cpu", "memory"] {
            let rq = req.and_then(|m| m.get(r));
            let lm = lim.and_then(|m| m.get(r));
            if rq.is_some() || lm.is_some() {
                any = true;
            }
            if lm.is_none() || rq != lm {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount admission plugin: default SA, token volume, mounts.
fn service_account_admission(pod: &mut Value, ctx: &Ctx<'_>) -> Result<(), FieldError> {
    let ns = meta::namespace(pod).to_string();
    let spec = obj_mut(pod, "spec");
    let sa_name = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            spec.get("serviceAccount")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(sa_name));
    spec.insert("serviceAccount".into(), json!(sa_name));
    let Some(sa) = ctx.store.get("serviceaccounts", &ns, &sa_name) else {
        return Err(FieldError::forbidden(
            "spec.serviceAccountName",
            &format!("error looking up service account {ns}/{sa_name}: serviceaccount {sa_name:?} not found"),
        ));
    };
    // The account's imagePullSecrets go to a pod that has none, whether or not a
    // token is mounted (plugin/pkg/admission/serviceaccount/admission.go).
    let has_pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !has_pull_secrets {
        let names: Vec<Value> = sa
            .get("imagePullSecrets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|r| json!({"name": r.get("name").and_then(Value::as_str).unwrap_or_default()}))
            .collect();
        if !names.is_empty() {
            spec.insert("imagePullSecrets".into(), Value::Array(names));
        }
    }
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let mounted = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|ms| {
                ms.iter()
                    .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(SA_MOUNT))
            })
    };
    let vol_name = format!("kube-api-access-{}", meta::random_suffix(5));
    let mut used = false;
    for key in ["initContainers", "containers"] {
        if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
            for c in cs.iter_mut() {
                if !mounted(c) {
                    let m = c.as_object_mut().expect("container object");
                    let mounts = m.entry("volumeMounts").or_insert_with(|| json!([]));
                    if let Some(a) = mounts.as_array_mut() {
                        a.push(json!({"name": vol_name, "readOnly": true, "mountPath": SA_MOUNT}));
                        used = true;
                    }
                }
            }
        }
    }
    if used {
        let vols = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(a) = vols.as_array_mut() {
            a.push(json!({
                "name": vol_name,
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                    ],
                    "defaultMode": 420
                }
            }));
        }
    }
    Ok(())
}

fn tolerates(tols: &[Value], key: &str) -> bool {
    tols.iter().any(|t| {
        let k = t.get("key").and_then(Value::as_str).unwrap_or("");
        let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
        let eff = t.get("effect").and_then(Value::as_str).unwrap_or("");
        (eff.is_empty() || eff == "NoExecute") && (k == key || (op == "Exists" && k.is_empty()))
    })
}

/// Defaulting + PrepareForCreate + the admission plugins a pod create goes through.
fn prepare_pod_create(pod: &mut Value, ctx: &mut Ctx<'_>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mirror = pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some();
    let spec = obj_mut(pod, "spec");
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    if spec
        .get("priorityClassName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        set_default(spec, "priority", json!(0));
    }
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    let host_network = spec
        .get("hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for (key, eph) in [
        ("containers", false),
        ("initContainers", false),
        ("ephemeralContainers", true),
    ] {
        if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
            cs.iter_mut()
                .for_each(|c| default_container(c, host_network, eph));
        }
    }
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols.iter_mut().filter_map(Value::as_object_mut) {
            for (src, mode) in [
                ("configMap", true),
                ("secret", true),
                ("projected", true),
                ("downwardAPI", true),
            ] {
                if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut) {
                    if mode {
                        set_default(s, "defaultMode", json!(420));
                    }
                }
            }
            if let Some(srcs) = v
                .get_mut("projected")
                .and_then(|p| p.get_mut("sources"))
                .and_then(Value::as_array_mut)
            {
                for s in srcs.iter_mut() {
                    if let Some(t) = s
                        .get_mut("serviceAccountToken")
                        .and_then(Value::as_object_mut)
                    {
                        set_default(t, "expirationSeconds", json!(3600));
                    }
                }
            }
            if let Some(h) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
                set_default(h, "type", json!(""));
            }
        }
    }
    if let Some(vols) = spec.get_mut("volumes") {
        default_field_refs(vols);
    }
    // DefaultTolerationSeconds admission.
    let mut tols = spec
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let before = tols.len();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !tolerates(&tols, key) {
            tols.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
    if tols.len() != before {
        spec.insert("tolerations".into(), Value::Array(tols));
    }
    if ctx.service_account_admission && !mirror {
        if let Err(e) = service_account_admission(pod, ctx) {
            errs.push(e);
        }
    }
    // The RuntimeClass admission plugin: the class must exist; its overhead is the pod's.
    if let Some(rc) = pod.pointer("/spec/runtimeClassName").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_string) {
        match ctx.store.get("runtimeclasses.node.k8s.io", "", &rc) {
            None => errs.push(FieldError::forbidden("spec.runtimeClassName", &format!("pod rejected: RuntimeClass {rc:?} not found"))),
            Some(class) => {
                if let Some(o) = class.pointer("/overhead/podFixed") {
                    obj_mut(pod, "spec").insert("overhead".into(), o.clone());
                }
            }
        }
    }
    // PrepareForCreate: the status is the server's.
    let dropped = pod.get("status").cloned().unwrap_or(json!({}));
    let qos = qos_class(pod);
    if let Some(d) = dropped.as_object() {
        let extra: Vec<&String> = d
            .keys()
            .filter(|k| {
                !(k.as_str() == "phase" && d[*k] == json!("Pending")) && k.as_str() != "qosClass"
            })
            .collect();
        if !extra.is_empty() {
            ctx.violation(format!(
                "pod create carried status fields {extra:?} that the server drops"
            ));
        }
    }
    pod["status"] = json!({"phase": "Pending", "qosClass": qos});
    meta::meta_mut(pod).insert("generation".into(), json!(1));
    errs
}

fn validate_container_list(
    spec: &Value,
    key: &str,
    names: &mut Vec<String>,
    vol_names: &[String],
    errs: &mut Vec<FieldError>,
) {
    let Some(cs) = spec.get(key).and_then(Value::as_array) else {
        return;
    };
    for (i, c) in cs.iter().enumerate() {
        let base = format!("spec.{key}[{i}]");
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{base}.name"), ""));
        } else {
            for e in meta::dns_label_errors(name) {
                errs.push(FieldError::invalid(
                    format!("{base}.name"),
                    &json!(name),
                    &e,
                ));
            }
            if names.iter().any(|n| n == name) {
                errs.push(FieldError::duplicate(format!("{base}.name"), &json!(name)));
            }
            names.push(name.to_string());
        }
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && key != "ephemeralContainers"
        {
            errs.push(FieldError::required(format!("{base}.image"), ""));
        }
        if let Some(p) = c.get("imagePullPolicy").and_then(Value::as_str) {
            if !["Always", "IfNotPresent", "Never"].contains(&p) {
                errs.push(FieldError::not_supported(
                    format!("{base}.imagePullPolicy"),
                    &json!(p),
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
        }
        for (j, m) in c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let vn = m.get("name").and_then(Value::as_str).unwrap_or("");
            if !vol_names.iter().any(|v| v == vn) {
                errs.push(FieldError {
                    reason: "FieldValueNotFound",
                    field: format!("{base}.volumeMounts[{j}].name"),
                    message: format!("Not found: {vn:?}"),
                });
            }
            if m.get("mountPath")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errs.push(FieldError::required(
                    format!("{base}.volumeMounts[{j}].mountPath"),
                    "",
                ));
            }
        }
    }
}

fn validate_pod(pod: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = pod.get("spec").cloned().unwrap_or(json!({}));
    let mut vol_names = Vec::new();
    for (i, v) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let n = v.get("name").and_then(Value::as_str).unwrap_or("");
        if n.is_empty() {
            errs.push(FieldError::required(format!("spec.volumes[{i}].name"), ""));
        } else if vol_names.iter().any(|x| x == n) {
            errs.push(FieldError::duplicate(
                format!("spec.volumes[{i}].name"),
                &json!(n),
            ));
        } else {
            for e in meta::dns_label_errors(n) {
                errs.push(FieldError::invalid(
                    format!("spec.volumes[{i}].name"),
                    &json!(n),
                    &e,
                ));
            }
        }
        vol_names.push(n.to_string());
    }
    if spec
        .get("containers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        errs.push(FieldError::required("spec.containers", ""));
    }
    let mut names = Vec::new();
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        validate_container_list(&spec, key, &mut names, &vol_names, &mut errs);
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            errs.push(FieldError::not_supported(
                "spec.restartPolicy",
                &json!(rp),
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(dp) = spec.get("dnsPolicy").and_then(Value::as_str) {
        let ok = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !ok.contains(&dp) {
            errs.push(FieldError::not_supported("spec.dnsPolicy", &json!(dp), &ok));
        }
    }
    if let Some(g) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
    {
        if g < 0 {
            errs.push(FieldError::invalid(
                "spec.terminationGracePeriodSeconds",
                &json!(g),
                "must be greater than or equal to 0",
            ));
        }
    }
    crate::podspec::validate(&spec, &mut errs);
    errs
}

/// A cpu or memory quantity in thousandths of its unit ("100m" → 100, "64Mi" →
/// 67108864000); None for what does not parse.
fn quantity_milli(q: &Value) -> Option<i128> {
    let s = q.as_str()?.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    let scale = 10i128.pow(frac.len() as u32);
    let mult: i128 = match suffix {
        "m" => 1,
        "" => 1000,
        "k" => 1000 * 1000,
        "M" => 1000 * 1_000_000,
        "G" => 1000 * 1_000_000_000,
        "T" => 1000 * 1_000_000_000_000,
        "Ki" => 1000 << 10,
        "Mi" => 1000 << 20,
        "Gi" => 1000 << 30,
        "Ti" => 1000 << 40,
        _ => return None,
    };
    Some(digits * mult / scale)
}

/// Upstream's ValidatePodResize for `pods/resize`: no static pods, the QoS class
/// stays, the node reports container resources, containers keep their order,
/// requests and limits are not removed and requests stay within limits, non-sidecar
/// init containers keep theirs, and nothing but cpu and memory (and resizePolicy)
/// changes.
fn validate_pod_resize(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if old.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_some() {
        return vec![FieldError::forbidden("", "static pods cannot be resized")];
    }
    let old_qos = old.pointer("/status/qosClass").and_then(Value::as_str).map(String::from).unwrap_or_else(|| qos_class(old).to_string());
    if qos_class(new) != old_qos {
        errs.push(FieldError::invalid("spec", &json!(old_qos), "Pod QOS Class may not change as a result of resizing"));
    }
    // The node must report resources for running containers (its kubelet supports resize).
    let running = old.pointer("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten().find(|c| c.pointer("/state/running").is_some());
    if running.is_some_and(|c| c.get("resources").is_none()) {
        errs.push(FieldError::forbidden("spec", "Pod running on node without support for resize"));
    }
    let names = |p: &Value, k: &str| -> Vec<Value> { p.pointer(&format!("/spec/{k}")).and_then(Value::as_array).into_iter().flatten().map(|c| c.get("name").cloned().unwrap_or(Value::Null)).collect() };
    for k in ["initContainers", "containers"] {
        if names(new, k) != names(old, k) {
            errs.push(FieldError::forbidden(format!("spec.{k}"), "containers may not be renamed or reordered on resize"));
            return errs;
        }
    }
    let mut stripped_new = new.get("spec").cloned().unwrap_or(json!({}));
    let mut stripped_old = old.get("spec").cloned().unwrap_or(json!({}));
    for k in ["initContainers", "containers"] {
        let olds = old.pointer(&format!("/spec/{k}")).and_then(Value::as_array).cloned().unwrap_or_default();
        let news = new.pointer(&format!("/spec/{k}")).and_then(Value::as_array).cloned().unwrap_or_default();
        for (i, (n, o)) in news.iter().zip(&olds).enumerate() {
            let path = format!("spec.{k}[{i}].resources");
            let (nr, or) = (n.get("resources").cloned().unwrap_or(json!({})), o.get("resources").cloned().unwrap_or(json!({})));
            if k == "initContainers" && o.get("restartPolicy").and_then(Value::as_str) != Some("Always") {
                if nr != or {
                    errs.push(FieldError::forbidden(&path, "resources for non-sidecar init containers are immutable"));
                }
                continue;
            }
            for (section, what) in [("requests", "resource requests cannot be removed"), ("limits", "resource limits cannot be removed")] {
                let had = or.get(section).and_then(Value::as_object);
                let has = nr.get(section).and_then(Value::as_object);
                if had.is_some_and(|h| h.keys().any(|r| (r == "cpu" || r == "memory") && has.is_none_or(|n| !n.contains_key(r)))) {
                    errs.push(FieldError::forbidden(format!("{path}.{section}"), what));
                }
            }
            for r in ["cpu", "memory"] {
                let (req, lim) = (nr.pointer(&format!("/requests/{r}")), nr.pointer(&format!("/limits/{r}")));
                if let (Some(q), Some(l)) = (req, lim) {
                    if quantity_milli(q) > quantity_milli(l) {
                        let detail = format!("must be less than or equal to {r} limit of {}", l.as_str().unwrap_or(""));
                        errs.push(FieldError::invalid(format!("{path}.requests"), q, &detail));
                    }
                }
            }
        }
        // What may differ: cpu and memory requests and limits, and resizePolicy.
        for spec in [&mut stripped_new, &mut stripped_old] {
            for c in spec.get_mut(k).and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut) {
                c.remove("resizePolicy");
                if let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) {
                    for section in ["requests", "limits"] {
                        if let Some(m) = res.get_mut(section).and_then(Value::as_object_mut) {
                            m.remove("cpu");
                            m.remove("memory");
                            if m.is_empty() {
                                res.remove(section);
                            }
                        }
                    }
                }
            }
        }
    }
    if errs.is_empty() && stripped_new != stripped_old {
        errs.push(FieldError::forbidden("spec", "only cpu and memory resources are mutable"));
    }
    errs
}

/// The parts of a pod spec an update may change (upstream's ValidatePodUpdate).
fn mutable_spec_stripped(spec: &Value) -> Value {
    let mut s = spec.clone();
    if let Some(m) = s.as_object_mut() {
        for k in [
            "activeDeadlineSeconds",
            "tolerations",
            "schedulingGates",
            "terminationGracePeriodSeconds",
        ] {
            m.remove(k);
        }
        for key in ["containers", "initContainers"] {
            if let Some(cs) = m.get_mut(key).and_then(Value::as_array_mut) {
                for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("image");
                }
            }
        }
    }
    s
}

fn validate_pod_status_update(new: &Value, old: &Value, ctx: &mut Ctx<'_>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let restart = old
        .pointer("/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always");
    if restart == "Never" {
        for key in ["containerStatuses", "initContainerStatuses"] {
            let olds = old
                .pointer(&format!("/status/{key}"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, cs) in new
                .pointer(&format!("/status/{key}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let name = cs.get("name");
                let was_terminated = olds
                    .iter()
                    .any(|o| o.get("name") == name && o.pointer("/state/terminated").is_some());
                if was_terminated && cs.pointer("/state/terminated").is_none() {
                    errs.push(FieldError::forbidden(
                        format!("status.{key}[{i}].state"),
                        "may not be transitioned to non-terminated state",
                    ));
                }
            }
        }
    }
    for key in ["podIPs", "hostIPs"] {
        let mut seen = Vec::new();
        for (i, ip) in new
            .pointer(&format!("/status/{key}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let s = ip.get("ip").and_then(Value::as_str).unwrap_or("");
            if s.parse::<std::net::IpAddr>().is_err() {
                errs.push(FieldError::invalid(
                    format!("status.{key}[{i}].ip"),
                    &json!(s),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                ));
            } else if seen.contains(&s) {
                errs.push(FieldError::duplicate(
                    format!("status.{key}[{i}].ip"),
                    &json!(s),
                ));
            }
            seen.push(s);
        }
    }
    if let (Some(single), Some(first)) = (
        new.pointer("/status/podIP").and_then(Value::as_str),
        new.pointer("/status/podIPs/0/ip").and_then(Value::as_str),
    ) {
        if single != first {
            errs.push(FieldError::invalid(
                "status.podIPs[0].ip",
                &json!(first),
                "must be equal to `podIP`",
            ));
        }
    }
    let old_phase = old
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    let new_phase = new
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if (old_phase == "Succeeded" || old_phase == "Failed") && new_phase != old_phase {
        ctx.violation(format!(
            "pod phase moved from terminal {old_phase} to {new_phase:?}"
        ));
    }
    let spec_names: Vec<&str> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| {
            old.pointer(&format!("/spec/{k}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    for key in [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ] {
        for cs in new
            .pointer(&format!("/status/{key}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let n = cs.get("name").and_then(Value::as_str).unwrap_or("");
            if !spec_names.contains(&n) {
                ctx.violation(format!(
                    "status.{key} has an entry for {n:?}, which is not a container of the pod"
                ));
            }
        }
    }
    if let Some(conds) = new.pointer("/status/conditions").and_then(Value::as_array) {
        for (i, c) in conds.iter().enumerate() {
            if c.get("status").is_none() && c.get("type").is_some() {
                errs.push(FieldError::required(
                    format!("status.conditions[{i}].status"),
                    "",
                ));
            }
        }
    }
    errs
}

// ---------------------------------------------------------------- other kinds

fn validate_event(ev: &Value, ctx: &mut Ctx<'_>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ns = meta::namespace(ev);
    let io_ns = ev
        .pointer("/involvedObject/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    if io_ns.is_empty() {
        if !ns.is_empty() && ns != "default" {
            errs.push(FieldError::invalid(
                "involvedObject.namespace",
                &json!(io_ns),
                "does not match event.namespace",
            ));
        }
    } else if ns != io_ns {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            &json!(io_ns),
            "does not match event.namespace",
        ));
    }
    let has_event_time = ev.get("eventTime").is_some_and(|t| !t.is_null());
    if has_event_time {
        for f in [
            "reportingComponent",
            "reportingInstance",
            "action",
            "reason",
        ] {
            if ev.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                errs.push(FieldError::required(f, ""));
            }
        }
    }
    if let Some(t) = ev.get("type").and_then(Value::as_str) {
        if t != "Normal" && t != "Warning" {
            ctx.violation(format!("event type {t:?} is neither Normal nor Warning"));
        }
    }
    errs
}

const CSR_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

fn validate_csr(csr: &Value) -> Vec<FieldError> {
    use base64::Engine;
    let mut errs = Vec::new();
    match csr.pointer("/spec/request").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required("spec.request", "")),
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default();
            if let Err(e) = crate::pki::parse_csr(&bytes) {
                errs.push(FieldError {
                    reason: "FieldValueInvalid",
                    field: "spec.request".into(),
                    message: format!("Invalid value: []byte{{...}}: {e}"),
                });
            }
        }
    }
    match csr.pointer("/spec/signerName").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required("spec.signerName", "")),
        Some(s) if !s.contains('/') => errs.push(FieldError::invalid(
            "spec.signerName",
            &json!(s),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        )),
        _ => {}
    }
    match csr.pointer("/spec/usages").and_then(Value::as_array) {
        None => errs.push(FieldError::required("spec.usages", "")),
        Some(u) if u.is_empty() => errs.push(FieldError::required("spec.usages", "")),
        Some(u) => {
            for (i, x) in u.iter().enumerate() {
                if !x.as_str().is_some_and(|s| CSR_USAGES.contains(&s)) {
                    errs.push(FieldError::not_supported(
                        format!("spec.usages[{i}]"),
                        x,
                        CSR_USAGES,
                    ));
                }
            }
        }
    }
    if let Some(e) = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
    {
        if e < 600 {
            errs.push(FieldError::invalid(
                "spec.expirationSeconds",
                &json!(e),
                "may not specify a duration less than 600 seconds (10 minutes)",
            ));
        }
    }
    let conds = csr
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |t: &str| {
        conds
            .iter()
            .any(|c| c.get("type").and_then(Value::as_str) == Some(t))
    };
    if has("Approved") && has("Denied") {
        errs.push(FieldError::invalid(
            "status.conditions",
            &json!("Approved"),
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
    errs
}

/// Name validation per resource (upstream's ValidateObjectMeta name func).
fn validate_name(def: &ResourceDef, name: &str) -> Vec<FieldError> {
    if name.is_empty() {
        return vec![FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )];
    }
    let errs = match def.plural {
        "namespaces" => meta::dns_label_errors(name),
        "services" => meta::dns1035_label_errors(name),
        "certificatesigningrequests" => meta::path_segment_errors(name),
        _ => meta::dns_subdomain_errors(name),
    };
    errs.into_iter()
        .map(|e| FieldError::invalid("metadata.name", &json!(name), &e))
        .collect()
}

// ---------------------------------------------------------------- entry points

/// PrepareForCreate + defaulting + validation. `obj` has kind/apiVersion/namespace/name set.
pub fn prepare_create(def: &ResourceDef, obj: &mut Value, ctx: &mut Ctx<'_>) -> Vec<FieldError> {
    let mut errs = validate_name(def, meta::name(obj));
    meta::validate_labels_annotations(obj, &mut errs);
    {
        let m = meta::meta_mut(obj);
        m.insert("uid".into(), json!(meta::new_uid()));
        m.insert("creationTimestamp".into(), json!(meta::now()));
        for k in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
            "managedFields",
        ] {
            m.remove(k);
        }
    }
    match (def.group, def.plural) {
        ("", "pods") => {
            errs.extend(prepare_pod_create(obj, ctx));
            errs.extend(validate_pod(obj));
        }
        ("", "events") => errs.extend(validate_event(obj, ctx)),
        ("", "secrets") => {
            merge_string_data(obj);
            errs.extend(validate_secret(obj));
        }
        ("", "namespaces") => {
            obj["status"] = json!({"phase": "Active"});
            obj_mut(obj, "spec").insert("finalizers".into(), json!(["kubernetes"]));
        }
        ("", "services") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            if spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                let ip = format!(
                    "10.96.{}.{}",
                    rand::random::<u8>(),
                    rand::random::<u8>().max(2)
                );
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
            }
            set_default(spec, "ipFamilies", json!(["IPv4"]));
            set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, "targetPort", port);
                    }
                }
            }
            obj["status"] = json!({"loadBalancer": {}});
        }
        ("certificates.k8s.io", _) => {
            let spec = obj_mut(obj, "spec");
            spec.insert("username".into(), json!(ctx.user.name));
            spec.insert("groups".into(), json!(ctx.user.groups));
            spec.remove("uid");
            spec.remove("extra");
            obj["status"] = json!({});
            errs.extend(validate_csr(obj));
        }
        _ => {}
    }
    errs
}

fn changed(a: Option<&Value>, b: Option<&Value>) -> bool {
    let norm = |v: Option<&Value>| match v {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(x) => Some(x.clone()),
    };
    norm(a) != norm(b)
}

/// BeforeUpdate + PrepareForUpdate of the main resource or a subresource, then validation.
/// `new` already carries the resourceVersion precondition checks' outcome.
pub fn prepare_update(
    def: &ResourceDef,
    sub: &str,
    new: &mut Value,
    old: &Value,
    ctx: &mut Ctx<'_>,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    // Metadata the server owns.
    {
        let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
        let m = meta::meta_mut(new);
        for k in ["creationTimestamp", "generation", "selfLink"] {
            match old_meta.get(k) {
                Some(v) => {
                    m.insert(k.into(), v.clone());
                }
                None => {
                    m.remove(k);
                }
            }
        }
        if m.get("uid")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            if let Some(u) = old_meta.get("uid") {
                m.insert("uid".into(), u.clone());
            }
        }
        if let Some(dt) = old_meta.get("deletionTimestamp") {
            m.insert("deletionTimestamp".into(), dt.clone());
        } else if m.remove("deletionTimestamp").is_some() {
            ctx.violation("update tried to set metadata.deletionTimestamp (only DELETE may)");
        }
        match old_meta.get("deletionGracePeriodSeconds") {
            Some(g) => {
                m.insert("deletionGracePeriodSeconds".into(), g.clone());
            }
            None => {
                m.remove("deletionGracePeriodSeconds");
            }
        }
    }
    let spec_changed = changed(new.get("spec"), old.get("spec"));
    let status_changed = changed(new.get("status"), old.get("status"));
    let labels_changed = changed(
        new.pointer("/metadata/labels"),
        old.pointer("/metadata/labels"),
    ) || changed(
        new.pointer("/metadata/annotations"),
        old.pointer("/metadata/annotations"),
    );
    match sub {
        "" => {
            if def.has_status() || def.plural == "certificatesigningrequests" {
                if status_changed {
                    ctx.violation(format!("write to the main {} resource changed status, which the server ignores (use the status subresource)", def.plural));
                }
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            if def.plural == "certificatesigningrequests" && spec_changed {
                ctx.violation("CSR spec is immutable; the server keeps the stored spec");
                new["spec"] = old.get("spec").cloned().unwrap_or(json!({}));
            }
            if def.plural == "pods" {
                if changed(
                    Some(&mutable_spec_stripped(
                        new.get("spec").unwrap_or(&json!({})),
                    )),
                    Some(&mutable_spec_stripped(
                        old.get("spec").unwrap_or(&json!({})),
                    )),
                ) {
                    errs.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
                }
                if spec_changed {
                    let g = old
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    meta::meta_mut(new).insert("generation".into(), json!(g + 1));
                }
            }
        }
        // pods/ephemeralcontainers: only spec.ephemeralContainers, and only additions.
        "ephemeralcontainers" => {
            let added: Vec<Value> = new.pointer("/spec/ephemeralContainers").and_then(Value::as_array).cloned().unwrap_or_default();
            let before: Vec<Value> = old.pointer("/spec/ephemeralContainers").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut spec = old.get("spec").cloned().unwrap_or(json!({}));
            let mut list = Vec::new();
            for (i, e) in added.into_iter().enumerate() {
                let name = e.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                match before.iter().find(|b| b.get("name").and_then(Value::as_str) == Some(name.as_str())) {
                    Some(b) => {
                        let mut e = e.clone();
                        default_container(&mut e, false, true);
                        if e != *b {
                            errs.push(FieldError::forbidden(format!("spec.ephemeralContainers[{i}]"), "existing ephemeral containers may not be changed"));
                        }
                        list.push(b.clone());
                    }
                    None => {
                        let taken = ["containers", "initContainers"].iter().any(|k| spec.get(*k).and_then(Value::as_array).is_some_and(|cs| cs.iter().any(|c| c.get("name").and_then(Value::as_str) == Some(name.as_str()))));
                        if taken || name.is_empty() {
                            errs.push(FieldError::invalid(format!("spec.ephemeralContainers[{i}].name"), &json!(name), "must be unique and not empty"));
                        }
                        let mut e = e;
                        default_container(&mut e, false, true);
                        default_field_refs(&mut e);
                        list.push(e);
                    }
                }
            }
            if before.iter().any(|b| !list.iter().any(|l| l.get("name") == b.get("name"))) {
                errs.push(FieldError::forbidden("spec.ephemeralContainers", "ephemeral containers may not be removed"));
            }
            spec["ephemeralContainers"] = json!(list);
            new["spec"] = spec;
            for k in ["status", "metadata"] {
                if let Some(v) = old.get(k) {
                    if k == "status" {
                        new[k] = v.clone();
                    }
                }
            }
            if labels_changed {
                ctx.violation("pods/ephemeralcontainers write changed labels/annotations, which the server ignores");
            }
        }
        // pods/resize: only cpu and memory of containers and sidecars (upstream's ValidatePodResize).
        "resize" => {
            errs.extend(validate_pod_resize(new, old));
            if let Some(v) = old.get("status") {
                new["status"] = v.clone();
            }
            if labels_changed {
                ctx.violation("pods/resize write changed labels/annotations, which the server ignores");
            }
            if spec_changed && errs.is_empty() {
                let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                meta::meta_mut(new).insert("generation".into(), json!(g + 1));
            }
        }
        "status" => {
            if spec_changed {
                ctx.violation(format!(
                    "{}/status write changed spec, which the server ignores",
                    def.plural
                ));
            }
            match old.get("spec") {
                Some(s) => new["spec"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("spec");
                    }
                }
            }
            if labels_changed {
                ctx.violation(format!("{}/status write changed metadata labels/annotations (a status writer should not)", def.plural));
            }
            if def.plural == "pods" {
                if changed(
                    new.pointer("/metadata/ownerReferences"),
                    old.pointer("/metadata/ownerReferences"),
                ) {
                    ctx.violation(
                        "pods/status write changed ownerReferences, which the server ignores",
                    );
                    match old.pointer("/metadata/ownerReferences") {
                        Some(o) => {
                            meta::meta_mut(new).insert("ownerReferences".into(), o.clone());
                        }
                        None => {
                            meta::meta_mut(new).remove("ownerReferences");
                        }
                    }
                }
                let st = obj_mut(new, "status");
                if st
                    .get("qosClass")
                    .is_none_or(|q| q.as_str().is_none_or(str::is_empty))
                {
                    if let Some(q) = old.pointer("/status/qosClass") {
                        st.insert("qosClass".into(), q.clone());
                    }
                }
                if st.get("observedGeneration").is_none() {
                    if let Some(g) = old.pointer("/status/observedGeneration") {
                        st.insert("observedGeneration".into(), g.clone());
                    }
                }
                errs.extend(validate_pod_status_update(new, old, ctx));
            }
            if def.plural == "certificatesigningrequests" {
                // Approval conditions can only change through /approval.
                let keep: Vec<Value> = old
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let approvals = |cs: &[Value]| -> Vec<Value> {
                    cs.iter()
                        .filter(|c| {
                            matches!(
                                c.get("type").and_then(Value::as_str),
                                Some("Approved" | "Denied")
                            )
                        })
                        .cloned()
                        .collect()
                };
                let new_conds = new
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if approvals(&new_conds) != approvals(&keep) {
                    ctx.violation(
                        "CSR approval conditions changed through /status (use /approval)",
                    );
                }
                let mut merged: Vec<Value> = new_conds
                    .into_iter()
                    .filter(|c| {
                        !matches!(
                            c.get("type").and_then(Value::as_str),
                            Some("Approved" | "Denied")
                        )
                    })
                    .collect();
                merged.splice(0..0, approvals(&keep));
                obj_mut(new, "status").insert("conditions".into(), Value::Array(merged));
            }
        }
        "approval" => {
            new["spec"] = old.get("spec").cloned().unwrap_or(json!({}));
            let cert = old.pointer("/status/certificate").cloned();
            let st = obj_mut(new, "status");
            match cert {
                Some(c) => {
                    st.insert("certificate".into(), c);
                }
                None => {
                    st.remove("certificate");
                }
            }
        }
        _ => {}
    }
    meta::validate_labels_annotations(new, &mut errs);
    if def.plural == "events" {
        errs.extend(validate_event(new, ctx));
    }
    if def.plural == "certificatesigningrequests" {
        errs.extend(validate_csr(new));
    }
    if def.plural == "pods" && sub.is_empty() {
        errs.extend(validate_pod(new));
    }
    if def.plural == "secrets" {
        merge_string_data(new);
        errs.extend(validate_secret(new));
    }
    errs
}

/// The docker-config secret types need their key holding a JSON object
/// (pkg/apis/core/validation ValidateSecret); other types are not checked here.
fn validate_secret(secret: &Value) -> Vec<FieldError> {
    use base64::Engine;
    let key = match secret.get("type").and_then(Value::as_str) {
        Some("kubernetes.io/dockercfg") => ".dockercfg",
        Some("kubernetes.io/dockerconfigjson") => ".dockerconfigjson",
        _ => return Vec::new(),
    };
    let field = format!("data[{key}]");
    let Some(encoded) = secret.pointer(&format!("/data/{key}")).and_then(Value::as_str) else {
        return vec![FieldError::required(field, "")];
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_default();
    match serde_json::from_slice::<Map<String, Value>>(&bytes) {
        Ok(_) => Vec::new(),
        Err(e) => vec![FieldError::invalid(
            field,
            &json!("<secret contents redacted>"),
            &e.to_string(),
        )],
    }
}

/// A Secret's write-only `stringData` is merged into `data` (base64), its keys
/// winning, and never stored (core/v1 conversion `Convert_v1_Secret_To_core_Secret`).
fn merge_string_data(secret: &mut Value) {
    use base64::Engine;
    let Some(m) = secret.as_object_mut() else { return };
    let Some(Value::Object(sd)) = m.remove("stringData") else { return };
    let data = m.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    if let Some(d) = data.as_object_mut() {
        for (k, v) in sd {
            let s = v.as_str().unwrap_or_default();
            d.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(s)));
        }
    }
}

/// The pod's grace period for a DELETE (`CheckGracefulDelete`): None = delete at once.
pub fn pod_grace_period(pod: &Value, requested: Option<i64>) -> i64 {
    let mut period = requested.unwrap_or_else(|| {
        pod.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    });
    if meta::str_at(pod, "spec.nodeName").is_none_or(str::is_empty) {
        period = 0;
    }
    if matches!(
        meta::str_at(pod, "status.phase"),
        Some("Succeeded" | "Failed")
    ) {
        period = 0;
    }
    if period < 0 {
        period = 1;
    }
    period
}
