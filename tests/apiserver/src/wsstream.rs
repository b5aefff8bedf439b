//! k8s.io/apiserver/pkg/util/wsstream's Reader: how kube-apiserver serves a
//! streamed response (pods/log) to a WebSocket client. The stream it reads from
//! the kubelet over plain HTTP goes out one message per chunk: binary messages
//! for `binary.k8s.io` (and when no protocol is asked for), base64 text
//! messages for `base64.binary.k8s.io`; a close frame at the end. What the
//! client sends is read and dropped.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

use crate::error::ApiError;

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// The reader's protocols.
pub const PROTOCOLS: &[&str] = &["binary.k8s.io", "base64.binary.k8s.io"];

/// Whether the request asks for a WebSocket upgrade.
pub fn is_websocket(headers: &hyper::HeaderMap) -> bool {
    let has = |name: &str, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has("connection", "upgrade") && has("upgrade", "websocket")
}

/// Answers 101 and streams `body` over the upgraded connection.
pub fn serve(on_upgrade: hyper::upgrade::OnUpgrade, headers: &hyper::HeaderMap, body: Body) -> Result<Response<Body>, ApiError> {
    let wanted: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let protocol = match wanted.iter().find(|w| PROTOCOLS.contains(&w.as_str())) {
        Some(p) => p.clone(),
        None if wanted.is_empty() => String::new(),
        None => return Err(ApiError::bad_request(format!("requested protocol(s) are not supported: {wanted:?}; supports {PROTOCOLS:?}"))),
    };
    let key = headers.get("sec-websocket-key").ok_or_else(|| ApiError::bad_request("websocket: not a websocket handshake: 'Sec-WebSocket-Key' header is missing or blank"))?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let base64 = protocol.starts_with("base64.");
    let mut b = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS).header("Connection", "Upgrade").header("Upgrade", "websocket").header("Sec-WebSocket-Accept", accept);
    if !protocol.is_empty() {
        b = b.header("Sec-WebSocket-Protocol", protocol);
    }
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
        let (mut tx, mut rx) = ws.split();
        let mut body = body;
        let reader = async { while let Some(Ok(_)) = rx.next().await {} };
        let writer = async {
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else { continue };
                if data.is_empty() {
                    continue;
                }
                let m = if base64 {
                    use base64::Engine;
                    Message::text(base64::engine::general_purpose::STANDARD.encode(&data))
                } else {
                    Message::binary(data)
                };
                if tx.send(m).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Message::Close(None)).await;
            let _ = tx.flush().await;
        };
        tokio::select! {
            _ = writer => {}
            _ = reader => {}
        }
    });
    b.body(http_body_util::Empty::new().map_err(|never| match never {}).boxed()).map_err(|e| ApiError::internal(e.to_string()))
}
