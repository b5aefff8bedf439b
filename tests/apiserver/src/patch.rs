//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge
//! patch with the list strategies (merge keys) of the Kubernetes types the agent writes,
//! including the `$setElementOrder/…`, `$patch` (replace/delete/merge), `$retainKeys` and
//! `$deleteFromPrimitiveList/…` directives.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// How a list field merges under strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// No patch strategy: the patch's list replaces the original (atomic).
    Replace,
    /// `patchStrategy:"merge"` on a list of objects with this `patchMergeKey`.
    MergeByKey(&'static str),
    /// `patchStrategy:"merge"` on a list of scalars (set union).
    MergeScalars,
}

/// Patch strategy of the list at `path` (dotted, `[]` for list items) in an object of `kind`.
pub fn list_strategy(kind: &str, path: &str) -> ListStrategy {
    use ListStrategy::*;
    match path {
        "metadata.ownerReferences" => return MergeByKey("uid"),
        "metadata.finalizers" => return MergeScalars,
        _ => {}
    }
    let p = path
        .replace("spec.initContainers[]", "spec.containers[]")
        .replace("spec.ephemeralContainers[]", "spec.containers[]")
        .replace("spec.template.spec.", "spec.");
    match (kind, p.as_str()) {
        ("Pod", "spec.containers" | "spec.initContainers" | "spec.ephemeralContainers") => {
            MergeByKey("name")
        }
        ("Pod", "spec.containers[].ports") => MergeByKey("containerPort"),
        ("Pod", "spec.containers[].env") => MergeByKey("name"),
        ("Pod", "spec.containers[].volumeMounts") => MergeByKey("mountPath"),
        ("Pod", "spec.containers[].volumeDevices") => MergeByKey("devicePath"),
        (
            "Pod",
            "spec.volumes"
            | "spec.imagePullSecrets"
            | "spec.schedulingGates"
            | "spec.resourceClaims",
        ) => MergeByKey("name"),
        ("Pod", "spec.hostAliases") => MergeByKey("ip"),
        ("Pod", "spec.topologySpreadConstraints") => MergeByKey("topologyKey"),
        ("Pod", "status.conditions") => MergeByKey("type"),
        ("Pod", "status.podIPs" | "status.hostIPs") => MergeByKey("ip"),
        ("Pod", "status.resourceClaimStatuses") => MergeByKey("name"),
        ("Node", "spec.podCIDRs") => MergeScalars,
        ("Node", "status.conditions" | "status.addresses") => MergeByKey("type"),
        ("Namespace", "status.conditions") => MergeByKey("type"),
        ("Service", "spec.ports") => MergeByKey("port"),
        ("Service", "status.conditions") => MergeByKey("type"),
        _ => Replace,
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match target {
                Value::Object(t) => t.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, ApiError> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| json_patch_err(format!("invalid JSON pointer {path:?}")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn json_patch_err(msg: String) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("the server rejected our request due to an error in our request: {msg}"),
    )
}

fn parent_and_key<'a>(
    doc: &'a mut Value,
    toks: &[String],
) -> Result<(&'a mut Value, String), ApiError> {
    let (last, parents) = toks
        .split_last()
        .ok_or_else(|| json_patch_err("empty path".into()))?;
    let mut cur = doc;
    for t in parents {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| json_patch_err(format!("missing path element {t:?}")))?,
            Value::Array(a) => {
                let i: usize = t
                    .parse()
                    .map_err(|_| json_patch_err(format!("bad array index {t:?}")))?;
                a.get_mut(i)
                    .ok_or_else(|| json_patch_err(format!("array index {i} out of bounds")))?
            }
            _ => return Err(json_patch_err(format!("cannot traverse into {t:?}"))),
        };
    }
    Ok((cur, last.clone()))
}

fn jp_get(doc: &Value, toks: &[String]) -> Option<Value> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur.clone())
}

fn jp_remove(doc: &mut Value, toks: &[String]) -> Result<Value, ApiError> {
    let (parent, key) = parent_and_key(doc, toks)?;
    match parent {
        Value::Object(m) => m
            .remove(&key)
            .ok_or_else(|| json_patch_err(format!("unable to remove nonexistent key: {key}"))),
        Value::Array(a) => {
            let i: usize = key
                .parse()
                .map_err(|_| json_patch_err(format!("bad array index {key:?}")))?;
            if i >= a.len() {
                return Err(json_patch_err(format!("array index {i} out of bounds")));
            }
            Ok(a.remove(i))
        }
        _ => Err(json_patch_err("remove from a scalar".into())),
    }
}

