//! The kubelet's streaming endpoints (pkg/kubelet/server/server.go getExec,
//! getAttach, getPortForward): `/exec/{ns}/{pod}[/{uid}]/{container}?command=…`,
//! `/attach/{ns}/{pod}[/{uid}]/{container}` and `/portForward/{ns}/{pod}[/{uid}]`,
//! GET or POST, upgraded to SPDY/3.1 (what kube-apiserver speaks to kubelets)
//! or to a WebSocket (direct clients, kubectl through a proxying API server).
//! The command runs through containerd's task Exec with FIFOs
//! ([`crate::runtime::exec::exec_streaming`]); port-forward dials inside the
//! pod's network namespace. Each session is its own task: a slow or vanished
//! client holds only that task, and its exec process is killed when it goes.

pub mod idle;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod websocket;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tracing::{debug, info};

use self::remotecommand::{Io, Outcome, Runner};
use super::{text, Body, State};
use crate::runtime::containers::{labels, Containers};

/// Which streams the client asked for (remotecommand.NewOptions: `stdin=1` etc.).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Options {
    /// As upstream: `input`, `output`, `error`, `tty` (api.Exec*Param), and only
    /// `1` turns one on; a tty has no separate stderr.
    pub fn from_query(q: &[(String, String)]) -> Result<Options, String> {
        let on = |k: &str| q.iter().any(|(n, v)| n == k && v == "1");
        let tty = on("tty");
        let o = Options { stdin: on("input"), stdout: on("output"), stderr: on("error") && !tty, tty };
        if !o.stdin && !o.stdout && !o.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(o)
    }
}

/// A terminal size as remotecommand.TerminalSize encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// `/exec`, `/attach` or `/portForward` with the path parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    Exec { ns: &'a str, pod: &'a str, uid: Option<&'a str>, container: &'a str },
    Attach { ns: &'a str, pod: &'a str, uid: Option<&'a str>, container: &'a str },
    PortForward { ns: &'a str, pod: &'a str, uid: Option<&'a str> },
}

pub(crate) fn route(path: &str) -> Option<Route<'_>> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs.iter().skip(1).any(|s| s.is_empty()) {
        return None;
    }
    match segs.as_slice() {
        ["exec", ns, pod, c] => Some(Route::Exec { ns, pod, uid: None, container: c }),
        ["exec", ns, pod, uid, c] => Some(Route::Exec { ns, pod, uid: Some(uid), container: c }),
        ["attach", ns, pod, c] => Some(Route::Attach { ns, pod, uid: None, container: c }),
        ["attach", ns, pod, uid, c] => Some(Route::Attach { ns, pod, uid: Some(uid), container: c }),
        ["portForward", ns, pod] => Some(Route::PortForward { ns, pod, uid: None }),
        ["portForward", ns, pod, uid] => Some(Route::PortForward { ns, pod, uid: Some(uid) }),
        _ => None,
    }
}

/// Whether `path` is one of the streaming endpoints (so the server hands it the whole request).
pub fn is_streaming(path: &str) -> bool {
    ["/exec/", "/attach/", "/portForward/"].iter().any(|p| path.starts_with(p))
}

fn header_values(req: &Request<Incoming>, name: &str) -> Vec<String> {
    req.headers().get_all(name).iter().filter_map(|v| v.to_str().ok()).map(String::from).collect()
}

fn has_token(req: &Request<Incoming>, name: &str, token: &str) -> bool {
    header_values(req, name).iter().flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>()).any(|t| t == token)
}

/// A pod's running container as the saved status shows it: (pod, containerd id).
struct Found {
    pod: k8s_openapi::api::core::v1::Pod,
    container_id: Option<String>,
}

fn find(root: &Path, ns: &str, name: &str, container: Option<&str>) -> Option<Found> {
    let pod = crate::pod::store::load_all(root).into_iter().find(|p| p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name))?;
    let container_id = container.and_then(|c| {
        let st = pod.status.as_ref()?;
        st.container_statuses
            .iter()
            .flatten()
            .chain(st.init_container_statuses.iter().flatten())
            .chain(st.ephemeral_container_statuses.iter().flatten())
            .find(|s| s.name == c && s.state.as_ref().is_some_and(|s| s.running.is_some()))
            .and_then(|s| s.container_id.as_deref())
            .map(|id| id.rsplit("://").next().unwrap_or(id).to_string())
    });
    Some(Found { pod, container_id })
}

