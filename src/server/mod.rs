//! The kubelet's own HTTP API (pkg/kubelet/server): HTTPS on `address:port`
//! (10250) behind authentication and authorization, and the plain `/healthz` on
//! `healthzBindAddress:healthzPort` (127.0.0.1:10248) that kubeadm waits on.
//! Endpoints so far: `/healthz`, `/pods`, `/containerLogs/{ns}/{pod}/{container}`,
//! `/stats/summary`, `/metrics/resource`, `/metrics/cadvisor`, `/metrics`, `/metrics/probes`, `/configz`,
//! and the streaming ones (`/exec`, `/attach`, `/portForward`: see [`streaming`]).
//! A slow or broken client only holds its own connection task.

pub mod auth;
pub mod cadvisor;
pub mod query;
pub mod serving;
pub mod stats;
pub mod streaming;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::auth::{Auth, Attributes};

pub(crate) type Body = BoxBody<Bytes, std::convert::Infallible>;

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// What the handlers read.
pub struct State {
    pub auth: Auth,
    /// `/configz`: `{"kubeletconfig": <the effective KubeletConfiguration>}`.
    pub configz: serde_json::Value,
    pub node: String,
    pub sampler: std::sync::Arc<stats::Sampler>,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    /// The image filesystem (containerd's snapshotter store).
    pub image_fs: PathBuf,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// containerd, for exec, attach and port-forward (None: those answer 503).
    pub containers: Option<crate::runtime::containers::Containers>,
    /// `streamingConnectionIdleTimeout` (zero: none).
    pub streaming_idle_timeout: std::time::Duration,
}

