//! `/portForward` over SPDY (kubelet/pkg/cri/streaming/portforward/httpstream.go):
//! the client opens a pair of streams per forwarded connection — `streamType`
//! `error` and `data`, both with the `port` and a shared `requestID` — and each
//! complete pair is connected to `localhost:<port>` inside the pod's network
//! namespace (the socket is made by a thread that joined the netns, as
//! containerd's CRI does). Bytes are copied both ways; a failure is reported on
//! the error stream as upstream's JSON `{closeConnection, message}`.
//!
//! Over a WebSocket (portforward/websocket.go, `?port=…` in the query) each
//! port has a data channel 2i and an error channel 2i+1, both opened with the
//! port as a little-endian u16; one connection per port, the socket closes when
//! all forwards have ended.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;

use super::spdy;
use super::websocket::{self, Incoming};

/// The port-forward protocol version the kubelet speaks.
pub const PROTOCOL: &str = "portforward.k8s.io";
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Upstream's portForwardErrResponse.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrResponse {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    close_connection: bool,
    message: String,
}

/// Which pod, for messages, and where its network namespace is.
#[derive(Clone)]
pub struct Target {
    pub pod: String,
    pub uid: String,
    pub netns: PathBuf,
}

/// A TCP connection to 127.0.0.1:`port` inside the namespace at `netns`.
pub async fn dial(netns: PathBuf, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let std = tokio::task::spawn_blocking(move || {
        crate::network::netns::run_in(&netns, move || std::net::TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), CONNECT_TIMEOUT))
            .map_err(|e| std::io::Error::other(e.to_string()))?
    })
    .await
    .map_err(std::io::Error::other)??;
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}

#[derive(Default)]
struct Pair {
    error: Option<spdy::Stream>,
    data: Option<spdy::Stream>,
    since: Option<tokio::time::Instant>,
}

/// Serves port forwarding on an upgraded SPDY connection until the client leaves.
pub async fn serve<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO, target: Target) {
    let mut conn = spdy::Connection::serve(io);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let s = tokio::select! {
            s = conn.streams.recv() => match s { Some(s) => s, None => break },
            _ = conn.closed.cancelled() => break,
            _ = sweep.tick() => {
                // Pairs whose other half never came.
                let now = tokio::time::Instant::now();
                let stale: Vec<String> = pairs.iter().filter(|(_, p)| p.since.is_some_and(|t| now - t > STREAM_CREATION_TIMEOUT)).map(|(k, _)| k.clone()).collect();
                for k in stale {
                    if let Some(p) = pairs.remove(&k) {
                        if let Some(e) = p.error {
                            let _ = e.writer.write(format!("timed out waiting for streams for request {k}").as_bytes()).await;
                            e.writer.finish().await;
                        }
                    }
                }
                continue;
            }
        };
        debug!(id = s.id, headers = ?s.headers, "port-forward stream");
        let kind = spdy::header(&s.headers, "streamType").unwrap_or("").to_string();
        let port = spdy::header(&s.headers, "port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
        if port.is_none() || !matches!(kind.as_str(), "error" | "data") {
            debug!(stream_type = %kind, "port-forward stream without a valid port or type");
            s.writer.reset(spdy::RST_PROTOCOL_ERROR).await;
            continue;
        }
        // Old clients send no requestID: error and data are consecutive odd ids.
        let request = spdy::header(&s.headers, "requestID").map(String::from).unwrap_or_else(|| if kind == "error" { s.id.to_string() } else { s.id.saturating_sub(2).to_string() });
        let pair = pairs.entry(request.clone()).or_default();
        pair.since.get_or_insert_with(tokio::time::Instant::now);
        let slot = if kind == "error" { &mut pair.error } else { &mut pair.data };
        if slot.is_some() {
            let _ = s.writer.reset(spdy::RST_PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(s);
        if pair.error.is_some() && pair.data.is_some() {
            if let Some(Pair { error: Some(e), data: Some(d), .. }) = pairs.remove(&request) {
                tokio::spawn(forward(e, d, port.unwrap_or(0), target.clone()));
            }
        }
    }
    conn.close().await;
}

async fn forward(error: spdy::Stream, data: spdy::Stream, port: u16, t: Target) {
    let tcp = match dial(t.netns.clone(), port).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {}, uid {}: failed to connect to localhost:{port} inside namespace {:?}: {e}", t.pod, t.uid, t.netns.display().to_string());
            debug!(port, error = %e, "port-forward dial failed");
            let body = serde_json::to_vec(&ErrResponse { close_connection: true, message: msg }).unwrap_or_default();
            let _ = error.writer.write(&body).await;
            let _ = error.writer.write(b"\n").await;
            error.writer.finish().await;
            data.writer.finish().await;
            return;
        }
    };
    debug!(port, pod = %t.pod, "port-forward connected");
    let (mut rd, mut wr) = tcp.into_split();
    let mut rx = data.rx;
    let up = async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let w = data.writer.clone();
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w.write(buf.get(..n).unwrap_or_default()).await.is_err() {
                        return;
                    }
                }
            }
        }
        w.finish().await;
    };
    // The client's half runs until its FIN (or the connection's end); the pod
    // closing its side ends the forward: kubectl then waits for the error stream.
    tokio::spawn(up);
    down.await;
    error.writer.finish().await;
}