/// The running container `container` of pod `ns/name` (and `uid`, if given): the pod
/// and the container's containerd id, or upstream's answer: 404 `pod does not exist`;
/// a missing or stopped container, or another UID, 500 `container not found` (the
/// kubelet's GetExec/GetAttach/RunInContainer errors go through WriteError).
fn running_container(root: &Path, ns: &str, name: &str, uid: Option<&str>, container: &str) -> Result<(k8s_openapi::api::core::v1::Pod, String), Box<Response<Body>>> {
    let Some(found) = find(root, ns, name, Some(container)) else {
        return Err(Box::new(text(StatusCode::NOT_FOUND, "pod does not exist")));
    };
    let uid_ok = uid.is_none_or(|u| found.pod.metadata.uid.as_deref() == Some(u));
    match found.container_id.filter(|_| uid_ok) {
        Some(cid) => Ok((found.pod, cid)),
        None => Err(Box::new(text(StatusCode::INTERNAL_SERVER_ERROR, format!("container not found ({container:?})")))),
    }
}

/// `POST /run/{ns}/{pod}[/{uid}]/{container}?cmd=...`: runs the command (split on
/// spaces, as upstream's getRun does for legacy reasons) in the container and
/// answers its combined output (upstream's RunInContainer + writeJSONResponse).
pub async fn run(state: Arc<State>, method: &http::Method, path: &str, query: &[(String, String)]) -> Response<Body> {
    if method != http::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
    }
    let parts: Vec<&str> = path.trim_start_matches("/run/").split('/').filter(|s| !s.is_empty()).collect();
    let (ns, pod, uid, container) = match parts.as_slice() {
        [ns, pod, c] => (*ns, *pod, None, *c),
        [ns, pod, uid, c] => (*ns, *pod, Some(*uid), *c),
        _ => return text(StatusCode::NOT_FOUND, "404 page not found"),
    };
    let Some(rt) = state.containers.clone() else { return text(StatusCode::SERVICE_UNAVAILABLE, "container runtime is not available") };
    let cmd: Vec<String> = query.iter().find(|(k, _)| k == "cmd").map(|(_, v)| v.split(' ').filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default();
    if cmd.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify a command with the cmd query parameter");
    }
    let (_, cid) = match running_container(&state.root_dir, ns, pod, uid, container) {
        Ok(f) => f,
        Err(answer) => return *answer,
    };
    info!(pod = %format!("{ns}/{pod}"), container, ?cmd, "run");
    let scratch = state.root_dir.join("streaming-exec");
    match crate::runtime::exec::exec(&rt, &cid, &cmd, Duration::from_secs(60), &scratch).await {
        Ok(out) => Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "application/json")
            .body(super::full(out.output))
            .unwrap_or_else(|_| Response::new(super::full(""))),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Serves a streaming request (already authenticated and authorized).
