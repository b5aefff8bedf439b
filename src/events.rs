//! Kubernetes-style events about pods and the node (reason, message, type, field
//! path), with upstream's reasons and texts (pkg/kubelet/events). They go to the
//! log and to `<root-dir>/events.jsonl` and, with an API server, to core/v1 Events.

use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Event reasons the kubelet uses.
pub mod reason {
    pub const PULLING: &str = "Pulling";
    pub const PULLED: &str = "Pulled";
    pub const FAILED: &str = "Failed";
    pub const BACK_OFF: &str = "BackOff";
    pub const CREATED: &str = "Created";
    pub const STARTED: &str = "Started";
    pub const KILLING: &str = "Killing";
    pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";
    pub const SANDBOX_CHANGED: &str = "SandboxChanged";
    pub const FAILED_MOUNT: &str = "FailedMount";
    pub const FAILED_TO_RETRIEVE_IMAGE_PULL_SECRET: &str = "FailedToRetrieveImagePullSecret";
    pub const FAILED_KILL_POD: &str = "FailedKillPod";
    pub const STARTING: &str = "Starting";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const EVICTED: &str = "Evicted";
    pub const NODE_ALLOCATABLE_ENFORCED: &str = "NodeAllocatableEnforced";
    pub const FAILED_NODE_ALLOCATABLE_ENFORCEMENT: &str = "FailedNodeAllocatableEnforcement";
    pub const CGROUP_V1: &str = "CgroupV1";
    pub const NODE_READY: &str = "NodeReady";
    pub const NODE_NOT_READY: &str = "NodeNotReady";
    pub const RESIZE_STARTED: &str = "ResizeStarted";
    pub const RESIZE_COMPLETED: &str = "ResizeCompleted";
    pub const RESIZE_DEFERRED: &str = "ResizeDeferred";
    pub const RESIZE_INFEASIBLE: &str = "ResizeInfeasible";
}

/// The kind of object an event is about.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum InvolvedKind {
    #[default]
    Pod,
    Node,
}

fn is_pod(k: &InvolvedKind) -> bool {
    *k == InvolvedKind::Pod
}

/// One event as recorded. For a node event, `pod` holds the node's name and
/// `namespace`/`uid` are empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodEvent {
    #[serde(default, skip_serializing_if = "is_pod")]
    pub kind: InvolvedKind,
    pub time: String,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_path: Option<String>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// Cheap to clone; never blocks a pod worker (events are dropped, with a warning,
/// when the sink falls behind).
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<PodEvent>,
}

impl Recorder {
    /// Events are logged and appended to `file` by a background task and, with a
    /// client, go to the API server as core/v1 Events
    /// (`api` = client and node name).
    pub fn new(file: PathBuf, api: Option<(kube::Client, String)>) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<PodEvent>(1024);
        let task = tokio::spawn(async move {
            let mut sink = crate::api::events::EventSink::default();
            while let Some(ev) = rx.recv().await {
                let line = serde_json::to_string(&ev).unwrap_or_default();
                let f = file.clone();
                let _ = tokio::task::spawn_blocking(move || append_bounded(&f, &line)).await;
                if let Some((client, node)) = &api {
                    sink.post(client, node, &ev).await;
                }
            }
        });
        (Recorder { tx }, task)
    }

    /// A recorder that only logs (for tests and tools).
    pub fn discard() -> Recorder {
        let (tx, mut rx) = mpsc::channel::<PodEvent>(64);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Recorder { tx }
    }

    fn emit(&self, pod: &Pod, field_path: Option<String>, type_: &str, reason: &str, message: String) {
        let ev = PodEvent {
            kind: InvolvedKind::Pod,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            pod: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            field_path,
            type_: type_.into(),
            reason: reason.into(),
            message,
        };
        info!(pod = %format!("{}/{}", ev.namespace, ev.pod), field = ev.field_path.as_deref().unwrap_or(""), event_type = %ev.type_, reason = %ev.reason, "{}", ev.message);
        self.send(ev);
    }

    fn send(&self, ev: PodEvent) {
        if self.tx.try_send(ev).is_err() {
            warn!("event sink is full; event dropped");
        }
    }

    /// An event about the node itself (`Starting`, `NodeReady`, …).
    pub fn node(&self, node: &str, type_: &str, reason: &str, message: impl Into<String>) {
        let ev = PodEvent {
            kind: InvolvedKind::Node,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            namespace: String::new(),
            pod: node.into(),
            uid: String::new(),
            field_path: None,
            type_: type_.into(),
            reason: reason.into(),
            message: message.into(),
        };
        info!(node = %node, event_type = %ev.type_, reason = %ev.reason, "{}", ev.message);
        self.send(ev);
    }

    /// `Node <name> status is now: <reason>`: upstream's recordNodeStatusEvent.
    pub fn node_status(&self, node: &str, reason: &str) {
        self.node(node, "Normal", reason, format!("Node {node} status is now: {reason}"))
    }

    /// A Normal event about the pod or one of its containers.
    pub fn normal(&self, pod: &Pod, field_path: Option<String>, reason: &str, message: impl Into<String>) {
        self.emit(pod, field_path, "Normal", reason, message.into())
    }

    /// A Warning event about the pod or one of its containers.
    pub fn warning(&self, pod: &Pod, field_path: Option<String>, reason: &str, message: impl Into<String>) {
        self.emit(pod, field_path, "Warning", reason, message.into())
    }
}

/// `spec.containers{name}` / `spec.initContainers{name}`: upstream's field path.
/// The field path of an ephemeral container, for its events.
pub fn ephemeral_field_path(container: &str) -> Option<String> {
    Some(format!("spec.ephemeralContainers{{{container}}}"))
}

pub fn field_path(container: &str, init: bool) -> Option<String> {
    Some(if init { format!("spec.initContainers{{{container}}}") } else { format!("spec.containers{{{container}}}") })
}

const MAX_EVENTS_FILE: u64 = 4 << 20;

fn append_bounded(path: &std::path::Path, line: &str) {
    if std::fs::metadata(path).map(|m| m.len() > MAX_EVENTS_FILE).unwrap_or(false) {
        let _ = std::fs::rename(path, path.with_extension("jsonl.1"));
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// Reads the recorded events (for `rkubelet pods` and tests).
pub fn read_file(path: &std::path::Path) -> Vec<PodEvent> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
