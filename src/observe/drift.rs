//! What differs between the objects meshup wants in a cluster and the live ones, field by
//! field, and who put each live field there.
//!
//! Two kinds of difference (see [`FieldDiff::drift`]):
//!
//! - a **change**: what `meshup install` would do (a rendered value that differs from the live
//!   one in a release helm upgrades, an object helm creates or deletes, a field helm stops
//!   setting);
//! - **drift**: what `install` leaves as it is and only `install --repair` converges: a field no
//!   rendered manifest holds that another field manager put there (from `managedFields`, e.g.
//!   `kubectl set env`), or a rendered value someone changed in a release helm does not touch
//!   (same chart, same values). Helm 3's three-way merge and helm 4's server-side apply both
//!   keep fields other managers own, so an upgrade would not remove them either. A server-side
//!   dry-run apply keeps them too, which is why meshup compares the rendered manifest with the
//!   live object and its `managedFields` itself.
//!
//! Never reported nor repaired: what the cluster fills in (status, server metadata, defaulted
//! fields no manager other than the release's set, what kube-controller-manager writes such as
//! a Deployment's revision annotation, allocated Service addresses and node ports) and what
//! istiod patches at run time (its webhooks' `caBundle` and `failurePolicy`,
//! istio/istio#44285).

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Map, Value, json};

/// One step of a field path, as `managedFields` (`fieldsV1`) spells them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    /// `f:name`: a field of an object.
    Field(String),
    /// `k:{"name":"x"}`: the item of a keyed list with these keys.
    Key(String),
    /// `v:"x"`: the item of a set-like list with this value.
    Item(String),
    /// `i:3`: the item at this index of an atomic list of objects.
    Index(usize),
}

/// A path from the object's root.
pub type FieldPath = Vec<Seg>;

/// Field managers that are the cluster itself: what they write is filled in, not configured.
const SYSTEM_MANAGERS: [&str; 4] = [
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-apiserver",
];

/// Managers that write a release's objects for meshup: helm (its manager is the helm
/// binary's file name, `helm`, with helm 3's updates and helm 4's server-side apply alike) and
/// meshup (a `--repair`, the reader RBAC `upgrade start` applies before the release adopts it).
pub fn release_managers(helm_binary: &std::path::Path) -> Vec<String> {
    let mut managers = vec![
        "helm".to_string(),
        crate::tools::kubectl::FIELD_MANAGER.into(),
    ];
    if let Some(name) = helm_binary.file_name().and_then(|n| n.to_str())
        && !managers.iter().any(|m| m == name)
    {
        managers.push(name.to_string());
    }
    managers
}

/// The path as people read it: `.spec.template.spec.containers[name=discovery].env[name=FOO]`.
pub fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Field(f) if f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                out.push('.');
                out.push_str(f);
            }
            Seg::Field(f) => out.push_str(&format!("[{f:?}]")),
            Seg::Key(k) => {
                let map: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = map
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => format!("{k}={s}"),
                        v => format!("{k}={v}"),
                    })
                    .collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Seg::Item(v) => out.push_str(&format!("[{v}]")),
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// One `managedFields` entry: a manager and the fields it owns.
#[derive(Debug, Clone)]
pub struct Owner {
    pub manager: String,
    /// `status`, `scale`: written through a subresource.
    pub subresource: String,
    pub fields: BTreeSet<FieldPath>,
}

/// The field owners of a live object (`metadata.managedFields`, `fieldsV1`). A node marked
/// `.` (a list item, a map a manager created) is owned itself, besides its children.
pub fn owners(live: &Value) -> Vec<Owner> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let Some(map) = v.as_object() else { return };
        if (map.is_empty() || map.contains_key(".")) && !path.is_empty() {
            out.insert(path.clone());
        }
        for (key, child) in map {
            let seg = if let Some(f) = key.strip_prefix("f:") {
                Seg::Field(f.to_string())
            } else if let Some(k) = key.strip_prefix("k:") {
                Seg::Key(k.to_string())
            } else if let Some(v) = key.strip_prefix("v:") {
                Seg::Item(v.to_string())
            } else if let Some(i) = key.strip_prefix("i:") {
                match i.parse() {
                    Ok(i) => Seg::Index(i),
                    Err(_) => continue,
                }
            } else {
                continue;
            };
            path.push(seg);
            walk(child, path, out);
            path.pop();
        }
    }
    live.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|entry| {
            let mut fields = BTreeSet::new();
            walk(&entry["fieldsV1"], &mut Vec::new(), &mut fields);
            Owner {
                manager: entry["manager"].as_str().unwrap_or("unknown").to_string(),
                subresource: entry["subresource"].as_str().unwrap_or("").to_string(),
                fields,
            }
        })
        .collect()
}

