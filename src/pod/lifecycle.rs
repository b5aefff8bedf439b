//! Container lifecycle hooks and the container kill sequence, as upstream's
//! pkg/kubelet/lifecycle/handlers.go and kuberuntime_container.go
//! (startContainer's postStart, killContainer, executePreStopHook):
//! `postStart` runs right after the task starts and a failure kills the
//! container (`FailedPostStartHook`, waiting reason `PostStartHookError`);
//! `preStop` runs before the stop signal inside the grace period
//! (`FailedPreStopHook` on failure), the rest of the grace period (at least 2 s)
//! goes to the image's STOPSIGNAL, then SIGKILL.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::manager::Context;
use super::{format_pod, Kind};
use crate::events::field_path;
use crate::probe::http::HttpRequest;
use crate::runtime::containers::{labels, ContainerRecord};
use crate::runtime::exec::{exec, ExecError};

/// The container label holding the signal that stops it (the image's STOPSIGNAL).
pub const STOP_SIGNAL_LABEL: &str = "io.rkubelet.stop-signal";

/// Upstream's minimumGracePeriodInSeconds: containers always get this long after the stop signal.
pub const MINIMUM_GRACE_SECONDS: i64 = 2;

/// Event reasons (pkg/kubelet/events).
pub const FAILED_POST_START_HOOK: &str = "FailedPostStartHook";
pub const FAILED_PRE_STOP_HOOK: &str = "FailedPreStopHook";

/// The grace period left for the stop signal after a preStop hook that took
/// `hook_secs` whole seconds (killContainer: never below the minimum).
pub fn remaining_grace(grace_secs: i64, hook_secs: i64) -> i64 {
    (grace_secs - hook_secs).max(MINIMUM_GRACE_SECONDS)
}

/// A directory for exec output files of this pod.
pub fn scratch_dir(ctx: &Context, pod_uid: &str) -> PathBuf {
    super::store::pod_dir(&ctx.config.root_dir, pod_uid).join("exec")
}

/// The pod's first IP, from its sandbox record.
pub fn pod_ip(records: &[ContainerRecord]) -> Option<String> {
    records
        .iter()
        .filter(|r| r.label(labels::KIND) == Some("sandbox"))
        .filter_map(|r| r.label(labels::POD_IPS))
        .find_map(|ips| ips.split(',').find(|s| !s.is_empty()).map(String::from))
}

/// Go's `%v` of a string slice: `[a b c]`.
fn go_list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

/// Runs a hook handler (HandlerRunner.Run). Err carries upstream's message.
pub async fn run_hook(ctx: &Context, pod: &Pod, c: &Container, container_id: &str, pod_ip: Option<&str>, h: &LifecycleHandler) -> Result<(), String> {
    if let Some(e) = &h.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let uid = pod.metadata.uid.as_deref().unwrap_or("");
        let fail = |err: String, out: &str| {
            format!(
                "Exec lifecycle hook ({}) for Container {:?} in Pod {:?} failed - error: {err}, message: {out:?}",
                go_list(&cmd),
                c.name,
                format_pod(pod)
            )
        };
        return match exec(&ctx.containers, container_id, &cmd, Duration::ZERO, &scratch_dir(ctx, uid)).await {
            Ok(o) if o.exit_code == 0 => Ok(()),
            // The CRI client's error for a non-zero exit.
            Ok(o) => Err(fail(format!("command '{}' exited with {}: {}", cmd.join(" "), o.exit_code, o.output), &o.output)),
            Err(e @ ExecError::Timeout { .. }) => Err(fail(e.to_string(), "")),
            Err(e) => Err(fail(e.to_string(), "")),
        };
    }
    if let Some(g) = &h.http_get {
        let path = g.path.clone().unwrap_or_default();
        let fail = |err: String| format!("HTTP lifecycle hook ({path}) for Container {:?} in Pod {:?} failed - error: {err}", c.name, format_pod(pod));
        let req = HttpRequest::from_action(g, c, pod_ip, "kube-lifecycle").map_err(|e| fail(e.to_string()))?;
        // Only a failed request fails the hook; the status code does not (upstream).
        return match crate::probe::http::get_once(&req).await {
            Ok(_) => Ok(()),
            Err(e) => Err(fail(format!("Get {:?}: {e}", req.url()))),
        };
    }
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        return Ok(());
    }
    Err(format!("Cannot run handler: invalid handler: {h:?}"))
}

/// Resolves when the pod is deleted (or gone) or the agent shuts down: what
/// cancels a running hook, as upstream cancels a sync's context on termination.
pub async fn until_deleted(mut rx: watch::Receiver<Option<Arc<Pod>>>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => {
                if r.is_err() || rx.borrow().as_ref().is_none_or(|p| p.metadata.deletion_timestamp.is_some()) {
                    return;
                }
            }
        }
    }
}

