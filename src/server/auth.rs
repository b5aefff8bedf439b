//! Authentication and authorization of kubelet API requests, like upstream's
//! delegated auth (pkg/kubelet/server/auth.go): x509 client certificates
//! (user = CN, groups = O), bearer tokens through `TokenReview`, anonymous only
//! when enabled; then `SubjectAccessReview` on `nodes/<subresource>` with the
//! verb from the HTTP method. Answers are cached for the configured TTLs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use tracing::{debug, warn};

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> User {
        User { name: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()] }
    }
}

/// What the request asks for, as a SubjectAccessReview sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: &'static str,
    pub subresource: &'static str,
}

/// Upstream's mapping of kubelet paths to `nodes/<subresource>` (with
/// KubeletFineGrainedAuthz: `/pods`, `/healthz`, `/configz` have their own,
/// falling back to `proxy`), and of HTTP methods to verbs.
pub fn attributes(method: &http::Method, path: &str) -> Attributes {
    let verb = match *method {
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "get",
    };
    let sub = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    let subresource = if sub("/stats") {
        "stats"
    } else if sub("/metrics") {
        "metrics"
    } else if sub("/logs") {
        "log"
    } else if sub("/checkpoint") {
        "checkpoint"
    } else if sub("/pods") {
        "pods"
    } else if sub("/healthz") {
        "healthz"
    } else if sub("/configz") {
        "configz"
    } else {
        "proxy"
    };
    Attributes { verb, subresource }
}

/// User and groups from a client certificate (already verified against the CA).
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(String::from)).collect();
    Some(User { name, groups })
}

type Cache<K, V> = Mutex<HashMap<K, (Instant, V)>>;

fn cached<K: std::hash::Hash + Eq, V: Clone>(c: &Cache<K, V>, k: &K) -> Option<V> {
    let g = c.lock().ok()?;
    g.get(k).filter(|(until, _)| Instant::now() < *until).map(|(_, v)| v.clone())
}

fn remember<K: std::hash::Hash + Eq, V>(c: &Cache<K, V>, k: K, v: V, ttl: Duration) {
    if let Ok(mut g) = c.lock() {
        if g.len() > 4096 {
            g.retain(|_, (until, _)| Instant::now() < *until);
        }
        g.insert(k, (Instant::now() + ttl, v));
    }
}

/// The server's authenticator and authorizer.
pub struct Auth {
    pub node: String,
    pub client: Option<kube::Client>,
    pub anonymous: bool,
    pub token_webhook: bool,
    pub token_ttl: Duration,
    /// None: AlwaysAllow.
    pub sar: Option<(Duration, Duration)>,
    tokens: Cache<String, Option<User>>,
    decisions: Cache<(String, Vec<String>, &'static str, &'static str), bool>,
}

impl Auth {
    /// `sar`: Some((allowed TTL, denied TTL)) for Webhook authorization, None for AlwaysAllow.
    pub fn new(node: String, client: Option<kube::Client>, anonymous: bool, token_webhook: bool, token_ttl: Duration, sar: Option<(Duration, Duration)>) -> Self {
        Auth { node, client, anonymous, token_webhook, token_ttl, sar, tokens: Mutex::default(), decisions: Mutex::default() }
    }

    /// The request's user: its client certificate, else its bearer token, else
    /// anonymous when enabled; None means 401.
    pub async fn authenticate(&self, peer_cert: Option<&[u8]>, authorization: Option<&str>) -> Option<User> {
        if let Some(u) = peer_cert.and_then(user_from_cert) {
            return Some(u);
        }
        if let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty()) {
            return self.review_token(token).await;
        }
        self.anonymous.then(User::anonymous)
    }

    async fn review_token(&self, token: &str) -> Option<User> {
        if !self.token_webhook {
            return None;
        }
        let key = { use sha2::Digest; hex::encode(sha2::Sha256::digest(token.as_bytes())) };
        if let Some(u) = cached(&self.tokens, &key) {
            return u;
        }
        let client = self.client.as_ref()?;
        let review = TokenReview { spec: TokenReviewSpec { token: token.to_string(), audiences: None }, ..Default::default() };
        let user = match Api::<TokenReview>::all(client.clone()).create(&PostParams::default(), &review).await {
            Ok(r) => r.status.filter(|s| s.authenticated == Some(true)).and_then(|s| s.user).map(|u| User {
                name: u.username.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
            }),
            Err(e) => {
                warn!(error = %e, "TokenReview failed");
                return None;
            }
        };
        remember(&self.tokens, key, user.clone(), self.token_ttl);
        user
    }

    /// Whether `user` may do `a` on this node (SubjectAccessReview, cached).
    pub async fn authorize(&self, user: &User, a: &Attributes) -> bool {
        let Some((ttl_ok, ttl_denied)) = self.sar else { return true };
        let key = (user.name.clone(), user.groups.clone(), a.verb, a.subresource);
        if let Some(d) = cached(&self.decisions, &key) {
            return d;
        }
        let mut allowed = self.review_access(user, a.verb, a.subresource).await;
        // Fine-grained subresources fall back to nodes/proxy, as upstream.
        if !allowed && matches!(a.subresource, "pods" | "healthz" | "configz") {
            allowed = self.review_access(user, a.verb, "proxy").await;
        }
        remember(&self.decisions, key, allowed, if allowed { ttl_ok } else { ttl_denied });
        allowed
    }

    async fn review_access(&self, user: &User, verb: &str, subresource: &str) -> bool {
        let Some(client) = &self.client else { return false };
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    resource: Some("nodes".into()),
                    subresource: Some(subresource.into()),
                    name: Some(self.node.clone()),
                    version: Some("v1".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match Api::<SubjectAccessReview>::all(client.clone()).create(&PostParams::default(), &sar).await {
            Ok(r) => {
                let allowed = r.status.map(|s| s.allowed).unwrap_or(false);
                debug!(user = %user.name, verb, subresource, allowed, "SubjectAccessReview");
                allowed
            }
            Err(e) => {
                warn!(error = %e, "SubjectAccessReview failed");
                false
            }
        }
    }
}

/// Upstream's 403 text.
pub fn forbidden_message(user: &User, a: &Attributes) -> String {
    format!("Forbidden (user={}, verb={}, resource=nodes, subresource={})", user.name, a.verb, a.subresource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_upstreams_node_subresources() {
        let get = http::Method::GET;
        assert_eq!(attributes(&get, "/stats/summary"), Attributes { verb: "get", subresource: "stats" });
        assert_eq!(attributes(&get, "/metrics/cadvisor").subresource, "metrics");
        assert_eq!(attributes(&get, "/logs/syslog").subresource, "log");
        assert_eq!(attributes(&get, "/pods").subresource, "pods");
        assert_eq!(attributes(&get, "/healthz").subresource, "healthz");
        assert_eq!(attributes(&get, "/containerLogs/ns/p/c").subresource, "proxy");
        assert_eq!(attributes(&get, "/statsfoo").subresource, "proxy", "a prefix match needs a path boundary");
        assert_eq!(attributes(&http::Method::POST, "/exec/ns/p/c").verb, "create");
    }

    #[test]
    fn a_client_certificate_names_the_user_and_groups() {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "ops");
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = p.self_signed(&k).unwrap();
        assert_eq!(user_from_cert(c.der()), Some(User { name: "alice".into(), groups: vec!["ops".into()] }));
        let u = User::anonymous();
        assert_eq!(forbidden_message(&u, &attributes(&http::Method::GET, "/pods")), "Forbidden (user=system:anonymous, verb=get, resource=nodes, subresource=pods)");
    }
}