/// The key a list's items are matched by (as the built-in kinds declare `patchMergeKey`), when
/// every item has it.
fn list_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "webhooks"
        | "secrets" => "name",
        "volumeMounts" => "mountPath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ports" if items.iter().all(|i| i.get("containerPort").is_some()) => "containerPort",
        "ports" => "port",
        _ => return None,
    };
    let objects = items.iter().all(|i| i.get(key).is_some());
    let unique = items
        .iter()
        .map(|i| i[key].to_string())
        .collect::<BTreeSet<_>>()
        .len()
        == items.len();
    (objects && unique).then_some(key)
}

/// Key values a server fills in when a list item leaves them out (`protocol: TCP`).
fn key_default(key: &str) -> Option<Value> {
    (key == "protocol").then(|| json!("TCP"))
}

/// The item of `items` a `k:` segment names.
fn find_keyed<'a>(items: &'a [Value], key: &str) -> Option<(usize, &'a Value)> {
    let want: Map<String, Value> = serde_json::from_str(key).ok()?;
    items.iter().enumerate().find(|(_, item)| {
        want.iter().all(|(k, v)| match item.get(k) {
            Some(have) => same(have, v),
            None => key_default(k).as_ref() == Some(v),
        })
    })
}

/// The value at `path`, with the JSON-pointer steps that reach it.
fn resolve<'a>(obj: &'a Value, path: &[Seg]) -> Option<(&'a Value, Vec<String>)> {
    let mut cur = obj;
    let mut pointer = Vec::new();
    for seg in path {
        match seg {
            Seg::Field(f) => {
                cur = cur.as_object()?.get(f)?;
                pointer.push(f.clone());
            }
            Seg::Key(k) => {
                let (i, item) = find_keyed(cur.as_array()?, k)?;
                cur = item;
                pointer.push(i.to_string());
            }
            Seg::Item(v) => {
                let want: Value = serde_json::from_str(v).ok()?;
                let (i, item) = cur
                    .as_array()?
                    .iter()
                    .enumerate()
                    .find(|(_, item)| **item == want)?;
                cur = item;
                pointer.push(i.to_string());
            }
            Seg::Index(i) => {
                cur = cur.as_array()?.get(*i)?;
                pointer.push(i.to_string());
            }
        }
    }
    Some((cur, pointer))
}

/// Whether `path` (from the root) is something meshup never compares: what the cluster fills
/// in, or what istiod patches at run time.
pub fn ignored(kind: &str, path: &[Seg]) -> bool {
    let names: Vec<&str> = path
        .iter()
        .map(|s| match s {
            Seg::Field(f) => f.as_str(),
            _ => "*",
        })
        .collect();
    match names.as_slice() {
        ["status", ..] | ["apiVersion"] | ["kind"] => true,
        ["metadata", field, ..]
            if matches!(
                *field,
                "managedFields"
                    | "resourceVersion"
                    | "uid"
                    | "generation"
                    | "creationTimestamp"
                    | "selfLink"
                    | "deletionTimestamp"
                    | "deletionGracePeriodSeconds"
                    | "namespace"
                    | "name"
            ) =>
        {
            true
        }
        // kube-controller-manager's deployment controller.
        [
            "metadata",
            "annotations",
            "deployment.kubernetes.io/revision",
        ] => true,
        // `kubectl rollout restart` (meshup's own `--restart` too): a restart, not configuration.
        [
            "spec",
            "template",
            "metadata",
            "annotations",
            "kubectl.kubernetes.io/restartedAt",
        ] => true,
        _ if istiod_patched(kind, path) => true,
        // What the API server allocates to a Service.
        ["spec", "clusterIP" | "clusterIPs" | "healthCheckNodePort"]
        | ["spec", "ports", "*", "nodePort"]
            if kind == "Service" =>
        {
            true
        }
        // The legacy token controller's list (before Kubernetes 1.24).
        ["secrets", ..] if kind == "ServiceAccount" => true,
        _ => false,
    }
}

