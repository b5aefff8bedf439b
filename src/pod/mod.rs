//! Pods on this node: where they come from (the manifest directory), the manager
//! that keeps one worker task per pod UID, the worker that drives a pod's sandbox
//! and containers, and the pure functions that decide what to do and what status
//! to report.

pub mod admission;
pub mod apparmor;
pub mod backoff;
pub mod dns;
pub mod env;
pub mod lifecycle;
pub mod manager;
pub mod manifest;
pub mod plan;
pub mod prober;
pub mod resize;
pub mod resources;
pub mod source;
pub mod status;
pub mod store;
pub mod sysctl;
pub mod validation;
pub mod termination;
pub mod worker;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;

/// A chrono time as the API's `Time` (k8s-openapi uses jiff).
pub fn k8s_time(t: DateTime<Utc>) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    let ts = k8s_openapi::jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts)
}

/// `name_namespace(uid)`: how upstream names a pod in messages.
pub fn format_pod(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

/// `namespace/name`, for logs.
pub fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""))
}

/// Init or app container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Init,
    App,
    /// `spec.ephemeralContainers` (kubectl debug): started once, never restarted.
    Ephemeral,
}

/// An ephemeral container as the Container it describes (the same fields, plus
/// `targetContainerName`, which [`ephemeral_target`] reads).
pub fn ephemeral_as_container(e: &k8s_openapi::api::core::v1::EphemeralContainer) -> k8s_openapi::api::core::v1::Container {
    serde_json::to_value(e).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_else(|| k8s_openapi::api::core::v1::Container { name: e.name.clone(), ..Default::default() })
}

/// The container whose process namespace ephemeral container `name` targets.
pub fn ephemeral_target<'a>(pod: &'a Pod, name: &str) -> Option<&'a str> {
    pod.spec.as_ref()?.ephemeral_containers.as_ref()?.iter().find(|e| e.name == name)?.target_container_name.as_deref().filter(|t| !t.is_empty())
}

/// One observed instance (attempt) of a container, from containerd's record.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub kind: Kind,
    /// The restart count this instance was started as.
    pub attempt: u32,
    pub image: String,
    pub image_id: String,
    pub state: InstanceState,
    /// The container hash it was started with ([`plan::container_hash`]); none for
    /// instances of an older agent.
    pub hash: Option<String>,
    /// Killed because the container's definition changed: restarted whatever the
    /// restart policy and back-off.
    pub changed: bool,
    /// The cpu and memory its cgroup has (none for instances of an older agent).
    pub resources: Option<resize::Applied>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InstanceState {
    Running { started_at: DateTime<Utc> },
    Exited {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at: Option<DateTime<Utc>>,
        finished_at: DateTime<Utc>,
    },
}

impl Instance {
    pub fn is_running(&self) -> bool {
        matches!(self.state, InstanceState::Running { .. })
    }
    pub fn exit_code(&self) -> Option<i32> {
        match self.state {
            InstanceState::Exited { exit_code, .. } => Some(exit_code),
            _ => None,
        }
    }
    pub fn finished_at(&self) -> Option<DateTime<Utc>> {
        match self.state {
            InstanceState::Exited { finished_at, .. } => Some(finished_at),
            _ => None,
        }
    }
}

/// The pod's sandbox as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxState {
    pub id: String,
    /// The RuntimeClass handler it was created with ("" = the default runtime).
    pub handler: String,
    pub ready: bool,
    pub pid: u32,
    pub ips: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A reason the worker holds a container in `waiting` (image errors, back-off, config errors).
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}