/// Runs the container's postStart hook, if any, unless `abort` resolves first.
/// On failure records `FailedPostStartHook`, kills the container and returns
/// upstream's message (the caller reports it as waiting reason `PostStartHookError`).
pub async fn post_start(
    ctx: &Context,
    pod: &Pod,
    c: &Container,
    kind: Kind,
    container_id: &str,
    pod_ip: Option<&str>,
    abort: impl Future<Output = ()>,
) -> Option<String> {
    let h = c.lifecycle.as_ref()?.post_start.as_ref()?;
    let result = tokio::select! {
        r = run_hook(ctx, pod, c, container_id, pod_ip, h) => r,
        _ = abort => {
            info!(container = %c.name, "postStart hook abandoned: the pod is terminating");
            return None;
        }
    };
    let msg = result.err()?;
    warn!(container = %c.name, message = %msg, "postStart hook failed");
    ctx.recorder.warning(pod, field_path(&c.name, kind == Kind::Init), FAILED_POST_START_HOOK, msg.clone());
    let records = ctx.containers.list(pod.metadata.uid.as_deref()).await.unwrap_or_default();
    if let Some(r) = records.iter().find(|r| r.id == container_id) {
        kill_container(ctx, pod, r, c, kind, pod_grace(pod), Some(FAILED_POST_START_HOOK.to_string()), pod_ip).await;
    }
    Some(msg)
}

/// The pod's grace period (setTerminationGracePeriod without the probe override).
pub fn pod_grace(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
}

/// killContainer: `Killing` event (`message` or "Stopping container <name>"),
/// preStop within `grace_secs`, the stop signal with what is left (at least
/// 2 s), SIGKILL when that runs out.
#[allow(clippy::too_many_arguments)]
pub async fn kill_container(ctx: &Context, pod: &Pod, r: &ContainerRecord, c: &Container, kind: Kind, grace_secs: i64, message: Option<String>, pod_ip: Option<&str>) {
    let rt = &ctx.containers;
    let fp = if kind == Kind::Ephemeral { crate::events::ephemeral_field_path(&c.name) } else { field_path(&c.name, kind == Kind::Init) };
    ctx.recorder.normal(pod, fp.clone(), crate::events::reason::KILLING, message.unwrap_or_else(|| format!("Stopping container {}", c.name)));
    let grace = grace_secs.max(0);
    let mut hook_secs = 0;
    if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).filter(|_| grace > 0) {
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_secs(grace as u64), run_hook(ctx, pod, c, &r.id, pod_ip, h)).await {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                warn!(container = %c.name, message = %msg, "preStop hook failed");
                ctx.recorder.warning(pod, fp.clone(), FAILED_PRE_STOP_HOOK, msg);
            }
            Err(_) => info!(container = %c.name, grace_seconds = grace, "preStop hook not completed in grace period"),
        }
        hook_secs = started.elapsed().as_secs() as i64;
    }
    let grace = remaining_grace(grace, hook_secs);
    let sig = r.label(STOP_SIGNAL_LABEL).and_then(|s| s.parse().ok()).unwrap_or(libc::SIGTERM as u32);
    if let Err(e) = rt.kill(&r.id, sig, false).await {
        warn!(container = %c.name, error = %e, "stop signal failed");
    }
    match rt.wait(&r.id, Duration::from_secs(grace as u64)).await {
        Ok(Some(_)) => {}
        _ => {
            let _ = rt.kill(&r.id, libc::SIGKILL as u32, true).await;
            let _ = rt.wait(&r.id, Duration::from_secs(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prestop_time_comes_out_of_the_grace_period_with_a_two_second_floor() {
        assert_eq!(remaining_grace(30, 5), 25);
        assert_eq!(remaining_grace(30, 0), 30);
        assert_eq!(remaining_grace(5, 4), 2);
        assert_eq!(remaining_grace(5, 10), 2);
        assert_eq!(remaining_grace(0, 0), 2);
    }

    #[test]
    fn grace_prefers_the_deletion_grace_period() {
        let mut p = Pod::default();
        assert_eq!(pod_grace(&p), 30);
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec { termination_grace_period_seconds: Some(10), ..Default::default() });
        assert_eq!(pod_grace(&p), 10);
        p.metadata.deletion_grace_period_seconds = Some(3);
        assert_eq!(pod_grace(&p), 3);
    }

    #[test]
    fn go_lists_print_like_fmt_v() {
        assert_eq!(go_list(&["sh".into(), "-c".into(), "exit 1".into()]), "[sh -c exit 1]");
    }
}
