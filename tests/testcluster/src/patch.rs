//! The patch flavours clients send: JSON merge (RFC 7386), JSON patch (RFC 6902), strategic
//! merge (merge by key for the well-known lists of built-in kinds, with the `$patch`,
//! `$setElementOrder` and `$deleteFromPrimitiveList` directives) and server-side apply
//! (approximated as a strategic merge that also drops the fields the same manager applied
//! last time and left out now).

use serde_json::{Map, Value};

pub fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

pub fn json(target: &mut Value, patch: &Value) -> Result<(), String> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| e.to_string())?;
    json_patch::patch(target, &patch).map_err(|e| e.to_string())
}

/// The key that identifies the elements of a list field in a strategic merge, as the built-in
/// types declare with `patchMergeKey`.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "secrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "webhooks" => "name",
        "conditions" => "type",
        "topologySpreadConstraints" => "topologyKey",
        "ports" => {
            let container = items.iter().any(|i| i.get("containerPort").is_some());
            if container { "containerPort" } else { "port" }
        }
        _ => return None,
    };
    let keyed = items
        .iter()
        .all(|i| i.get(key).is_some() || i.get("$patch").is_some());
    keyed.then_some(key)
}

/// The key of a keyed list (field managers track its items one by one), if it has one.
pub(crate) fn list_key(field: &str, items: &[Value]) -> Option<&'static str> {
    merge_key(field, items)
}

/// Removes `$`-directives from a value that is inserted as a whole.
fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
        other => other.clone(),
    }
}

pub fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(gone)) = (t.get_mut(field), v) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(tv @ Value::Object(_)), Value::Object(_)) => strategic(tv, v),
            (Some(Value::Array(ta)), Value::Array(pa)) => merge_list(k, ta, pa),
            _ => {
                t.insert(k.clone(), strip(v));
            }
        }
    }
    for (k, order) in p {
        let (Some(field), Value::Array(order)) = (k.strip_prefix("$setElementOrder/"), order)
        else {
            continue;
        };
        if let Some(Value::Array(list)) = t.get_mut(field) {
            reorder(field, list, order);
        }
    }
}

fn merge_list(field: &str, target: &mut Vec<Value>, patch: &[Value]) {
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .map(strip)
            .collect();
        return;
    }
    let Some(key) = merge_key(field, patch) else {
        *target = patch.iter().map(strip).collect();
        return;
    };
    for pe in patch {
        let id = pe.get(key);
        let pos = target.iter().position(|te| te.get(key) == id);
        if pe.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                target.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => strategic(&mut target[i], pe),
            None => target.push(strip(pe)),
        }
    }
}

fn reorder(field: &str, list: &mut Vec<Value>, order: &[Value]) {
    let key = merge_key(field, order);
    let id = |v: &Value| match key {
        Some(k) => v.get(k).cloned(),
        None => Some(v.clone()),
    };
    let mut rest = std::mem::take(list);
    for o in order {
        if let Some(i) = rest.iter().position(|e| id(e) == id(o)) {
            list.push(rest.remove(i));
        }
    }
    list.extend(rest);
}

/// Server-side apply: `previous` is what the same field manager applied last time.
pub fn apply(target: &mut Value, applied: &Value, previous: Option<&Value>) {
    if let Some(previous) = previous {
        prune(target, previous, applied);
    }
    strategic(target, applied);
}

/// Removes from `target` what `old` set and `new` no longer sets.
fn prune(target: &mut Value, old: &Value, new: &Value) {
    let (Value::Object(t), Value::Object(o)) = (target, old) else {
        return;
    };
    for (k, ov) in o {
        match new.get(k) {
            None => {
                t.remove(k);
            }
            Some(nv) => {
                if let (Some(tv), Value::Array(oa), Value::Array(na)) = (t.get_mut(k), ov, nv) {
                    if let (Value::Array(ta), Some(key)) = (&mut *tv, merge_key(k, oa)) {
                        for oe in oa {
                            let id = oe.get(key);
                            if !na.iter().any(|ne| ne.get(key) == id) {
                                ta.retain(|te| te.get(key) != id);
                            } else if let (Some(te), Some(ne)) = (
                                ta.iter_mut().find(|te| te.get(key) == id),
                                na.iter().find(|ne| ne.get(key) == id),
                            ) {
                                prune(te, oe, ne);
                            }
                        }
                    }
                } else if let Some(tv) = t.get_mut(k) {
                    prune(tv, ov, nv);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name_and_keeps_order() {
        let mut t = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}]}});
        let p = json!({"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}]}});
        strategic(&mut t, &p);
        assert_eq!(
            t,
            json!({"spec": {"containers": [
                {"name": "b", "image": "b:1"},
                {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}]}})
        );
    }

    #[test]
    fn strategic_deletes_and_nulls() {
        let mut t = json!({"a": 1, "volumes": [{"name": "x"}, {"name": "y"}], "args": ["1"]});
        let p = json!({"a": null, "volumes": [{"name": "x", "$patch": "delete"}], "args": ["2"]});
        strategic(&mut t, &p);
        assert_eq!(t, json!({"volumes": [{"name": "y"}], "args": ["2"]}));
    }

    #[test]
    fn apply_drops_fields_the_manager_no_longer_sets() {
        let old = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"env": [{"name": "X"}, {"name": "Y"}]}});
        let new = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"env": [{"name": "X"}]}});
        let mut live = old.clone();
        live["metadata"]["labels"]["c"] = json!("other manager");
        apply(&mut live, &new, Some(&old));
        assert_eq!(
            live,
            json!({"metadata": {"labels": {"a": "1", "c": "other manager"}}, "spec": {"env": [{"name": "X"}]}})
        );
    }
}
