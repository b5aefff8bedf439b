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
    /// The client went away and the process was killed.
    #[error("exec cancelled: the client went away")]
    Cancelled,
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
    let mut tasks = TasksClient::new(rt.channel());
    let spec = container_spec(rt, id).await?;
    let value = process_spec(&spec, id, cmd, None)?;

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

/// The byte channels of an interactive exec (kubelet streaming); a closed
/// channel is EOF. `resize` carries (width, height) for a terminal.
pub struct StreamIo {
    pub stdin: Option<tokio::sync::mpsc::Receiver<bytes::Bytes>>,
    pub stdout: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    pub stderr: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    pub resize: Option<tokio::sync::mpsc::Receiver<(u16, u16)>>,
}

/// How long a terminal exec waits for the client's first size before it starts.
const FIRST_SIZE_WAIT: Duration = Duration::from_secs(2);
/// How long output may still drain from the FIFOs after the process exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Runs `cmd` in the running container `id` with its stdio on FIFOs under
/// `scratch` (created here, opened by the shim, removed afterwards), copying
/// them to and from `io` (what containerd's cio does for its Go client), with
/// a pseudo-terminal when `tty` (resized through ResizePty). Returns the exit
/// code. When `cancel` fires (the client went away) the process is killed, so
/// nothing is left running; the process is always deleted from the task.
pub async fn exec_streaming(rt: &Containers, id: &str, cmd: &[String], tty: bool, mut io: StreamIo, scratch: &Path, cancel: tokio_util::sync::CancellationToken) -> Result<u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::unix::pipe;
    let ns = rt.namespace().to_string();
    let mut tasks = TasksClient::new(rt.channel());
    let spec = container_spec(rt, id).await?;
    // A terminal starts at the client's size (its first resize event), so a
    // command that asks at once sees it.
    let mut first_size = None;
    if tty {
        if let Some(r) = io.resize.as_mut() {
            first_size = tokio::time::timeout(FIRST_SIZE_WAIT, r.recv()).await.ok().flatten();
        }
    }
    let value = process_spec(&spec, id, cmd, tty.then(|| first_size.unwrap_or((0, 0))))?;
    let exec_id = format!("exec-{}", hex::encode(rand::random::<[u8; 8]>()));
    let dir = scratch.join(&exec_id);
    let io_err = |source: std::io::Error| ExecError::Output { path: dir.display().to_string(), source };
    tokio::fs::create_dir_all(&dir).await.map_err(io_err)?;
    let result = async {
        let fifo = |name: &str| -> Result<std::path::PathBuf> {
            let p = dir.join(name);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| io_err(std::io::Error::from(e)))?;
            Ok(p)
        };
        let stdin_path = io.stdin.as_ref().map(|_| fifo("stdin")).transpose()?;
        // The shim wants both outputs (a tty has only one); what the client did
        // not ask for is read and discarded, as containerd's cio does.
        let stdout_path = Some(fifo("stdout")?);
        let stderr_path = (!tty).then(|| fifo("stderr")).transpose()?;
        // Our ends: stdin read-write (so opening never blocks; the shim sees EOF
        // when we close it); outputs read-only, held open by a writer of ours
        // until the shim has its own, so the first read does not see EOF.
        let stdin_w = stdin_path.as_ref().map(|p| pipe::OpenOptions::new().read_write(true).open_sender(p)).transpose().map_err(io_err)?;
        let mut keepers = Vec::new();
        let mut open_out = |p: &Option<std::path::PathBuf>| -> Result<Option<pipe::Receiver>> {
            let Some(p) = p else { return Ok(None) };
            let r = pipe::OpenOptions::new().open_receiver(p).map_err(io_err)?;
            use std::os::unix::fs::OpenOptionsExt;
            keepers.push(std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(p).map_err(io_err)?);
            Ok(Some(r))
        };
        let stdout_r = open_out(&stdout_path)?;
        let stderr_r = open_out(&stderr_path)?;
        let path_str = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let req = ExecProcessRequest {
            container_id: id.into(),
            stdin: path_str(&stdin_path),
            stdout: path_str(&stdout_path),
            stderr: path_str(&stderr_path),
            terminal: tty,
            spec: Some(Any { type_url: PROCESS_TYPE_URL.into(), value }),
            exec_id: exec_id.clone(),
        };
        debug!(container = id, exec_id = %exec_id, ?cmd, tty, "streaming exec in container");
        tasks.exec(with_namespace!(req, ns)).await.map_err(|source| ExecError::Exec { id: id.into(), source })?;
        // Wait is subscribed before Start so a fast exit is not missed.
        let req = WaitRequest { container_id: id.into(), exec_id: exec_id.clone() };
        let mut wait_client = tasks.clone();
        let ns2 = ns.clone();
        let wait = tokio::spawn(async move { wait_client.wait(with_namespace!(req, ns2)).await });
        let req = StartRequest { container_id: id.into(), exec_id: exec_id.clone() };
        if let Err(source) = tasks.start(with_namespace!(req, ns)).await {
            wait.abort();
            return Err(ExecError::Exec { id: id.into(), source });
        }
        drop(keepers);
        let mut copies = Vec::new();
        for (r, mut tx) in [(stdout_r, io.stdout.take()), (stderr_r, io.stderr.take())] {
            if let Some(mut r) = r {
                copies.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                // A client that stopped reading: keep draining, so the process never blocks on a full pipe.
                                if let Some(t) = &tx {
                                    if t.send(bytes::Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                                        tx = None;
                                    }
                                }
                            }
                        }
                    }
                }));
            }
        }
        let mut side = Vec::new();
        if let (Some(mut w), Some(mut rx)) = (stdin_w, io.stdin.take()) {
            let (rt, cid, eid) = (rt.clone(), id.to_string(), exec_id.clone());
            side.push(tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                // The shim holds a writer of its own: EOF reaches the process when
                // we close ours and ask it to close its (what the Go client's CloseIO does).
                drop(w);
                if let Err(e) = rt.close_stdin(&cid, &eid).await {
                    debug!(error = %e, "close exec stdin failed");
                }
            }));
        }
        if let (true, Some(mut rx)) = (tty, io.resize.take()) {
            let (rt, cid, eid) = (rt.clone(), id.to_string(), exec_id.clone());
            side.push(tokio::spawn(async move {
                while let Some((w, h)) = rx.recv().await {
                    if let Err(e) = rt.resize_pty(&cid, &eid, w as u32, h as u32).await {
                        debug!(error = %e, "resize pty failed");
                    }
                }
            }));
        }
        let waited = tokio::select! {
            r = wait => Some(r),
            _ = cancel.cancelled() => None,
        };
        let code = match waited {
            Some(Ok(Ok(r))) => Ok(r.into_inner().exit_status),
            Some(Ok(Err(source))) => Err(ExecError::Wait { id: id.into(), source }),
            Some(Err(_)) => Err(ExecError::Wait { id: id.into(), source: tonic::Status::aborted("wait task failed") }),
            None => {
                debug!(container = id, exec_id = %exec_id, "client went away; killing the exec process");
                let req = KillRequest { container_id: id.into(), exec_id: exec_id.clone(), signal: libc::SIGKILL as u32, all: false };
                let _ = tasks.kill(with_namespace!(req, ns)).await;
                let req = WaitRequest { container_id: id.into(), exec_id: exec_id.clone() };
                let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait(with_namespace!(req, ns))).await;
                Err(ExecError::Cancelled)
            }
        };
        for c in copies {
            let abort = c.abort_handle();
            if tokio::time::timeout(OUTPUT_DRAIN, c).await.is_err() {
                abort.abort();
            }
        }
        for s in side {
            s.abort();
        }
        code
    }
    .await;
    delete_process(&mut tasks, &ns, id, &exec_id).await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    match &result {
        Ok(code) => debug!(container = id, exec_id = %exec_id, exit_code = code, "streaming exec finished"),
        Err(e) => debug!(container = id, exec_id = %exec_id, error = %e, "streaming exec failed"),
    }
    result
}

