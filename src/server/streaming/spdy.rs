//! SPDY/3.1 as the kubelet speaks it to kube-apiserver and kubectl
//! (moby/spdystream under k8s.io/apimachinery/pkg/util/httpstream/spdy): the
//! frame codec (control frames SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING,
//! GOAWAY, HEADERS, WINDOW_UPDATE and DATA frames; header blocks zlib-compressed
//! with the SPDY/3 dictionary, one compression context per direction) and a
//! server-side connection: the client opens streams, each is answered with
//! SYN_REPLY and handed out with its headers, a data receiver and a writer.
//! Like spdystream there is no flow control (WINDOW_UPDATE and SETTINGS are read
//! and ignored). A malformed frame ends the connection, never the process.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The SPDY/3 header compression dictionary (from the SPDY/3 draft; 1423 bytes).
pub const DICTIONARY: &[u8] = include_bytes!("spdy3.dict");
const VERSION: u16 = 3;
/// The flag that ends one direction of a stream.
pub const FLAG_FIN: u8 = 0x01;
/// Largest frame payload we accept. The length field allows 16 MiB; Kubernetes
/// clients write what one 32 KiB read gave them, so 4 MiB bounds a connection's
/// buffer without refusing any of them.
const MAX_FRAME: usize = 4 << 20;
/// Largest decompressed header block and number of headers we accept.
const MAX_HEADER_BLOCK: usize = 1 << 20;
const MAX_HEADERS: usize = 1024;
/// DATA frames we write carry at most this much (spdystream writes 32 KiB reads).
const MAX_WRITE_CHUNK: usize = 32 * 1024;

/// Errors decoding or encoding SPDY frames.
#[derive(Debug, Error)]
pub enum SpdyError {
    /// A control frame of another SPDY version.
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A frame longer than we accept.
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    /// A frame whose fields do not fit its length or rules.
    #[error("invalid {0} frame")]
    Invalid(&'static str),
    /// The compressed header block could not be inflated.
    #[error("header block: {0}")]
    Inflate(String),
    /// The header block could not be deflated.
    #[error("header compression: {0}")]
    Deflate(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = SpdyError> = std::result::Result<T, E>;

/// Header pairs; names are lower-case on the wire.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (case-insensitive).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// One SPDY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream { id: u32, associated: u32, priority: u8, flags: u8, headers: Headers },
    SynReply { id: u32, flags: u8, headers: Headers },
    RstStream { id: u32, status: u32 },
    Settings,
    Ping(u32),
    GoAway { last_good: u32, status: u32 },
    Headers { id: u32, flags: u8, headers: Headers },
    WindowUpdate { id: u32, delta: u32 },
    Data { id: u32, flags: u8, data: Bytes },
    /// A control frame type we do not know; the spec says to ignore it.
    Unknown(u16),
}

/// RST_STREAM status codes we send.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;

/// Reads frames; owns the inflate context of the receiving direction.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { inflate: Decompress::new(true) }
    }
}

/// The big-endian word at `b[i..i + 4]` with its top bit cleared (stream ids), if there.
fn id_at(b: &[u8], i: usize) -> Option<u32> {
    word_at(b, i).map(|w| w & 0x7fff_ffff)
}

/// The big-endian word at `b[i..i + 4]`, if there.
fn word_at(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i.checked_add(4)?).and_then(|w| <[u8; 4]>::try_from(w).ok()).map(u32::from_be_bytes)
}