fn jp_add(doc: &mut Value, toks: &[String], value: Value, replace: bool) -> Result<(), ApiError> {
    if toks.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, key) = parent_and_key(doc, toks)?;
    match parent {
        Value::Object(m) => {
            if replace && !m.contains_key(&key) {
                return Err(json_patch_err(format!(
                    "replace operation does not apply: doc is missing key: {key}"
                )));
            }
            m.insert(key, value);
        }
        Value::Array(a) => {
            if key == "-" && !replace {
                a.push(value);
            } else {
                let i: usize = key
                    .parse()
                    .map_err(|_| json_patch_err(format!("bad array index {key:?}")))?;
                if replace {
                    *a.get_mut(i).ok_or_else(|| {
                        json_patch_err(format!("array index {i} out of bounds"))
                    })? = value;
                } else if i <= a.len() {
                    a.insert(i, value);
                } else {
                    return Err(json_patch_err(format!("array index {i} out of bounds")));
                }
            }
        }
        _ => return Err(json_patch_err("add to a scalar".into())),
    }
    Ok(())
}

/// RFC 6902 JSON patch.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops = patch.as_array().ok_or_else(|| {
        ApiError::bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    })?;
    let mut doc = target.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = split_pointer(op.get("path").and_then(Value::as_str).unwrap_or(""))?;
        match name {
            "add" => jp_add(
                &mut doc,
                &path,
                op.get("value").cloned().unwrap_or(Value::Null),
                false,
            )?,
            "replace" => jp_add(
                &mut doc,
                &path,
                op.get("value").cloned().unwrap_or(Value::Null),
                true,
            )?,
            "remove" => {
                jp_remove(&mut doc, &path)?;
            }
            "move" | "copy" => {
                let from = split_pointer(op.get("from").and_then(Value::as_str).unwrap_or(""))?;
                let v = if name == "move" {
                    jp_remove(&mut doc, &from)?
                } else {
                    jp_get(&doc, &from)
                        .ok_or_else(|| json_patch_err("copy from a missing path".into()))?
                };
                jp_add(&mut doc, &path, v, false)?;
            }
            "test" => {
                let want = op.get("value").cloned().unwrap_or(Value::Null);
                if jp_get(&doc, &path) != Some(want) {
                    return Err(json_patch_err("testing value failed".into()));
                }
            }
            other => return Err(json_patch_err(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(doc)
}

/// Strategic merge patch of `original` (an object of `kind`) with `patch`.
pub fn strategic_merge_patch(
    kind: &str,
    original: &Value,
    patch: &Value,
) -> Result<Value, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "json: cannot unmarshal into Go value of type map[string]interface {}",
        ));
    }
    Ok(smp_map(
        kind,
        "",
        original.as_object().cloned().unwrap_or_default(),
        patch.as_object().unwrap(),
    )?
    .map(Value::Object)
    .unwrap_or(Value::Null))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Merge a patch map into an original map; None means the map was deleted (`$patch: delete`).
fn smp_map(
    kind: &str,
    path: &str,
    mut orig: Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            return Ok(Some(strip_directives(p)));
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Unknown patch type: {other} in map: {patch:?}"
            )))
        }
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    // Explicit removals from primitive lists first.
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (orig.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
        }
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        let sub = join(path, k);
        if v.is_null() {
            orig.remove(k);
            continue;
        }
        let order = patch
            .get(&format!("$setElementOrder/{k}"))
            .and_then(Value::as_array);
        let merged = match (orig.remove(k), v) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                smp_map(kind, &sub, o, p)?.map(Value::Object)
            }
            (None, Value::Object(p)) => smp_map(kind, &sub, Map::new(), p)?.map(Value::Object),
            (o, Value::Array(p)) => Some(Value::Array(smp_list(
                kind,
                &sub,
                o.and_then(|o| o.as_array().cloned()).unwrap_or_default(),
                p,
                order,
            )?)),
            (_, other) => Some(other.clone()),
        };
        if let Some(m) = merged {
            orig.insert(k.clone(), m);
        }
    }
    // $setElementOrder for lists the patch did not otherwise touch: reorder only.
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            if patch.contains_key(field) {
                continue;
            }
            if let (Some(Value::Array(list)), Some(order)) =
                (orig.get(field).cloned(), v.as_array())
            {
                let strategy = list_strategy(kind, &join(path, field));
                orig.insert(
                    field.to_string(),
                    Value::Array(apply_order(list, order, strategy)),
                );
            }
        }
    }
    Ok(Some(orig))
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    m
}

fn key_of<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|m| m.get(key))
}

