//! The HTTPS server: TLS (rustls) on 127.0.0.1, HTTP/1.1 and HTTP/2, URL → request-info
//! parsing like upstream's `RequestInfoFactory`, authentication, authorization, content
//! negotiation (JSON, YAML bodies, Table output), and dispatch to [`crate::state`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Attributes, UserInfo};
use crate::discovery;
use crate::error::{ApiError, Error, Result};
use crate::pki::{AnyClientCert, Pki};
use crate::resources::{self, ResourceDef};
use crate::selectors::{FieldSelector, Filter, LabelSelector};
use crate::state::{DeleteOpts, PatchType, RequestRecord, Shared};
use crate::tables::{self, IncludeObject};
use crate::watch::{self, WatchParams};

pub type Body = BoxBody<Bytes, Infallible>;

/// A running accept loop.
pub struct Running {
    pub cancel: CancellationToken,
    pub task: JoinHandle<()>,
}

/// Bind 127.0.0.1:`port` with SO_REUSEADDR (so a restart can take the same port at once).
pub fn bind(port: u16) -> std::io::Result<TcpListener> {
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    sock.listen(1024)
}

/// The TLS configuration: our serving cert, optional client certs, ALPN h2 + http/1.1.
pub fn tls_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key) = pki.server_cert()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(AnyClientCert::new(pki.ca_der(), provider)))
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Start accepting connections.
pub fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
) -> Running {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, _) = tokio::select! {
                _ = c.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!("accept: {e}"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
            };
            let (acceptor, shared, c) = (acceptor.clone(), shared.clone(), c.clone());
            tokio::spawn(async move {
                let tls = tokio::select! {
                    _ = c.cancelled() => return,
                    r = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)) => match r {
                        Ok(Ok(s)) => s,
                        _ => return,
                    },
                };
                let cert_user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|der| {
                        shared.pki.verify_client(der.as_ref()).map(|(cn, orgs)| {
                            let orgs: Vec<&str> = orgs.iter().map(String::as_str).collect();
                            UserInfo::new(cn, &orgs)
                        })
                    });
                let conn = Arc::new(cert_user);
                let svc_cancel = c.clone();
                let service = hyper::service::service_fn(move |req| {
                    let (shared, conn, cancel) = (shared.clone(), conn.clone(), svc_cancel.clone());
                    async move { Ok::<_, Infallible>(handle(shared, conn, req, cancel).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let served = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                tokio::select! {
                    _ = served => {}
                    _ = c.cancelled() => {}
                }
            });
        }
    });
    Running { cancel, task }
}

// ------------------------------------------------------------------ responses

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json_resp(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(full(serde_json::to_vec(v).expect("serializable")))
        .expect("response")
}

fn error_resp(e: &ApiError) -> Response<Body> {
    json_resp(e.code, &e.to_status())
}

fn text_resp(code: u16, s: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(full(s.to_string()))
        .expect("response")
}

// ------------------------------------------------------------------ request parsing

fn pct_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Query parameters (last value wins).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (pct_decode(k), pct_decode(v)),
            None => (pct_decode(p), String::new()),
        })
        .collect()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// What upstream's RequestInfoFactory derives from a resource path.
#[derive(Debug, Default)]
struct ResourcePath {
    group: String,
    version: String,
    namespace: String,
    resource: String,
    name: String,
    subresource: String,
    legacy_watch: bool,
}