impl Decoder {
    /// Takes one whole frame off the front of `buf`, or None if more bytes are needed.
    /// Every field is read with bounds checks: the bytes are the client's.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>> {
        let Some(h) = buf.get(..8).and_then(|h| <[u8; 8]>::try_from(h).ok()) else { return Ok(None) };
        let len = (u32::from_be_bytes([h[4], h[5], h[6], h[7]]) & 0x00ff_ffff) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::TooLarge(len));
        }
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        buf.advance(8);
        let payload = buf.split_to(len).freeze();
        let flags = h[4];
        if h[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data { id, flags, data: payload }));
        }
        let version = u16::from_be_bytes([h[0], h[1]]) & 0x7fff;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([h[2], h[3]]);
        let p: &[u8] = &payload;
        let id = |i: usize, what: &'static str| id_at(p, i).ok_or(SpdyError::Invalid(what));
        let word = |i: usize, what: &'static str| word_at(p, i).ok_or(SpdyError::Invalid(what));
        let rest = |i: usize, what: &'static str| p.get(i..).ok_or(SpdyError::Invalid(what));
        Ok(Some(match kind {
            1 => {
                let (id, associated) = (id(0, "SYN_STREAM")?, id(4, "SYN_STREAM")?);
                let priority = p.get(8).ok_or(SpdyError::Invalid("SYN_STREAM"))? >> 5;
                Frame::SynStream { id, associated, priority, flags, headers: self.headers(rest(10, "SYN_STREAM")?)? }
            }
            2 => Frame::SynReply { id: id(0, "SYN_REPLY")?, flags, headers: self.headers(rest(4, "SYN_REPLY")?)? },
            3 => Frame::RstStream { id: id(0, "RST_STREAM")?, status: word(4, "RST_STREAM")? },
            4 => Frame::Settings,
            6 => Frame::Ping(word(0, "PING")?),
            7 => Frame::GoAway { last_good: id(0, "GOAWAY")?, status: word(4, "GOAWAY")? },
            8 => Frame::Headers { id: id(0, "HEADERS")?, flags, headers: self.headers(rest(4, "HEADERS")?)? },
            9 => Frame::WindowUpdate { id: id(0, "WINDOW_UPDATE")?, delta: id(4, "WINDOW_UPDATE")? },
            other => Frame::Unknown(other),
        }))
    }

    /// Inflates (continuing this direction's zlib stream) and parses a header block.
    fn headers(&mut self, compressed: &[u8]) -> Result<Headers> {
        let mut out: Vec<u8> = Vec::with_capacity(compressed.len() * 4 + 64);
        let mut input = compressed;
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > 64 || out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Inflate("header block too large".into()));
            }
            if out.capacity() - out.len() < 1024 {
                out.reserve(out.len().max(4096));
            }
            let before_in = self.inflate.total_in();
            let before_out = out.len();
            match self.inflate.decompress_vec(input, &mut out, FlushDecompress::Sync) {
                Ok(Status::StreamEnd) => return Err(SpdyError::Inflate("zlib stream ended".into())),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(DICTIONARY).map_err(|e| SpdyError::Inflate(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Inflate(e.to_string())),
            }
            let used = (self.inflate.total_in() - before_in) as usize;
            input = input.get(used..).unwrap_or_default();
            let produced = out.len() - before_out;
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if used == 0 && produced == 0 && input.is_empty() {
                break;
            }
        }
        parse_header_block(&out)
    }
}

pub(crate) fn parse_header_block(b: &[u8]) -> Result<Headers> {
    let bad = || SpdyError::Invalid("header block");
    let mut b = b;
    if b.len() < 4 {
        return Err(bad());
    }
    let n = b.get_u32() as usize;
    if n > MAX_HEADERS {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut field = || -> Result<String> {
            if b.len() < 4 {
                return Err(bad());
            }
            let l = b.get_u32() as usize;
            let Some(bytes) = b.get(..l) else { return Err(bad()) };
            let s = String::from_utf8_lossy(bytes).into_owned();
            b.advance(l);
            Ok(s)
        };
        let name = field()?;
        let value = field()?;
        // Several values of one name are NUL-separated.
        for v in value.split('\0') {
            out.push((name.to_ascii_lowercase(), v.to_string()));
        }
    }
    Ok(out)
}

/// Writes frames; owns the deflate context of the sending direction.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::best(), true);
        // A fresh stream accepts its dictionary before any input.
        let _ = deflate.set_dictionary(DICTIONARY);
        Encoder { deflate }
    }
}

