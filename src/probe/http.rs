//! The httpGet probe and hook request (pkg/probe/http): GET to
//! `scheme://host:port/path` (host defaults to the pod IP), with the spec's
//! headers, upstream's `User-Agent: kube-probe/<major.minor>` and `Accept: */*`
//! defaults, HTTPS without certificate verification, at most 10 KiB of body.
//! 200–399 is success. Redirects are followed like Go's client with upstream's
//! redirect checker: same host only (10 hops at most); a redirect to another host
//! ends the probe as a success with a warning.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction};
use tokio::net::TcpStream;

use super::{join_host_port, resolve_port, user_agent, Outcome, ProbeError, ProbeResult, Result};

/// Upstream keeps at most this much of a response body (pkg/probe/http maxRespBodyLength).
pub const MAX_BODY: usize = 10 * 1024;
const MAX_REDIRECTS: usize = 10;

/// A resolved httpGet action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Headers in order, with the defaults applied.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// Upstream's NewRequestForHTTPGetAction; `agent` is `kube-probe` or `kube-lifecycle`.
    pub fn from_action(h: &HTTPGetAction, c: &Container, pod_ip: Option<&str>, agent: &str) -> Result<Self> {
        let https = h.scheme.as_deref().map(|s| s.eq_ignore_ascii_case("https")).unwrap_or(false);
        let host = match h.host.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => h.to_string(),
            None => pod_ip.filter(|p| !p.is_empty()).ok_or(ProbeError::NoPodIp)?.to_string(),
        };
        let port = resolve_port(&h.port, c)?;
        let path = h.path.clone().unwrap_or_default();
        let path = if path.starts_with('/') { path } else { format!("/{path}") };
        let mut headers: Vec<(String, String)> = h.http_headers.iter().flatten().map(|x| (x.name.clone(), x.value.clone())).collect();
        let has = |hs: &Vec<(String, String)>, n: &str| hs.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        if !has(&headers, "User-Agent") {
            headers.push(("User-Agent".into(), user_agent(agent)));
        }
        if !has(&headers, "Accept") {
            headers.push(("Accept".into(), "*/*".into()));
        } else {
            // An empty Accept removes the header (upstream).
            headers.retain(|(k, v)| !(k.eq_ignore_ascii_case("Accept") && v.is_empty()));
        }
        Ok(Self { https, host, port, path, headers })
    }

    pub fn url(&self) -> String {
        format!("{}://{}{}", if self.https { "https" } else { "http" }, join_host_port(&self.host, self.port), self.path)
    }

    /// Where a `Location` header points, relative to this request.
    pub fn redirect(&self, location: &str) -> Option<HttpRequest> {
        let mut next = self.clone();
        if let Some(rest) = location.strip_prefix("http://").map(|r| (false, r)).or_else(|| location.strip_prefix("https://").map(|r| (true, r))) {
            let (https, rest) = rest;
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].to_string()),
                None => (rest, "/".to_string()),
            };
            let uri: http::uri::Authority = authority.parse().ok()?;
            next.https = https;
            next.host = uri.host().trim_start_matches('[').trim_end_matches(']').to_string();
            next.port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            next.path = path;
        } else if location.starts_with("//") {
            return None;
        } else if location.starts_with('/') {
            next.path = location.to_string();
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map(|i| i + 1).unwrap_or(0)];
            next.path = format!("{}{location}", if dir.is_empty() { "/" } else { dir });
        }
        Some(next)
    }
}

/// Classifies a final response as upstream's DoHTTPProbe.
pub fn classify(status: u16, body: &str) -> Outcome {
    if (200..400).contains(&status) {
        if status >= 300 {
            return Outcome { result: ProbeResult::Warning, output: format!("Probe terminated redirects, Response body: {body}") };
        }
        return Outcome::success(body);
    }
    Outcome::failure(format!("HTTP probe failed with statuscode: {status}"))
}

/// Whether Go's client follows this status (given a Location).
pub fn follows(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// One probe within `timeout`.
pub async fn probe(req: &HttpRequest, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, probe_inner(req)).await {
        Ok(o) => o,
        Err(_) => Outcome::failure(format!("Get {:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)", req.url())),
    }
}