/// Whether `path` is a field istiod's webhook controllers patch at run time (pkg/webhooks:
/// the CA bundle, and `failurePolicy: Fail` once it is ready). Never drift and never repaired
/// (a webhook without istiod's CA bundle fails closed), but a helm upgrade of the release
/// does write the rendered value (istiod then patches it back), so then it is a change.
pub fn istiod_patched(kind: &str, path: &[Seg]) -> bool {
    kind.ends_with("WebhookConfiguration")
        && matches!(
            path,
            [Seg::Field(w), _, Seg::Field(c), Seg::Field(b)]
                if w == "webhooks" && c == "clientConfig" && b == "caBundle"
        )
        || kind.ends_with("WebhookConfiguration")
            && matches!(
                path,
                [Seg::Field(w), _, Seg::Field(f)] if w == "webhooks" && f == "failurePolicy"
            )
}

/// Equality as the API server stores values: numbers by value, resource quantities by amount
/// (`2048Mi` is stored as `2Gi`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => {
            x == y || matches!((quantity(x), quantity(y)), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// A Kubernetes resource quantity (`500m`, `2Gi`, `1e3`, `0.5`) as an exact amount in
/// thousandths (nanos would overflow nothing these charts set), or `None` for other text.
fn quantity(text: &str) -> Option<i128> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.chars().filter(|c| *c == '.').count() > 1 {
        return None;
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let negative = whole.starts_with('-');
    let whole = whole.trim_start_matches(['+', '-']);
    if !whole.chars().all(|c| c.is_ascii_digit()) || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // The amount in 10^-9 units: exact for every suffix and up to nine decimals.
    let mut nanos: i128 = whole.parse::<i128>().unwrap_or(0) * 1_000_000_000;
    let mut scale = 100_000_000i128;
    for digit in fraction.chars().take(9) {
        nanos += i128::from(digit.to_digit(10)?) * scale;
        scale /= 10;
    }
    let (multiply, divide): (i128, i128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().ok()?;
            (10i128.checked_pow(exp)?, 1)
        }
        _ => return None,
    };
    // Plain numbers are quantities too, but only text with a digit counts.
    if !number.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let amount = nanos.checked_mul(multiply)? / divide;
    Some(if negative { -amount } else { amount })
}

/// Whether a rendered value the live object lacks is one the API server drops when it stores
/// it (`false`, `0`, `""`, `{}`, `[]` of an `omitempty` field).
fn zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
    }
}

/// Every leaf the rendered object sets, with its value: a scalar, a list of scalars (one
/// field) or, in lists without a key, each item's fields by index (plus the list itself when
/// it is shorter than the live one).
fn leaves(v: &Value, path: &mut FieldPath, out: &mut Vec<(FieldPath, Value)>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                path.push(Seg::Field(k.clone()));
                match child {
                    Value::Array(items)
                        if !items.is_empty() && items.iter().all(Value::is_object) =>
                    {
                        match list_key(k, items) {
                            Some(key) => {
                                for item in items {
                                    let mut id = Map::new();
                                    id.insert(key.to_string(), item[key].clone());
                                    path.push(Seg::Key(Value::Object(id).to_string()));
                                    leaves(item, path, out);
                                    path.pop();
                                }
                            }
                            None => {
                                // Atomic: compared whole, but item by item so that what the
                                // server defaults inside an item is no difference.
                                out.push((path.clone(), child.clone()));
                                for (i, item) in items.iter().enumerate() {
                                    path.push(Seg::Index(i));
                                    leaves(item, path, out);
                                    path.pop();
                                }
                            }
                        }
                    }
                    _ => leaves(child, path, out),
                }
                path.pop();
            }
        }
        // Nothing to compare: the API server drops empty maps and nulls it is sent.
        Value::Null | Value::Object(_) => {}
        _ => {
            if !path.is_empty() {
                out.push((path.clone(), v.clone()));
            }
        }
    }
}

/// One field that differs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldDiff {
    /// As people read it (`.spec.template.spec.containers[name=discovery].env[name=FOO]`).
    pub path: String,
    #[serde(skip)]
    pub at: FieldPath,
    /// The live value (`None`: absent). Masked for Secrets.
    pub live: Option<Value>,
    /// What meshup wants there (`None`: the field goes).
    pub wanted: Option<Value>,
    /// Who owns the live field (`managedFields`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<String>,
    /// `install` leaves it as it is; `install --repair` converges it.
    pub drift: bool,
}