impl Encoder {
    /// Appends `f` to `out`.
    pub fn encode(&mut self, f: &Frame, out: &mut BytesMut) -> Result<()> {
        let control = |out: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]| {
            out.put_u16(0x8000 | VERSION);
            out.put_u16(kind);
            out.put_u32(((flags as u32) << 24) | payload.len() as u32);
            out.put_slice(payload);
        };
        match f {
            Frame::Data { id, flags, data } => {
                if data.len() > MAX_FRAME {
                    return Err(SpdyError::TooLarge(data.len()));
                }
                out.put_u32(id & 0x7fff_ffff);
                out.put_u32(((*flags as u32) << 24) | data.len() as u32);
                out.put_slice(data);
            }
            Frame::SynStream { id, associated, priority, flags, headers } => {
                let mut p = BytesMut::new();
                p.put_u32(*id);
                p.put_u32(*associated);
                p.put_u8(priority << 5);
                p.put_u8(0);
                p.put_slice(&self.header_block(headers)?);
                control(out, 1, *flags, &p);
            }
            Frame::SynReply { id, flags, headers } => {
                let mut p = BytesMut::new();
                p.put_u32(*id);
                p.put_slice(&self.header_block(headers)?);
                control(out, 2, *flags, &p);
            }
            Frame::Headers { id, flags, headers } => {
                let mut p = BytesMut::new();
                p.put_u32(*id);
                p.put_slice(&self.header_block(headers)?);
                control(out, 8, *flags, &p);
            }
            Frame::RstStream { id, status } => control(out, 3, 0, &[id.to_be_bytes(), status.to_be_bytes()].concat()),
            Frame::Settings => control(out, 4, 0, &0u32.to_be_bytes()),
            Frame::Ping(id) => control(out, 6, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => control(out, 7, 0, &[last_good.to_be_bytes(), status.to_be_bytes()].concat()),
            Frame::WindowUpdate { id, delta } => control(out, 9, 0, &[id.to_be_bytes(), delta.to_be_bytes()].concat()),
            Frame::Unknown(_) => {}
        }
        Ok(())
    }

    fn header_block(&mut self, h: &Headers) -> Result<Vec<u8>> {
        // Several values of one name go into one NUL-separated entry.
        let mut merged: Vec<(String, Vec<&str>)> = Vec::new();
        for (k, v) in h {
            let k = k.to_ascii_lowercase();
            match merged.iter_mut().find(|(n, _)| *n == k) {
                Some((_, vs)) => vs.push(v),
                None => merged.push((k, vec![v])),
            }
        }
        let mut raw = BytesMut::new();
        raw.put_u32(merged.len() as u32);
        for (k, vs) in &merged {
            let v = vs.join("\0");
            raw.put_u32(k.len() as u32);
            raw.put_slice(k.as_bytes());
            raw.put_u32(v.len() as u32);
            raw.put_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        for _ in 0..64 {
            out.reserve(raw.len() + 64);
            let before = self.deflate.total_in();
            self.deflate.compress_vec(input, &mut out, FlushCompress::Sync).map_err(|e| SpdyError::Deflate(e.to_string()))?;
            let used = (self.deflate.total_in() - before) as usize;
            input = input.get(used..).unwrap_or_default();
            // A sync flush is complete once all input is taken and output space was left over.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
        Err(SpdyError::Deflate("header block did not compress".into()))
    }
}

/// A stream the client opened, already answered with SYN_REPLY.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// Data from the client; closes at its FIN or RST_STREAM or when the connection ends.
    pub rx: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

/// Writes DATA frames on one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Frame>,
}

impl StreamWriter {
    /// Sends `data` (in frames of at most 32 KiB). Err when the connection is gone.
    pub async fn write(&self, data: &[u8]) -> Result<(), ()> {
        for chunk in data.chunks(MAX_WRITE_CHUNK) {
            let f = Frame::Data { id: self.id, flags: 0, data: Bytes::copy_from_slice(chunk) };
            self.frames.send(f).await.map_err(|_| ())?;
        }
        Ok(())
    }

    /// Ends our side of the stream (an empty DATA frame with FIN).
    pub async fn finish(&self) {
        let _ = self.frames.send(Frame::Data { id: self.id, flags: FLAG_FIN, data: Bytes::new() }).await;
    }