pub async fn serve(state: Arc<State>, req: Request<Incoming>, query: Vec<(String, String)>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let Some(r) = route(&path) else { return text(StatusCode::NOT_FOUND, "404 page not found") };
    let Some(rt) = state.containers.clone() else { return text(StatusCode::SERVICE_UNAVAILABLE, "container runtime is not available") };
    match r {
        Route::Exec { ns, pod, uid, container } | Route::Attach { ns, pod, uid, container } => {
            let attach = matches!(r, Route::Attach { .. });
            let opts = match Options::from_query(&query) {
                Ok(o) => o,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            };
            let cmd: Vec<String> = query.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
            if !attach && cmd.is_empty() {
                return text(StatusCode::BAD_REQUEST, "you must specify at least one command for the container");
            }
            let (found_pod, cid) = match running_container(&state.root_dir, ns, pod, uid, container) {
                Ok(f) => f,
                Err(answer) => return *answer,
            };
            let runner: Runner = if attach {
                let uid = found_pod.metadata.uid.clone().unwrap_or_default();
                let spec = found_pod.spec.as_ref();
                // Ephemeral containers too (`kubectl debug -it` attaches to one).
                let ephemeral = spec.and_then(|s| s.ephemeral_containers.iter().flatten().find(|e| e.name == container)).map(crate::pod::ephemeral_as_container);
                let c = spec.and_then(|s| s.containers.iter().chain(s.init_containers.iter().flatten()).find(|c| c.name == container)).cloned().or(ephemeral);
                let c = c.as_ref();
                let stdin_fifo = crate::runtime::stdio::stdin_path(&state.root_dir, &uid, &cid);
                let target = AttachTarget {
                    logs: state.pod_logs_dir.join(format!("{ns}_{pod}_{uid}")).join(container),
                    root: state.root_dir.clone(),
                    container: container.to_string(),
                    // As containerd's CRI: stdin only for a container created with it.
                    stdin: (c.and_then(|c| c.stdin) == Some(true) && stdin_fifo.exists()).then_some(stdin_fifo),
                    stdin_once: c.and_then(|c| c.stdin_once) == Some(true),
                    tty: c.and_then(|c| c.tty) == Some(true),
                    uid,
                    cid: cid.clone(),
                };
                info!(pod = %format!("{ns}/{pod}"), container, stdin = target.stdin.is_some(), tty = target.tty, "attach");
                Box::new(move |io| Box::pin(attach_session(io, rt, target)))
            } else {
                let (scratch, c) = (state.root_dir.join("streaming-exec"), cid.clone());
                info!(pod = %format!("{ns}/{pod}"), container, ?cmd, tty = opts.tty, "exec");
                Box::new(move |io| Box::pin(run_exec(rt, c, cmd, opts.tty, io, scratch)))
            };
            upgrade_remotecommand(req, opts, runner, state.streaming_idle_timeout)
        }
        Route::PortForward { ns, pod, uid } => {
            let Some(found) = find(&state.root_dir, ns, pod, None) else {
                return text(StatusCode::NOT_FOUND, "pod does not exist");
            };
            let pod_uid = found.pod.metadata.uid.clone().unwrap_or_default();
            if uid.is_some_and(|u| u != pod_uid) {
                return text(StatusCode::NOT_FOUND, "pod does not exist");
            }
            let Some(netns) = pod_netns(&rt, &pod_uid).await else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, format!("failed to find sandbox for pod {ns}/{pod}"));
            };
            info!(pod = %format!("{ns}/{pod}"), netns = %netns.display(), "port-forward");
            let target = portforward::Target { pod: pod.to_string(), uid: pod_uid, netns };
            if has_token(&req, "connection", "upgrade") && has_token(&req, "upgrade", "websocket") {
                let ports = match portforward::query_ports(&query) {
                    Ok(p) => p,
                    Err(e) => return text(StatusCode::BAD_REQUEST, e),
                };
                return upgrade_ws(req, websocket::PORT_FORWARD_PROTOCOLS, state.streaming_idle_timeout, move |io, p| Box::pin(portforward::serve_ws(io, p, ports, target)));
            }
            upgrade_spdy(req, &[portforward::PROTOCOL], state.streaming_idle_timeout, move |io, _| Box::pin(portforward::serve(io, target)))
        }
    }
}

/// The network namespace of a pod's sandbox, from its containerd labels.
async fn pod_netns(rt: &Containers, uid: &str) -> Option<PathBuf> {
    let list = rt.list(Some(uid)).await.ok()?;
    list.iter().filter_map(|c| c.label(labels::NETNS)).find(|p| !p.is_empty()).map(PathBuf::from)
}