pub(crate) fn text(code: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    if !body.ends_with('\n') && code != StatusCode::OK {
        body.push('\n');
    }
    Response::builder()
        .status(code)
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("X-Content-Type-Options", "nosniff")
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

fn openmetrics(body: String) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", crate::metrics::CONTENT_TYPE)
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

fn json(v: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(full(serde_json::to_vec(v).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// Binds `addr`, retrying every 5 s (a port still held must not stop the agent).
async fn bind(addr: SocketAddr, what: &str, cancel: &CancellationToken) -> Option<TcpListener> {
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                info!(%addr, "{what} listening");
                return Some(l);
            }
            Err(e) => warn!(%addr, error = %e, "{what}: cannot listen; retrying in 5s"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// The plain-HTTP healthz endpoint (`ok`), until `cancel`.
pub async fn serve_healthz(addr: SocketAddr, cancel: CancellationToken) {
    let Some(listener) = bind(addr, "healthz", &cancel).await else { return };
    loop {
        let (tcp, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                Ok::<_, std::convert::Infallible>(match req.uri().path() {
                    "/healthz" => text(StatusCode::OK, "ok"),
                    _ => text(StatusCode::NOT_FOUND, "404 page not found"),
                })
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The authenticated HTTPS API, until `cancel`.
pub async fn serve(addr: SocketAddr, tls: Arc<rustls::ServerConfig>, state: Arc<State>, cancel: CancellationToken) {
    let Some(listener) = bind(addr, "kubelet server", &cancel).await else { return };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        // A second handle on the socket, for a lingering close after a bad request.
        let linger = std::os::fd::AsFd::as_fd(&tcp).try_clone_to_owned().ok();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let cert: Option<Arc<Vec<u8>>> = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.to_vec()));
            let svc = hyper::service::service_fn(move |req| {
                let (state, cert) = (state.clone(), cert.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(state, cert.as_deref().map(Vec::as_slice), req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                // Go's DefaultMaxHeaderBytes (1 MiB) plus its 4 KiB slack: past it, 431.
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
            if let (Err(e), Some(fd)) = (served, linger) {
                if e.is_parse() || e.is_parse_too_large() {
                    debug!(%peer, error = %e, "bad request");
                    lingering_close(fd).await;
                }
            }
        });
    }
}

/// The most a request head may take: Go's DefaultMaxHeaderBytes plus the 4096
/// bytes of slack its server allows.
const MAX_HEADER_BYTES: usize = (1 << 20) + 4096;

/// After hyper answered a bad request (400, 431) and closed its side: read and
/// drop what the client is still sending, for up to 2 s, before the socket
/// closes. Closing with unread data would reset the connection, and the client
/// would lose the answer (Go's server waits likewise: closeWriteAndWait).
async fn lingering_close(fd: std::os::fd::OwnedFd) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let std_tcp = std::net::TcpStream::from(fd);
    let Ok(mut tcp) = tokio::net::TcpStream::from_std(std_tcp) else { return };
    // Our FIN, which the closed TLS stream cannot send while this handle lives.
    let _ = tcp.shutdown().await;
    let mut buf = vec![0u8; 64 * 1024];
    let drain = async {
        let mut total = 0usize;
        while total < 64 << 20 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

async fn handle(state: Arc<State>, cert: Option<&[u8]>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let state = &state;
    let path = req.uri().path().to_string();
    let authz = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(user) = state.auth.authenticate(cert, authz).await else {
        debug!(path, "unauthenticated request");
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let attrs: Attributes = auth::attributes(req.method(), &path);
    if !state.auth.authorize(&user, &attrs).await {
        debug!(path, user = %user.name, "forbidden request");
        return text(StatusCode::FORBIDDEN, auth::forbidden_message(&user, &attrs));
    }
    let query = match query::parse(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => {
            debug!(path, error = %e, "bad query string");
            return text(StatusCode::BAD_REQUEST, format!("invalid query string: {e}"));
        }
    };
    if streaming::is_streaming(&path) {
        return streaming::serve(state.clone(), req, query).await;
    }
    match path.as_str() {
        "/healthz" => text(StatusCode::OK, "ok"),
        "/pods" | "/pods/" => pods(state),
        "/configz" => json(&state.configz),
        "/stats/summary" | "/stats/summary/" => json(&stats::summary(&state.node, &state.root_dir, &state.image_fs, &crate::pod::store::load_all(&state.root_dir), &state.sampler)),
        "/metrics/resource" => {
            let s = stats::summary(&state.node, &state.root_dir, &state.image_fs, &crate::pod::store::load_all(&state.root_dir), &state.sampler);
            Response::builder()
                .status(StatusCode::OK)
                .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                .body(full(stats::resource_metrics(&s)))
                .unwrap_or_else(|_| Response::new(full("")))
        }
        "/metrics/cadvisor" => Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            .body(full(cadvisor::metrics(&crate::pod::store::load_all(&state.root_dir))))
            .unwrap_or_else(|_| Response::new(full(""))),
        "/metrics" => openmetrics(state.metrics.encode(&crate::pod::store::load_all(&state.root_dir))),
        "/metrics/probes" => openmetrics(state.metrics.encode_probes()),
        p if p.starts_with("/containerLogs/") => {
            let resp = container_logs(state, p, &query);
            // A WebSocket client gets the same stream as messages (wsstream.Reader);
            // errors are answered before any upgrade.
            if streaming::is_websocket(&req) && resp.status() == StatusCode::OK {
                return streaming::upgrade_byte_stream(req, resp.into_body(), state.streaming_idle_timeout);
            }
            resp
        }
        p if p.starts_with("/run/") => streaming::run(state.clone(), req.method(), p, &query).await,
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// `/pods`: the pods on this node with their last status, as a PodList.
fn pods(state: &State) -> Response<Body> {
    let items = crate::pod::store::load_all(&state.root_dir);
    json(&serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}))
}

/// `/containerLogs/{namespace}/{pod}/{container}` with `tailLines`, `sinceSeconds`,
/// `sinceTime`, `timestamps`, `limitBytes`, `previous` (the instance before the
/// current one) and `follow` (stream until the container stops or the client goes).
fn container_logs(state: &State, path: &str, query: &[(String, String)]) -> Response<Body> {
    let parts: Vec<&str> = path.trim_start_matches("/containerLogs/").split('/').collect();
    let [ns, name, container] = parts[..] else {
        return text(StatusCode::BAD_REQUEST, "Missing container name.");
    };
    // Upstream's answers (getContainerLogs): 400 when the query does not decode
    // into PodLogOptions, 422 when the options fail validation.
    let lq = match query::LogQuery::from_query(query) {
        Ok(o) => o,
        Err(e @ query::LogQueryError::Decode { .. }) => {
            debug!(path, error = %e, "container logs: bad query");
            return text(StatusCode::BAD_REQUEST, r#"{"message": "Unable to decode query."}"#);
        }
        Err(e @ query::LogQueryError::Invalid(_)) => {
            debug!(path, error = %e, "container logs: invalid options");
            return text(StatusCode::UNPROCESSABLE_ENTITY, r#"{"message": "Invalid request."}"#);
        }
    };
    let opts = crate::logs::Options {
        tail_lines: lq.tail_lines.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        since: lq.since(chrono::Utc::now()),
        timestamps: lq.timestamps,
        limit_bytes: lq.limit_bytes.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let Some(pod) = crate::pod::store::load_all(&state.root_dir)
        .into_iter()
        .find(|p| p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name))
    else {
        return text(StatusCode::NOT_FOUND, format!("pod {ns}/{name} does not exist"));
    };
    let st = pod.status.as_ref();
    let statuses = st.and_then(|s| s.container_statuses.clone()).into_iter().flatten().chain(st.and_then(|s| s.init_container_statuses.clone()).into_iter().flatten());
    let Some(cs) = statuses.into_iter().find(|c| c.name == container) else {
        return text(StatusCode::BAD_REQUEST, format!("container {container} is not valid for pod {name}"));
    };
    let previous = lq.previous;
    let attempt = if previous {
        if cs.restart_count == 0 {
            return text(StatusCode::BAD_REQUEST, format!("previous terminated container {container:?} in pod {name:?} not found"));
        }
        cs.restart_count - 1
    } else {
        cs.restart_count
    };
    let file = state
        .pod_logs_dir
        .join(format!("{ns}_{name}_{}", pod.metadata.uid.as_deref().unwrap_or("")))
        .join(container)
        .join(format!("{attempt}.log"));
    let data = match std::fs::read(&file) {
        Ok(d) => d,
        Err(e) => return text(StatusCode::NOT_FOUND, format!("failed to open log file {}: {e}", file.display())),
    };
    let first = crate::logs::render(&data, &opts);
    let running = cs.state.as_ref().map(|s| s.running.is_some()).unwrap_or(false);
    if !lq.follow || previous || !running {
        return Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "text/plain")
            .body(full(first))
            .unwrap_or_else(|_| Response::new(full("")));
    }
    // follow: what is there, then new whole entries as they are written.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>(16);
    let (root, uid, cname) = (state.root_dir.clone(), pod.metadata.uid.clone().unwrap_or_default(), container.to_string());
    let mut offset = data.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0) as u64;
    let mut left = opts.limit_bytes.map(|l| l.saturating_sub(first.len()));
    let follow_opts = crate::logs::Options { tail_lines: None, since: None, timestamps: opts.timestamps, limit_bytes: None };
    tokio::spawn(async move {
        if tx.send(Ok(hyper::body::Frame::data(Bytes::from(first)))).await.is_err() {
            return;
        }
        let mut ticks = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            ticks = ticks.wrapping_add(1);
            let chunk = read_from(&file, &mut offset);
            if !chunk.is_empty() {
                let mut out = crate::logs::render(&chunk, &follow_opts);
                if let Some(l) = left.as_mut() {
                    out.truncate(*l);
                    *l -= out.len();
                }
                if !out.is_empty() && tx.send(Ok(hyper::body::Frame::data(Bytes::from(out)))).await.is_err() {
                    return;
                }
                if left == Some(0) {
                    return;
                }
            } else if tx.is_closed() {
                return;
            }
            // Every second: stop once this instance no longer runs.
            if ticks.is_multiple_of(4) && !still_running(&root, &uid, &cname, attempt) {
                let tail = read_from(&file, &mut offset);
                let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from(crate::logs::render(&tail, &follow_opts))))).await;
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "text/plain")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_else(|_| Response::new(full("")))
}

/// Whole lines appended to `file` since `offset` (which advances past them).
pub(crate) fn read_from(file: &std::path::Path, offset: &mut u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(file) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *offset {
        *offset = 0; // rotated: start over on the new file
    }
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(*offset)).is_err() || f.take(4 << 20).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let end = buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
    buf.truncate(end);
    *offset += end as u64;
    buf
}

/// Whether the pod's saved status still shows instance `attempt` of the container running.
fn still_running(root: &std::path::Path, uid: &str, container: &str, attempt: i32) -> bool {
    let Some(pod) = crate::pod::store::load_pod(root, uid) else { return false };
    let st = pod.status.unwrap_or_default();
    st.container_statuses
        .into_iter()
        .flatten()
        .chain(st.init_container_statuses.into_iter().flatten())
        .find(|c| c.name == container)
        .map(|c| c.restart_count == attempt && c.state.map(|s| s.running.is_some()).unwrap_or(false))
        .unwrap_or(false)
}