    /// Resets the stream.
    pub async fn reset(&self, status: u32) {
        let _ = self.frames.send(Frame::RstStream { id: self.id, status }).await;
    }
}

/// The running connection: new streams arrive on `streams`; `closed` fires when
/// the client is gone (EOF, error, bad frame); `close()` sends GOAWAY and ends it.
pub struct Connection {
    pub streams: mpsc::Receiver<Stream>,
    pub closed: CancellationToken,
    frames: mpsc::Sender<Frame>,
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Serves SPDY on an upgraded connection.
    pub fn serve<IO: AsyncRead + AsyncWrite + Send + 'static>(io: IO) -> Connection {
        let (mut rd, mut wr) = tokio::io::split(io);
        let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(64);
        let (streams_tx, streams_rx) = mpsc::channel::<Stream>(16);
        let closed = CancellationToken::new();
        let writer_closed = closed.clone();
        let writer = tokio::spawn(async move {
            let mut enc = Encoder::default();
            let mut buf = BytesMut::new();
            while let Some(f) = frames_rx.recv().await {
                let mut last = matches!(f, Frame::GoAway { .. });
                buf.clear();
                if let Err(e) = enc.encode(&f, &mut buf) {
                    debug!(error = %e, "SPDY encode failed");
                    break;
                }
                // Coalesce what is queued into one write.
                while !last {
                    let Ok(f) = frames_rx.try_recv() else { break };
                    last = matches!(f, Frame::GoAway { .. });
                    if enc.encode(&f, &mut buf).is_err() {
                        break;
                    }
                }
                if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
                if last {
                    break;
                }
            }
            let _ = wr.shutdown().await;
            writer_closed.cancel();
        });
        let (reader_frames, reader_closed) = (frames_tx.clone(), closed.clone());
        let reader = tokio::spawn(async move {
            let mut dec = Decoder::default();
            let mut buf = BytesMut::with_capacity(16 * 1024);
            let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
            let mut last_id = 0u32;
            'read: loop {
                loop {
                    let frame = match dec.decode(&mut buf) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            debug!(error = %e, "bad SPDY frame; closing the connection");
                            let _ = reader_frames.send(Frame::GoAway { last_good: last_id, status: 1 }).await;
                            break 'read;
                        }
                    };
                    tracing::trace!(?frame, "SPDY frame");
                    match frame {
                        Frame::SynStream { id, flags, headers, .. } => {
                            // Client streams are odd and increasing.
                            if id % 2 == 0 || id <= last_id {
                                let _ = reader_frames.send(Frame::RstStream { id, status: RST_PROTOCOL_ERROR }).await;
                                continue;
                            }
                            last_id = id;
                            let (tx, rx) = mpsc::channel(32);
                            if flags & FLAG_FIN == 0 {
                                open.insert(id, tx);
                            }
                            let _ = reader_frames.send(Frame::SynReply { id, flags: 0, headers: Vec::new() }).await;
                            let s = Stream { id, headers, rx, writer: StreamWriter { id, frames: reader_frames.clone() } };
                            if streams_tx.send(s).await.is_err() {
                                let _ = reader_frames.send(Frame::RstStream { id, status: RST_REFUSED_STREAM }).await;
                            }
                        }
                        Frame::Data { id, flags, data } => {
                            if !data.is_empty() {
                                if let Some(tx) = open.get(&id) {
                                    // A consumer that went away just drops the data.
                                    if tx.send(data).await.is_err() {
                                        open.remove(&id);
                                    }
                                }
                            }
                            if flags & FLAG_FIN != 0 {
                                open.remove(&id);
                            }
                        }
                        Frame::Headers { id, flags, .. } if flags & FLAG_FIN != 0 => {
                            open.remove(&id);
                        }
                        Frame::RstStream { id, .. } => {
                            open.remove(&id);
                        }
                        // Echo the client's (odd) pings.
                        Frame::Ping(id) if id % 2 == 1 => {
                            let _ = reader_frames.send(Frame::Ping(id)).await;
                        }
                        Frame::GoAway { .. } => {
                            debug!("SPDY client sent GOAWAY");
                        }
                        _ => {}
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            drop(open);
            reader_closed.cancel();
        });
        Connection { streams: streams_rx, closed, frames: frames_tx, writer, reader }
    }