async fn run_exec(rt: Containers, id: String, cmd: Vec<String>, tty: bool, io: Io, scratch: PathBuf) -> Outcome {
    let resize = io.resize.map(|mut r| {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(s) = r.recv().await {
                if tx.send((s.width, s.height)).await.is_err() {
                    return;
                }
            }
        });
        rx
    });
    let sio = crate::runtime::exec::StreamIo { stdin: io.stdin, stdout: io.stdout, stderr: io.stderr, resize };
    match crate::runtime::exec::exec_streaming(&rt, &id, &cmd, tty, sio, &scratch, io.gone).await {
        Ok(code) => Outcome::Exited { code, cmd: cmd.join(" ") },
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// What `/attach` joins: the container's log (its output), its stdin FIFO if it
/// has one, and how its stdin ends.
struct AttachTarget {
    logs: PathBuf,
    root: PathBuf,
    uid: String,
    container: String,
    cid: String,
    stdin: Option<PathBuf>,
    stdin_once: bool,
    tty: bool,
}

/// Attach: the client's stdin into the container's stdin FIFO; the container's
/// output from now on, read from its CRI log as the logger writes it; resizes
/// to its terminal. As containerd's CRI: when the client's stdin ends, a
/// `stdinOnce` container without a terminal gets EOF (CloseIO) and the output
/// keeps flowing until it exits; otherwise only this session ends. The session
/// also ends with the container (another attempt, or not running).
async fn attach_session(io: Io, rt: Containers, t: AttachTarget) -> Outcome {
    let Io { stdin, stdout, stderr, resize, gone } = io;
    let ended = gone.child_token();
    let mut side = Vec::new();
    if let (Some(mut rx), Some(path)) = (stdin, t.stdin.clone()) {
        let (rt, cid, ended, close) = (rt.clone(), t.cid.clone(), ended.clone(), t.stdin_once && !t.tty);
        side.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // The shim holds the FIFO's reader for as long as the task lives.
            match tokio::net::unix::pipe::OpenOptions::new().open_sender(&path) {
                Ok(mut w) => {
                    while let Some(b) = rx.recv().await {
                        if let Err(e) = w.write_all(&b).await {
                            debug!(container = %cid, error = %e, "attach: writing stdin failed");
                            break;
                        }
                    }
                }
                Err(e) => debug!(container = %cid, error = %e, "attach: container stdin is closed"),
            }
            if close {
                if let Err(e) = rt.close_stdin(&cid, "").await {
                    debug!(container = %cid, error = %e, "attach: closing stdin failed");
                }
            } else {
                ended.cancel();
            }
        }));
    }
    if let (true, Some(mut rx)) = (t.tty, resize) {
        let (rt, cid) = (rt.clone(), t.cid.clone());
        side.push(tokio::spawn(async move {
            while let Some(s) = rx.recv().await {
                if let Err(e) = rt.resize_pty(&cid, "", s.width.into(), s.height.into()).await {
                    debug!(container = %cid, error = %e, "attach: resize failed");
                }
            }
        }));
    }
    follow_output(stdout, stderr, &ended, &t).await;
    for s in side {
        s.abort();
    }
    Outcome::Exited { code: 0, cmd: String::new() }
}

/// Sends what the logger appends to the container's current log until `ended`
/// or the container stops running.
async fn follow_output(stdout: Option<tokio::sync::mpsc::Sender<Bytes>>, stderr: Option<tokio::sync::mpsc::Sender<Bytes>>, ended: &tokio_util::sync::CancellationToken, t: &AttachTarget) {
    let Some(attempt) = current_attempt(&t.root, &t.uid, &t.container) else { return };
    let file = t.logs.join(format!("{attempt}.log"));
    let mut offset = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let mut ticks = 0u64;
    loop {
        let stop = tokio::select! {
            _ = ended.cancelled() => true,
            _ = tokio::time::sleep(Duration::from_millis(100)) => false,
        };
        ticks += 1;
        let chunk = super::read_from(&file, &mut offset);
        for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Some(e) = crate::logs::parse(line) else { continue };
            let mut text = e.text;
            if e.full {
                text.push(b'\n');
            }
            let out = if e.stream == "stderr" && !t.tty { stderr.as_ref().or(stdout.as_ref()) } else { stdout.as_ref() };
            if let Some(o) = out {
                if o.send(Bytes::from(text)).await.is_err() {
                    return;
                }
            }
        }
        if stop || (ticks.is_multiple_of(5) && current_attempt(&t.root, &t.uid, &t.container) != Some(attempt)) {
            return;
        }
    }
}

