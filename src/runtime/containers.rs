//! Containers and tasks on containerd's native API: create a container record
//! with its labels and rootfs snapshot, run its task, kill, wait, delete, and list
//! what belongs to a pod. Labels on the container records are the source of truth
//! about a pod's containers; the agent's memory is only a cache.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime as RuntimeInfo;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest,
    GetRequest, KillRequest, ListContainersRequest, StartRequest, UpdateContainerRequest, UpdateTaskRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use containerd_client::types::Mount;
use containerd_client::with_namespace;
use prost_types::{Any, FieldMask, Timestamp};
use thiserror::Error;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tracing::debug;

/// The containerd runtime shim every container runs under.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// Type URL containerd expects for an OCI runtime spec.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Type URL of the OCI `LinuxResources` a task update carries.
const RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// Label keys rkubelet puts on its containerd containers.
pub mod labels {
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// `sandbox`, `init` or `app`.
    pub const KIND: &str = "io.rkubelet.kind";
    /// The restart count of this instance (upstream: attempt).
    pub const ATTEMPT: &str = "io.rkubelet.attempt";
    pub const MANAGED_BY: &str = "io.rkubelet.managed-by";
    /// The node (agent) that owns the container; orphan cleanup only touches its own.
    pub const NODE: &str = "io.rkubelet.node";
    pub const STARTED_AT: &str = "io.rkubelet.started-at";
    pub const FINISHED_AT: &str = "io.rkubelet.finished-at";
    pub const EXIT_CODE: &str = "io.rkubelet.exit-code";
    pub const REASON: &str = "io.rkubelet.reason";
    pub const MESSAGE: &str = "io.rkubelet.message";
    pub const IMAGE: &str = "io.rkubelet.image";
    pub const IMAGE_ID: &str = "io.rkubelet.image-id";
    pub const SPEC_HASH: &str = "io.rkubelet.spec-hash";
    pub const NETNS: &str = "io.rkubelet.netns";
    pub const POD_IPS: &str = "io.rkubelet.pod-ips";
    pub const LOG_PATH: &str = "io.rkubelet.log-path";
    pub const CREATED_AT: &str = "io.rkubelet.created-at";
    /// The host file mounted at the container's terminationMessagePath.
    pub const TERMINATION_LOG: &str = "io.rkubelet.termination-log";
    /// Set (to `FallbackToLogsOnError`) when the message falls back to the log.
    pub const TERMINATION_POLICY: &str = "io.rkubelet.termination-policy";
    /// Set when the container was killed because its definition changed.
    pub const DEFINITION_CHANGED: &str = "io.rkubelet.definition-changed";
    /// The RuntimeClass handler the sandbox (and so every container of the pod) runs with.
    pub const RUNTIME_HANDLER: &str = "io.rkubelet.runtime-handler";
    /// The cpu and memory the container's cgroup was given (JSON, `pod::resize::Applied`).
    pub const RESOURCES: &str = "io.rkubelet.resources";
}

