//! Running one CNI plugin binary: lookup in the bin dirs, the `CNI_*`
//! environment, stdin/stdout, a timeout, and decoding the error JSON a plugin
//! prints when it fails.
//!
//! Mirrors libcni `pkg/invoke` (`FindInPath`, `Args.AsEnv`, `RawExec`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::debug;

/// How often a plugin that is being replaced on disk ("text file busy") is
/// retried, one second apart (libcni `RawExec.ExecPlugin`).
const TEXT_FILE_BUSY_RETRIES: usize = 5;

/// Plugin output kept in error messages, so a runaway plugin cannot flood pod events.
const MAX_DIAGNOSTIC_BYTES: usize = 4096;

/// A CNI operation, as passed in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CniCommand {
    /// Attach a container to the network.
    Add,
    /// Detach a container from the network.
    Del,
    /// Verify an attachment.
    Check,
}

impl CniCommand {
    /// The `CNI_COMMAND` value.
    pub fn as_env(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
        }
    }
}

impl fmt::Display for CniCommand {
    /// The word libcni uses in its error messages: `add`, `delete`, `check`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Add => "add",
            Self::Del => "delete",
            Self::Check => "check",
        })
    }
}

/// The per-call runtime parameters handed to a plugin through its environment
/// (libcni `RuntimeConf` + `invoke.Args`).
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    /// `CNI_COMMAND`.
    pub command: CniCommand,
    /// `CNI_CONTAINERID`: the sandbox (pause container) id.
    pub container_id: &'a str,
    /// `CNI_NETNS`: the namespace path, or empty if it is already gone (DEL only).
    pub netns: &'a str,
    /// `CNI_IFNAME`: the interface to create inside the namespace.
    pub ifname: &'a str,
    /// `CNI_ARGS`: `K=V;K=V`.
    pub cni_args: &'a str,
    /// `CNI_PATH`: the bin dirs joined with `:`.
    pub cni_path: &'a str,
}

impl Invocation<'_> {
    /// The `CNI_*` variables, in the order libcni appends them.
    pub fn env(&self) -> [(&'static str, &str); 6] {
        [
            ("CNI_COMMAND", self.command.as_env()),
            ("CNI_CONTAINERID", self.container_id),
            ("CNI_NETNS", self.netns),
            ("CNI_ARGS", self.cni_args),
            ("CNI_IFNAME", self.ifname),
            ("CNI_PATH", self.cni_path),
        ]
    }
}

/// The error document a failing plugin prints on stdout (CNI spec "Error"),
/// or one synthesised from its stderr and exit status (libcni `RawExec.pluginErr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFailure {
    /// The CNI error code (`0` if the plugin printed none).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer details, possibly empty.
    pub details: String,
}

/// Why running a plugin did not produce a successful stdout.
#[derive(Debug)]
pub enum ExecError {
    /// The binary could not be started, or its pipes failed.
    Io(io::Error),
    /// The call exceeded its deadline; the plugin was killed.
    Timeout,
    /// The plugin exited non-zero.
    Failed(PluginFailure),
}

/// Looks `plugin` up in `dirs` in order and returns the first regular file
/// (libcni `invoke.FindInPath`). Blocking (`stat` only).
pub fn find_plugin_blocking(plugin: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if !is_binary_name(plugin) {
        return None;
    }
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
}

/// Async [`find_plugin_blocking`].
pub async fn find_plugin(plugin: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if !is_binary_name(plugin) {
        return None;
    }
    for dir in dirs {
        let p = dir.join(plugin);
        if tokio::fs::metadata(&p).await.is_ok_and(|m| m.is_file()) {
            return Some(p);
        }
    }
    None
}

fn is_binary_name(plugin: &str) -> bool {
    !plugin.is_empty() && !plugin.contains('/') && plugin != "." && plugin != ".."
}