    /// Sends GOAWAY after what is queued, then closes the connection (bounded wait).
    pub async fn close(mut self) {
        let _ = self.frames.send(Frame::GoAway { last_good: 0, status: 0 }).await;
        // The writer stops after GOAWAY.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.writer).await;
        self.writer.abort();
        self.reader.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) -> Frame {
        let (mut enc, mut dec) = (Encoder::default(), Decoder::default());
        let mut buf = BytesMut::new();
        enc.encode(&f, &mut buf).unwrap();
        dec.decode(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options") && DICTIONARY.ends_with(b"enq=0."));
    }

    #[test]
    fn frames_roundtrip_through_the_codec() {
        let h: Headers = vec![("streamtype".into(), "stdout".into()), ("port".into(), "8080".into())];
        for f in [
            Frame::SynStream { id: 1, associated: 0, priority: 0, flags: 0, headers: h.clone() },
            Frame::SynReply { id: 3, flags: FLAG_FIN, headers: vec![] },
            Frame::Data { id: 5, flags: FLAG_FIN, data: Bytes::from_static(b"hello") },
            Frame::RstStream { id: 7, status: 5 },
            Frame::Ping(9),
            Frame::GoAway { last_good: 3, status: 0 },
            Frame::WindowUpdate { id: 1, delta: 100 },
        ] {
            assert_eq!(roundtrip(f.clone()), f);
        }
    }

    #[test]
    fn header_blocks_share_one_compression_context_per_direction() {
        let (mut enc, mut dec) = (Encoder::default(), Decoder::default());
        let mut buf = BytesMut::new();
        for i in 1..20u32 {
            let h: Headers = vec![("streamtype".into(), "error".into()), ("requestid".into(), i.to_string())];
            enc.encode(&Frame::SynStream { id: 2 * i - 1, associated: 0, priority: 0, flags: 0, headers: h.clone() }, &mut buf).unwrap();
            let Some(Frame::SynStream { headers, .. }) = dec.decode(&mut buf).unwrap() else { panic!() };
            assert_eq!(headers, h);
        }
        // Compressed with the SPDY/3 dictionary: zlib header then the dictionary's adler32.
        let mut fresh = Encoder::default();
        let block = fresh.header_block(&vec![("a".into(), "b".into())]).unwrap();
        assert_eq!(&block[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
    }

    #[test]
    fn multi_valued_headers_are_nul_separated() {
        let h: Headers = vec![("x-stream-protocol-version".into(), "v4.channel.k8s.io".into()), ("x-stream-protocol-version".into(), "v3.channel.k8s.io".into())];
        let Frame::SynReply { headers, .. } = roundtrip(Frame::SynReply { id: 1, flags: 0, headers: h.clone() }) else { panic!() };
        assert_eq!(headers, h);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes_and_garbage_is_an_error() {
        let mut enc = Encoder::default();
        let mut buf = BytesMut::new();
        enc.encode(&Frame::Data { id: 1, flags: 0, data: Bytes::from_static(b"0123456789") }, &mut buf).unwrap();
        let mut part = BytesMut::from(&buf[..12]);
        let mut dec = Decoder::default();
        assert_eq!(dec.decode(&mut part).unwrap(), None);
        part.extend_from_slice(&buf[12..]);
        assert!(matches!(dec.decode(&mut part).unwrap(), Some(Frame::Data { id: 1, .. })));
        // A control frame of SPDY/2, a truncated SYN_STREAM, a corrupt header block.
        let mut v2 = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(Decoder::default().decode(&mut v2), Err(SpdyError::Version(2))));
        let mut short = BytesMut::from(&[0x80, 3, 0, 1, 0, 0, 0, 2, 0, 1][..]);
        assert!(matches!(Decoder::default().decode(&mut short), Err(SpdyError::Invalid(_))));
        let mut junk = BytesMut::from(&[0x80, 3, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4][..]);
        assert!(Decoder::default().decode(&mut junk).is_err());
        // A 16 MiB frame is refused from its header, before any of it is buffered.
        let mut huge = BytesMut::from(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(matches!(Decoder::default().decode(&mut huge), Err(SpdyError::TooLarge(_))));
    }

    #[tokio::test]
    async fn the_connection_replies_to_new_streams_and_delivers_their_data() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut conn = Connection::serve(server);
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut enc = Encoder::default();
        let mut buf = BytesMut::new();
        enc.encode(&Frame::SynStream { id: 1, associated: 0, priority: 0, flags: 0, headers: vec![("streamtype".into(), "stdin".into())] }, &mut buf).unwrap();
        enc.encode(&Frame::Data { id: 1, flags: FLAG_FIN, data: Bytes::from_static(b"in") }, &mut buf).unwrap();
        enc.encode(&Frame::Ping(1), &mut buf).unwrap();
        cwr.write_all(&buf).await.unwrap();
        let mut s = conn.streams.recv().await.unwrap();
        assert_eq!(header(&s.headers, "streamType"), Some("stdin"));
        assert_eq!(s.rx.recv().await.unwrap(), Bytes::from_static(b"in"));
        assert_eq!(s.rx.recv().await, None, "FIN ends the stream's data");
        s.writer.write(b"out").await.unwrap();
        s.writer.finish().await;
        conn.close().await;
        let mut dec = Decoder::default();
        let mut rbuf = BytesMut::new();
        let mut got = Vec::new();
        while crd.read_buf(&mut rbuf).await.unwrap() > 0 {
            while let Some(f) = dec.decode(&mut rbuf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![
                Frame::SynReply { id: 1, flags: 0, headers: vec![] },
                Frame::Ping(1),
                Frame::Data { id: 1, flags: 0, data: Bytes::from_static(b"out") },
                Frame::Data { id: 1, flags: FLAG_FIN, data: Bytes::new() },
                Frame::GoAway { last_good: 0, status: 0 },
            ]
        );
    }
}