/// The container's stored OCI spec.
async fn container_spec(rt: &Containers, id: &str) -> Result<serde_json::Value> {
    let ns = rt.namespace().to_string();
    let mut containers = ContainersClient::new(rt.channel());
    let req = GetContainerRequest { id: id.to_string() };
    let c = containers
        .get(with_namespace!(req, ns))
        .await
        .map_err(|source| ExecError::GetContainer { id: id.into(), source })?
        .into_inner()
        .container
        .ok_or_else(|| ExecError::BadSpec { id: id.into() })?;
    c.spec
        .as_ref()
        .and_then(|a| serde_json::from_slice(&a.value).ok())
        .ok_or_else(|| ExecError::BadSpec { id: id.into() })
}

/// The container's process spec (user, env, cwd, capabilities) running `cmd`;
/// `tty` = Some(initial (width, height)) for a terminal.
fn process_spec(spec: &serde_json::Value, id: &str, cmd: &[String], tty: Option<(u16, u16)>) -> Result<Vec<u8>> {
    let mut process = spec.get("process").cloned().filter(|p| p.is_object()).ok_or_else(|| ExecError::BadSpec { id: id.into() })?;
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::json!(tty.is_some());
    if let Some(o) = process.as_object_mut() {
        o.remove("consoleSize");
    }
    if let Some((w, h)) = tty.filter(|(w, h)| *w > 0 && *h > 0) {
        process["consoleSize"] = serde_json::json!({"width": w, "height": h});
    }
    serde_json::to_vec(&process).map_err(|_| ExecError::BadSpec { id: id.into() })
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
