//! The remote command protocol of `/exec` and `/attach` over both transports
//! (kubelet/pkg/cri/streaming/remotecommand: httpstream.go, websocket.go,
//! exec.go): collect the client's streams (SPDY: one per `streamType`; WebSocket:
//! fixed channels), hand the session plain byte channels, then report how it
//! ended on the error stream — a JSON metav1.Status for v4/v5 (exit code as the
//! `ExitCode` cause of a `NonZeroExitCode` failure), the error text for older
//! versions — and close the connection.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::spdy;
use super::websocket::{self, Incoming};
use super::{Options, TermSize};

/// Upstream's streamCreationTimeout: the client must open its streams within it.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long output may still drain after the command ended.
const DRAIN: Duration = Duration::from_secs(10);

/// The byte channels a command runs with; a closed channel is EOF.
pub struct Io {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Fires when the client has gone away.
    pub gone: CancellationToken,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited with this code; `cmd` names it in the failure message.
    Exited { code: u32, cmd: String },
    /// It could not run (upstream reports an InternalError).
    Failed(String),
}

pub type Runner = Box<dyn FnOnce(Io) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send>;

/// SPDY remotecommand versions (`X-Stream-Protocol-Version`), newest first.
pub const SPDY_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

/// The status the error stream carries: None for "nothing to write" (success
/// before v4). `json`: v4/v5 metav1.Status, else its message text.
#[allow(clippy::indexing_slicing)] // serde_json::Value indexing: writes go into an object built here, reads of a missing key give Null.
pub fn status_bytes(o: &Outcome, json: bool) -> Option<Vec<u8>> {
    let status = match o {
        Outcome::Exited { code: 0, .. } => Status { status: Some("Success".into()), ..Default::default() },
        // containerd's CRI words the exit error; exec.go prefixes it.
        Outcome::Exited { code, cmd } => Status {
            status: Some("Failure".into()),
            reason: Some("NonZeroExitCode".into()),
            message: Some(format!("command terminated with non-zero exit code: command '{cmd}' exited with {code}")),
            details: Some(StatusDetails { causes: Some(vec![StatusCause { reason: Some("ExitCode".into()), message: Some(code.to_string()), field: None }]), ..Default::default() }),
            ..Default::default()
        },
        Outcome::Failed(e) => {
            let msg = format!("error executing command in container: {e}");
            Status {
                status: Some("Failure".into()),
                reason: Some("InternalError".into()),
                message: Some(format!("Internal error occurred: {msg}")),
                details: Some(StatusDetails { causes: Some(vec![StatusCause { message: Some(msg), ..Default::default() }]), ..Default::default() }),
                code: Some(500),
                ..Default::default()
            }
        }
    };
    if json {
        let mut v = serde_json::to_value(&status).ok()?;
        // As exec.go marshals it: no type meta, always metadata.
        if let Some(o) = v.as_object_mut() {
            o.remove("kind");
            o.remove("apiVersion");
        }
        v["metadata"] = serde_json::json!({});
        return serde_json::to_vec(&v).ok();
    }
    (status.status.as_deref() != Some("Success")).then(|| status.message.unwrap_or_default().into_bytes())
}

/// Reads concatenated `{"Width":…,"Height":…}` objects off a byte channel.
fn spawn_resize_decoder(mut rx: mpsc::Receiver<Bytes>) -> mpsc::Receiver<TermSize> {
    let (tx, out) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(b) = rx.recv().await {
            buf.extend_from_slice(&b);
            if buf.len() > 64 * 1024 {
                return;
            }
            let (sizes, bad) = take_sizes(&mut buf);
            for s in sizes {
                if tx.send(s).await.is_err() {
                    return;
                }
            }
            if let Some(e) = bad {
                debug!(error = %e, "bad resize event; ignoring further resizes");
                return;
            }
        }
    });
    out
}

