//! Image names and pull policies: Docker-style name normalization (what
//! `distribution/reference.ParseNormalizedNamed` does, and so what the kubelet
//! and containerd's CRI plugin do), the kubelet's default `imagePullPolicy`,
//! and which registries are spoken to over plain HTTP.

use std::net::IpAddr;

use oci_client::Reference;

use super::ImageError;

/// When to contact the registry for a container's image (`Container.imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullPolicy {
    /// Resolve the reference on every container start (blobs already in the
    /// content store are not downloaded again).
    Always,
    /// Pull only when the image is not in containerd.
    IfNotPresent,
    /// Never pull; fail with `ErrImageNeverPull` when the image is absent.
    Never,
}

impl PullPolicy {
    /// The policy for a container: its `imagePullPolicy`, or when unset (or not
    /// one of the three API values) the API server's default: `Always` for a
    /// `:latest` tag or no tag and no digest, `IfNotPresent` otherwise.
    // Upstream: pkg/apis/core/v1/defaults.go SetDefaults_Container.
    pub fn from_k8s(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            _ => match parse_normalized(image) {
                // The parser fills in "latest" only when there is neither tag nor digest.
                Ok(reference) if reference.tag() == Some("latest") => PullPolicy::Always,
                _ => PullPolicy::IfNotPresent,
            },
        }
    }
}

/// Normalizes an image name the way Docker and containerd do:
/// `busybox` → `docker.io/library/busybox:latest`, `foo/bar` →
/// `docker.io/foo/bar:latest`; a first component with a `.` or `:` or equal
/// to `localhost` is a registry host and is kept (`127.0.0.1:5000/x/y:1`,
/// `localhost/x:1`); a digest is kept and suppresses the default tag.
pub fn normalize_reference(image: &str) -> Result<String, ImageError> {
    parse(image).map(|reference| reference.whole())
}

/// Parses and normalizes an image name.
pub(crate) fn parse(image: &str) -> Result<Reference, ImageError> {
    parse_normalized(image).map_err(|source| ImageError::InvalidName {
        image: image.to_owned(),
        source,
    })
}

/// The longest name (domain and path) a reference may have.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// `distribution/reference.ParseNormalizedNamed` without a regular expression.
/// oci-spec's `Reference::try_from` compiles a Unicode-aware regex on first use
/// (about 15 MB of heap while it builds, several MB kept): more than the rest
/// of an idle agent. The grammar is upstream's (distribution/reference
/// regexp.go): `[domain[:port]/]path[:tag][@digest]`, tag `[\w][\w.-]{0,127}`
/// (ASCII, as Go's `\w`), path components `[a-z0-9]+([_.]|__|-+)[a-z0-9]+...`.
pub(crate) fn parse_normalized(s: &str) -> Result<Reference, oci_client::ParseError> {
    use oci_client::ParseError as E;
    if s.is_empty() {
        return Err(E::NameEmpty);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    // A tag follows the last ':' that comes after the last '/' (a ':' before a
    // '/' is the registry's port).
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if !valid_name(name) || !tag.is_none_or(valid_tag) || !digest.is_none_or(valid_digest_syntax) {
        return Err(E::ReferenceInvalidFormat);
    }
    if name.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(E::NameTooLong);
    }
    let (registry, repository) = split_docker_domain(name);
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(E::NameContainsUppercase);
    }
    if let Some(d) = digest {
        let (algorithm, hex) = d.split_once(':').ok_or(E::DigestInvalidFormat)?;
        let want = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(E::DigestUnsupported),
        };
        if hex.len() != want {
            return Err(E::DigestInvalidLength);
        }
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t.to_owned(), d.to_owned()),
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_owned()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").to_owned()),
    })
}

/// `[domain/]path`: path components only, or a domain then at least one path
/// component.
fn valid_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    if valid_path_component(first) && rest.iter().all(|p| valid_path_component(p)) {
        return true;
    }
    !rest.is_empty() && valid_domain(first) && rest.iter().all(|p| valid_path_component(p))
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn valid_path_component(p: &str) -> bool {
    let b = p.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.first().is_none_or(|&c| !alnum(c)) || b.last().is_none_or(|&c| !alnum(c)) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &p[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

/// `host[:port]`: dot-separated `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`
/// labels or a bracketed IPv6 address.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, tail)) => {
                if addr.is_empty() || !addr.bytes().all(|c| c.is_ascii_hexdigit() || c == b':') {
                    return false;
                }
                match tail.strip_prefix(':') {
                    Some(port) => ("", Some(port)),
                    None if tail.is_empty() => ("", None),
                    None => return false,
                }
            }
            None => return false,
        },
        None => match d.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (d, None),
        },
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit())) {
        return false;
    }
    if d.starts_with('[') {
        return true;
    }
    host.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