fn current_attempt(root: &Path, uid: &str, container: &str) -> Option<i32> {
    let pod = crate::pod::store::load_pod(root, uid)?;
    let st = pod.status?;
    let all = st.container_statuses.into_iter().flatten().chain(st.init_container_statuses.into_iter().flatten()).chain(st.ephemeral_container_statuses.into_iter().flatten());
    all.into_iter().find(|c| c.name == container && c.state.as_ref().is_some_and(|s| s.running.is_some())).map(|c| c.restart_count)
}

/// Upgrades to a WebSocket or SPDY and runs the remote command protocol.
fn upgrade_remotecommand(req: Request<Incoming>, opts: Options, runner: Runner, idle: Duration) -> Response<Body> {
    if has_token(&req, "connection", "upgrade") && has_token(&req, "upgrade", "websocket") {
        return upgrade_ws(req, websocket::PROTOCOLS, idle, move |io, p| Box::pin(remotecommand::serve_ws(io, p, opts, runner)));
    }
    upgrade_spdy(req, remotecommand::SPDY_PROTOCOLS, idle, move |io, protocol| Box::pin(remotecommand::serve_spdy(io, protocol, opts, runner)))
}

type Upgraded = idle::IdleIo<TokioIo<hyper::upgrade::Upgraded>>;

/// The WebSocket handshake (wsstream.Conn.Open): 101 with the accept key and
/// the negotiated sub-protocol, then `serve` on the upgraded connection.
fn upgrade_ws<F>(req: Request<Incoming>, supported: &'static [&'static str], idle: Duration, serve: F) -> Response<Body>
where
    F: FnOnce(Upgraded, websocket::Protocol) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + 'static,
{
    let protocol = match websocket::negotiate_among(&header_values(&req, "sec-websocket-protocol"), supported) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Some(key) = req.headers().get("sec-websocket-key").map(|k| k.as_bytes().to_vec()) else {
        return text(StatusCode::BAD_REQUEST, "websocket: not a websocket handshake: 'Sec-WebSocket-Key' header is missing or blank");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let mut b = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS).header("Connection", "Upgrade").header("Upgrade", "websocket").header("Sec-WebSocket-Accept", accept);
    if !protocol.name.is_empty() {
        b = b.header("Sec-WebSocket-Protocol", protocol.name);
    }
    let resp = b.body(super::full("")).unwrap_or_else(|_| Response::new(super::full("")));
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => serve(idle::IdleIo::new(TokioIo::new(up), idle), protocol).await,
            Err(e) => debug!(error = %e, "websocket upgrade failed"),
        }
    });
    resp
}

/// wsstream's reader protocols for a byte stream (pod logs): raw binary
/// messages, or base64 text messages; none requested means binary.
pub const LOG_PROTOCOLS: &[&str] = &["binary.k8s.io", "base64.binary.k8s.io"];

/// Whether `req` asks for a WebSocket upgrade.
pub fn is_websocket(req: &Request<Incoming>) -> bool {
    has_token(req, "connection", "upgrade") && has_token(req, "upgrade", "websocket")
}