/// What happens to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// One object that differs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectDiff {
    /// The part of the mesh it belongs to (`istiod`, `cacerts`, `link`), as progress lines
    /// name it.
    pub part: String,
    pub api_version: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub action: Action,
    /// The object exists or not as it should only after `install --repair` (a release object
    /// deleted by hand in a release install leaves alone).
    pub drift: bool,
    pub fields: Vec<FieldDiff>,
    /// A remark for people (`install refuses this without --rotate-ca`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The live object, for the unified diff (cleaned, masked).
    #[serde(skip)]
    pub before: Option<Value>,
    /// The object after `install --repair`, for the unified diff (cleaned, masked).
    #[serde(skip)]
    pub after: Option<Value>,
    /// The live object as read (with `metadata.resourceVersion`), for a repair.
    #[serde(skip)]
    pub live: Option<Value>,
    /// A remote secret's token that differs from the one `install` hands out: (the cluster that
    /// issued it, the token), to ask that cluster whether it still works. Never shown.
    #[serde(skip)]
    pub review: Option<(String, crate::trust::sensitive::Sensitive<String>)>,
}

impl ObjectDiff {
    /// `Deployment istio-system/istiod`.
    pub fn title(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// Whether `install` would change it (create, delete, or a field that is not drift).
    pub fn install_changes(&self) -> bool {
        match self.action {
            Action::Create | Action::Delete => !self.drift,
            Action::Update => self.fields.iter().any(|f| !f.drift),
        }
    }

    /// Whether something in it only `install --repair` converges.
    pub fn drifted(&self) -> bool {
        self.drift || self.fields.iter().any(|f| f.drift)
    }

    /// An object `meshup` would create (`drift`: only with `--repair`).
    pub fn create(part: &str, rendered: &Value, drift: bool) -> Self {
        let mut after = clean(rendered);
        mask(&mut after);
        Self {
            part: part.into(),
            drift,
            after: Some(after),
            ..Self::of(part, rendered, Action::Create)
        }
    }

    /// An object `meshup` would delete.
    pub fn delete(part: &str, live: &Value) -> Self {
        let mut before = clean(live);
        mask(&mut before);
        Self {
            before: Some(before),
            live: Some(live.clone()),
            ..Self::of(part, live, Action::Delete)
        }
    }

    /// An object that exists and differs in `fields`: before and after filled in.
    pub fn update(part: &str, live: &Value, fields: Vec<FieldDiff>) -> Self {
        let before = clean(live);
        let mut after = before.clone();
        for field in &fields {
            set(&mut after, &field.at, field.wanted.clone());
        }
        let (mut before, mut after) = (before, after);
        mask(&mut before);
        mask(&mut after);
        mark_changed_secrets(&mut after, &fields);
        Self {
            fields,
            before: Some(before),
            after: Some(after),
            live: Some(live.clone()),
            ..Self::of(part, live, Action::Update)
        }
    }

    /// The bare identity of `object`.
    pub fn of(part: &str, object: &Value, action: Action) -> Self {
        let text = |p: &str| {
            object
                .pointer(p)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Self {
            part: part.into(),
            api_version: text("/apiVersion").unwrap_or_default(),
            kind: text("/kind").unwrap_or_default(),
            namespace: text("/metadata/namespace"),
            name: text("/metadata/name").unwrap_or_default(),
            action,
            drift: false,
            fields: Vec::new(),
            note: None,
            before: None,
            after: None,
            live: None,
            review: None,
        }
    }
}

/// How one live object compares with what a release renders for it.
pub struct Compare<'a> {
    pub rendered: &'a Value,
    pub live: &'a Value,
    /// The object as the deployed release last rendered it (helm removes what it set then and
    /// no longer renders).
    pub previous: Option<&'a Value>,
    /// `install` runs `helm upgrade` for the release (its chart or values changed).
    pub upgrade: bool,
    /// The release's field managers ([`release_managers`]).
    pub ours: &'a [String],
}

/// The fields that differ, in path order: rendered values the live object does not hold, fields
/// helm set last time and no longer renders (when it upgrades), and fields another manager
/// put there that nothing renders (drift).
pub fn compare(c: &Compare) -> Vec<FieldDiff> {
    let kind = c.rendered["kind"].as_str().unwrap_or_default();
    let owners = owners(c.live);
    let managers_of = |path: &[Seg]| -> Vec<String> {
        let mut found: Vec<String> = owners
            .iter()
            .filter(|o| o.fields.iter().any(|f| f.starts_with(path)))
            .map(|o| o.manager.clone())
            .collect();
        found.dedup();
        found
    };
    let mut out: Vec<FieldDiff> = Vec::new();
    // 1. What the release renders.
    let mut wanted = Vec::new();
    leaves(c.rendered, &mut Vec::new(), &mut wanted);
    for (path, value) in wanted {
        let upgraded_anyway = c.upgrade && istiod_patched(kind, &path);
        if (ignored(kind, &path) && !upgraded_anyway) || out.iter().any(|d| path.starts_with(&d.at))
        {
            continue;
        }
        let live = resolve(c.live, &path).map(|(v, _)| v);
        let differs = match (live, &value) {
            (None, v) => !zero(v),
            // An atomic list of objects: the same length, each item compared by its fields.
            (Some(Value::Array(l)), Value::Array(r)) if r.iter().all(Value::is_object) => {
                l.len() != r.len()
            }
            (Some(l), r) => !same(l, r),
        };
        if differs {
            out.push(FieldDiff {
                path: path_text(&path),
                managers: managers_of(&path),
                live: live.cloned(),
                wanted: Some(value),
                at: path,
                drift: !c.upgrade,
            });
        }
    }
    let in_rendered = |path: &[Seg]| resolve(c.rendered, path).is_some();
    // The shortest part of `path` the rendered object does not hold, if any.
    let first_absent = |path: &[Seg]| -> Option<FieldPath> {
        (1..=path.len())
            .map(|n| path[..n].to_vec())
            .find(|prefix| !in_rendered(prefix))
    };
    // What the release's managers own in the live object (helm's own annotations and labels,
    // and with helm 3's updates whatever the server defaulted when helm created it).
    let ours: Vec<&FieldPath> = owners
        .iter()
        .filter(|o| c.ours.contains(&o.manager))
        .flat_map(|o| &o.fields)
        .collect();
    // The shortest part of `path` that neither the release renders nor its managers hold.
    let foreign_part = |path: &[Seg]| -> Option<FieldPath> {
        (1..=path.len())
            .map(|n| path[..n].to_vec())
            .find(|prefix| !in_rendered(prefix) && !ours.iter().any(|p| p.starts_with(prefix)))
    };
    let mut extra: BTreeSet<(FieldPath, bool)> = BTreeSet::new();
    // 2. What helm set last time and no longer renders: it removes it on upgrade.
    if c.upgrade
        && let Some(previous) = c.previous
    {
        let mut before = Vec::new();
        leaves(previous, &mut Vec::new(), &mut before);
        for (path, _) in before {
            if let Some(gone) = first_absent(&path) {
                extra.insert((gone, false));
            }
        }
    }
    // 3. What another manager put there and nothing renders: drift.
    for owner in &owners {
        if c.ours.contains(&owner.manager)
            || SYSTEM_MANAGERS.contains(&owner.manager.as_str())
            || !owner.subresource.is_empty()
        {
            continue;
        }
        for path in &owner.fields {
            if let Some(gone) = foreign_part(path)
                && !extra.iter().any(|(p, _)| gone.starts_with(p))
            {
                extra.insert((gone, true));
            }
        }
    }
    for (path, drift) in extra {
        if ignored(kind, &path)
            || out
                .iter()
                .any(|d| path.starts_with(&d.at) || d.at.starts_with(&path))
        {
            continue;
        }
        let Some((live, _)) = resolve(c.live, &path) else {
            continue;
        };
        out.push(FieldDiff {
            path: path_text(&path),
            managers: managers_of(&path),
            live: Some(live.clone()),
            wanted: None,
            at: path,
            drift,
        });
    }
    out.sort_by(|a, b| a.at.cmp(&b.at));
    if kind == "Secret" {
        for field in &mut out {
            field.live = field.live.as_ref().map(|_| json!(MASK));
            field.wanted = field.wanted.as_ref().map(|_| json!(MASK));
        }
    }
    out
}

/// What a masked Secret value reads as.
pub const MASK: &str = "(masked)";

/// The object without what the server keeps for itself (for display).
pub fn clean(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "managedFields",
            "resourceVersion",
            "uid",
            "generation",
            "creationTimestamp",
            "selfLink",
        ] {
            meta.remove(field);
        }
    }
    object
}