/// Runs the plugin at `path` with `stdin` and the `CNI_*` environment of `inv`
/// on top of the agent's own environment (plugins such as portmap need `PATH`
/// to find iptables). Returns stdout on exit status 0. The child is killed if
/// `timeout` passes or the returned future is dropped.
pub async fn exec_plugin(
    path: &Path,
    stdin: &[u8],
    inv: &Invocation<'_>,
    timeout: Duration,
) -> Result<Vec<u8>, ExecError> {
    let run = async {
        let mut attempt = 0;
        let mut child = loop {
            let mut cmd = Command::new(path);
            cmd.envs(inv.env())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            match cmd.spawn() {
                Ok(child) => break child,
                Err(e)
                    if e.raw_os_error() == Some(libc::ETXTBSY)
                        && attempt < TEXT_FILE_BUSY_RETRIES =>
                {
                    attempt += 1;
                    debug!(plugin = %path.display(), attempt, "plugin binary busy, retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(ExecError::Io(e)),
            }
        };

        let mut pipe = child.stdin.take();
        let feed = async move {
            if let Some(pipe) = pipe.as_mut() {
                // A plugin may exit without reading stdin; its exit status tells the story.
                match pipe.write_all(stdin).await {
                    Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(e),
                    _ => {}
                }
            }
            drop(pipe);
            Ok(())
        };
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        let output = output.map_err(ExecError::Io)?;
        fed.map_err(ExecError::Io)?;
        if !output.stderr.is_empty() {
            debug!(
                plugin = %path.display(),
                stderr = %truncate(&output.stderr),
                "plugin wrote to stderr"
            );
        }
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(ExecError::Failed(parse_failure(
                &output.stdout,
                &output.stderr,
                output.status,
            )))
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        // Dropping `run` drops the child, and kill_on_drop kills it.
        Err(_) => Err(ExecError::Timeout),
    }
}

/// Decodes a failed plugin's stdout as a CNI error, falling back to its stderr.
pub fn parse_failure(stdout: &[u8], stderr: &[u8], status: ExitStatus) -> PluginFailure {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        let msg = if stderr.iter().all(u8::is_ascii_whitespace) {
            format!("netplugin failed with no error message: {status}")
        } else {
            format!(
                "netplugin failed: {:?}: {status}",
                truncate(stderr).trim_end()
            )
        };
        return PluginFailure {
            code: 0,
            msg,
            details: String::new(),
        };
    }
    match serde_json::from_slice::<Value>(stdout) {
        Ok(Value::Object(doc)) => PluginFailure {
            code: doc
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0),
            msg: doc
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            details: doc
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        },
        Ok(_) => PluginFailure {
            code: 0,
            msg: format!(
                "netplugin failed but its diagnostic message is not a JSON object: {:?}",
                truncate(stdout)
            ),
            details: String::new(),
        },
        Err(e) => PluginFailure {
            code: 0,
            msg: format!(
                "netplugin failed but error parsing its diagnostic message {:?}: {e}",
                truncate(stdout)
            ),
            details: String::new(),
        },
    }
}