fn parse_resource_path(path: &str) -> Option<ResourcePath> {
    let segs: Vec<String> = path.trim_matches('/').split('/').map(pct_decode).collect();
    let mut p = ResourcePath::default();
    let rest: &[String] = match segs.first().map(String::as_str) {
        Some("api") if segs.len() >= 3 => {
            p.version = segs[1].clone();
            &segs[2..]
        }
        Some("apis") if segs.len() >= 4 => {
            p.group = segs[1].clone();
            p.version = segs[2].clone();
            &segs[3..]
        }
        _ => return None,
    };
    let mut rest = rest.to_vec();
    if rest.first().map(String::as_str) == Some("watch") {
        p.legacy_watch = true;
        rest.remove(0);
    }
    if rest.first().map(String::as_str) == Some("namespaces") && rest.len() > 1 {
        p.namespace = rest[1].clone();
        if rest.len() > 2 && !["status", "finalize"].contains(&rest[2].as_str()) {
            rest.drain(0..2);
        }
    }
    p.resource = rest.first()?.clone();
    p.name = rest.get(1).cloned().unwrap_or_default();
    p.subresource = rest.get(2).cloned().unwrap_or_default();
    if rest.len() > 3 {
        return None;
    }
    if p.resource == "namespaces" && !p.name.is_empty() {
        p.namespace = p.name.clone();
    }
    Some(p)
}

fn header<'a>(h: &'a hyper::HeaderMap, k: &str) -> &'a str {
    h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn media_type(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

fn decode_body(ct: &str, body: &[u8]) -> std::result::Result<Value, ApiError> {
    match media_type(ct) {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}"))),
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}"))),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

fn accept_ok(accept: &str) -> bool {
    accept.is_empty()
        || accept.contains("json")
        || accept.contains("*/*")
        || accept.contains("yaml")
}

// ------------------------------------------------------------------ the handler

type Conn = Option<std::result::Result<UserInfo, String>>;

async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
    cancel: CancellationToken,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    if let Some((ns, name, sub)) = streaming_subresource(&path) {
        return upgrade(&shared, &conn, req, ns, name, sub, &query).await;
    }
    // A WebSocket client of pods/log gets the stream as wsstream messages.
    let on_upgrade = (method == Method::GET && path.ends_with("/log") && crate::wsstream::is_websocket(&headers)).then(|| hyper::upgrade::on(&mut req));
    let body = match Limited::new(req.into_body(), 32 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error_resp(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                "request body too large",
            ))
        }
    };
    let mut rec = RequestRecord {
        verb: method.as_str().to_lowercase(),
        group: String::new(),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        path: path.clone(),
        query: query.clone(),
        content_type: if body.is_empty() {
            String::new()
        } else {
            header(&headers, "content-type").to_string()
        },
        user: String::new(),
        user_agent: header(&headers, "user-agent").to_string(),
        upgrade: String::new(),
        code: 0,
    };
    // Authentication.
    let user: std::result::Result<Option<UserInfo>, ()> =
        match header(&headers, "authorization").strip_prefix("Bearer ") {
            Some(tok) => shared.token_user(tok.trim()).map(Some).ok_or(()),
            None => match conn.as_ref() {
                Some(Ok(u)) => Ok(Some(u.clone())),
                Some(Err(_)) => Err(()),
                None => Ok(None),
            },
        };
    let resp = match user {
        Err(()) => error_resp(&ApiError::unauthorized()),
        Ok(user) => {
            rec.user = user
                .as_ref()
                .map(|u| u.name.clone())
                .unwrap_or_else(|| "system:anonymous".into());
            match dispatch(
                &shared,
                user.as_ref(),
                &mut rec,
                &method,
                &path,
                &Query(parse_query(&query)),
                &headers,
                &body,
                cancel,
            )
            .await
            {
                Ok(r) => match on_upgrade {
                    Some(up) if r.status() == StatusCode::OK => {
                        rec.upgrade = "websocket".into();
                        crate::wsstream::serve(up, &headers, r.into_body()).unwrap_or_else(|e| error_resp(&e))
                    }
                    _ => r,
                },
                Err(e) => error_resp(&e),
            }
        }
    };
    rec.code = resp.status().as_u16();
    tracing::debug!(verb = %rec.verb, path = %rec.path, user = %rec.user, code = rec.code);
    shared.record(rec);
    resp
}