/// A Secret's values replaced by [`MASK`].
pub fn mask(object: &mut Value) {
    if object["kind"] != "Secret" {
        return;
    }
    for field in ["data", "stringData"] {
        if let Some(map) = object.get_mut(field).and_then(Value::as_object_mut) {
            for value in map.values_mut() {
                *value = json!(MASK);
            }
        }
    }
}

/// In a masked Secret's "after", the values that change read `(masked, changed)`.
fn mark_changed_secrets(after: &mut Value, fields: &[FieldDiff]) {
    if after["kind"] != "Secret" {
        return;
    }
    for field in fields.iter().filter(|f| f.wanted.is_some()) {
        set(after, &field.at, Some(json!(format!("{MASK}, changed"))));
    }
}

/// Sets (or with `None` removes) the value at `path`, making the objects on the way.
pub fn set(object: &mut Value, path: &[Seg], value: Option<Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = object;
    for seg in parents {
        let next = match seg {
            Seg::Field(f) => {
                if !cur.is_object() {
                    *cur = json!({});
                }
                let map = cur.as_object_mut().expect("made an object");
                if !map.contains_key(f) && value.is_none() {
                    return;
                }
                map.entry(f.clone()).or_insert_with(|| json!({}))
            }
            other => {
                let Some(items) = cur.as_array() else { return };
                let found = match other {
                    Seg::Key(k) => find_keyed(items, k).map(|(i, _)| i),
                    Seg::Item(v) => {
                        let want: Value = serde_json::from_str(v).unwrap_or(Value::Null);
                        items.iter().position(|i| *i == want)
                    }
                    Seg::Index(i) => (*i < items.len()).then_some(*i),
                    Seg::Field(_) => None,
                };
                let Some(i) = found else { return };
                &mut cur.as_array_mut().expect("an array")[i]
            }
        };
        cur = next;
    }
    match last {
        Seg::Field(f) => {
            if let Some(map) = cur.as_object_mut() {
                match value {
                    Some(v) => {
                        map.insert(f.clone(), v);
                    }
                    None => {
                        map.remove(f);
                    }
                }
            }
        }
        other => {
            let Some(items) = cur.as_array_mut() else {
                return;
            };
            let found = match other {
                Seg::Key(k) => find_keyed(items, k).map(|(i, _)| i),
                Seg::Item(v) => {
                    let want: Value = serde_json::from_str(v).unwrap_or(Value::Null);
                    items.iter().position(|i| *i == want)
                }
                Seg::Index(i) => (*i < items.len()).then_some(*i),
                Seg::Field(_) => None,
            };
            match (found, value) {
                (Some(i), Some(v)) => items[i] = v,
                (Some(i), None) => {
                    items.remove(i);
                }
                (None, Some(v)) => items.push(v),
                (None, None) => {}
            }
        }
    }
}

