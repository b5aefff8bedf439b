//! Decoding bodies the way the real server does: as the typed Kubernetes object. A body
//! that does not decode (wrong JSON types) is a 400 like upstream; fields the type does
//! not have are dropped (the real server's default `fieldValidation=Warn` drops them with
//! only a warning header), which is reported as a violation since a correct client must
//! not rely on them. The stored object is the typed round trip, so it looks like what the
//! real server would store.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::error::ApiError;

const QUANTITY_MAPS: &[&str] = &[
    "requests",
    "limits",
    "capacity",
    "allocatable",
    "overhead",
    "hard",
    "used",
];

/// Go accepts JSON numbers for `resource.Quantity` and stores them as strings.
pub fn normalize_quantities(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if QUANTITY_MAPS.contains(&k.as_str()) {
                    if let Value::Object(q) = child {
                        for qv in q.values_mut() {
                            if let Value::Number(n) = qv {
                                *qv = Value::String(n.to_string());
                            }
                        }
                    }
                } else if k == "sizeLimit" || k == "storage" {
                    if let Value::Number(n) = child {
                        *child = Value::String(n.to_string());
                        continue;
                    }
                }
                normalize_quantities(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize_quantities),
        _ => {}
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        format!(
            "json: cannot unmarshal into Go struct field {path}: {}",
            e.inner()
        )
    })?;
    serde_json::to_value(t).map_err(|e| e.to_string())
}

/// Paths present (non-null) in `input` but absent from `output`.
pub fn dropped_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => dropped_fields(v, ov, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o.iter()).enumerate() {
                dropped_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decode `v` as the typed object for `api_version`/`kind`. Returns the typed round trip
/// and the fields that were dropped. Unknown kinds pass through unchanged.
pub fn decode(api_version: &str, kind: &str, v: &Value) -> Result<(Value, Vec<String>), ApiError> {
    use k8s_openapi::api;
    let mut input = v.clone();
    normalize_quantities(&mut input);
    let r = match (api_version, kind) {
        ("v1", "Pod") => roundtrip::<api::core::v1::Pod>(&input),
        ("v1", "Node") => roundtrip::<api::core::v1::Node>(&input),
        ("v1", "Event") => roundtrip::<api::core::v1::Event>(&input),
        ("v1", "Namespace") => roundtrip::<api::core::v1::Namespace>(&input),
        ("v1", "ConfigMap") => roundtrip::<api::core::v1::ConfigMap>(&input),
        ("v1", "Secret") => roundtrip::<api::core::v1::Secret>(&input),
        ("v1", "ServiceAccount") => roundtrip::<api::core::v1::ServiceAccount>(&input),
        ("v1", "Service") => roundtrip::<api::core::v1::Service>(&input),
        ("v1", "Binding") => roundtrip::<api::core::v1::Binding>(&input),
        ("coordination.k8s.io/v1", "Lease") => roundtrip::<api::coordination::v1::Lease>(&input),
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => {
            roundtrip::<api::certificates::v1::CertificateSigningRequest>(&input)
        }
        ("storage.k8s.io/v1", "CSINode") => roundtrip::<api::storage::v1::CSINode>(&input),
        ("storage.k8s.io/v1", "CSIDriver") => roundtrip::<api::storage::v1::CSIDriver>(&input),
        ("node.k8s.io/v1", "RuntimeClass") => roundtrip::<api::node::v1::RuntimeClass>(&input),
        ("resource.k8s.io/v1", "ResourceSlice") => {
            roundtrip::<api::resource::v1::ResourceSlice>(&input)
        }
        ("authentication.k8s.io/v1", "TokenRequest") => {
            roundtrip::<api::authentication::v1::TokenRequest>(&input)
        }
        ("authentication.k8s.io/v1", "TokenReview") => {
            roundtrip::<api::authentication::v1::TokenReview>(&input)
        }
        ("authorization.k8s.io/v1", "SubjectAccessReview") => {
            roundtrip::<api::authorization::v1::SubjectAccessReview>(&input)
        }
        _ => return Ok((input, Vec::new())),
    };
    let out = r.map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version {:?} cannot be handled as a {kind}: {e}",
            api_version.rsplit('/').next().unwrap_or(api_version)
        ))
    })?;
    let mut dropped = Vec::new();
    dropped_fields(&input, &out, "", &mut dropped);
    Ok((out, dropped))
}
