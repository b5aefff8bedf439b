//! Kubernetes-style events about pods (reason, message, type, field path), with
//! upstream's reasons and texts (pkg/kubelet/events). In standalone mode they go to
//! the log and to `<root-dir>/events.jsonl`; a later sink posts them to the API.

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
    pub const FAILED_KILL_POD: &str = "FailedKillPod";
}

/// One event as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodEvent {
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
        if self.tx.try_send(ev).is_err() {
            warn!("event sink is full; event dropped");
        }
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