/// The RFC 6902 patch that converges `live` on the drift in `fields`: each change guarded by a
/// `test` of the live value it replaces (so a change made since it was read fails the patch
/// instead of being overwritten), removals in a list from the last item back. `None` when a
/// field cannot be reached in the live object.
pub fn repair_patch(live: &Value, fields: &[&FieldDiff]) -> Option<Value> {
    let escape = |s: &str| s.replace('~', "~0").replace('/', "~1");
    let pointer_of =
        |steps: &[String]| -> String { steps.iter().map(|s| format!("/{}", escape(s))).collect() };
    let mut ops: Vec<(Vec<String>, Vec<Value>)> = Vec::new();
    for field in fields {
        let ops_for = match resolve(live, &field.at) {
            Some((value, steps)) => {
                let pointer = pointer_of(&steps);
                let test = json!({"op": "test", "path": pointer, "value": value});
                match &field.wanted {
                    Some(wanted) => vec![
                        test,
                        json!({"op": "replace", "path": pointer, "value": wanted}),
                    ],
                    None => vec![test, json!({"op": "remove", "path": pointer})],
                }
                .into_iter()
                .map(|op| (steps.clone(), op))
                .collect::<Vec<_>>()
            }
            None => {
                // Absent: added under its parent, which must exist.
                let wanted = field.wanted.clone()?;
                let (last, parent) = field.at.split_last()?;
                let (_, mut steps) = resolve(live, parent)?;
                match last {
                    Seg::Field(f) => steps.push(f.clone()),
                    _ => steps.push("-".into()),
                }
                vec![(
                    steps.clone(),
                    json!({"op": "add", "path": pointer_of(&steps), "value": wanted}),
                )]
            }
        };
        let steps = ops_for[0].0.clone();
        ops.push((steps, ops_for.into_iter().map(|(_, op)| op).collect()));
    }
    // Later list items first, so that removing one does not move the others.
    ops.sort_by(|(a, _), (b, _)| {
        let key = |steps: &Vec<String>| {
            steps
                .iter()
                .map(|s| s.parse::<i64>().map(|n| -n).map_err(|_| s.clone()))
                .collect::<Vec<_>>()
        };
        key(a).cmp(&key(b))
    });
    Some(Value::Array(ops.into_iter().flat_map(|(_, o)| o).collect()))
}