/// Errors talking to containerd about containers and tasks.
#[derive(Debug, Error)]
pub enum ContainerError {
    /// Creating the rootfs snapshot failed.
    #[error("failed to prepare rootfs snapshot for {id}: {}", .source.message())]
    PrepareSnapshot { id: String, #[source] source: tonic::Status },
    /// Creating the container record failed.
    #[error("failed to create containerd container: {}", .source.message())]
    CreateContainer { id: String, #[source] source: tonic::Status },
    /// Creating the task (runc create) failed.
    #[error("failed to create containerd task: {}", .source.message())]
    CreateTask { id: String, #[source] source: tonic::Status },
    /// Starting the task failed.
    #[error("failed to start containerd task: {}", .source.message())]
    StartTask { id: String, #[source] source: tonic::Status },
    /// Signalling the task failed.
    #[error("failed to kill task {id}: {}", .source.message())]
    Kill { id: String, #[source] source: tonic::Status },
    /// Deleting a task or container failed.
    #[error("failed to delete {id}: {}", .source.message())]
    Delete { id: String, #[source] source: tonic::Status },
    /// A query (list, get, wait, update) failed.
    #[error("containerd {op} failed for {id}: {}", .source.message())]
    Query { op: &'static str, id: String, #[source] source: tonic::Status },
    /// The OCI spec could not be serialized.
    #[error("failed to encode OCI spec: {0}")]
    Spec(#[source] serde_json::Error),
}

pub type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// What a container's task is doing, as far as containerd knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// No task exists (never started, or deleted after it exited).
    None,
    Created,
    Running { pid: u32 },
    Stopped { exit_code: u32, exited_at: Option<chrono::DateTime<chrono::Utc>> },
    Unknown,
}

/// One containerd container that belongs to rkubelet, with its labels and task state.
#[derive(Debug, Clone)]
pub struct ContainerRecord {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    pub snapshot_key: String,
    pub task: TaskState,
}

impl ContainerRecord {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).map(String::as_str)
    }
}

/// What the worker asks for when it creates a container.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub image: &'a str,
    pub chain_id: &'a str,
    pub spec: &'a oci_spec::runtime::Spec,
    pub labels: HashMap<String, String>,
    /// `file://` log path for stdout and stderr, or empty for /dev/null.
    pub log_uri: String,
    /// Create the rootfs read-only as a view (the pause container needs no writable layer).
    pub read_only_rootfs_view: bool,
    /// The containerd runtime (`io.containerd.runc.v2`): the pod's handler's.
    pub runtime: &'a str,
    /// runc's systemd cgroup driver (`SystemdCgroup`): the cgroupsPath is a
    /// `slice:prefix:name` and runc creates the container's scope through systemd.
    pub systemd_cgroup: bool,
}

/// The runc shim's options (containerd.runc.v1.Options) with `systemd_cgroup`
/// (field 9) set: the one option rkubelet sets, encoded by hand.
fn runc_options(systemd_cgroup: bool) -> Option<Any> {
    systemd_cgroup.then(|| Any { type_url: "containerd.runc.v1.Options".into(), value: vec![9 << 3, 1] })
}

/// A handle on containerd for containers, tasks and snapshots in one namespace.
#[derive(Clone)]
pub struct Containers {
    channel: Channel,
    namespace: String,
    snapshotter: String,
}

fn ts_to_chrono(ts: &Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(ts.seconds, ts.nanos.max(0) as u32)
}

/// True when containerd says the object does not exist.
pub fn is_not_found(s: &tonic::Status) -> bool {
    s.code() == Code::NotFound
}

impl Containers {
    pub fn new(channel: Channel, namespace: impl Into<String>, snapshotter: impl Into<String>) -> Self {
        Self { channel, namespace: namespace.into(), snapshotter: snapshotter.into() }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn containers(&self) -> containerd_client::services::v1::containers_client::ContainersClient<Channel> {
        containerd_client::services::v1::containers_client::ContainersClient::new(self.channel.clone())
    }

    fn tasks(&self) -> containerd_client::services::v1::tasks_client::TasksClient<Channel> {
        containerd_client::services::v1::tasks_client::TasksClient::new(self.channel.clone())
    }

    fn snapshots(&self) -> containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient<Channel> {
        containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient::new(self.channel.clone())
    }

    /// Lists rkubelet's containers, all of them or those of one pod, with their task states.
    pub async fn list(&self, pod_uid: Option<&str>) -> Result<Vec<ContainerRecord>> {
        let filter = match pod_uid {
            Some(uid) => format!("labels.\"{}\"==\"{}\"", labels::POD_UID, uid),
            None => format!("labels.\"{}\"==\"rkubelet\"", labels::MANAGED_BY),
        };
        let req = ListContainersRequest { filters: vec![filter] };
        let resp = self
            .containers()
            .list(with_namespace!(req, self.namespace))
            .await
            .map_err(|source| ContainerError::Query { op: "list containers", id: pod_uid.unwrap_or("*").into(), source })?;
        let mut out = Vec::new();
        for c in resp.into_inner().containers {
            if c.labels.get(labels::MANAGED_BY).map(String::as_str) != Some("rkubelet") {
                continue;
            }
            let task = self.task_state(&c.id).await?;
            out.push(ContainerRecord {
                created_at: c.created_at.as_ref().and_then(ts_to_chrono),
                snapshot_key: c.snapshot_key,
                id: c.id,
                labels: c.labels,
                task,
            });
        }
        Ok(out)
    }

    /// The state of a container's task.
    pub async fn task_state(&self, id: &str) -> Result<TaskState> {
        let req = GetRequest { container_id: id.to_string(), exec_id: String::new() };
        match self.tasks().get(with_namespace!(req, self.namespace)).await {
            Ok(r) => {
                let Some(p) = r.into_inner().process else { return Ok(TaskState::None) };
                Ok(match TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown) {
                    TaskStatus::Created => TaskState::Created,
                    TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => TaskState::Running { pid: p.pid },
                    TaskStatus::Stopped => TaskState::Stopped {
                        exit_code: p.exit_status,
                        exited_at: p.exited_at.as_ref().and_then(ts_to_chrono),
                    },
                    TaskStatus::Unknown => TaskState::Unknown,
                })
            }
            Err(s) if is_not_found(&s) => Ok(TaskState::None),
            Err(source) => Err(ContainerError::Query { op: "get task", id: id.into(), source }),
        }
    }

    /// Creates the container record, then its rootfs snapshot (key = container id)
    /// on top of the image's chain id. In this order the record references the
    /// snapshot from the moment it exists, so containerd's garbage collector never
    /// sees it unreferenced (the Go client uses a lease for the same reason).
    /// Idempotent: an existing record or snapshot is kept.
    pub async fn create(&self, c: &NewContainer<'_>) -> Result<Vec<Mount>> {
        let spec_json = serde_json::to_vec(c.spec).map_err(ContainerError::Spec)?;
        let container = Container {
            id: c.id.to_string(),
            labels: c.labels.clone(),
            image: c.image.to_string(),
            runtime: Some(RuntimeInfo { name: c.runtime.into(), options: runc_options(c.systemd_cgroup && c.runtime == RUNC_RUNTIME) }),
            spec: Some(Any { type_url: SPEC_TYPE_URL.into(), value: spec_json }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: c.id.to_string(),
            ..Default::default()
        };
        let req = CreateContainerRequest { container: Some(container) };
        match self.containers().create(with_namespace!(req, self.namespace)).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(source) => return Err(ContainerError::CreateContainer { id: c.id.into(), source }),
        }
        match self.prepare_snapshot(c.id, c.chain_id, c.read_only_rootfs_view).await {
            Ok(mounts) => {
                debug!(container = c.id, "container created");
                Ok(mounts)
            }
            Err(e) => {
                let _ = self.delete_container(c.id).await;
                Err(e)
            }
        }
    }

    async fn prepare_snapshot(&self, key: &str, parent: &str, view: bool) -> Result<Vec<Mount>> {
        use containerd_client::services::v1::snapshots::{MountsRequest, ViewSnapshotRequest};
        let mut client = self.snapshots();
        let res = if view {
            let req = ViewSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.into(),
                parent: parent.into(),
                labels: HashMap::new(),
            };
            client.view(with_namespace!(req, self.namespace)).await.map(|r| r.into_inner().mounts)
        } else {
            let req = PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.into(),
                parent: parent.into(),
                labels: HashMap::new(),
            };
            client.prepare(with_namespace!(req, self.namespace)).await.map(|r| r.into_inner().mounts)
        };
        match res {
            Ok(m) => Ok(m),
            Err(s) if s.code() == Code::AlreadyExists => {
                let req = MountsRequest { snapshotter: self.snapshotter.clone(), key: key.into() };
                client
                    .mounts(with_namespace!(req, self.namespace))
                    .await
                    .map(|r| r.into_inner().mounts)
                    .map_err(|source| ContainerError::PrepareSnapshot { id: key.into(), source })
            }
            Err(source) => Err(ContainerError::PrepareSnapshot { id: key.into(), source }),
        }
    }

    /// Reads files of the image whose top layer is the committed snapshot
    /// `chain_id` (a read-only view of it, removed again): each file's content,
    /// `None` when the image does not have it. For /etc/passwd and /etc/group.
    pub async fn read_image_files(&self, chain_id: &str, paths: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        if chain_id.is_empty() {
            return Ok(vec![None; paths.len()]);
        }
        let key = format!("rkubelet-read-{}", uuid::Uuid::new_v4().simple());
        let mounts = self.prepare_snapshot(&key, chain_id, true).await?;
        // A view's layers, top first: one bind-mounted directory, or an overlay's lowerdirs.
        let layers: Vec<std::path::PathBuf> = mounts
            .iter()
            .flat_map(|m| match m.r#type.as_str() {
                "bind" => vec![std::path::PathBuf::from(&m.source)],
                "overlay" => m.options.iter().filter_map(|o| o.strip_prefix("lowerdir=")).flat_map(|l| l.split(':')).map(std::path::PathBuf::from).collect(),
                _ => vec![],
            })
            .collect();
        let out = tokio::task::spawn_blocking({
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            move || paths.iter().map(|p| read_from_layers(&layers, p)).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let req = RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key };
        if let Err(e) = self.snapshots().remove(with_namespace!(req, self.namespace)).await {
            debug!(error = %e.message(), "removing the read-only view failed");
        }
        Ok(out)
    }

    /// Creates and starts the task (runc create + start) with stdio `io` (all
    /// empty: /dev/null). Returns the pid.
    pub async fn start_task(&self, id: &str, rootfs: Vec<Mount>, io: &super::stdio::TaskIo) -> Result<u32> {
        let req = CreateTaskRequest {
            container_id: id.into(),
            rootfs,
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            terminal: io.terminal,
            ..Default::default()
        };
        let pid = match self.tasks().create(with_namespace!(req, self.namespace)).await {
            Ok(r) => r.into_inner().pid,
            Err(source) => return Err(ContainerError::CreateTask { id: id.into(), source }),
        };
        let req = StartRequest { container_id: id.into(), exec_id: String::new() };
        if let Err(source) = self.tasks().start(with_namespace!(req, self.namespace)).await {
            let _ = self.delete_task(id).await;
            return Err(ContainerError::StartTask { id: id.into(), source });
        }
        Ok(pid)
    }

    /// Closes the stdin of the task's process `exec_id` ("" for its init process;
    /// the shim's writer on the stdin FIFO): the process reads EOF. A missing task
    /// is not an error.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = containerd_client::services::v1::CloseIoRequest { container_id: id.into(), exec_id: exec_id.into(), stdin: true };
        match self.tasks().close_io(with_namespace!(req, self.namespace)).await {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(source) => Err(ContainerError::Query { op: "close stdin", id: id.into(), source }),
        }
    }

    /// Resizes the terminal of the task's process `exec_id` ("" for its init process).
    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = containerd_client::services::v1::ResizePtyRequest { container_id: id.into(), exec_id: exec_id.into(), width, height };
        match self.tasks().resize_pty(with_namespace!(req, self.namespace)).await {
            Ok(_) => Ok(()),
            Err(source) => Err(ContainerError::Query { op: "resize pty", id: id.into(), source }),
        }
    }

