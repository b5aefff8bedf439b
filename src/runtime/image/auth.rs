//! Registry credentials from a Docker `config.json`, the node-wide credential
//! source the kubelet's `credentialprovider` reads: `auths.<location>.auth`
//! (base64 of `user:password`), `username`/`password`, or `registrytoken`.
//! The legacy `.dockercfg` layout (locations at the top level) is read too.
//! The entries become a [`Keyring`] (source [`Source::Node`]), matched to
//! images like every other credential source.
//!
//! A missing or unreadable file means no node credentials, as upstream: it is
//! logged, never fatal; so is an entry without a usable credential.

use std::path::Path;

use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, warn};

use super::keyring::{basic_or_anonymous, decode_auth_field, DockerConfig, Keyring, Source};

/// One `auths` entry of a Docker config file.
#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// Reads the node's docker config at `path` into a keyring; problems are
/// logged and give an empty keyring.
pub(crate) async fn load(path: &Path) -> Keyring {
    let config = match tokio::fs::read(path).await {
        Ok(bytes) => parse_docker_config(&bytes).unwrap_or_else(|error| {
            warn!(path = %path.display(), %error, "ignoring unparseable docker config");
            DockerConfig::new()
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            debug!(path = %path.display(), "no docker config, no node credentials");
            DockerConfig::new()
        }
        Err(error) => {
            warn!(path = %path.display(), %error, "cannot read docker config, no node credentials");
            DockerConfig::new()
        }
    };
    let mut keyring = Keyring::default();
    keyring.add(&Source::Node, config);
    keyring
}

/// Parses a Docker `config.json` (or legacy `.dockercfg`). Entries that carry
/// no usable credential are skipped; a document that is not a JSON object is an error.
pub(crate) fn parse_docker_config(bytes: &[u8]) -> Result<DockerConfig, serde_json::Error> {
    let document: serde_json::Map<String, Value> = serde_json::from_slice(bytes)?;
    let entries = match document.get("auths") {
        Some(Value::Object(auths)) => auths.clone(),
        // Legacy .dockercfg: the locations are the top-level keys.
        _ => document,
    };
    let mut config = DockerConfig::new();
    for (key, value) in entries {
        if !value.is_object() {
            continue;
        }
        let entry: AuthEntry = serde_json::from_value(value)?;
        match credential(&entry) {
            Some(auth) => config.push((key, auth)),
            None => debug!(registry = %key, "docker config entry without usable credentials"),
        }
    }
    Ok(config)
}

/// The credential of one entry: a registry token, else `auth`, else username/password.
fn credential(entry: &AuthEntry) -> Option<RegistryAuth> {
    if let Some(token) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Some(RegistryAuth::Bearer(token.to_owned()));
    }
    if let Some(encoded) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        match decode_auth_field(encoded.trim()) {
            Ok((user, password)) => return Some(RegistryAuth::Basic(user, password)),
            Err(_) => warn!("docker config \"auth\" is not base64 of user:password; ignored"),
        }
    }
    match (entry.username.as_deref(), entry.password.as_deref()) {
        (Some(user), Some(password)) if !user.is_empty() => Some(basic_or_anonymous(user.to_owned(), password.to_owned())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// What a pull of `registry/repo` would use first.
    trait ForRegistry {
        fn for_registry(&self, registry: &str) -> RegistryAuth;
    }

    impl ForRegistry for DockerConfig {
        fn for_registry(&self, registry: &str) -> RegistryAuth {
            let mut keyring = Keyring::default();
            keyring.add(&Source::Node, self.clone());
            keyring.lookup(&format!("{registry}/team/repo")).first().map(|c| c.auth.clone()).unwrap_or(RegistryAuth::Anonymous)
        }
    }

    fn basic(auth: &RegistryAuth) -> Option<(&str, &str)> {
        match auth {
            RegistryAuth::Basic(user, password) => Some((user, password)),
            _ => None,
        }
    }

    #[test]
    fn auth_field_is_base64_user_colon_password() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let json = format!(r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{encoded}"}}}}}}"#);
        let creds = parse_docker_config(json.as_bytes()).unwrap();
        assert_eq!(
            basic(&creds.for_registry("127.0.0.1:5000")),
            Some(("alice", "s3cr:et"))
        );
        assert!(matches!(
            creds.for_registry("127.0.0.1:5001"),
            RegistryAuth::Anonymous
        ));
    }

    #[test]
    fn username_and_password_fields_work() {
        let json =
            br#"{"auths":{"https://registry.example.com/v2/":{"username":"bob","password":"pw"}}}"#;
        let creds = parse_docker_config(json).unwrap();
        assert_eq!(
            basic(&creds.for_registry("registry.example.com")),
            Some(("bob", "pw"))
        );
    }

    #[test]
    fn docker_hub_aliases_map_to_docker_io() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("hub:pw");
        let json =
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{encoded}"}}}}}}"#);
        let creds = parse_docker_config(json.as_bytes()).unwrap();
        assert_eq!(basic(&creds.for_registry("docker.io")), Some(("hub", "pw")));
    }

    #[test]
    fn registry_token_is_a_bearer_token() {
        let json = br#"{"auths":{"r.example":{"registrytoken":"tok"}}}"#;
        let creds = parse_docker_config(json).unwrap();
        assert!(
            matches!(creds.for_registry("r.example"), RegistryAuth::Bearer(ref t) if t == "tok")
        );
    }

    #[test]
    fn legacy_dockercfg_layout_is_read() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("u:p");
        let json = format!(r#"{{"legacy.example":{{"auth":"{encoded}","email":"x@y"}}}}"#);
        let creds = parse_docker_config(json.as_bytes()).unwrap();
        assert_eq!(
            basic(&creds.for_registry("legacy.example")),
            Some(("u", "p"))
        );
    }

    #[test]
    fn unusable_entries_are_skipped() {
        let json = br#"{"auths":{"a.example":{"auth":"!!notbase64"},"b.example":{},"c.example":{"auth":"bm9jb2xvbg=="}},"credsStore":"desktop"}"#;
        let creds = parse_docker_config(json).unwrap();
        for host in ["a.example", "b.example", "c.example"] {
            assert!(
                matches!(creds.for_registry(host), RegistryAuth::Anonymous),
                "{host}"
            );
        }
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(parse_docker_config(b"[1,2]").is_err());
        assert!(parse_docker_config(b"{").is_err());
        assert!(parse_docker_config(br#"{"auths":{"h":{"auth":5}}}"#).is_err());
    }

    #[tokio::test]
    async fn missing_file_means_anonymous() {
        let keyring = load(Path::new("/nonexistent/rkubelet/config.json")).await;
        assert!(keyring.is_empty());
    }
}