/// The objects of a multi-document YAML stream (`helm template`'s output), in order; `List`s
/// are opened.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value: serde_yaml::Value =
            serde::Deserialize::deserialize(document).map_err(|e| e.to_string())?;
        let value: Value = serde_json::to_value(value).map_err(|e| e.to_string())?;
        if value.is_null() {
            continue;
        }
        if value["kind"].as_str().is_some_and(|k| k.ends_with("List"))
            && let Some(items) = value["items"].as_array()
        {
            out.extend(items.iter().cloned());
        } else if value.get("kind").is_some() {
            out.push(value);
        }
    }
    Ok(out)
}

/// The identity an object is matched by: (group, kind, name).
pub fn identity(object: &Value) -> (String, String, String) {
    let api = object["apiVersion"].as_str().unwrap_or_default();
    let group = api.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    (
        group.to_string(),
        object["kind"].as_str().unwrap_or_default().to_string(),
        object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    )
}

/// How `kubectl get` names an object's type: `deployment.v1.apps`, or `configmap` in the core
/// group.
pub fn kubectl_type(object: &Value) -> String {
    let api = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match api.split_once('/') {
        Some((group, version)) => format!("{kind}.{version}.{group}"),
        None => kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(path: &str) -> Seg {
        Seg::Field(path.into())
    }

    fn deployment(env: Value, managed: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "istiod", "namespace": "istio-system", "resourceVersion": "7",
                         "annotations": {"deployment.kubernetes.io/revision": "2"},
                         "managedFields": managed},
            "spec": {"replicas": 1, "revisionHistoryLimit": 10, "template": {"spec": {"containers": [
                {"name": "discovery", "image": "pilot:1.30.0", "env": env,
                 "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}},
                 "terminationMessagePath": "/dev/termination-log",
                 "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]}}},
            "status": {"readyReplicas": 1}
        })
    }

    fn rendered() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "istiod", "namespace": "istio-system"},
            "spec": {"template": {"spec": {"containers": [
                {"name": "discovery", "image": "pilot:1.30.0",
                 "env": [{"name": "CLUSTER_ID", "value": "cluster1"}],
                 "resources": {"requests": {"cpu": "500m", "memory": "2048Mi"}},
                 "ports": [{"containerPort": 8080}]}]}}}
        })
    }

    fn helm_owns_all() -> Value {
        json!({"manager": "helm", "operation": "Update", "fieldsV1": {"f:spec": {"f:template": {
            "f:spec": {"f:containers": {"k:{\"name\":\"discovery\"}": {".": {}, "f:env": {
                "k:{\"name\":\"CLUSTER_ID\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}}}}})
    }

    fn kcm() -> Value {
        json!({"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {
            "f:metadata": {"f:annotations": {".": {}, "f:deployment.kubernetes.io/revision": {}}}}})
    }

    fn ours() -> Vec<String> {
        release_managers(std::path::Path::new("/usr/bin/helm"))
    }

    #[test]
    fn defaults_quantities_and_the_controllers_fields_are_no_difference() {
        let live = deployment(
            json!([{"name": "CLUSTER_ID", "value": "cluster1"}]),
            json!([helm_owns_all(), kcm(),
                   {"manager": "kube-controller-manager", "operation": "Update",
                    "subresource": "status", "fieldsV1": {"f:status": {"f:readyReplicas": {}}}}]),
        );
        let c = Compare {
            rendered: &rendered(),
            live: &live,
            previous: None,
            upgrade: false,
            ours: &ours(),
        };
        assert!(compare(&c).is_empty(), "{:?}", compare(&c));
    }

    #[test]
    fn an_env_var_set_by_hand_is_drift_named_with_its_manager() {
        let live = deployment(
            json!([{"name": "CLUSTER_ID", "value": "cluster1"}, {"name": "FOO", "value": "bar"}]),
            json!([helm_owns_all(), kcm(),
                   {"manager": "kubectl-set", "operation": "Update", "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                       "k:{\"name\":\"discovery\"}": {"f:env": {"k:{\"name\":\"FOO\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}}}}}]),
        );
        for upgrade in [false, true] {
            let c = Compare {
                rendered: &rendered(),
                live: &live,
                previous: None,
                upgrade,
                ours: &ours(),
            };
            let diffs = compare(&c);
            assert_eq!(diffs.len(), 1, "{diffs:?}");
            let d = &diffs[0];
            assert_eq!(
                d.path,
                ".spec.template.spec.containers[name=discovery].env[name=FOO]"
            );
            assert!(d.drift && d.wanted.is_none(), "{d:?}");
            assert_eq!(d.managers, ["kubectl-set"]);
        }
        let c = Compare {
            rendered: &rendered(),
            live: &live,
            previous: None,
            upgrade: false,
            ours: &ours(),
        };
        let diffs = compare(&c);
        let patch = repair_patch(&live, &diffs.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/spec/template/spec/containers/0/env/1",
                 "value": {"name": "FOO", "value": "bar"}},
                {"op": "remove", "path": "/spec/template/spec/containers/0/env/1"}
            ])
        );
        let object = ObjectDiff::update("istiod", &live, diffs);
        assert_eq!(
            object.after.unwrap()["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "CLUSTER_ID", "value": "cluster1"}])
        );
    }

    #[test]
    fn a_changed_rendered_value_is_a_change_when_helm_upgrades_else_drift() {
        let live = deployment(
            json!([{"name": "CLUSTER_ID", "value": "other"}]),
            json!([helm_owns_all()]),
        );
        for upgrade in [true, false] {
            let c = Compare {
                rendered: &rendered(),
                live: &live,
                previous: None,
                upgrade,
                ours: &ours(),
            };
            let diffs = compare(&c);
            assert_eq!(diffs.len(), 1, "{diffs:?}");
            assert_eq!(diffs[0].wanted, Some(json!("cluster1")));
            assert_eq!(diffs[0].drift, !upgrade);
        }
    }

    #[test]
    fn what_helm_no_longer_renders_goes_on_upgrade() {
        let live = deployment(
            json!([{"name": "CLUSTER_ID", "value": "cluster1"}, {"name": "OLD", "value": "1"}]),
            json!([helm_owns_all()]),
        );
        let mut previous = rendered();
        previous["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "CLUSTER_ID", "value": "cluster1"}, {"name": "OLD", "value": "1"}]);
        let c = Compare {
            rendered: &rendered(),
            live: &live,
            previous: Some(&previous),
            upgrade: true,
            ours: &ours(),
        };
        let diffs = compare(&c);
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert!(!diffs[0].drift && diffs[0].wanted.is_none());
        assert!(diffs[0].path.ends_with("env[name=OLD]"));
    }

    #[test]
    fn istiods_webhook_patches_and_allocations_are_ignored() {
        let webhook = |policy: &str, bundle: &str| {
            json!({"apiVersion": "admissionregistration.k8s.io/v1",
                   "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "v",
                   "managedFields": [{"manager": "pilot-discovery", "operation": "Update",
                     "fieldsV1": {"f:webhooks": {"k:{\"name\":\"w\"}": {"f:failurePolicy": {},
                       "f:clientConfig": {"f:caBundle": {}}}}}}]},
                   "webhooks": [{"name": "w", "failurePolicy": policy,
                                 "clientConfig": {"caBundle": bundle}}]})
        };
        let c = Compare {
            rendered: &webhook("Ignore", ""),
            live: &webhook("Fail", "LS0t"),
            previous: None,
            upgrade: false,
            ours: &ours(),
        };
        assert!(compare(&c).is_empty());
        assert!(ignored(
            "Service",
            &[
                field("spec"),
                field("ports"),
                Seg::Index(0),
                field("nodePort")
            ]
        ));
        assert!(!ignored("Deployment", &[field("spec"), field("replicas")]));
    }

    #[test]
    fn quantities_compare_by_amount() {
        assert_eq!(quantity("2048Mi"), quantity("2Gi"));
        assert_eq!(quantity("0.5"), quantity("500m"));
        assert_eq!(quantity("1e3"), quantity("1k"));
        assert_ne!(quantity("500m"), quantity("5"));
        assert_eq!(quantity("istiod"), None);
        assert_eq!(quantity("m"), None);
    }

    #[test]
    fn secrets_are_masked_and_types_named_for_kubectl() {
        let live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s",
            "managedFields": [{"manager": "helm", "fieldsV1": {"f:data": {"f:a": {}}}}]},
            "data": {"a": "c2VjcmV0"}});
        let rendered = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "b3RoZXI="}});
        let diffs = compare(&Compare {
            rendered: &rendered,
            live: &live,
            previous: None,
            upgrade: true,
            ours: &ours(),
        });
        let object = ObjectDiff::update("x", &live, diffs);
        let text = serde_json::to_string(&object).unwrap()
            + &object.before.unwrap().to_string()
            + &object.after.unwrap().to_string();
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("b3RoZXI="),
            "{text}"
        );
        assert_eq!(kubectl_type(&live), "secret");
        assert_eq!(
            kubectl_type(&json!({"apiVersion": "apps/v1", "kind": "Deployment"})),
            "deployment.v1.apps"
        );
    }
}