/// `/api/v1/namespaces/{ns}/pods/{name}/{exec|attach|portforward}` → (ns, name, subresource).
fn streaming_subresource(path: &str) -> Option<(String, String, &'static str)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub] => {
            let sub = ["exec", "attach", "portforward"].into_iter().find(|s| s == sub)?;
            Some((ns.to_string(), name.to_string(), sub))
        }
        _ => None,
    }
}

/// Streaming subresources: authenticate, authorize `create` on `pods/<sub>` (for
/// the GET of a WebSocket as for the POST of SPDY), then proxy the upgrade.
async fn upgrade(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    req: Request<Incoming>,
    ns: String,
    name: String,
    sub: &'static str,
    query: &str,
) -> Response<Body> {
    let mut rec = RequestRecord {
        verb: "create".into(),
        group: String::new(),
        resource: "pods".into(),
        subresource: sub.into(),
        namespace: ns.clone(),
        name: name.clone(),
        path: req.uri().path().to_string(),
        query: query.to_string(),
        content_type: String::new(),
        user: String::new(),
        user_agent: header(req.headers(), "user-agent").to_string(),
        upgrade: header(req.headers(), "upgrade").to_string(),
        code: 0,
    };
    let user = match header(req.headers(), "authorization").strip_prefix("Bearer ") {
        Some(tok) => shared.token_user(tok.trim()),
        None => match conn.as_ref() {
            Some(Ok(u)) => Some(u.clone()),
            _ => None,
        },
    };
    let result = async {
        let user = user.ok_or_else(ApiError::unauthorized)?;
        rec.user = user.name.clone();
        let def = resources::find("", "v1", "pods").ok_or_else(ApiError::resource_not_found)?;
        {
            let store = shared.store();
            auth::authorize(&user, &Attributes { verb: "create", def, subresource: sub, namespace: &ns, name: &name, fields: None }, &store)?;
        }
        crate::nodeproxy::upgrade(shared, &ns, &name, sub, &parse_query(query), req).await
    }
    .await;
    let resp = result.unwrap_or_else(|e| error_resp(&e));
    rec.code = resp.status().as_u16();
    shared.record(rec);
    resp
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    shared: &Arc<Shared>,
    user: Option<&UserInfo>,
    rec: &mut RequestRecord,
    method: &Method,
    path: &str,
    q: &Query,
    headers: &hyper::HeaderMap,
    body: &Bytes,
    cancel: CancellationToken,
) -> std::result::Result<Response<Body>, ApiError> {
    let p = path.trim_end_matches('/');
    // Public health/version endpoints.
    match p {
        "/healthz" | "/livez" | "/readyz" => return Ok(text_resp(200, "ok")),
        "/version" => return Ok(json_resp(200, &discovery::version())),
        _ => {}
    }
    let Some(user) = user else {
        return Err(ApiError::unauthorized());
    };
    if *method == Method::GET {
        let segs: Vec<&str> = p.trim_start_matches('/').split('/').collect();
        let doc = match segs.as_slice() {
            ["api"] => Some(discovery::api_versions(&shared.server_address())),
            ["apis"] => Some(discovery::api_group_list()),
            ["api", v] => {
                Some(discovery::resource_list("", v).ok_or_else(ApiError::resource_not_found)?)
            }
            ["apis", g] => Some(discovery::api_group(g).ok_or_else(ApiError::resource_not_found)?),
            ["apis", g, v] => {
                Some(discovery::resource_list(g, v).ok_or_else(ApiError::resource_not_found)?)
            }
            ["openapi", "v3"] => Some(discovery::openapi_v3_root()),
            ["openapi", "v3", "api", v] => {
                Some(discovery::openapi_v3_gv("", v).ok_or_else(ApiError::resource_not_found)?)
            }
            ["openapi", "v3", "apis", g, v] => {
                Some(discovery::openapi_v3_gv(g, v).ok_or_else(ApiError::resource_not_found)?)
            }
            ["openapi", ..] => return Ok(text_resp(404, "404 page not found")),
            _ => None,
        };
        if let Some(d) = doc {
            return Ok(json_resp(200, &d));
        }
    }
    let rp = parse_resource_path(p).ok_or_else(|| {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    })?;
    rec.group = rp.group.clone();
    rec.resource = rp.resource.clone();
    rec.subresource = rp.subresource.clone();
    rec.namespace = rp.namespace.clone();
    rec.name = rp.name.clone();
    let def = resources::find(&rp.group, &rp.version, &rp.resource)
        .ok_or_else(ApiError::resource_not_found)?;
    if !rp.subresource.is_empty() && !def.has_subresource(&rp.subresource) {
        return Err(ApiError::resource_not_found());
    }
    if def.namespaced
        && rp.namespace.is_empty()
        && (!rp.name.is_empty() || *method != Method::GET)
        && *method != Method::DELETE
    {
        return Err(ApiError::resource_not_found());
    }
    if !def.namespaced && !rp.namespace.is_empty() && def.plural != "namespaces" {
        return Err(ApiError::resource_not_found());
    }
    let ns = if def.namespaced {
        rp.namespace.as_str()
    } else {
        ""
    };
    let watch = rp.legacy_watch || q.flag("watch");
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if rp.name.is_empty() => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if rp.name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => return Err(ApiError::method_not_allowed()),
    };
    rec.verb = verb.to_string();
    let sub_ok = match rp.subresource.as_str() {
        "" => def.verbs.contains(&verb) && (verb != "create" || rp.name.is_empty()),
        "status" | "approval" | "ephemeralcontainers" | "resize" => ["get", "update", "patch"].contains(&verb) && !rp.name.is_empty(),
        "binding" | "token" => verb == "create",
        "log" => verb == "get" && def.plural == "pods",
        _ => false,
    };
    if !sub_ok {
        return Err(ApiError::method_not_allowed());
    }
    let accept = header(headers, "accept");
    if !accept_ok(accept) {
        return Err(ApiError::not_acceptable());
    }
    let table = (wants_table(accept) && ["get", "list", "watch"].contains(&verb))
        .then(|| IncludeObject::parse(q.get("includeObject")));
    // Selectors (needed for authorization of list/watch by name).
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), def)?;
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?;
    let authz_name = if rp.name.is_empty() {
        fields.pinned_name().unwrap_or("").to_string()
    } else {
        rp.name.clone()
    };
    {
        let store = shared.store();
        auth::authorize(
            user,
            &Attributes {
                verb,
                def,
                subresource: &rp.subresource,
                namespace: ns,
                name: &authz_name,
                fields: Some(&fields),
            },
            &store,
        )?;
    }
    let mut fields = fields;
    if !rp.name.is_empty() && verb == "watch" {
        fields = FieldSelector::parse(&format!("metadata.name={}", rp.name), def)?;
    }
    let filter = Filter {
        labels,
        fields,
        namespace: (def.namespaced && !ns.is_empty()).then(|| ns.to_string()),
    };
    let ct = header(headers, "content-type");
    let _strict = crate::state::FieldValidation::set(q.get("fieldValidation") == Some("Strict"));
    match verb {
        "get" if rp.subresource == "log" => crate::nodeproxy::pod_log(shared, ns, &rp.name, &q.0).await,
        "get" => {
            let obj = shared.get(def, ns, &rp.name)?;
            Ok(match table {
                Some(inc) => json_resp(
                    200,
                    &tables::table(
                        def,
                        &[&*obj],
                        crate::meta::resource_version(&obj),
                        inc,
                        true,
                    ),
                ),
                None => json_resp(200, &obj),
            })
        }
        "list" => {
            if q.get("resourceVersionMatch").is_some_and(|m| !m.is_empty())
                && q.get("resourceVersion").is_none_or(str::is_empty)
            {
                return Err(list_options_invalid(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if q.get("resourceVersionMatch") == Some("Exact") {
                if let Some(rv) = q.get("resourceVersion").and_then(|r| r.parse::<u64>().ok()) {
                    if rv < shared.store().floor() {
                        return Err(ApiError::gone(format!(
                            "too old resource version: {rv} ({})",
                            shared.store().floor()
                        )));
                    }
                }
            }
            let (items, rv) = shared.list(def, &filter);
            Ok(match table {
                Some(inc) => {
                    let refs: Vec<&Value> = items.iter().map(|a| &**a).collect();
                    json_resp(200, &tables::table(def, &refs, &rv.to_string(), inc, true))
                }
                None => json_resp(200, &Shared::list_doc(def, &items, rv)),
            })
        }
        "watch" => {
            let send_initial = q.flag("sendInitialEvents");
            let bookmarks = q.flag("allowWatchBookmarks");
            if send_initial {
                if q.get("resourceVersionMatch") != Some("NotOlderThan") {
                    return Err(list_options_invalid("sendInitialEvents", "sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan"));
                }
                if !bookmarks {
                    return Err(list_options_invalid(
                        "allowWatchBookmarks",
                        "allowWatchBookmarks must be set to true when sendInitialEvents is set",
                    ));
                }
            } else if q.get("resourceVersionMatch").is_some_and(|m| !m.is_empty()) {
                return Err(list_options_invalid("resourceVersionMatch", "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"));
            }
            let timeout = q
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(1800));
            let params = WatchParams {
                def,
                filter,
                resource_version: q.get("resourceVersion").map(str::to_string),
                send_initial_events: send_initial,
                allow_bookmarks: bookmarks,
                timeout,
                table,
            };
            let rx = watch::start(shared.clone(), params, cancel)?;
            let stream = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header("Content-Type", "application/json")
                .header("Cache-Control", "no-cache, private")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .expect("response"))
        }
        "create" => {
            let obj = decode_body(ct, body)?;
            match rp.subresource.as_str() {
                "binding" => Ok(json_resp(201, &shared.bind(ns, &rp.name, &obj)?)),
                "token" => Ok(json_resp(
                    201,
                    &shared.token_request(user, ns, &rp.name, obj)?,
                )),
                _ if matches!(def.plural, "tokenreviews" | "subjectaccessreviews") => Ok(json_resp(201, &shared.review(def, obj)?)),
                _ => Ok(json_resp(201, &shared.create(user, def, ns, obj)?)),
            }
        }
        "update" => {
            let obj = decode_body(ct, body)?;
            let (o, created) = shared.update(user, def, &rp.subresource, ns, &rp.name, obj)?;
            Ok(json_resp(if created { 201 } else { 200 }, &o))
        }
        "patch" => {
            let pt = match media_type(ct) {
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/json-patch+json" => PatchType::Json,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            Ok(json_resp(
                200,
                &shared.patch(user, def, &rp.subresource, ns, &rp.name, pt, &patch)?,
            ))
        }
        "delete" | "deletecollection" => {
            let opts = delete_opts(q, ct, body)?;
            if verb == "delete" {
                Ok(json_resp(
                    200,
                    &shared.delete(user, def, ns, &rp.name, &opts)?,
                ))
            } else {
                Ok(json_resp(
                    200,
                    &shared.delete_collection(user, def, &filter, &opts)?,
                ))
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn list_options_invalid(field: &str, msg: &str) -> ApiError {
    let def = ResourceDef {
        group: "meta.k8s.io",
        kind: "ListOptions",
        ..*crate::state::res("pods")
    };
    ApiError::invalid(
        &def,
        "",
        vec![crate::error::FieldError::forbidden(field, msg)],
    )
}

fn delete_opts(q: &Query, ct: &str, body: &Bytes) -> std::result::Result<DeleteOpts, ApiError> {
    let mut o = DeleteOpts::default();
    if !body.is_empty() {
        let v = decode_body(ct, body)?;
        o.grace_period_seconds = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        o.resource_version = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(k) = v.get("kind").and_then(Value::as_str) {
            if k != "DeleteOptions" {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind (DeleteOptions)"
                )));
            }
        }
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        o.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    Ok(o)
}
