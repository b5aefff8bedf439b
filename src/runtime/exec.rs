//! Running a command inside a running container through containerd's task Exec
//! API (what CRI's ExecSync does for the kubelet's exec probes and hooks). The
//! process inherits the container's own process spec (user, env, cwd,
//! capabilities) with the command swapped in; stdout and stderr go to one file
//! (`file://` IO, written by the shim) that is read back once the shim has
//! flushed it (after DeleteProcess) and truncated like upstream's 10 KiB limit.

use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::with_namespace;
use prost_types::Any;
use thiserror::Error;
use tonic::Request;
use tracing::debug;

use super::containers::Containers;

/// Upstream keeps at most this much of a probe's output (pkg/probe/exec maxReadLength).
pub const MAX_OUTPUT: usize = 10 * 1024;

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// Errors running a command in a container.
#[derive(Debug, Error)]
pub enum ExecError {
    /// The container (or its spec) could not be read.
    #[error("failed to get container {id}: {}", .source.message())]
    GetContainer { id: String, #[source] source: tonic::Status },
    /// The container's stored spec is not an OCI runtime spec with a process.
    #[error("container {id} has no usable process spec")]
    BadSpec { id: String },
    /// The output file could not be prepared or read.
    #[error("exec output file {path}: {source}")]
    Output { path: String, #[source] source: std::io::Error },
    /// containerd refused to create or start the exec process.
    #[error("failed to exec in container {id}: {}", .source.message())]
    Exec { id: String, #[source] source: tonic::Status },
    /// Waiting for the exec process failed.
    #[error("failed to wait for exec in container {id}: {}", .source.message())]
    Wait { id: String, #[source] source: tonic::Status },
    /// The command did not finish within its timeout (and was killed); message as upstream's CRI client.
    #[error("command {cmd:?} timed out")]
    Timeout { cmd: String },
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;

/// How an exec'd command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: u32,
    /// stdout and stderr interleaved, at most [`MAX_OUTPUT`] bytes (lossy UTF-8).
    pub output: String,
}

/// Runs `cmd` in the running container `id`; `timeout` zero means no limit.
/// The output file lives in `scratch` and is removed afterwards.
pub async fn exec(rt: &Containers, id: &str, cmd: &[String], timeout: Duration, scratch: &Path) -> Result<ExecOutput> {
    let ns = rt.namespace().to_string();
    let mut containers = ContainersClient::new(rt.channel());
    let mut tasks = TasksClient::new(rt.channel());
    let req = GetContainerRequest { id: id.to_string() };
    let c = containers
        .get(with_namespace!(req, ns))
        .await
        .map_err(|source| ExecError::GetContainer { id: id.into(), source })?
        .into_inner()
        .container
        .ok_or_else(|| ExecError::BadSpec { id: id.into() })?;
    let spec: serde_json::Value = c
        .spec
        .as_ref()
        .and_then(|a| serde_json::from_slice(&a.value).ok())
        .ok_or_else(|| ExecError::BadSpec { id: id.into() })?;
    let mut process = spec.get("process").cloned().filter(|p| p.is_object()).ok_or_else(|| ExecError::BadSpec { id: id.into() })?;
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::json!(false);
    if let Some(o) = process.as_object_mut() {
        o.remove("consoleSize");
    }
    let value = serde_json::to_vec(&process).map_err(|_| ExecError::BadSpec { id: id.into() })?;

    let exec_id = format!("exec-{}", hex::encode(rand::random::<[u8; 8]>()));
    tokio::fs::create_dir_all(scratch).await.map_err(|source| ExecError::Output { path: scratch.display().to_string(), source })?;
    let out = scratch.join(format!("{exec_id}.out"));
    let uri = format!("file://{}", out.display());
    let req = ExecProcessRequest {
        container_id: id.into(),
        stdin: String::new(),
        stdout: uri.clone(),
        stderr: uri,
        terminal: false,
        spec: Some(Any { type_url: PROCESS_TYPE_URL.into(), value }),
        exec_id: exec_id.clone(),
    };
    debug!(container = id, exec_id = %exec_id, ?cmd, "exec in container");
    tasks.exec(with_namespace!(req, ns)).await.map_err(|source| ExecError::Exec { id: id.into(), source })?;
    let req = StartRequest { container_id: id.into(), exec_id: exec_id.clone() };
    if let Err(source) = tasks.start(with_namespace!(req, ns)).await {
        delete_process(&mut tasks, &ns, id, &exec_id).await;
        let _ = tokio::fs::remove_file(&out).await;
        return Err(ExecError::Exec { id: id.into(), source });
    }
    let req = WaitRequest { container_id: id.into(), exec_id: exec_id.clone() };
    let wait = tasks.wait(with_namespace!(req, ns));
    let waited = if timeout.is_zero() { Ok(wait.await) } else { tokio::time::timeout(timeout, wait).await };
    let result = match waited {
        Ok(Ok(r)) => Ok(r.into_inner().exit_status),
        Ok(Err(source)) => Err(ExecError::Wait { id: id.into(), source }),
        Err(_) => {
            let req = KillRequest { container_id: id.into(), exec_id: exec_id.clone(), signal: libc::SIGKILL as u32, all: false };
            let _ = tasks.kill(with_namespace!(req, ns)).await;
            let req = WaitRequest { container_id: id.into(), exec_id: exec_id.clone() };
            let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait(with_namespace!(req, ns))).await;
            Err(ExecError::Timeout { cmd: cmd.join(" ") })
        }
    };
    debug!(container = id, exec_id = %exec_id, ok = result.is_ok(), "exec finished");
    // Deleting the process makes the shim finish copying the output into the file.
    delete_process(&mut tasks, &ns, id, &exec_id).await;
    let bytes = tokio::fs::read(&out).await.unwrap_or_default();
    let _ = tokio::fs::remove_file(&out).await;
    let exit_code = result?;
    Ok(ExecOutput { exit_code, output: truncate_output(&bytes) })
}

async fn delete_process(tasks: &mut TasksClient<tonic::transport::Channel>, ns: &str, id: &str, exec_id: &str) {
    let req = DeleteProcessRequest { container_id: id.into(), exec_id: exec_id.into() };
    let _ = tasks.delete_process(with_namespace!(req, ns)).await;
}

/// The first [`MAX_OUTPUT`] bytes, as (lossy) UTF-8.
pub fn truncate_output(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(MAX_OUTPUT)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_at_ten_kibibytes() {
        let long = vec![b'a'; MAX_OUTPUT + 100];
        assert_eq!(truncate_output(&long).len(), MAX_OUTPUT);
        assert_eq!(truncate_output(b"ok\n"), "ok\n");
    }
}