async fn probe_inner(req: &HttpRequest) -> Outcome {
    let mut cur = req.clone();
    let mut hops = 0;
    loop {
        let resp = match get_once(&cur).await {
            Ok(r) => r,
            Err(e) => return Outcome::failure(format!("Get {:?}: {e}", cur.url())),
        };
        let next = resp.location.as_deref().filter(|_| follows(resp.status)).and_then(|l| cur.redirect(l));
        match next {
            // A redirect to another host is not followed (upstream's RedirectChecker).
            Some(next) if next.host == req.host => {
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Outcome::failure(format!("Get {:?}: stopped after {MAX_REDIRECTS} redirects", next.url()));
                }
                cur = next;
            }
            _ => return classify(resp.status, &resp.body),
        }
    }
}

/// A response as the probe needs it.
pub struct Response {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

/// One GET, no redirects; errors in Go's words where they matter.
pub async fn get_once(req: &HttpRequest) -> Result<Response, String> {
    let addr = join_host_port(&req.host, req.port);
    let tcp = TcpStream::connect(&addr).await.map_err(|e| format!("dial tcp {addr}: {}", super::tcp::dial_error(&e)))?;
    if req.https {
        let name = rustls::pki_types::ServerName::try_from(req.host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()).connect(name, tcp).await.map_err(|e| e.to_string())?;
        send(req, tls).await
    } else {
        send(req, tcp).await
    }
}

async fn send<S>(req: &HttpRequest, io: S) -> Result<Response, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = http::Request::get(req.path.as_str());
    let host_override = req.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("Host")).map(|(_, v)| v.clone());
    b = b.header(http::header::HOST, host_override.unwrap_or_else(|| join_host_port(&req.host, req.port)));
    for (k, v) in req.headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("Host")) {
        b = b.header(k.as_str(), v.as_str());
    }
    b = b.header(http::header::CONNECTION, "close");
    let request = b.body(http_body_util::Empty::<hyper::body::Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let location = resp.headers().get(http::header::LOCATION).and_then(|v| v.to_str().ok()).map(String::from);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while buf.len() < MAX_BODY {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    buf.extend_from_slice(d);
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => break,
        }
    }
    buf.truncate(MAX_BODY);
    conn.abort();
    Ok(Response { status, location, body: String::from_utf8_lossy(&buf).into_owned() })
}

