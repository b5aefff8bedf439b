//! The WebSocket side of the kubelet's streaming (k8s.io/apiserver wsstream and
//! kubelet/pkg/cri/streaming/remotecommand/websocket.go): sub-protocol
//! negotiation and the channel framing — each binary message starts with its
//! channel byte (0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize; v5 adds
//! 255 = CLOSE of the channel in the next byte); the base64 variants send text
//! messages whose first character is the channel digit. The frame layer is
//! tungstenite's.

use base64::Engine;
use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
pub const V1: &str = "channel.k8s.io";
pub const V1_BASE64: &str = "base64.channel.k8s.io";
/// What the kubelet accepts for exec/attach, in its order of preference for a
/// client that lists several (the client's order decides, as in wsstream).
pub const PROTOCOLS: &[&str] = &[V5, V4, V4_BASE64, V1, V1_BASE64];

/// The v5 CLOSE signal channel.
pub const CLOSE_CHANNEL: u8 = 255;

/// A negotiated WebSocket channel protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    pub name: &'static str,
    pub base64: bool,
    /// The error channel carries a metav1.Status (v4, v5) rather than text.
    pub status_json: bool,
    /// The client may half-close channels (v5).
    pub close_signal: bool,
}

/// Picks the first of the client's `Sec-WebSocket-Protocol` entries we support;
/// no header at all means the binary channel protocol (wsstream's "" entry).
pub fn negotiate(requested: &[String]) -> Result<Protocol, String> {
    negotiate_among(requested, PROTOCOLS)
}

/// Port-forward's channel protocols (portforward/websocket.go).
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &[V4, V4_BASE64];

/// [`negotiate`] against another set of supported protocols.
pub fn negotiate_among(requested: &[String], supported: &'static [&'static str]) -> Result<Protocol, String> {
    let wanted: Vec<&str> = requested.iter().flat_map(|h| h.split(',')).map(str::trim).filter(|s| !s.is_empty()).collect();
    if wanted.is_empty() {
        return Ok(protocol(""));
    }
    wanted
        .iter()
        .find_map(|w| supported.iter().find(|p| **p == *w))
        .map(|p| protocol(p))
        .ok_or_else(|| format!("requested protocol(s) are not supported: {wanted:?}; supports {supported:?}"))
}

fn protocol(name: &'static str) -> Protocol {
    Protocol {
        name,
        base64: name.contains("base64"),
        status_json: name.starts_with("v4.") || name.starts_with("v5."),
        close_signal: name == V5,
    }
}

/// A message on channel `ch` in the negotiated framing.
pub fn encode(p: &Protocol, ch: u8, data: &[u8]) -> Message {
    if p.base64 {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push((b'0' + ch) as char);
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::text(s)
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(ch);
        v.extend_from_slice(data);
        Message::binary(v)
    }
}

/// What a client message says.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Data { channel: u8, data: Bytes },
    /// v5: the client will send no more on `channel`.
    Close { channel: u8 },
    /// Control frames and empty or undecodable messages.
    Ignore,
}

pub fn decode(p: &Protocol, m: Message) -> Incoming {
    match m {
        Message::Binary(b) if !p.base64 => {
            let Some((&channel, rest)) = b.split_first() else { return Incoming::Ignore };
            if channel == CLOSE_CHANNEL && p.close_signal {
                return rest.first().map(|c| Incoming::Close { channel: *c }).unwrap_or(Incoming::Ignore);
            }
            Incoming::Data { channel, data: b.slice(1..) }
        }
        Message::Text(t) if p.base64 => {
            let s = t.as_str();
            let (Some(ch), Some(rest)) = (s.as_bytes().first().and_then(|c| c.checked_sub(b'0')), s.get(1..)) else { return Incoming::Ignore };
            match base64::engine::general_purpose::STANDARD.decode(rest) {
                Ok(d) => Incoming::Data { channel: ch, data: Bytes::from(d) },
                Err(_) => Incoming::Ignore,
            }
        }
        _ => Incoming::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_first_supported_protocol_wins() {
        assert_eq!(negotiate(&["v5.channel.k8s.io".into()]).unwrap().name, V5);
        assert_eq!(negotiate(&["foo, v4.channel.k8s.io".into(), "v5.channel.k8s.io".into()]).unwrap().name, V4);
        assert_eq!(negotiate(&[]).unwrap().name, "");
        assert!(negotiate(&["v9.channel.k8s.io".into()]).is_err());
        let p = negotiate(&[V4_BASE64.into()]).unwrap();
        assert!(p.base64 && p.status_json && !p.close_signal);
    }

    #[test]
    fn channels_frame_both_ways() {
        let v5 = negotiate(&[V5.into()]).unwrap();
        assert_eq!(encode(&v5, 1, b"out"), Message::binary(b"\x01out".to_vec()));
        assert_eq!(decode(&v5, Message::binary(b"\x00in".to_vec())), Incoming::Data { channel: 0, data: Bytes::from_static(b"in") });
        assert_eq!(decode(&v5, Message::binary(vec![255, 0])), Incoming::Close { channel: 0 });
        let v4 = negotiate(&[V4.into()]).unwrap();
        assert_eq!(decode(&v4, Message::binary(vec![255, 0])), Incoming::Data { channel: 255, data: Bytes::from_static(&[0]) });
        let b64 = negotiate(&[V1_BASE64.into()]).unwrap();
        assert_eq!(encode(&b64, 2, b"hi"), Message::text("2aGk="));
        assert_eq!(decode(&b64, Message::text("0aGk=")), Incoming::Data { channel: 0, data: Bytes::from_static(b"hi") });
        assert_eq!(decode(&b64, Message::text("0!!")), Incoming::Ignore);
        assert_eq!(decode(&b64, Message::text("é")), Incoming::Ignore, "a multi-byte first character is not a channel");
        assert_eq!(decode(&v5, Message::binary(Vec::new())), Incoming::Ignore);
    }
}
