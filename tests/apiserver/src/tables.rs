//! Server-side printing: `meta.k8s.io/v1` Tables with upstream's printer columns (the
//! same cells `kubectl get` / `-o wide` shows against a real server). Wide columns carry
//! `priority: 1` and are always filled, as the real server does.

use serde_json::{json, Value};

use crate::meta::{self, age};
use crate::resources::ResourceDef;

/// `includeObject` of a Table request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn col(name: &str, ty: &str, priority: i32, desc: &str) -> Value {
    let mut c =
        json!({"name": name, "type": ty, "format": "", "description": desc, "priority": priority});
    if name == "Name" && priority == 0 {
        c["format"] = json!("name");
    }
    c
}

/// Column definitions for a resource.
pub fn columns(def: &ResourceDef) -> Vec<Value> {
    let name = col(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age_c = col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created.");
    match (def.group, def.plural) {
        ("", "pods") => vec![
            name,
            col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age_c,
            col("IP", "string", 1, "podIP address allocated to the pod."),
            col("Node", "string", 1, "NodeName indicates in which node this pod is scheduled."),
            col("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
            col("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        ("", "nodes") => vec![
            name,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            age_c,
            col("Version", "string", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", "string", 1, "List of addresses reachable to the node."),
            col("External-IP", "string", 1, "List of addresses reachable to the node."),
            col("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            col("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            col("Container-Runtime", "string", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ],
        ("", "events") => vec![
            col("Last Seen", "string", 0, "The time at which the most recent occurrence of this event was recorded."),
            col("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future."),
            col("Reason", "string", 0, "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
            col("Object", "string", 0, "The object that this event is about."),
            col("Subobject", "string", 1, "The subobject that this event is about."),
            col("Source", "string", 1, "The component reporting this event."),
            col("Message", "string", 0, "A human-readable description of the status of this operation."),
            col("First Seen", "string", 1, "The time at which the event was first recorded."),
            col("Count", "string", 1, "The number of times this event has occurred."),
            col("Name", "string", 1, "Name must be unique within a namespace."),
        ],
        ("", "configmaps") => vec![name, col("Data", "integer", 0, "Data contains the configuration data."), age_c],
        ("", "secrets") => vec![name, col("Type", "string", 0, "The type of the secret"), col("Data", "integer", 0, "Data contains the secret data."), age_c],
        ("", "namespaces") => vec![name, col("Status", "string", 0, "The status of the namespace"), age_c],
        ("", "serviceaccounts") => vec![name, col("Secrets", "string", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."), age_c],
        ("", "services") => vec![
            name,
            col("Type", "string", 0, "type determines how the Service is exposed."),
            col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service."),
            col("External-IP", "string", 0, "List of IP addresses for which nodes in the cluster will also accept traffic for this service."),
            col("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
            age_c,
            col("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
        ],
        ("coordination.k8s.io", "leases") => vec![name, col("Holder", "string", 0, "holderIdentity contains the identity of the holder of a current lease."), age_c],
        ("certificates.k8s.io", _) => vec![
            name,
            age_c,
            col("SignerName", "string", 0, "Requested signer for the request."),
            col("Requestor", "string", 0, "Name of the user requesting the certificate."),
            col("RequestedDuration", "string", 0, "Requested duration of the certificate."),
            col("Condition", "string", 0, "Condition of the request."),
        ],
        _ => vec![name, age_c],
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn is_restartable_init(c: Option<&Value>) -> bool {
    c.is_some_and(|c| c.get("restartPolicy").and_then(Value::as_str) == Some("Always"))
}

fn later(a: &mut Option<String>, ts: Option<&str>) {
    if let Some(t) = ts {
        if a.as_deref().and_then(meta::parse_time) < meta::parse_time(t) {
            *a = Some(t.to_string());
        }
    }
}

/// The pod row exactly as upstream's `printPod` computes it.
fn pod_cells(pod: &Value) -> Vec<Value> {
    let mut restarts: i64 = 0;
    let mut restartable_restarts: i64 = 0;
    let mut total = arr(pod, "/spec/containers").len();
    let mut ready = 0;
    let mut last_restart: Option<String> = None;
    let mut last_restartable_restart: Option<String> = None;
    let mut reason = s(pod, "/status/phase").to_string();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_string();
    }
    for c in arr(pod, "/status/conditions") {
        if s(c, "/type") == "PodScheduled" && s(c, "/reason") == "SchedulingGated" {
            reason = "SchedulingGated".into();
        }
    }
    let init_specs = arr(pod, "/spec/initContainers");
    let init_spec = |name: &str| init_specs.iter().find(|c| s(c, "/name") == name);
    total += init_specs
        .iter()
        .filter(|c| is_restartable_init(Some(c)))
        .count();
    let mut initializing = false;
    let n_init = init_specs.len();
    for (i, cs) in arr(pod, "/status/initContainerStatuses").iter().enumerate() {
        let rc = cs.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
        restarts += rc;
        let fin = cs
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str);
        later(&mut last_restart, fin);
        let restartable = is_restartable_init(init_spec(s(cs, "/name")));
        if restartable {
            restartable_restarts += rc;
            later(&mut last_restartable_restart, fin);
        }
        let term = cs.pointer("/state/terminated");
        let waiting_reason = s(cs, "/state/waiting/reason");
        if term.is_some_and(|t| t.get("exitCode").and_then(Value::as_i64) == Some(0)) {
            continue;
        } else if restartable && cs.get("started").and_then(Value::as_bool) == Some(true) {
            if cs.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        } else if let Some(t) = term {
            let r = t.get("reason").and_then(Value::as_str).unwrap_or("");
            reason = if r.is_empty() {
                match t.get("signal").and_then(Value::as_i64).unwrap_or(0) {
                    0 => format!(
                        "Init:ExitCode:{}",
                        t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                    ),
                    sig => format!("Init:Signal:{sig}"),
                }
            } else {
                format!("Init:{r}")
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{n_init}");
        }
        initializing = true;
        break;
    }
    let initialized_true = arr(pod, "/status/conditions")
        .iter()
        .any(|c| s(c, "/type") == "Initialized" && s(c, "/status") == "True");
    if !initializing || initialized_true {
        restarts = restartable_restarts;
        last_restart = last_restartable_restart;
        let mut has_running = false;
        for cs in arr(pod, "/status/containerStatuses").iter().rev() {
            restarts += cs.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
            later(
                &mut last_restart,
                cs.pointer("/lastState/terminated/finishedAt")
                    .and_then(Value::as_str),
            );
            let waiting = s(cs, "/state/waiting/reason");
            let term = cs.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = term {
                let r = t.get("reason").and_then(Value::as_str).unwrap_or("");
                reason = if !r.is_empty() {
                    r.to_string()
                } else {
                    match t.get("signal").and_then(Value::as_i64).unwrap_or(0) {
                        0 => format!(
                            "ExitCode:{}",
                            t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                        ),
                        sig => format!("Signal:{sig}"),
                    }
                };
            } else if cs.get("ready").and_then(Value::as_bool) == Some(true)
                && cs.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let ready_cond = arr(pod, "/status/conditions")
                .iter()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True");
            reason = if ready_cond {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let phase = s(pod, "/status/phase");
    let deleting = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null());
    if deleting && s(pod, "/status/reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }
    let restarts_str = match (&last_restart, restarts) {
        (Some(t), r) if r != 0 => format!("{r} ({} ago)", age(Some(t))),
        (_, r) => r.to_string(),
    };
    let none = |x: &str| {
        if x.is_empty() {
            "<none>".to_string()
        } else {
            x.to_string()
        }
    };
    let mut ip = s(pod, "/status/podIPs/0/ip").to_string();
    if ip.is_empty() {
        ip = s(pod, "/status/podIP").to_string();
    }
    let gates = arr(pod, "/spec/readinessGates");
    let gates_str = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let t = gates
            .iter()
            .filter(|g| {
                arr(pod, "/status/conditions")
                    .iter()
                    .any(|c| s(c, "/type") == s(g, "/conditionType") && s(c, "/status") == "True")
            })
            .count();
        format!("{t}/{}", gates.len())
    };
    vec![
        json!(meta::name(pod)),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_str),
        json!(age(pod
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
        json!(none(&ip)),
        json!(none(s(pod, "/spec/nodeName"))),
        json!(none(s(pod, "/status/nominatedNodeName"))),
        json!(gates_str),
    ]
}

fn node_cells(node: &Value) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    if let Some(c) = arr(node, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == "Ready")
    {
        status.push(if s(c, "/status") == "True" {
            "Ready".into()
        } else {
            "NotReady".into()
        });
    }
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = node.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
                if !r.is_empty() {
                    roles.push(r.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.push(v.to_string());
                }
            }
        }
    }
    roles.sort();
    roles.dedup();
    let addr = |t: &str| {
        arr(node, "/status/addresses")
            .iter()
            .find(|a| s(a, "/type") == t)
            .map(|a| s(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    let unknown = |x: &str| {
        if x.is_empty() {
            "<unknown>".to_string()
        } else {
            x.to_string()
        }
    };
    vec![
        json!(meta::name(node)),
        json!(status.join(",")),
        json!(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.join(",")
        }),
        json!(age(node
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
        json!(s(node, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(unknown(s(node, "/status/nodeInfo/osImage"))),
        json!(unknown(s(node, "/status/nodeInfo/kernelVersion"))),
        json!(unknown(s(node, "/status/nodeInfo/containerRuntimeVersion"))),
    ]
}

fn event_cells(ev: &Value) -> Vec<Value> {
    let first = Some(s(ev, "/firstTimestamp"))
        .filter(|x| !x.is_empty())
        .or_else(|| Some(s(ev, "/eventTime")).filter(|x| !x.is_empty()));
    let last = Some(s(ev, "/series/lastObservedTime"))
        .filter(|x| !x.is_empty())
        .or_else(|| Some(s(ev, "/lastTimestamp")).filter(|x| !x.is_empty()))
        .or(first);
    let component = Some(s(ev, "/source/component"))
        .filter(|x| !x.is_empty())
        .unwrap_or(s(ev, "/reportingComponent"));
    let host = Some(s(ev, "/source/host"))
        .filter(|x| !x.is_empty())
        .unwrap_or(s(ev, "/reportingInstance"));
    let source = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    let count = ev
        .pointer("/series/count")
        .or_else(|| ev.get("count"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    vec![
        json!(age(last)),
        json!(s(ev, "/type")),
        json!(s(ev, "/reason")),
        json!(format!(
            "{}/{}",
            s(ev, "/involvedObject/kind").to_lowercase(),
            s(ev, "/involvedObject/name")
        )),
        json!(s(ev, "/involvedObject/fieldPath")),
        json!(source),
        json!(s(ev, "/message").trim()),
        json!(age(first)),
        json!(count.to_string()),
        json!(meta::name(ev)),
    ]
}

fn csr_cells(csr: &Value) -> Vec<Value> {
    let mut conds: Vec<String> = arr(csr, "/status/conditions")
        .iter()
        .map(|c| s(c, "/type").to_string())
        .collect();
    if conds.is_empty() {
        conds.push("Pending".into());
    }
    if csr
        .pointer("/status/certificate")
        .is_some_and(|c| c.as_str().is_some_and(|c| !c.is_empty()))
    {
        conds.push("Issued".into());
    }
    let dur = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map(|e| meta::human_duration(chrono::Duration::seconds(e)))
        .unwrap_or_else(|| "<none>".into());
    vec![
        json!(meta::name(csr)),
        json!(age(csr
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
        json!(s(csr, "/spec/signerName")),
        json!(s(csr, "/spec/username")),
        json!(dur),
        json!(conds.join(",")),
    ]
}

fn service_cells(svc: &Value) -> Vec<Value> {
    let ports: Vec<String> = arr(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    let selector = svc
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|x| !x.is_empty())
        .unwrap_or_else(|| "<none>".into());
    let cip = s(svc, "/spec/clusterIP");
    vec![
        json!(meta::name(svc)),
        json!(s(svc, "/spec/type")),
        json!(if cip.is_empty() { "<none>" } else { cip }),
        json!("<none>"),
        json!(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        json!(age(svc
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
        json!(selector),
    ]
}

/// Cells of one object's row.
pub fn cells(def: &ResourceDef, obj: &Value) -> Vec<Value> {
    let created = || {
        json!(age(obj
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)))
    };
    let count = |k: &str| obj.get(k).and_then(Value::as_object).map_or(0, |m| m.len());
    match (def.group, def.plural) {
        ("", "pods") => pod_cells(obj),
        ("", "nodes") => node_cells(obj),
        ("", "events") => event_cells(obj),
        ("", "configmaps") => vec![
            json!(meta::name(obj)),
            json!(count("data") + count("binaryData")),
            created(),
        ],
        ("", "secrets") => vec![
            json!(meta::name(obj)),
            json!(s(obj, "/type")),
            json!(count("data")),
            created(),
        ],
        ("", "namespaces") => vec![
            json!(meta::name(obj)),
            json!(s(obj, "/status/phase")),
            created(),
        ],
        ("", "serviceaccounts") => vec![
            json!(meta::name(obj)),
            json!(arr(obj, "/secrets").len().to_string()),
            created(),
        ],
        ("", "services") => service_cells(obj),
        ("coordination.k8s.io", "leases") => vec![
            json!(meta::name(obj)),
            json!(s(obj, "/spec/holderIdentity")),
            created(),
        ],
        ("certificates.k8s.io", _) => csr_cells(obj),
        _ => vec![json!(meta::name(obj)), created()],
    }
}

fn row(def: &ResourceDef, obj: &Value, include: IncludeObject) -> Value {
    let mut r = json!({"cells": cells(def, obj)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            r["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))});
        }
        IncludeObject::Object => r["object"] = obj.clone(),
    }
    r
}

/// A Table of `objs`.
pub fn table(
    def: &ResourceDef,
    objs: &[&Value],
    rv: &str,
    include: IncludeObject,
    with_columns: bool,
) -> Value {
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "rows": objs.iter().map(|o| row(def, o, include)).collect::<Vec<_>>(),
    });
    t["columnDefinitions"] = if with_columns {
        Value::Array(columns(def))
    } else {
        json!(null)
    };
    t
}