/// Takes the whole `{"Width":…,"Height":…}` objects off the front of `buf` (an
/// incomplete one stays for the next chunk), and the error if what follows them
/// is not one.
pub(crate) fn take_sizes(buf: &mut Vec<u8>) -> (Vec<TermSize>, Option<serde_json::Error>) {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<TermSize>();
    let (mut sizes, mut used, mut bad) = (Vec::new(), 0, None);
    loop {
        match it.next() {
            Some(Ok(s)) => {
                used = it.byte_offset();
                sizes.push(s);
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => {
                bad = Some(e);
                break;
            }
            None => break,
        }
    }
    buf.drain(..used.min(buf.len()));
    (sizes, bad)
}

/// Forwards an output channel with `write`, then `finish`es.
fn spawn_output<W, F, E, FE>(write: W, finish: E) -> (mpsc::Sender<Bytes>, JoinHandle<()>)
where
    W: Fn(Bytes) -> F + Send + 'static,
    F: Future<Output = Result<(), ()>> + Send,
    E: FnOnce() -> FE + Send + 'static,
    FE: Future<Output = ()> + Send,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let task = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if write(b).await.is_err() {
                return;
            }
        }
        finish().await;
    });
    (tx, task)
}

async fn drain(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout(DRAIN, t).await.is_err() {
            abort.abort();
        }
    }
}

/// Serves one command over SPDY with the negotiated `protocol`.
pub async fn serve_spdy<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO, protocol: &str, opts: Options, run: Runner) {
    let mut conn = spdy::Connection::serve(io);
    let v4 = protocol.starts_with("v4.") || protocol.starts_with("v5.");
    let resizable = v4 || protocol.starts_with("v3.");
    let expected = 1 + opts.stdin as usize + opts.stdout as usize + opts.stderr as usize + (opts.tty && resizable) as usize;
    let mut streams: Vec<spdy::Stream> = Vec::new();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while streams.len() < expected {
        tokio::select! {
            s = conn.streams.recv() => match s {
                Some(s) => match spdy::header(&s.headers, "streamType") {
                    Some("error" | "stdin" | "stdout" | "stderr" | "resize") => streams.push(s),
                    other => {
                        debug!(stream_type = ?other, "unexpected stream type");
                        s.writer.reset(spdy::RST_PROTOCOL_ERROR).await;
                    }
                },
                None => return,
            },
            _ = &mut deadline => {
                debug!("timed out waiting for client to create streams");
                return conn.close().await;
            }
        }
    }
    conn.streams.close();
    let mut take = |t: &str| streams.iter().position(|s| spdy::header(&s.headers, "streamType") == Some(t)).map(|i| streams.swap_remove(i));
    let (error, stdin, stdout, stderr, resize) = (take("error"), take("stdin"), take("stdout"), take("stderr"), take("resize"));
    let mut tasks = Vec::new();
    let mut output = |s: Option<spdy::Stream>| {
        s.map(|s| {
            let (w1, w2) = (s.writer.clone(), s.writer);
            let (tx, t) = spawn_output(move |b| {
                let w = w1.clone();
                async move { w.write(&b).await }
            }, move || async move { w2.finish().await });
            tasks.push(t);
            tx
        })
    };
    let io = Io {
        stdout: output(stdout),
        stderr: output(stderr),
        // The first protocol version closes stdin at once (as 1.0 kubelets did).
        stdin: stdin.filter(|_| !protocol.is_empty() && protocol != "channel.k8s.io").map(|s| s.rx),
        resize: resize.map(|s| spawn_resize_decoder(s.rx)),
        gone: conn.closed.clone(),
    };
    let outcome = run(io).await;
    drain(tasks).await;
    if let Some(e) = error {
        if let Some(b) = status_bytes(&outcome, v4) {
            let _ = e.writer.write(&b).await;
        }
        e.writer.finish().await;
    }
    conn.close().await;
}

