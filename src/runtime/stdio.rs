//! A container's stdio, as the task gets it from containerd's shim.
//!
//! Most containers have no stdin: stdout and stderr go to the logger binary
//! (`binary://`, CRI-format logs written next to the container by the shim).
//! A container with `stdin: true` gets a stdin FIFO under its pod directory,
//! which `/attach` writes into; the shim holds a writer of its own on it, so the
//! process sees EOF only on CloseIO, never because the agent restarted. The
//! shim joins that stdin to the process only through a terminal (`tty: true`,
//! where it still runs the logger binary) or through FIFO outputs. So a
//! `stdin` container without a terminal gets stdout/stderr FIFOs too, read by
//! the same logger started by the agent as its own process (`setsid`, not a
//! task of the agent), so its logs survive an agent restart the same way.

use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::net::unix::pipe;
use tracing::debug;

use crate::logs::driver;

/// Errors preparing a container's stdio.
#[derive(Debug, Error)]
pub enum StdioError {
    #[error("failed to prepare stdio {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// What CreateTask gets: the stdio paths or URIs and whether to allocate a terminal.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TaskIo {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// `<pod dir>/io/<container id>`: the FIFOs of a container that has stdin.
pub fn dir(root: &Path, pod_uid: &str, container_id: &str) -> PathBuf {
    crate::pod::store::pod_dir(root, pod_uid).join("io").join(container_id)
}

/// The container's stdin FIFO (it exists only for containers with `stdin: true`).
pub fn stdin_path(root: &Path, pod_uid: &str, container_id: &str) -> PathBuf {
    dir(root, pod_uid, container_id).join("stdin")
}

/// A container's stdio, prepared before its task is created.
pub struct Prepared {
    pub task: TaskIo,
    dir: Option<PathBuf>,
    /// Our end on the stdin FIFO, so the shim can open its own without blocking;
    /// closed once the task runs.
    stdin_keeper: Option<pipe::Sender>,
    /// The logger we started for FIFO outputs.
    logger: Option<tokio::process::Child>,
}

/// Prepares the stdio of container `id`: logs at `log`; a stdin FIFO with
/// `stdin`; a terminal with `tty`.
pub fn prepare(root: &Path, pod_uid: &str, id: &str, log: &driver::Spec, stdin: bool, tty: bool) -> Result<Prepared, StdioError> {
    let exe = driver::logger_binary();
    let log_uri = driver::uri(&exe, log);
    let mut p = Prepared { task: TaskIo { stdout: log_uri.clone(), stderr: log_uri, terminal: tty, ..Default::default() }, dir: None, stdin_keeper: None, logger: None };
    if !stdin {
        return Ok(p);
    }
    let d = dir(root, pod_uid, id);
    let err = |path: &Path| {
        let path = path.display().to_string();
        move |source| StdioError::Io { path, source }
    };
    std::fs::create_dir_all(&d).map_err(err(&d))?;
    p.dir = Some(d.clone());
    let fifo = |name: &str| -> Result<PathBuf, StdioError> {
        let path = d.join(name);
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| StdioError::Io { path: path.display().to_string(), source: e.into() })?;
        Ok(path)
    };
    let stdin_path = fifo("stdin")?;
    p.stdin_keeper = Some(pipe::OpenOptions::new().read_write(true).open_sender(&stdin_path).map_err(err(&stdin_path))?);
    p.task.stdin = stdin_path.display().to_string();
    if !tty {
        let (out, errp) = (fifo("stdout")?, fifo("stderr")?);
        // The logger opens both FIFOs for reading (blocking until the shim opens
        // its writers) and ends at EOF, when the shim closes them after the process.
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg(driver::ARG).arg(log.encode()).arg(&out).arg(&errp);
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        // SAFETY: setsid is async-signal-safe; it detaches the logger from the agent's session.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from)
            });
        }
        p.logger = Some(cmd.spawn().map_err(err(&exe))?);
        p.task.stdout = out.display().to_string();
        p.task.stderr = errp.display().to_string();
    }
    Ok(p)
}

impl Prepared {
    /// The task is running: the shim holds the FIFOs now. The logger is reaped
    /// when it ends (if the agent is still there).
    pub fn started(mut self) {
        self.stdin_keeper = None;
        if let Some(mut child) = self.logger.take() {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
    }

    /// The task did not start: end our logger (its FIFOs never got a writer)
    /// and remove the FIFOs.
    pub async fn failed(mut self) {
        if let Some(mut child) = self.logger.take() {
            let _ = child.kill().await;
        }
        if let Some(d) = self.dir.take() {
            if let Err(e) = tokio::fs::remove_dir_all(&d).await {
                debug!(dir = %d.display(), error = %e, "removing stdio FIFOs failed");
            }
        }
    }
}

/// Removes the FIFOs of a deleted container.
pub fn remove(root: &Path, pod_uid: &str, container_id: &str) {
    let _ = std::fs::remove_dir_all(dir(root, pod_uid, container_id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_stdin_the_logger_binary_gets_both_outputs() {
        let t = tempfile::tempdir().unwrap();
        let spec = driver::Spec { path: t.path().join("0.log"), max_size: 1024, max_files: 2 };
        let p = prepare(t.path(), "u", "c1", &spec, false, true).unwrap();
        assert!(p.task.stdout.starts_with("binary://") && p.task.stdout == p.task.stderr);
        assert!(p.task.stdin.is_empty() && p.task.terminal);
        assert!(!dir(t.path(), "u", "c1").exists());
    }

    #[tokio::test]
    async fn stdin_with_a_terminal_is_a_fifo_next_to_the_logger_binary() {
        let t = tempfile::tempdir().unwrap();
        let spec = driver::Spec { path: t.path().join("0.log"), max_size: 1024, max_files: 2 };
        let p = prepare(t.path(), "u", "c1", &spec, true, true).unwrap();
        let stdin = stdin_path(t.path(), "u", "c1");
        assert_eq!(p.task.stdin, stdin.display().to_string());
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&stdin).unwrap().file_type().is_fifo());
        assert!(p.task.stdout.starts_with("binary://"));
        p.failed().await;
        assert!(!stdin.exists());
    }
}