    /// Sends a signal to the task's init process (and all its processes with `all`).
    /// A missing task is not an error.
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let req = KillRequest { container_id: id.into(), exec_id: String::new(), signal, all };
        match self.tasks().kill(with_namespace!(req, self.namespace)).await {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            // "process already finished" comes back as NotFound or FailedPrecondition.
            Err(s) if s.code() == Code::FailedPrecondition => Ok(()),
            Err(source) => Err(ContainerError::Kill { id: id.into(), source }),
        }
    }

    /// Waits until the task exits or `timeout` passes. Returns the exit code, or None on timeout.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Option<(u32, Option<chrono::DateTime<chrono::Utc>>)>> {
        let req = WaitRequest { container_id: id.into(), exec_id: String::new() };
        let mut client = self.tasks();
        match tokio::time::timeout(timeout, client.wait(with_namespace!(req, self.namespace))).await {
            Err(_) => Ok(None),
            Ok(Ok(r)) => {
                let r = r.into_inner();
                Ok(Some((r.exit_status, r.exited_at.as_ref().and_then(ts_to_chrono))))
            }
            Ok(Err(s)) if is_not_found(&s) => Ok(Some((0, None))),
            Ok(Err(source)) => Err(ContainerError::Query { op: "wait task", id: id.into(), source }),
        }
    }

    /// Deletes the task (the shim exits). A missing task is not an error.
    pub async fn delete_task(&self, id: &str) -> Result<()> {
        let req = DeleteTaskRequest { container_id: id.into() };
        match self.tasks().delete(with_namespace!(req, self.namespace)).await {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(source) => Err(ContainerError::Delete { id: id.into(), source }),
        }
    }

    /// Deletes the container record and its rootfs snapshot. Missing ones are fine.
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        let req = DeleteContainerRequest { id: id.into() };
        match self.containers().delete(with_namespace!(req, self.namespace)).await {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            Err(source) => return Err(ContainerError::Delete { id: id.into(), source }),
        }
        self.remove_snapshot(id).await
    }

    /// Bytes the container's writable layer uses (the snapshotter's Usage), if known.
    pub async fn snapshot_usage(&self, key: &str) -> Option<u64> {
        let req = containerd_client::services::v1::snapshots::UsageRequest { snapshotter: self.snapshotter.clone(), key: key.into() };
        let r = self.snapshots().usage(with_namespace!(req, self.namespace)).await.ok()?;
        u64::try_from(r.into_inner().size).ok()
    }

    async fn remove_snapshot(&self, key: &str) -> Result<()> {
        let req = RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.into() };
        match self.snapshots().remove(with_namespace!(req, self.namespace)).await {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(source) => Err(ContainerError::Delete { id: format!("snapshot {key}"), source }),
        }
    }

    /// Updates a running task's cgroup resources in place (what containerd's CRI
    /// UpdateContainerResources does to the task): `resources` is an OCI
    /// `LinuxResources` object.
    pub async fn update_resources(&self, id: &str, resources: &serde_json::Value) -> Result<()> {
        let req = UpdateTaskRequest {
            container_id: id.into(),
            resources: Some(Any { type_url: RESOURCES_TYPE_URL.into(), value: serde_json::to_vec(resources).map_err(ContainerError::Spec)? }),
            annotations: HashMap::new(),
        };
        self.tasks()
            .update(with_namespace!(req, self.namespace))
            .await
            .map(|_| ())
            .map_err(|source| ContainerError::Query { op: "update task resources", id: id.into(), source })
    }

    /// Adds or replaces labels on a container record.
    pub async fn set_labels(&self, id: &str, set: &[(&str, String)]) -> Result<()> {
        let mut labels = HashMap::new();
        let mut paths = Vec::new();
        for (k, v) in set {
            labels.insert(k.to_string(), v.clone());
            paths.push(format!("labels.{k}"));
        }
        let req = UpdateContainerRequest {
            container: Some(Container { id: id.into(), labels, ..Default::default() }),
            update_mask: Some(FieldMask { paths }),
        };
        self.containers()
            .update(with_namespace!(req, self.namespace))
            .await
            .map(|_| ())
            .map_err(|source| ContainerError::Query { op: "update container labels", id: id.into(), source })
    }
}

/// A file as overlayfs would show it from `layers` (top first): the first layer
/// that has it wins; a whiteout (a 0:0 character device) or an opaque parent
/// directory ends the search. At most 1 MiB is read; symlinks are not followed.
fn read_from_layers(layers: &[std::path::PathBuf], path: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let rel = path.trim_start_matches('/');
    for layer in layers {
        let p = layer.join(rel);
        if let Ok(md) = std::fs::symlink_metadata(&p) {
            if md.file_type().is_char_device() && md.rdev() == 0 {
                return None;
            }
            if !md.is_file() {
                return None;
            }
            let mut buf = Vec::new();
            std::fs::File::open(&p).ok()?.take(1 << 20).read_to_end(&mut buf).ok()?;
            return Some(buf);
        }
        let opaque = p.parent().and_then(xattr_opaque).unwrap_or(false);
        if opaque {
            return None;
        }
    }
    None
}

/// Whether overlayfs marks `dir` opaque (`trusted.overlay.opaque` = `y`).
fn xattr_opaque(dir: &std::path::Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let name = c"trusted.overlay.opaque";
    let mut v = [0u8; 4];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    Some(n == 1 && v[0] == b'y')
}