/// Formats CNI_ARGS pairs as `K=V;K=V` (libcni `invoke.stringify`).
pub fn format_cni_args(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn truncate(bytes: &[u8]) -> String {
    let cut = bytes.get(..MAX_DIAGNOSTIC_BYTES).unwrap_or(bytes);
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > MAX_DIAGNOSTIC_BYTES {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exit(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn cni_error_json_is_decoded() {
        let out = br#"{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate for range 0","details":"no IP addresses available in range set"}"#;
        let f = parse_failure(out, b"ignored", exit(1));
        assert_eq!(
            f,
            PluginFailure {
                code: 11,
                msg: "failed to allocate for range 0".into(),
                details: "no IP addresses available in range set".into(),
            }
        );
    }

    #[test]
    fn error_without_details_or_code_is_tolerated() {
        let f = parse_failure(br#"{"msg":"boom"}"#, b"", exit(1));
        assert_eq!(
            (f.code, f.msg.as_str(), f.details.as_str()),
            (0, "boom", "")
        );
    }

    #[test]
    fn stderr_is_used_when_stdout_is_empty() {
        let f = parse_failure(b"", b"panic: oops\n", exit(2));
        assert!(
            f.msg.starts_with("netplugin failed: \"panic: oops\""),
            "{}",
            f.msg
        );
        assert!(f.msg.contains("exit status: 2"), "{}", f.msg);
        let f = parse_failure(b"\n", b"", exit(3));
        assert!(f.msg.contains("no error message"), "{}", f.msg);
    }

    #[test]
    fn unparsable_stdout_is_quoted() {
        let f = parse_failure(b"not json", b"", exit(1));
        assert!(
            f.msg
                .contains("error parsing its diagnostic message \"not json\""),
            "{}",
            f.msg
        );
    }

    #[test]
    fn env_has_all_six_variables() {
        let inv = Invocation {
            command: CniCommand::Del,
            container_id: "abc",
            netns: "",
            ifname: "eth0",
            cni_args: "IgnoreUnknown=1",
            cni_path: "/opt/cni/bin:/usr/lib/cni",
        };
        let env = inv.env();
        assert_eq!(env[0], ("CNI_COMMAND", "DEL"));
        assert_eq!(env[2], ("CNI_NETNS", ""));
        assert_eq!(env[5], ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"));
        assert_eq!(CniCommand::Del.to_string(), "delete");
    }

    #[test]
    fn plugin_lookup_follows_dir_order_and_rejects_paths() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        std::fs::write(b.path().join("bridge"), b"").expect("write");
        std::fs::create_dir(a.path().join("bridge")).expect("mkdir");
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(
            find_plugin_blocking("bridge", &dirs),
            Some(b.path().join("bridge"))
        );
        std::fs::write(a.path().join("loopback"), b"").expect("write");
        std::fs::write(b.path().join("loopback"), b"").expect("write");
        assert_eq!(
            find_plugin_blocking("loopback", &dirs),
            Some(a.path().join("loopback"))
        );
        assert_eq!(find_plugin_blocking("../bridge", &dirs), None);
        assert_eq!(find_plugin_blocking("", &dirs), None);
        assert_eq!(find_plugin_blocking("absent", &dirs), None);
    }

    #[tokio::test]
    async fn plugin_stdin_env_stdout_and_failure_roundtrip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("echo-plugin");
        std::fs::write(
            &script,
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = DEL ]; then echo '{\"code\":7,\"msg\":\"nope\"}'; exit 1; fi\n\
             printf '{\"args\":\"%s\",\"stdin\":' \"$CNI_ARGS\"; cat; printf '}'\n",
        )
        .expect("write script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let mut inv = Invocation {
            command: CniCommand::Add,
            container_id: "c1",
            netns: "/var/run/netns/x",
            ifname: "eth0",
            cni_args: "A=1;B=2",
            cni_path: "/nowhere",
        };
        let out = exec_plugin(&script, br#"{"x":1}"#, &inv, Duration::from_secs(10))
            .await
            .expect("plugin ok");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v, serde_json::json!({"args":"A=1;B=2","stdin":{"x":1}}));

        inv.command = CniCommand::Del;
        match exec_plugin(&script, b"{}", &inv, Duration::from_secs(10)).await {
            Err(ExecError::Failed(f)) => assert_eq!((f.code, f.msg.as_str()), (7, "nope")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_hanging_plugin_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("hang");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").expect("write");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let inv = Invocation {
            command: CniCommand::Add,
            container_id: "c1",
            netns: "",
            ifname: "eth0",
            cni_args: "",
            cni_path: "",
        };
        let started = std::time::Instant::now();
        let r = exec_plugin(&script, b"{}", &inv, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(ExecError::Timeout)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
