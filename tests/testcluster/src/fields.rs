//! Field managers (server-side apply's ownership, `metadata.managedFields`), after
//! apimachinery pkg/util/managedfields and sigs.k8s.io/structured-merge-diff: every write
//! records who set which fields. An apply (`operation: Apply`) owns exactly the fields of its
//! configuration; applying a value different from the live one of a field another manager owns
//! is a conflict (409) unless forced, which takes the field over. Any other write
//! (`operation: Update`) takes over the fields it changes, without conflicts.
//!
//! Approximations: lists are keyed by the strategic-merge keys of `patch.rs` (others are
//! atomic: the whole list is one field); `status` is not tracked; set-valued lists (`v:`)
//! are atomic.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::store::ApiError;

/// A field path in `fieldsV1` segments: `f:name` or `k:{"name":"x"}`.
pub type Path = Vec<String>;

/// Who is writing, from the request (`fieldManager`, else the user agent's product).
#[derive(Debug, Clone)]
pub struct Writer {
    pub manager: String,
    /// The applied configuration, for server-side apply.
    pub applied: Option<Value>,
    pub force: bool,
}

/// The manager a request without `fieldManager` is recorded as: the user agent up to its
/// first `/` (apiserver handlers `prefixFromUserAgent`).
pub fn manager_from_user_agent(user_agent: &str) -> String {
    let prefix = user_agent.split('/').next().unwrap_or("");
    let prefix: String = prefix.chars().take(128).collect();
    if prefix.is_empty() {
        "unknown".into()
    } else {
        prefix
    }
}

/// Metadata the API server owns; never part of a field set.
fn server_owned(path: &[String]) -> bool {
    match path {
        [f] => matches!(f.as_str(), "f:apiVersion" | "f:kind" | "f:status"),
        [m, f, ..] if m == "f:metadata" => matches!(
            f.as_str(),
            "f:name"
                | "f:namespace"
                | "f:uid"
                | "f:resourceVersion"
                | "f:generation"
                | "f:creationTimestamp"
                | "f:deletionTimestamp"
                | "f:deletionGracePeriodSeconds"
                | "f:managedFields"
                | "f:selfLink"
        ),
        _ => false,
    }
}

/// The leaf fields an object sets.
pub fn leaves(obj: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    walk(obj, &mut Vec::new(), &mut out);
    out.retain(|p| !server_owned(p));
    out
}

fn walk(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(format!("f:{k}"));
                match child {
                    Value::Array(items) if !items.is_empty() => {
                        match crate::patch::list_key(k, items) {
                            Some(key) => {
                                for item in items {
                                    path.push(item_segment(key, item));
                                    walk(item, path, out);
                                    path.pop();
                                }
                            }
                            None => {
                                out.insert(path.clone());
                            }
                        }
                    }
                    _ => walk(child, path, out),
                }
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
}

fn item_segment(key: &str, item: &Value) -> String {
    let id = item.get(key).cloned().unwrap_or(Value::Null);
    let mut m = Map::new();
    m.insert(key.to_string(), id);
    format!("k:{}", Value::Object(m))
}

/// The value at a field path, if set.
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if let Some(k) = seg.strip_prefix("k:") {
            let want: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur = cur
                .as_array()?
                .iter()
                .find(|item| want.iter().all(|(key, v)| item.get(key) == Some(v)))?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// After an apply dropped the fields its manager set last time and sets no more: puts back
/// those another manager owns too (server-side apply removes only fields nobody else
/// manages). Items of keyed lists are put back only while the item itself remains.
pub fn restore_others(manager: &str, before: &Value, merged: &mut Value) {
    let others: BTreeSet<Path> = entries(Some(before))
        .into_iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields)
        .collect();
    for path in others {
        let Some(v) = value_at(before, &path) else {
            continue;
        };
        if value_at(merged, &path).is_some() {
            continue;
        }
        let (last, parent) = path.split_last().unwrap();
        let (Some(field), Some(Value::Object(m))) =
            (last.strip_prefix("f:"), value_at_mut(merged, parent))
        else {
            continue;
        };
        m.insert(field.to_string(), v.clone());
    }
}

