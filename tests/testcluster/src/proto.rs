//! Decoding of the Kubernetes protobuf wire format for the few kinds that clients send as
//! protobuf (`application/vnd.kubernetes.protobuf`): the body is the magic `k8s\0` followed by a
//! `runtime.Unknown` whose field 1 is the TypeMeta and field 2 the raw message. Field numbers
//! follow the API's `generated.proto` files; fields not listed here are skipped.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::util::rfc3339;

#[derive(Clone, Copy)]
enum F {
    Str,
    Int,
    Bool,
    Bytes,
    Time,
    Msg(&'static str),
    RepStr,
    RepMsg(&'static str),
    MapStr,
    MapBytes,
}

fn schema(message: &str) -> &'static [(u64, &'static str, F)] {
    use F::*;
    match message {
        "TypeMeta" => &[(1, "apiVersion", Str), (2, "kind", Str)],
        "ObjectMeta" => &[
            (1, "name", Str),
            (2, "generateName", Str),
            (3, "namespace", Str),
            (5, "uid", Str),
            (6, "resourceVersion", Str),
            (7, "generation", Int),
            (8, "creationTimestamp", Time),
            (9, "deletionTimestamp", Time),
            (10, "deletionGracePeriodSeconds", Int),
            (11, "labels", MapStr),
            (12, "annotations", MapStr),
            (13, "ownerReferences", RepMsg("OwnerReference")),
            (14, "finalizers", RepStr),
        ],
        "OwnerReference" => &[
            (1, "kind", Str),
            (3, "name", Str),
            (4, "uid", Str),
            (5, "apiVersion", Str),
            (6, "controller", Bool),
            (7, "blockOwnerDeletion", Bool),
        ],
        "Namespace" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "spec", Msg("NamespaceSpec")),
        ],
        "NamespaceSpec" => &[(1, "finalizers", RepStr)],
        "Secret" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "data", MapBytes),
            (3, "type", Str),
            (4, "stringData", MapStr),
            (5, "immutable", Bool),
        ],
        "ConfigMap" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "data", MapStr),
            (3, "binaryData", MapBytes),
            (4, "immutable", Bool),
        ],
        "ServiceAccount" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "secrets", RepMsg("ObjectReference")),
            (3, "imagePullSecrets", RepMsg("LocalObjectReference")),
            (4, "automountServiceAccountToken", Bool),
        ],
        "ObjectReference" => &[
            (1, "kind", Str),
            (2, "namespace", Str),
            (3, "name", Str),
            (4, "uid", Str),
            (5, "apiVersion", Str),
            (6, "resourceVersion", Str),
            (7, "fieldPath", Str),
        ],
        "LocalObjectReference" => &[(1, "name", Str)],
        "TokenReview" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "spec", Msg("TokenReviewSpec")),
        ],
        "TokenReviewSpec" => &[(1, "token", Str), (2, "audiences", RepStr)],
        "TokenRequest" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "spec", Msg("TokenRequestSpec")),
        ],
        "TokenRequestSpec" => &[
            (1, "audiences", RepStr),
            (3, "boundObjectRef", Msg("BoundObjectReference")),
            (4, "expirationSeconds", Int),
        ],
        "BoundObjectReference" => &[
            (1, "kind", Str),
            (2, "apiVersion", Str),
            (3, "name", Str),
            (4, "uid", Str),
        ],
        "DeleteOptions" => &[
            (1, "gracePeriodSeconds", Int),
            (2, "preconditions", Msg("Preconditions")),
            (3, "orphanDependents", Bool),
            (4, "propagationPolicy", Str),
            (5, "dryRun", RepStr),
        ],
        "Preconditions" => &[(1, "uid", Str), (2, "resourceVersion", Str)],
        "SelfSubjectAccessReview" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "spec", Msg("SelfSubjectAccessReviewSpec")),
        ],
        "SelfSubjectAccessReviewSpec" => &[
            (1, "resourceAttributes", Msg("ResourceAttributes")),
            (2, "nonResourceAttributes", Msg("NonResourceAttributes")),
        ],
        "ResourceAttributes" => &[
            (1, "namespace", Str),
            (2, "verb", Str),
            (3, "group", Str),
            (4, "version", Str),
            (5, "resource", Str),
            (6, "subresource", Str),
            (7, "name", Str),
        ],
        "NonResourceAttributes" => &[(1, "path", Str), (2, "verb", Str)],
        "Time" => &[(1, "seconds", Int), (2, "nanos", Int)],
        "Unknown" => &[(1, "typeMeta", Msg("TypeMeta")), (2, "raw", Bytes)],
        _ => &[],
    }
}