/// A byte stream over a WebSocket upgrade, as wsstream.Reader serves pod logs:
/// each chunk of `body` one message (binary, or base64 text), then a close.
/// What the client sends is read and dropped (pings are answered).
pub fn upgrade_byte_stream(req: Request<Incoming>, body: Body, idle: Duration) -> Response<Body> {
    upgrade_ws(req, LOG_PROTOCOLS, idle, move |io, p| {
        Box::pin(async move {
            use futures::{SinkExt, StreamExt};
            use http_body_util::BodyExt;
            use tokio_tungstenite::tungstenite::protocol::Role;
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            let (mut tx, mut rx) = ws.split();
            let mut body = body;
            let reader = async { while let Some(Ok(_)) = rx.next().await {} };
            let writer = async {
                while let Some(Ok(frame)) = body.frame().await {
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    let m = if p.base64 {
                        use base64::Engine;
                        tokio_tungstenite::tungstenite::Message::text(base64::engine::general_purpose::STANDARD.encode(&data))
                    } else {
                        tokio_tungstenite::tungstenite::Message::binary(data)
                    };
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(tokio_tungstenite::tungstenite::Message::Close(None)).await;
                let _ = tx.flush().await;
            };
            // The stream ends with the log (or the client).
            tokio::select! {
                _ = writer => {}
                _ = reader => {}
            }
        })
    })
}

/// httpstream.Handshake then the SPDY ResponseUpgrader: 101 with the chosen
/// `X-Stream-Protocol-Version`, then `serve` on the upgraded connection.
fn upgrade_spdy<F>(req: Request<Incoming>, supported: &'static [&'static str], idle: Duration, serve: F) -> Response<Body>
where
    F: FnOnce(Upgraded, &'static str) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + 'static,
{
    let client: Vec<String> = header_values(&req, "x-stream-protocol-version").iter().flat_map(|v| v.split(',').map(|s| s.trim().to_string()).collect::<Vec<_>>()).filter(|s| !s.is_empty()).collect();
    let protocol: &'static str = if client.is_empty() {
        ""
    } else {
        match client.iter().find_map(|c| supported.iter().find(|s| **s == c.as_str())) {
            Some(p) => p,
            None => {
                let mut b = Response::builder().status(StatusCode::FORBIDDEN).header("Content-Type", "text/plain; charset=utf-8");
                for s in supported {
                    b = b.header("X-Accepted-Stream-Protocol-Versions", *s);
                }
                let msg = format!("unable to upgrade: unable to negotiate protocol: client supports [{}], server accepts [{}]\n", client.join(" "), supported.join(" "));
                return b.body(super::full(msg)).unwrap_or_else(|_| Response::new(super::full("")));
            }
        }
    };
    let upgrade_ok = has_token(&req, "connection", "upgrade") && header_values(&req, "upgrade").iter().any(|u| u.trim().eq_ignore_ascii_case("SPDY/3.1"));
    if !upgrade_ok {
        return text(StatusCode::BAD_REQUEST, "unable to upgrade: missing upgrade headers in request");
    }
    let mut b = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS).header("Connection", "Upgrade").header("Upgrade", "SPDY/3.1");
    if !protocol.is_empty() {
        b = b.header("X-Stream-Protocol-Version", protocol);
    }
    let resp = b.body(super::full("")).unwrap_or_else(|_| Response::new(super::full("")));
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                debug!(protocol, "SPDY connection upgraded");
                serve(idle::IdleIo::new(TokioIo::new(up), idle), protocol).await
            }
            Err(e) => debug!(error = %e, "SPDY upgrade failed"),
        }
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_paths_route_like_upstreams() {
        assert_eq!(route("/exec/ns/p/c"), Some(Route::Exec { ns: "ns", pod: "p", uid: None, container: "c" }));
        assert_eq!(route("/exec/ns/p/u1/c"), Some(Route::Exec { ns: "ns", pod: "p", uid: Some("u1"), container: "c" }));
        assert_eq!(route("/attach/ns/p/c"), Some(Route::Attach { ns: "ns", pod: "p", uid: None, container: "c" }));
        assert_eq!(route("/portForward/ns/p"), Some(Route::PortForward { ns: "ns", pod: "p", uid: None }));
        assert_eq!(route("/portForward/ns/p/u"), Some(Route::PortForward { ns: "ns", pod: "p", uid: Some("u") }));
        assert_eq!(route("/exec/ns/p"), None);
        assert_eq!(route("/exec/ns//c"), None);
        assert_eq!(route("/exec/a/b/c/d/e"), None);
        assert!(is_streaming("/portForward/a/b") && !is_streaming("/execx"));
    }

    #[test]
    fn stream_options_need_one_stream_and_drop_stderr_with_a_tty() {
        let q = |s: &[(&str, &str)]| s.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(Options::from_query(&q(&[("output", "1"), ("error", "1")])), Ok(Options { stdout: true, stderr: true, ..Default::default() }));
        assert_eq!(Options::from_query(&q(&[("output", "1"), ("error", "1"), ("tty", "1")])), Ok(Options { stdout: true, tty: true, ..Default::default() }));
        assert_eq!(Options::from_query(&q(&[("output", "true"), ("stdout", "1")])), Err("you must specify at least 1 of stdin, stdout, stderr".into()));
        assert_eq!(Options::from_query(&q(&[("input", "1")])).map(|o| o.stdin), Ok(true));
    }
}