/// TLS without certificate verification, as upstream's `InsecureSkipVerify: true`.
fn tls_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| b.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth())
        .unwrap_or_else(|_| rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider())).with_safe_default_protocol_versions().expect("ring supports the default versions").with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth());
    Arc::new(cfg)
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::HTTPHeader;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn req() -> HttpRequest {
        HttpRequest { https: false, host: "10.0.0.5".into(), port: 8080, path: "/a/b?x=1".into(), headers: vec![] }
    }

    #[test]
    fn status_codes_classify_as_upstream() {
        assert_eq!(classify(200, "ok"), Outcome::success("ok"));
        assert_eq!(classify(399, "").result, ProbeResult::Warning);
        assert_eq!(classify(302, "moved").output, "Probe terminated redirects, Response body: moved");
        assert_eq!(classify(199, ""), Outcome::failure("HTTP probe failed with statuscode: 199"));
        assert_eq!(classify(404, "nope"), Outcome::failure("HTTP probe failed with statuscode: 404"));
        assert_eq!(classify(500, ""), Outcome::failure("HTTP probe failed with statuscode: 500"));
    }

    #[test]
    fn only_go_redirect_codes_are_followed() {
        for s in [301, 302, 303, 307, 308] {
            assert!(follows(s));
        }
        for s in [300, 304, 305, 200, 404] {
            assert!(!follows(s));
        }
    }

    #[test]
    fn redirect_locations_resolve_against_the_request() {
        let r = req();
        assert_eq!(r.redirect("/c").unwrap().url(), "http://10.0.0.5:8080/c");
        assert_eq!(r.redirect("c?y").unwrap().url(), "http://10.0.0.5:8080/a/c?y");
        let abs = r.redirect("https://example.com/z").unwrap();
        assert_eq!((abs.https, abs.host.as_str(), abs.port, abs.path.as_str()), (true, "example.com", 443, "/z"));
        let same = r.redirect("http://10.0.0.5:9090").unwrap();
        assert_eq!(same.url(), "http://10.0.0.5:9090/");
    }

    #[test]
    fn action_defaults_host_headers_and_path() {
        let c = Container { name: "c".into(), ..Default::default() };
        let h = HTTPGetAction {
            path: Some("healthz".into()),
            port: IntOrString::Int(80),
            http_headers: Some(vec![HTTPHeader { name: "X-A".into(), value: "1".into() }]),
            ..Default::default()
        };
        let r = HttpRequest::from_action(&h, &c, Some("10.1.2.3"), "kube-probe").unwrap();
        assert_eq!(r.url(), "http://10.1.2.3:80/healthz");
        assert_eq!(
            r.headers,
            vec![("X-A".into(), "1".into()), ("User-Agent".into(), "kube-probe/1.36".into()), ("Accept".into(), "*/*".into())]
        );
        let h2 = HTTPGetAction {
            scheme: Some("HTTPS".into()),
            host: Some("example".into()),
            port: IntOrString::Int(443),
            http_headers: Some(vec![HTTPHeader { name: "accept".into(), value: "".into() }, HTTPHeader { name: "user-agent".into(), value: "me".into() }]),
            ..Default::default()
        };
        let r = HttpRequest::from_action(&h2, &c, None, "kube-probe").unwrap();
        assert_eq!(r.url(), "https://example:443/");
        assert_eq!(r.headers, vec![("user-agent".into(), "me".into())]);
        assert!(HttpRequest::from_action(&HTTPGetAction { port: IntOrString::Int(80), ..Default::default() }, &c, None, "kube-probe").is_err());
    }

    /// A one-shot HTTP server on loopback answering each connection from `answers` in order.
    async fn serve(answers: Vec<String>) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for a in answers {
                let Ok((mut s, _)) = l.accept().await else { return };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(a.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        port
    }

    #[tokio::test]
    async fn same_host_redirects_are_followed_and_other_hosts_end_with_a_warning() {
        let port = serve(vec![
            "HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".into(),
        ])
        .await;
        let r = HttpRequest { https: false, host: "127.0.0.1".into(), port, path: "/".into(), headers: vec![] };
        assert_eq!(probe(&r, Duration::from_secs(5)).await, Outcome::success("hello"));

        let port = serve(vec!["HTTP/1.1 301 Moved\r\nLocation: http://elsewhere.invalid/\r\nContent-Length: 3\r\n\r\nbye".into()]).await;
        let r = HttpRequest { port, ..r };
        let o = probe(&r, Duration::from_secs(5)).await;
        assert_eq!(o, Outcome { result: ProbeResult::Warning, output: "Probe terminated redirects, Response body: bye".into() });
    }

    #[tokio::test]
    async fn https_probes_skip_certificate_verification() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ck = rcgen::generate_simple_self_signed(vec!["not-the-probed-host".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = acceptor.accept(s).await.unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let body = if req.to_ascii_lowercase().contains("user-agent: kube-probe/1.36") { "secure" } else { "no-agent" };
            let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes()).await;
            let _ = s.shutdown().await;
        });
        let c = Container { name: "c".into(), ..Default::default() };
        let h = HTTPGetAction { scheme: Some("HTTPS".into()), port: IntOrString::Int(port as i32), ..Default::default() };
        let r = HttpRequest::from_action(&h, &c, Some("127.0.0.1"), "kube-probe").unwrap();
        assert_eq!(probe(&r, Duration::from_secs(5)).await, Outcome::success("secure"));
    }

    #[tokio::test]
    async fn error_statuses_fail() {
        let port = serve(vec!["HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n".into()]).await;
        let r = HttpRequest { https: false, host: "127.0.0.1".into(), port, path: "/".into(), headers: vec![] };
        assert_eq!(probe(&r, Duration::from_secs(5)).await, Outcome::failure("HTTP probe failed with statuscode: 503"));
    }
}