fn apply_order(list: Vec<Value>, order: &[Value], strategy: ListStrategy) -> Vec<Value> {
    let ident = |v: &Value| -> Option<Value> {
        match strategy {
            ListStrategy::MergeByKey(k) => key_of(v, k).cloned(),
            _ => Some(v.clone()),
        }
    };
    let wanted: Vec<Value> = order.iter().filter_map(&ident).collect();
    let mut out: Vec<Value> = Vec::new();
    for w in &wanted {
        if let Some(item) = list.iter().find(|x| ident(x).as_ref() == Some(w)) {
            out.push(item.clone());
        }
    }
    for item in list {
        if !ident(&item).is_some_and(|i| wanted.contains(&i)) {
            out.push(item);
        }
    }
    out
}

fn smp_list(
    kind: &str,
    path: &str,
    orig: Vec<Value>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
) -> Result<Vec<Value>, ApiError> {
    let strategy = list_strategy(kind, path);
    // `{"$patch": "replace"}` as a list element replaces the whole list.
    if patch
        .iter()
        .any(|e| key_of(e, "$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|e| key_of(e, "$patch").is_none())
            .map(|e| match e {
                Value::Object(m) => Value::Object(strip_directives(m.clone())),
                o => o.clone(),
            })
            .collect());
    }
    let item_path = format!("{path}[]");
    let out = match strategy {
        ListStrategy::Replace => patch
            .iter()
            .map(|e| match e {
                Value::Object(m) => smp_map(kind, &item_path, Map::new(), m)
                    .map(|o| o.map(Value::Object).unwrap_or(Value::Null)),
                o => Ok(o.clone()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        ListStrategy::MergeScalars => {
            let mut out = orig;
            for e in patch {
                if !out.contains(e) {
                    out.push(e.clone());
                }
            }
            out
        }
        ListStrategy::MergeByKey(key) => {
            let mut out = orig;
            for e in patch {
                let Some(pm) = e.as_object() else {
                    return Err(ApiError::bad_request(format!(
                        "{path}: list of maps expected for merge key {key}"
                    )));
                };
                let Some(kv) = pm.get(key) else {
                    return Err(ApiError::bad_request(format!(
                        "map: {e} does not contain declared merge key: {key}"
                    )));
                };
                let pos = out.iter().position(|x| key_of(x, key) == Some(kv));
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = pos {
                        out.remove(i);
                    }
                    continue;
                }
                match pos {
                    Some(i) => {
                        let o = out[i].as_object().cloned().unwrap_or_default();
                        match smp_map(kind, &item_path, o, pm)? {
                            Some(m) => out[i] = Value::Object(m),
                            None => {
                                out.remove(i);
                            }
                        }
                    }
                    None => {
                        if let Some(m) = smp_map(kind, &item_path, Map::new(), pm)? {
                            out.push(Value::Object(m));
                        }
                    }
                }
            }
            out
        }
    };
    Ok(match (order, strategy) {
        (Some(order), ListStrategy::MergeByKey(_) | ListStrategy::MergeScalars) => {
            apply_order(out, order, strategy)
        }
        _ => out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        let p = json!({"a": "z", "c": {"f": null}});
        assert_eq!(merge_patch(&t, &p), json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn smp_conditions_keep_unlisted_and_order() {
        let orig = json!({"status": {"conditions": [
            {"type": "PodScheduled", "status": "True"}
        ]}});
        let patch = json!({"status": {
            "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "PodScheduled"}],
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "c", "ready": false}]
        }});
        let out = strategic_merge_patch("Pod", &orig, &patch).unwrap();
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}])
        );
        assert_eq!(out["status"]["containerStatuses"][0]["name"], "c");
    }

    #[test]
    fn smp_delete_and_replace_directives() {
        let orig = json!({"status": {"conditions": [{"type": "A"}, {"type": "B"}], "podIPs": [{"ip": "1"}]}});
        let patch = json!({"status": {"conditions": [{"type": "A", "$patch": "delete"}], "podIPs": [{"$patch": "replace"}, {"ip": "2"}]}});
        let out = strategic_merge_patch("Pod", &orig, &patch).unwrap();
        assert_eq!(out["status"]["conditions"], json!([{"type": "B"}]));
        assert_eq!(out["status"]["podIPs"], json!([{"ip": "2"}]));
    }

    #[test]
    fn json_patch_ops() {
        let t = json!({"a": [1, 2], "b": {"c": 1}});
        let p = json!([{"op": "add", "path": "/a/-", "value": 3}, {"op": "replace", "path": "/b/c", "value": 2}, {"op": "remove", "path": "/a/0"}]);
        assert_eq!(
            json_patch(&t, &p).unwrap(),
            json!({"a": [2, 3], "b": {"c": 2}})
        );
        assert!(json_patch(&t, &json!([{"op": "test", "path": "/b/c", "value": 9}])).is_err());
    }
}