enum Wire<'a> {
    Varint(u64),
    Len(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("truncated field".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<Option<(u64, Wire<'a>)>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Varint(0)
            }
            2 => {
                let n = self.varint()? as usize;
                Wire::Len(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Varint(0)
            }
            t => return Err(format!("unsupported wire type {t}")),
        };
        Ok(Some((key >> 3, wire)))
    }
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn map_entry(b: &[u8], bytes: bool) -> Result<(String, Value), String> {
    let mut r = Reader { buf: b };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while let Some((tag, wire)) = r.field()? {
        if let Wire::Len(d) = wire {
            match tag {
                1 => k = utf8(d),
                2 if bytes => v = Value::String(STANDARD.encode(d)),
                2 => v = Value::String(utf8(d)),
                _ => {}
            }
        }
    }
    Ok((k, v))
}

fn message(b: &[u8], name: &str) -> Result<Value, String> {
    let fields = schema(name);
    let mut out = Map::new();
    let mut r = Reader { buf: b };
    while let Some((tag, wire)) = r.field()? {
        let Some(&(_, json_name, kind)) = fields.iter().find(|f| f.0 == tag) else {
            continue;
        };
        let key = json_name.to_string();
        match (kind, wire) {
            (F::Str, Wire::Len(d)) => {
                out.insert(key, Value::String(utf8(d)));
            }
            (F::Bytes, Wire::Len(d)) => {
                out.insert(key, Value::String(STANDARD.encode(d)));
            }
            (F::Int, Wire::Varint(v)) => {
                out.insert(key, json!(v as i64));
            }
            (F::Bool, Wire::Varint(v)) => {
                out.insert(key, json!(v != 0));
            }
            (F::Time, Wire::Len(d)) => {
                let t = message(d, "Time")?;
                let secs = t.get("seconds").and_then(Value::as_i64).unwrap_or(0);
                out.insert(key, Value::String(rfc3339(secs)));
            }
            (F::Msg(m), Wire::Len(d)) => {
                out.insert(key, message(d, m)?);
            }
            (F::RepStr, Wire::Len(d)) => {
                let list = out.entry(key).or_insert_with(|| json!([]));
                list.as_array_mut().unwrap().push(Value::String(utf8(d)));
            }
            (F::RepMsg(m), Wire::Len(d)) => {
                let item = message(d, m)?;
                let list = out.entry(key).or_insert_with(|| json!([]));
                list.as_array_mut().unwrap().push(item);
            }
            (F::MapStr | F::MapBytes, Wire::Len(d)) => {
                let (k, v) = map_entry(d, matches!(kind, F::MapBytes))?;
                let map = out.entry(key).or_insert_with(|| json!({}));
                map.as_object_mut().unwrap().insert(k, v);
            }
            _ => {
                return Err(format!(
                    "field {json_name} of {name} has an unexpected wire type"
                ));
            }
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf request body into the JSON form of the object.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let inner = body
        .strip_prefix(b"k8s\0")
        .ok_or("protobuf body without the k8s magic prefix")?;
    let unknown = message(inner, "Unknown")?;
    let api_version = unknown
        .pointer("/typeMeta/apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = unknown
        .pointer("/typeMeta/kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let raw = unknown.get("raw").and_then(Value::as_str).unwrap_or("");
    let raw = STANDARD.decode(raw).map_err(|e| e.to_string())?;
    if schema(&kind).is_empty() || kind == "Unknown" {
        return Err(format!(
            "protobuf decoding of kind {kind:?} is not supported; send JSON"
        ));
    }
    let mut obj = message(&raw, &kind)?;
    let map = obj.as_object_mut().unwrap();
    map.insert("apiVersion".into(), Value::String(api_version));
    map.insert("kind".into(), Value::String(kind));
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(tag: u64, wire: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(tag << 3) as u8 | wire];
        out.push(payload.len() as u8);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_secret() {
        let mut meta = field(1, 2, b"cacerts");
        meta.extend(field(3, 2, b"istio-system"));
        meta.extend(field(
            11,
            2,
            &[field(1, 2, b"a"), field(2, 2, b"b")].concat(),
        ));
        let mut secret = field(1, 2, &meta);
        secret.extend(field(
            2,
            2,
            &[field(1, 2, b"k"), field(2, 2, b"\x00\x01")].concat(),
        ));
        secret.extend(field(3, 2, b"Opaque"));
        let type_meta = [field(1, 2, b"v1"), field(2, 2, b"Secret")].concat();
        let mut body = b"k8s\0".to_vec();
        body.extend(field(1, 2, &type_meta));
        body.extend(field(2, 2, &secret));
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "cacerts", "namespace": "istio-system", "labels": {"a": "b"}},
                   "data": {"k": "AAE="}})
        );
    }
}