fn value_at_mut<'a>(obj: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = obj;
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            if cur.get(f).is_none() && cur.is_object() {
                cur[f] = json!({});
            }
            cur = cur.get_mut(f)?;
        } else if let Some(k) = seg.strip_prefix("k:") {
            let want: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur = cur
                .as_array_mut()?
                .iter_mut()
                .find(|item| want.iter().all(|(key, v)| item.get(key) == Some(v)))?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// A path as the API server prints it: `.spec.containers[name="x"].image`.
pub fn path_string(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = seg.strip_prefix("k:") {
            let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        }
    }
    out
}

/// A field set as `fieldsV1`: nested objects, `{}` at the leaves, `".": {}` on list items.
pub fn to_fields_v1(set: &BTreeSet<Path>) -> Value {
    let mut root = json!({});
    for path in set {
        let mut cur = &mut root;
        for seg in path {
            if seg.starts_with("k:") && cur.get(seg).is_none() {
                cur[seg.as_str()] = json!({".": {}});
            }
            cur = cur
                .as_object_mut()
                .unwrap()
                .entry(seg.clone())
                .or_insert_with(|| json!({}));
        }
    }
    root
}

/// The field set of a `fieldsV1` value.
pub fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn go(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != ".")
            .collect();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, child) in children {
            path.push(k.clone());
            go(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    go(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry, parsed.
struct Entry {
    raw: Value,
    manager: String,
    operation: String,
    fields: BTreeSet<Path>,
}

fn entries(obj: Option<&Value>) -> Vec<Entry> {
    obj.and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Entry {
            raw: e.clone(),
            manager: e["manager"].as_str().unwrap_or("").to_string(),
            operation: e["operation"].as_str().unwrap_or("").to_string(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

/// How a conflicting manager is named in the message (managedfields internal
/// `printManager`): an Update manager with its API version and time.
fn print_manager(e: &Entry) -> String {
    if e.operation == "Update" {
        format!(
            "\"{}\" using {} at {}",
            e.manager,
            e.raw["apiVersion"].as_str().unwrap_or(""),
            e.raw["time"].as_str().unwrap_or("")
        )
    } else {
        format!("\"{}\"", e.manager)
    }
}

/// The `managedFields` of `new`, written by `writer` over `old` (none: a create), or the
/// apply conflict (409, managedfields internal `NewConflictError`).
pub fn managed_fields(
    writer: &Writer,
    api_version: &str,
    old: Option<&Value>,
    new: &Value,
) -> Result<Value, ApiError> {
    let mut list = entries(old);
    let now = crate::util::now_rfc3339();
    let (operation, owned) = match &writer.applied {
        Some(applied) => {
            let owned = leaves(applied);
            if let Some(old) = old {
                let mut conflicts: Vec<(String, Path)> = Vec::new();
                for e in &list {
                    if e.manager == writer.manager && e.operation == "Apply" {
                        continue;
                    }
                    for p in owned.intersection(&e.fields) {
                        if value_at(applied, p) != value_at(old, p) {
                            conflicts.push((print_manager(e), p.clone()));
                        }
                    }
                }
                if !conflicts.is_empty() && !writer.force {
                    return Err(conflict_error(conflicts));
                }
                if writer.force {
                    for e in list.iter_mut() {
                        if !(e.manager == writer.manager && e.operation == "Apply") {
                            let taken: Vec<Path> = conflicts
                                .iter()
                                .filter(|(m, _)| *m == print_manager(e))
                                .map(|(_, p)| p.clone())
                                .collect();
                            for p in taken {
                                e.fields.remove(&p);
                            }
                        }
                    }
                }
            }
            ("Apply", owned)
        }
        None => {
            let before = old.map(leaves).unwrap_or_default();
            let after = leaves(new);
            let changed: BTreeSet<Path> = after
                .iter()
                .filter(|p| old.is_none_or(|o| value_at(o, p) != value_at(new, p)))
                .cloned()
                .collect();
            // Fields gone from the object are nobody's any more.
            let gone: BTreeSet<Path> = before.difference(&after).cloned().collect();
            for e in list.iter_mut() {
                e.fields
                    .retain(|p| !changed.contains(p) && !gone.iter().any(|g| p.starts_with(g)));
            }
            let mine = list
                .iter()
                .find(|e| e.manager == writer.manager && e.operation == "Update")
                .map(|e| e.fields.clone())
                .unwrap_or_default();
            let owned: BTreeSet<Path> = mine
                .union(&changed)
                .filter(|p| after.contains(*p))
                .cloned()
                .collect();
            ("Update", owned)
        }
    };
    // The writer's own entry is replaced; entries left with no fields go.
    let mut out: Vec<Value> = Vec::new();
    let mut placed = false;
    for e in list {
        if e.manager == writer.manager && e.operation == operation {
            placed = true;
            if !owned.is_empty() {
                out.push(entry(
                    &writer.manager,
                    operation,
                    api_version,
                    &now,
                    &owned,
                    Some(&e),
                ));
            }
        } else if !e.fields.is_empty() {
            let before = from_fields_v1(&e.raw["fieldsV1"]);
            if before == e.fields {
                out.push(e.raw);
            } else {
                let mut raw = e.raw.clone();
                raw["fieldsV1"] = to_fields_v1(&e.fields);
                out.push(raw);
            }
        }
    }
    if !placed && !owned.is_empty() {
        out.push(entry(
            &writer.manager,
            operation,
            api_version,
            &now,
            &owned,
            None,
        ));
    }
    Ok(Value::Array(out))
}

/// Moves the field at `path` out of every entry of `managed` into an Update entry of
/// `manager` (a controller's own write that the emulator makes within the client's request);
/// `changed`: the controller wrote it now (its entry's time moves on).
pub fn hand_over(
    managed: Value,
    path: &[&str],
    manager: &str,
    api_version: &str,
    changed: bool,
) -> Value {
    let path: Path = path.iter().map(|s| s.to_string()).collect();
    let mut list: Vec<Value> = managed.as_array().cloned().unwrap_or_default();
    for e in list.iter_mut() {
        if e["manager"] == manager {
            continue;
        }
        let mut fields = from_fields_v1(&e["fieldsV1"]);
        if fields.remove(&path) {
            e["fieldsV1"] = to_fields_v1(&fields);
        }
    }
    list.retain(|e| e["manager"] == manager || !from_fields_v1(&e["fieldsV1"]).is_empty());
    let mut set = BTreeSet::new();
    set.insert(path);
    match list
        .iter_mut()
        .find(|e| e["manager"] == manager && e["operation"] == "Update")
    {
        Some(e) => {
            let mut fields = from_fields_v1(&e["fieldsV1"]);
            let grew = fields.insert(set.into_iter().next().unwrap());
            if grew || changed {
                e["fieldsV1"] = to_fields_v1(&fields);
                e["time"] = json!(crate::util::now_rfc3339());
            }
        }
        None => list.push(entry(
            manager,
            "Update",
            api_version,
            &crate::util::now_rfc3339(),
            &set,
            None,
        )),
    }
    Value::Array(list)
}

fn entry(
    manager: &str,
    operation: &str,
    api_version: &str,
    now: &str,
    fields: &BTreeSet<Path>,
    previous: Option<&Entry>,
) -> Value {
    // An unchanged entry keeps its time, so that a write that changes nothing stays one.
    if let Some(p) = previous
        && p.fields == *fields
        && p.raw["apiVersion"] == api_version
    {
        return p.raw.clone();
    }
    json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(fields),
    })
}

fn conflict_error(conflicts: Vec<(String, Path)>) -> ApiError {
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflicts[0].0,
            path_string(&conflicts[0].1)
        )
    } else {
        let mut by_manager: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (m, p) in &conflicts {
            by_manager.entry(m).or_default().push(path_string(p));
        }
        let lines: Vec<String> = by_manager
            .iter()
            .flat_map(|(m, ps)| {
                std::iter::once(format!("conflicts with {m}:"))
                    .chain(ps.iter().map(|p| format!("- {p}")))
            })
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"),
                   "field": path_string(p)})
        })
        .collect();
    let mut e = ApiError::new(409, "Conflict", message);
    e.causes = Some(Box::new(Value::Array(causes)));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(m: &str, applied: Option<Value>, force: bool) -> Writer {
        Writer {
            manager: m.into(),
            applied,
            force,
        }
    }

    #[test]
    fn fields_v1_round_trips_with_keyed_lists() {
        let obj = json!({"metadata": {"name": "x", "labels": {"a": "1"}},
                         "spec": {"containers": [{"name": "c", "image": "i"}], "args": ["1", "2"]}});
        let set = leaves(&obj);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:a": {}}},
                   "f:spec": {"f:args": {}, "f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
        assert_eq!(from_fields_v1(&v1), set);
        let image = set.iter().find(|p| p.last().unwrap() == "f:image").unwrap();
        assert_eq!(path_string(image), ".spec.containers[name=\"c\"].image");
    }

    #[test]
    fn an_apply_over_another_managers_field_conflicts_unless_forced() {
        let live = json!({"data": {"x": "1", "y": "2"}});
        let a = managed_fields(&writer("a", Some(live.clone()), false), "v1", None, &live).unwrap();
        let mut live = live;
        live["metadata"] = json!({"managedFields": a});
        let b = writer(
            "b",
            Some(json!({"data": {"x": "changed", "y": "2"}})),
            false,
        );
        let e = managed_fields(&b, "v1", Some(&live), &live).unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(
            &*e.message,
            "Apply failed with 1 conflict: conflict with \"a\": .data.x"
        );
        // The same value is shared, not a conflict; forcing takes the field over.
        let forced = writer("b", Some(json!({"data": {"x": "changed", "y": "2"}})), true);
        let m = managed_fields(&forced, "v1", Some(&live), &live).unwrap();
        assert_eq!(m[0]["manager"], "a");
        assert_eq!(m[0]["fieldsV1"], json!({"f:data": {"f:y": {}}}));
        assert_eq!(m[1]["manager"], "b");
        assert_eq!(m[1]["fieldsV1"], json!({"f:data": {"f:x": {}, "f:y": {}}}));
    }

    #[test]
    fn an_update_takes_over_what_it_changes() {
        let live = json!({"data": {"x": "1"}});
        let a = managed_fields(&writer("a", Some(live.clone()), false), "v1", None, &live).unwrap();
        let mut old = live.clone();
        old["metadata"] = json!({"managedFields": a});
        let new = json!({"data": {"x": "2"}});
        let m =
            managed_fields(&writer("kubectl-edit", None, false), "v1", Some(&old), &new).unwrap();
        assert_eq!(m.as_array().unwrap().len(), 1, "{m}");
        assert_eq!(m[0]["manager"], "kubectl-edit");
        assert_eq!(m[0]["operation"], "Update");
        let mut old = new.clone();
        old["metadata"] = json!({"managedFields": m});
        let again = writer("a", Some(json!({"data": {"x": "1"}})), false);
        let e = managed_fields(&again, "v1", Some(&old), &old).unwrap_err();
        assert!(
            e.message.starts_with(
                "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1 at "
            ),
            "{}",
            e.message
        );
        assert!(e.message.ends_with(": .data.x"), "{}", e.message);
    }
}