/// Serves one command over a WebSocket with the negotiated channel protocol.
pub async fn serve_ws<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: IO, protocol: websocket::Protocol, opts: Options, run: Runner) {
    let config = WebSocketConfig::default().max_message_size(Some(16 << 20)).max_frame_size(Some(16 << 20));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let gone = CancellationToken::new();
    let writer_gone = gone.clone();
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() {
                writer_gone.cancel();
                return;
            }
            if last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let p = protocol;
    // An empty message on the lowest writable channel tells the client the streams are up.
    let first = if opts.stdout { 1 } else if opts.stderr { 2 } else { 3 };
    let _ = out_tx.send(websocket::encode(&p, first, &[])).await;
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(4);
    let reader_gone = gone.clone();
    let want_stdin = opts.stdin;
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx).filter(|_| want_stdin);
        while let Some(m) = source.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    debug!(error = %e, "websocket read failed");
                    break;
                }
            };
            if matches!(m, Message::Close(_)) {
                debug!("websocket closed by the client");
                break;
            }
            match websocket::decode(&p, m) {
                Incoming::Data { channel: 0, data } => {
                    if let Some(tx) = &stdin_tx {
                        if tx.send(data).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                Incoming::Data { channel: 4, data } => {
                    let _ = resize_tx.send(data).await;
                }
                Incoming::Close { channel: 0 } => stdin_tx = None,
                _ => {}
            }
        }
        reader_gone.cancel();
    });
    let mut tasks = Vec::new();
    let mut output = |want: bool, ch: u8| {
        want.then(|| {
            let (o1, o2) = (out_tx.clone(), out_tx.clone());
            let (tx, t) = spawn_output(move |b| {
                let o = o1.clone();
                async move { o.send(websocket::encode(&p, ch, &b)).await.map_err(|_| ()) }
            }, move || async move { drop(o2) });
            tasks.push(t);
            tx
        })
    };
    let io = Io {
        stdout: output(opts.stdout, 1),
        stderr: output(opts.stderr, 2),
        stdin: opts.stdin.then_some(stdin_rx),
        resize: opts.tty.then(|| spawn_resize_decoder(resize_rx)),
        gone: gone.clone(),
    };
    let outcome = run(io).await;
    drain(tasks).await;
    if let Some(b) = status_bytes(&outcome, p.status_json) {
        let _ = out_tx.send(websocket::encode(&p, 3, &b)).await;
    }
    let _ = out_tx.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_travel_as_upstreams_status() {
        let ok = status_bytes(&Outcome::Exited { code: 0, cmd: "true".into() }, true).unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&ok).unwrap(), serde_json::json!({"metadata": {}, "status": "Success"}));
        let bad: serde_json::Value = serde_json::from_slice(&status_bytes(&Outcome::Exited { code: 3, cmd: "sh -c exit 3".into() }, true).unwrap()).unwrap();
        assert_eq!(bad["status"], "Failure");
        assert_eq!(bad["reason"], "NonZeroExitCode");
        assert_eq!(bad["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "3"}));
        // Before v4: nothing on success, the message otherwise.
        assert_eq!(status_bytes(&Outcome::Exited { code: 0, cmd: String::new() }, false), None);
        let text = String::from_utf8(status_bytes(&Outcome::Failed("boom".into()), false).unwrap()).unwrap();
        assert_eq!(text, "Internal error occurred: error executing command in container: boom");
    }

    #[tokio::test]
    async fn resize_events_are_decoded_across_chunks() {
        let (tx, rx) = mpsc::channel(4);
        let mut sizes = spawn_resize_decoder(rx);
        tx.send(Bytes::from_static(b"{\"Width\":80,\"Hei")).await.unwrap();
        tx.send(Bytes::from_static(b"ght\":24}{\"Width\":100,\"Height\":40}")).await.unwrap();
        assert_eq!(sizes.recv().await, Some(TermSize { width: 80, height: 24 }));
        assert_eq!(sizes.recv().await, Some(TermSize { width: 100, height: 40 }));
        tx.send(Bytes::from_static(b"garbage")).await.unwrap();
        assert_eq!(sizes.recv().await, None, "bad JSON ends the resize stream");
    }
}