/// The `port` query parameters (repeated or comma-separated), as NewV4Options reads them.
pub fn query_ports(query: &[(String, String)]) -> Result<Vec<u16>, String> {
    let values: Vec<&str> = query.iter().filter(|(k, _)| k == "port").map(|(_, v)| v.as_str()).collect();
    if values.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    let mut ports = Vec::new();
    for v in values {
        if v.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in v.split(',') {
            let port: u16 = p.parse().map_err(|e| format!("unable to parse {v:?} as a port: {e}"))?;
            if port < 1 {
                return Err(format!("port {v:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    // Two one-byte channels per port.
    if ports.len() > 127 {
        return Err(format!("too many ports ({}); at most 127 fit the channel numbers", ports.len()));
    }
    Ok(ports)
}

/// Serves port forwarding for `ports` on an upgraded WebSocket.
pub async fn serve_ws<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: IO, p: websocket::Protocol, ports: Vec<u16>, target: Target) {
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut inputs = Vec::new();
    let mut forwards = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let _ = out_tx.send(websocket::encode(&p, ch, &port.to_le_bytes())).await;
        }
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        inputs.push(tx);
        let (out, t) = (out_tx.clone(), target.clone());
        forwards.push(tokio::spawn(async move {
            let tcp = match dial(t.netns.clone(), port).await {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!("error forwarding port {port} to pod {}, uid {}: failed to connect to localhost:{port} inside namespace {:?}: {e}", t.pod, t.uid, t.netns.display().to_string());
                    let _ = out.send(websocket::encode(&p, err_ch, msg.as_bytes())).await;
                    return;
                }
            };
            let (mut rd, mut wr) = tcp.into_split();
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if wr.write_all(&b).await.is_err() {
                        return;
                    }
                }
                let _ = wr.shutdown().await;
            });
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if out.send(websocket::encode(&p, data_ch, buf.get(..n).unwrap_or_default())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
            if let Incoming::Data { channel, data } = websocket::decode(&p, m) {
                // Only data channels take input; the first bytes a client may send are the port again.
                if channel % 2 == 0 {
                    if let Some(tx) = inputs.get((channel / 2) as usize) {
                        let _ = tx.send(data).await;
                    }
                }
            }
        }
    });
    let mut all = Box::pin(async move {
        for f in forwards {
            let _ = f.await;
        }
    });
    tokio::select! {
        _ = &mut all => {}
        _ = reader => {}
    }
    let _ = out_tx.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_ports_come_from_the_query_like_upstream() {
        let q = |v: &[&str]| v.iter().map(|p| ("port".to_string(), p.to_string())).collect::<Vec<_>>();
        assert_eq!(query_ports(&q(&["80", "81,82"])), Ok(vec![80, 81, 82]));
        assert_eq!(query_ports(&[]), Err("query parameter \"port\" is required".into()));
        assert!(query_ports(&q(&["0"])).is_err());
        assert!(query_ports(&q(&["http"])).is_err());
        assert!(query_ports(&q(&[""])).is_err());
        assert!(query_ports(&q(&[&vec!["80"; 128].join(",")])).is_err());
    }
}