/// `[\w][\w.-]{0,127}` with ASCII `\w`.
fn valid_tag(t: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = t.as_bytes();
    (1..=128).contains(&b.len()) && word(b[0]) && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// `algorithm:hex`: `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*` and at
/// least 32 hex digits.
fn valid_digest_syntax(d: &str) -> bool {
    let Some((algorithm, hex)) = d.split_once(':') else { return false };
    hex.len() >= 32
        && hex.bytes().all(|c| c.is_ascii_hexdigit())
        && algorithm.split(['-', '_', '+', '.']).all(|part| {
            let b = part.as_bytes();
            b.first().is_some_and(|c| c.is_ascii_alphabetic()) && b.iter().all(|c| c.is_ascii_alphanumeric())
        })
}

/// docker.io for a first component that is no host (no `.` or `:`, not
/// `localhost`), `library/` for official images (upstream `splitDockerDomain`).
fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => (left.to_owned(), right.to_owned()),
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".to_owned();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

/// The host part of a `host[:port]` registry name (brackets of IPv6 literals removed).
pub(crate) fn registry_hostname(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

/// Whether a registry is on this host (`localhost`, `127.0.0.0/8`, `::1`).
/// containerd and Docker speak plain HTTP to such registries.
pub(crate) fn is_loopback_registry(registry: &str) -> bool {
    let host = registry_hostname(registry);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `registry` matches an insecure-registry entry: the same `host:port`,
/// or an entry without a port naming the registry's host.
pub(crate) fn is_listed(registry: &str, entries: &[String]) -> bool {
    entries.iter().any(|entry| {
        let entry = entry
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/');
        entry.eq_ignore_ascii_case(registry)
            || (registry_hostname(entry) == entry
                && entry.eq_ignore_ascii_case(registry_hostname(registry)))
    })
}

/// The distribution-source label of blobs pulled through `reference`:
/// `containerd.io/distribution.source.<hostname>` → `<repository>` (the port
/// is dropped, as containerd's `docker.AppendDistributionSourceLabel` does).
pub(crate) fn distribution_source(reference: &Reference) -> (String, String) {
    (
        format!(
            "containerd.io/distribution.source.{}",
            registry_hostname(reference.registry())
        ),
        reference.repository().to_owned(),
    )
}

/// Adds `repo` to a comma-separated distribution-source value, keeping it
/// sorted and free of duplicates (containerd `appendDistributionSourceLabel`).
pub(crate) fn append_source_repo(existing: Option<&str>, repo: &str) -> String {
    let mut repos: Vec<&str> = existing
        .map(|value| value.split(',').filter(|r| !r.is_empty()).collect())
        .unwrap_or_default();
    repos.push(repo);
    repos.sort_unstable();
    repos.dedup();
    repos.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(image: &str) -> String {
        normalize_reference(image).unwrap_or_else(|e| panic!("{image}: {e}"))
    }

    #[test]
    fn short_names_go_to_docker_hub_library() {
        assert_eq!(normalized("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalized("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalized("foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(
            normalized("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalized("index.docker.io/foo/bar:2"),
            "docker.io/foo/bar:2"
        );
    }

    #[test]
    fn registry_hosts_are_kept() {
        assert_eq!(normalized("127.0.0.1:5000/x/y:1"), "127.0.0.1:5000/x/y:1");
        assert_eq!(normalized("localhost/x:1"), "localhost/x:1");
        assert_eq!(normalized("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(
            normalized("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
        assert_eq!(normalized("quay.io/a/b/c"), "quay.io/a/b/c:latest");
    }

    #[test]
    fn digests_are_kept_without_default_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalized(&format!("busybox@{digest}")),
            format!("docker.io/library/busybox@{digest}")
        );
        assert_eq!(
            normalized(&format!("127.0.0.1:5000/x:1@{digest}")),
            format!("127.0.0.1:5000/x:1@{digest}")
        );
    }

    #[test]
    fn invalid_names_are_rejected() {
        for image in [
            "",
            "Busybox",
            "busybox:",
            "bad name",
            "x@sha256:123",
            "a//b",
            ":tag",
            "busybox ",
        ] {
            match normalize_reference(image) {
                Err(ImageError::InvalidName {
                    image: ref name, ..
                }) => assert_eq!(name, image),
                other => panic!("{image:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn the_parser_agrees_with_oci_spec_on_ascii_names() {
        let digest = format!("sha256:{}", "c".repeat(64));
        let names = [
            "busybox", "busybox:1.36", "foo/bar", "docker.io/busybox", "index.docker.io/foo/bar:2",
            "127.0.0.1:5000/x/y:1", "localhost/x:1", "localhost:5000/x", "registry.k8s.io/pause:3.9",
            "quay.io/a/b/c", "a.b-c.d:443/e__f/g.h-i---j:T_a.g-1", "localhost:5000", "my-registry.io/a_b",
            "x/y:z:w", "x/-y", "x/y-", "x/y__z", "x/y___z", "x/y._z", "x..y/z", "-x.io/y", "x-.io/y",
            "x.io:/y", "x.io:80a/y", "x/Y", "X.io/y", "a/b/", "/a", "a:", ":a", "a@", "@a", "a:b@",
            "a:-b", "a:.b", "a:_b", &format!("a:{}", "t".repeat(128)), &format!("a:{}", "t".repeat(129)),
            &format!("busybox@{digest}"), &format!("x.io/y:1@{digest}"), "y@sha256:abc",
            &format!("y@sha512:{}", "d".repeat(64)), &format!("y@md5:{}", "d".repeat(32)),
            &format!("y@sha256+b64:{}", "e".repeat(64)), &format!("{}/z", "a".repeat(250)),
        ];
        for name in names {
            let ours = parse_normalized(name).map(|r| r.whole());
            let theirs = Reference::try_from(name).map(|r| r.whole());
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{name:?}: ours {ours:?}, oci-spec {theirs:?}");
            if let (Ok(a), Ok(b)) = (&ours, &theirs) {
                assert_eq!(a, b, "{name:?}");
            }
        }
        // Where upstream Go and oci-spec differ, rkubelet follows Go: an
        // upper-case repository is refused, tags are ASCII, IPv6 hosts allowed.
        assert_eq!(parse_normalized("Foo/bar").unwrap_err(), oci_client::ParseError::NameContainsUppercase);
        assert!(parse_normalized("busybox:ünï").is_err());
        assert_eq!(parse_normalized("[::1]:5000/x:1").map(|r| r.registry().to_owned()).unwrap(), "[::1]:5000");
        assert!(parse_normalized("[zz]/x").is_err());
    }

    #[test]
    fn invalid_name_reason_and_message_follow_the_kubelet() {
        let err = normalize_reference("Bad:Name").unwrap_err();
        assert_eq!(err.reason(), "InvalidImageName");
        assert!(
            err.to_string()
                .contains(r#"couldn't parse image name "Bad:Name""#),
            "{err}"
        );
    }

    #[test]
    fn explicit_policies_win() {
        assert_eq!(
            PullPolicy::from_k8s(Some("Never"), "busybox"),
            PullPolicy::Never
        );
        assert_eq!(
            PullPolicy::from_k8s(Some("IfNotPresent"), "busybox:latest"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::from_k8s(Some("Always"), "busybox:1"),
            PullPolicy::Always
        );
    }

    #[test]
    fn default_policy_is_always_for_latest_or_untagged() {
        assert_eq!(PullPolicy::from_k8s(None, "busybox"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::from_k8s(None, "busybox:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::from_k8s(Some(""), "127.0.0.1:5000/x/y"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::from_k8s(None, "busybox:1.36"),
            PullPolicy::IfNotPresent
        );
        let digest = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            PullPolicy::from_k8s(None, &format!("busybox@{digest}")),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::from_k8s(None, &format!("busybox:latest@{digest}")),
            PullPolicy::Always
        );
        // Unparseable names default like upstream (the pull then fails with InvalidImageName).
        assert_eq!(
            PullPolicy::from_k8s(None, "Not Valid"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::from_k8s(Some("Sometimes"), "busybox:1"),
            PullPolicy::IfNotPresent
        );
    }

    #[test]
    fn loopback_registries_are_detected() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("127.1.2.3"));
        assert!(is_loopback_registry("localhost"));
        assert!(is_loopback_registry("LOCALHOST:5000"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("docker.io"));
        assert!(!is_loopback_registry("10.0.0.1:5000"));
        assert!(!is_loopback_registry("localhost.example.com"));
    }

    #[test]
    fn insecure_entries_match_host_and_port() {
        let entries = vec!["registry.local:5000".to_owned(), "plain.example".to_owned()];
        assert!(is_listed("registry.local:5000", &entries));
        assert!(!is_listed("registry.local:6000", &entries));
        assert!(is_listed("plain.example", &entries));
        assert!(is_listed("plain.example:8080", &entries));
        assert!(!is_listed("docker.io", &entries));
    }

    #[test]
    fn distribution_source_drops_the_port() {
        let reference = parse("127.0.0.1:5000/test/busybox:1.0").unwrap();
        assert_eq!(
            distribution_source(&reference),
            (
                "containerd.io/distribution.source.127.0.0.1".to_owned(),
                "test/busybox".to_owned()
            )
        );
        let hub = parse("busybox").unwrap();
        assert_eq!(
            distribution_source(&hub).0,
            "containerd.io/distribution.source.docker.io"
        );
        assert_eq!(distribution_source(&hub).1, "library/busybox");
    }

    #[test]
    fn source_repos_are_sorted_and_unique() {
        assert_eq!(append_source_repo(None, "b/c"), "b/c");
        assert_eq!(append_source_repo(Some("x/y,a/b"), "m/n"), "a/b,m/n,x/y");
        assert_eq!(append_source_repo(Some("a/b"), "a/b"), "a/b");
    }
}
