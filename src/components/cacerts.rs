//! The `cacerts` Secret: one cluster's intermediate CA under the mesh's shared root, which
//! istiod reads at start to sign workload certificates. Without it each istiod makes its own
//! root and cross-cluster mTLS fails.

use std::collections::BTreeSet;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{Action, ClusterCtx, Component, ScriptCx};
use crate::components::handoff::{Handoff, TRUST_COMMAND};
use crate::observe::drift::{self, FieldDiff, ObjectDiff, Seg};
use crate::observe::facts::{Cacerts as CacertsStatus, ClusterStatus, column};
use crate::observe::finding::Finding;
use crate::tools::kubectl;
use crate::tools::live::{self, Secret};
use crate::tools::runner::StepError;
use crate::tools::step::shell_quote;
use crate::trust::sensitive::Sensitive;
use crate::trust::{self, CLUSTER_FILES, ClusterCa, ROOT_CERT_KEY};

/// The Secret's name; istiod mounts it by this name.
pub const NAME: &str = "cacerts";

/// The `cacerts` Secret in one cluster.
pub struct CacertsSecret {
    pub namespace: String,
    /// istiod's Deployment: if it runs before `cacerts` appears or changes, it needs a restart.
    pub istiod_deployment: String,
    /// The material to install; `None` for commands that only read.
    pub ca: Option<ClusterCa>,
    /// Where the plan script reads the cluster's files from (`trust.dir/<cluster>`).
    pub files_dir: PathBuf,
    /// `--rotate-ca`: replace a `cacerts` whose root differs, or that holds foreign keys.
    pub rotate: bool,
}

impl Component for CacertsSecret {
    fn handoff(&self) -> Vec<Handoff> {
        vec![Handoff::Kept {
            what: format!(
                "`cacerts` in `{}` (the CA key never lands in Git)",
                self.namespace
            ),
            by: TRUST_COMMAND,
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        "cacerts"
    }

    fn acts_on(&self, action: Action) -> bool {
        // Deleting the namespace takes it away.
        action == Action::Install
    }

    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let cluster = &cx.cluster.name;
        let ns = &self.namespace;
        let Some(ca) = &self.ca else {
            return Err(StepError::other(
                cluster,
                "no CA material was prepared for this cluster",
                None,
            ));
        };
        let found: Option<Secret> = cx.live.get("secret", NAME, Some(ns))?;
        // istiod prefers `tls.crt` & co. over the four files: keys meshup does not write change
        // which CA istiod uses, and server-side apply cannot remove another manager's keys.
        let extra: Vec<&str> = found
            .iter()
            .flat_map(|s| s.data.keys())
            .filter(|k| !CLUSTER_FILES.contains(&k.as_str()))
            .map(String::as_str)
            .collect();
        if !extra.is_empty() && !self.rotate {
            return Err(StepError::other(
                cluster,
                format!(
                    "secret `cacerts` in namespace `{ns}` holds keys meshup does not manage ({}), which istiod may prefer over the mesh's CA",
                    extra.join(", ")
                ),
                Some(format!(
                    "delete it (`kubectl --context {} -n {ns} delete secret cacerts`) or pass --rotate-ca to replace it",
                    cx.cluster.context
                )),
            ));
        }
        let outcome = match &found {
            Some(live) if matches(live, ca) => return Ok("unchanged".into()),
            Some(live) => {
                let live_root = root_fingerprint(live).ok().flatten();
                let mesh_root = trust::fingerprint(&ca.root_cert_pem).ok();
                if live_root != mesh_root && !self.rotate {
                    return Err(StepError::other(
                        cluster,
                        format!(
                            "secret `cacerts` in namespace `{ns}` has a different root CA ({}) than the mesh ({})",
                            live_root.as_deref().unwrap_or("none"),
                            mesh_root.as_deref().unwrap_or("unknown")
                        ),
                        Some("changing the root of a live mesh breaks cross-cluster traffic until every workload restarts; pass --rotate-ca (with --restart) to replace it, or use this cluster's root via `trust.mode: provided`".into()),
                    ));
                }
                if live_root != mesh_root {
                    "rotated"
                } else {
                    "updated"
                }
            }
            None => "created",
        };
        // istiod reads cacerts only at start: if it is already running, it needs a restart.
        let istiod: Option<live::Object> =
            cx.live
                .get("deployment", &self.istiod_deployment, Some(ns))?;
        cx.memo.istiod_needs_restart = istiod.is_some();
        if !extra.is_empty() {
            // --rotate-ca: start from an empty secret so no foreign key survives.
            cx.live.run(&kubectl::delete(
                cx.target(),
                "secret",
                &[NAME.to_string()],
                Some(ns),
                cx.timeout(),
            ))?;
        }
        // Goes out with the namespace's apply (before istiod is installed).
        cx.live.apply_later(manifest(ns, ca))?;
        Ok(outcome.into())
    }

    /// By fingerprint, never by content: each certificate's SHA-256 fingerprint, the key only
    /// as "differs".
    fn diff(&self, cx: &mut ClusterCtx) -> Result<Vec<ObjectDiff>, StepError> {
        let ns = &self.namespace;
        let found: Option<serde_json::Value> = cx.live.get("secret", NAME, Some(ns))?;
        let Some(ca) = &self.ca else {
            // No CA material in `trust.dir` yet: install makes it, then creates the Secret.
            return Ok(match found {
                None => {
                    let mut created = ObjectDiff::create("cacerts", &placeholder(ns), false);
                    created.note = Some(
                        "the mesh's CA does not exist yet in `trust.dir`: install makes it".into(),
                    );
                    vec![created]
                }
                Some(_) => Vec::new(),
            });
        };
        let wanted: serde_json::Value =
            serde_yaml::from_str(manifest(ns, ca).expose()).expect("the manifest is YAML");
        let Some(live) = found else {
            return Ok(vec![ObjectDiff::create("cacerts", &wanted, false)]);
        };
        let secret: Secret = serde_json::from_value(live.clone()).map_err(|e| {
            StepError::other(
                &cx.cluster.name,
                format!(
                    "secret `cacerts` in namespace `{ns}` is not a Secret meshup can read: {e}"
                ),
                None,
            )
        })?;
        if matches(&secret, ca) {
            return Ok(Vec::new());
        }
        let fingerprint = |b64: Option<&str>| -> Option<serde_json::Value> {
            let b64 = b64?;
            let pem = BASE64
                .decode(b64)
                .ok()
                .and_then(|p| String::from_utf8(p).ok());
            Some(serde_json::json!(
                match pem.map(|p| trust::fingerprint(&p)) {
                    Some(Ok(f)) => format!("sha256:{f}"),
                    _ => "(unreadable)".to_string(),
                }
            ))
        };
        let mut fields = Vec::new();
        let keys: BTreeSet<String> = secret
            .data
            .keys()
            .cloned()
            .chain(CLUSTER_FILES.iter().map(|k| k.to_string()))
            .collect();
        for key in &keys {
            let have = secret.data.get(key).map(|v| v.expose().clone());
            let want = ca
                .secret_values()
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| BASE64.encode(v));
            let same = have.as_deref().and_then(|h| BASE64.decode(h).ok())
                == want.as_deref().and_then(|w| BASE64.decode(w).ok());
            if same {
                continue;
            }
            let certificate = key.ends_with(".pem") && !key.contains("key");
            let (live_value, wanted_value) = if certificate {
                (fingerprint(have.as_deref()), fingerprint(want.as_deref()))
            } else {
                (
                    have.map(|_| serde_json::json!(drift::MASK)),
                    want.map(|_| serde_json::json!(format!("{}, changed", drift::MASK))),
                )
            };
            let at = vec![Seg::Field("data".into()), Seg::Field(key.clone())];
            fields.push(FieldDiff {
                path: drift::path_text(&at),
                at,
                live: live_value,
                wanted: wanted_value,
                managers: Vec::new(),
                drift: false,
            });
        }
        let mut object = ObjectDiff::update("cacerts", &live, fields);
        let live_root = root_fingerprint(&secret).ok().flatten();
        let mesh_root = trust::fingerprint(&ca.root_cert_pem).ok();
        let foreign_keys = secret
            .data
            .keys()
            .any(|k| !CLUSTER_FILES.contains(&k.as_str()));
        if (live_root != mesh_root || foreign_keys) && !self.rotate {
            object.note = Some(
                "`meshup install` refuses to replace it without --rotate-ca (a new root breaks cross-cluster traffic until every workload restarts)"
                    .into(),
            );
        }
        Ok(vec![object])
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        if action == Action::Remove {
            return String::new();
        }
        let dir = &self.files_dir;
        let files: Vec<(&str, String)> = CLUSTER_FILES
            .iter()
            .map(|key| (*key, dir.join(key).display().to_string()))
            .collect();
        format!(
            "# cacerts: the intermediate CA of {} from {} (kubectl reads the key; it is never shown).\n{} \\\n  | {}\n",
            cx.cluster.name,
            shell_quote(&dir.display().to_string()),
            kubectl::secret_from_files(&cx.target, NAME, &self.namespace, &files, cx.timeout)
                .command_line(),
            kubectl::apply(&cx.target, Sensitive::default(), cx.timeout).command_line()
        )
    }

    fn inspect(&self, cx: &mut ClusterCtx, status: &mut ClusterStatus) {
        let what = "cacerts";
        let name = Some(cx.cluster.name.as_str());
        match cx.live.get::<Secret>("secret", NAME, Some(&self.namespace)) {
            Ok(None) => {
                let found = CacertsStatus {
                    present: false,
                    root_fingerprint: None,
                };
                status.cell(column::CACERTS_ROOT, found.text());
                status.cacerts = Some(found);
                status.problem(Finding::fail(
                    name,
                    what,
                    "secret `cacerts` is missing: istiod signs with a self-made root",
                ));
            }
            Ok(Some(secret)) => {
                let root = match root_fingerprint(&secret) {
                    Ok(Some(root)) => Some(root),
                    Ok(None) => {
                        status.problem(Finding::fail(
                            name,
                            what,
                            "secret `cacerts` has no readable `root-cert.pem`",
                        ));
                        None
                    }
                    Err(reason) => {
                        status.problem(Finding::fail(
                            name,
                            what,
                            format!("secret `cacerts` {reason}"),
                        ));
                        None
                    }
                };
                let found = CacertsStatus {
                    present: true,
                    root_fingerprint: root,
                };
                status.cell(column::CACERTS_ROOT, found.text());
                status.cacerts = Some(found);
            }
            Err(e) => status.problem(Finding::fail(name, what, e.to_string())),
        }
    }
}

/// The mesh-wide check: every cluster's `cacerts` holds the same root, and it is the root in
/// the trust directory (when that can be read).
pub fn shared_root(
    statuses: &[ClusterStatus],
    root_file: &std::path::Path,
) -> (Option<bool>, Vec<Finding>) {
    let roots: BTreeSet<&str> = statuses
        .iter()
        .filter_map(|c| c.cacerts.as_ref()?.root_fingerprint.as_deref())
        .collect();
    let mut findings = Vec::new();
    let shared = (!roots.is_empty()).then_some(roots.len() == 1);
    if shared == Some(false) {
        findings.push(Finding::fail(
            None,
            "cacerts",
            format!(
                "the clusters' `cacerts` have {} different roots; cross-cluster mTLS fails until they share one",
                roots.len()
            ),
        ));
    }
    if let Ok(pem) = std::fs::read_to_string(root_file)
        && let Ok(local) = trust::fingerprint(&pem)
        && roots.iter().any(|r| *r != local)
    {
        findings.push(Finding::fail(
            None,
            "cacerts",
            format!(
                "a cluster's `cacerts` root is not the mesh root in {}",
                root_file.display()
            ),
        ));
    }
    (shared, findings)
}

/// The `cacerts` Secret as `diff` shows it before the CA exists: its four keys, no values.
fn placeholder(namespace: &str) -> serde_json::Value {
    let data: serde_json::Map<String, serde_json::Value> = CLUSTER_FILES
        .iter()
        .map(|k| (k.to_string(), serde_json::json!(drift::MASK)))
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": NAME, "namespace": namespace}, "data": data})
}

/// The `cacerts` Secret for `namespace` as YAML for `kubectl apply -f -`. It carries the CA
/// key, so it stays [`Sensitive`].
pub fn manifest(namespace: &str, ca: &ClusterCa) -> Sensitive<String> {
    let mut yaml = [
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        "  name: cacerts",
        &format!("  namespace: {}", yaml_string(namespace)),
        "  labels:",
        "    app.kubernetes.io/managed-by: meshup",
        "type: Opaque",
        "data:",
    ]
    .join("\n");
    yaml.push('\n');
    for (key, value) in ca.secret_values() {
        yaml.push_str(&format!("  {key}: {}\n", BASE64.encode(value)));
    }
    Sensitive::new(yaml)
}

/// The SHA-256 fingerprint of `root-cert.pem` in a live `cacerts` Secret, or `None` when it
/// has no such key. The error completes "secret `cacerts` ...".
pub fn root_fingerprint(secret: &Secret) -> Result<Option<String>, String> {
    let Some(value) = secret.data.get(ROOT_CERT_KEY) else {
        return Ok(None);
    };
    let decoded = BASE64
        .decode(value.expose())
        .map_err(|_| format!("has a `{ROOT_CERT_KEY}` that is not valid base64"))?;
    let pem = String::from_utf8(decoded)
        .map_err(|_| format!("has a `{ROOT_CERT_KEY}` that is not PEM text"))?;
    trust::fingerprint(&pem)
        .map(Some)
        .map_err(|reason| format!("has a `{ROOT_CERT_KEY}` that {reason}"))
}

/// Whether a live `cacerts` Secret holds exactly the four values of `ca` and nothing else.
/// Any other key (istiod prefers `tls.crt` and its companions when present) makes it differ.
pub fn matches(secret: &Secret, ca: &ClusterCa) -> bool {
    let wanted = ca.secret_values();
    secret.data.len() == wanted.len()
        && wanted.iter().all(|(key, value)| {
            secret
                .data
                .get(*key)
                .and_then(|v| BASE64.decode(v.expose()).ok())
                .is_some_and(|v| v == value.as_bytes())
        })
}

/// A string as a double-quoted YAML scalar (JSON's quoting is valid YAML), so that a name
/// like `true` or `123` stays a string.
fn yaml_string(value: &str) -> String {
    serde_json::Value::String(value.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{KeyType, Trust};

    fn generated() -> (tempfile::TempDir, Trust) {
        let tmp = tempfile::tempdir().unwrap();
        let clusters = [("cluster1", "istio-system"), ("cluster2", "istio-system")];
        let (trust, _) =
            trust::generate(&tmp.path().join("certs"), &clusters, KeyType::EcdsaP256).unwrap();
        (tmp, trust)
    }

    /// The live secret as `kubectl get -o json` shows what the manifest created.
    fn live_from(manifest: &Sensitive<String>) -> Secret {
        let mut value: serde_json::Value = serde_yaml::from_str(manifest.expose()).unwrap();
        value["metadata"]["uid"] = "3f1c".into();
        serde_json::from_value(value).unwrap()
    }

    fn with_data(data: serde_json::Value) -> Secret {
        serde_json::from_value(serde_json::json!({"kind": "Secret", "data": data})).unwrap()
    }

    #[test]
    fn manifest_and_cluster_ca_never_print_the_key() {
        let (_tmp, trust) = generated();
        let ca = &trust.clusters["cluster1"];
        let manifest = manifest("istio-system", ca);
        assert_eq!(format!("{manifest}"), "<redacted>");
        assert_eq!(format!("{manifest:?}"), "<redacted>");
        let key_line = ca.ca_key_pem.expose().lines().nth(1).unwrap();
        assert!(!format!("{ca:?} {trust:?}").contains(key_line));
    }

    #[test]
    fn manifest_is_the_cacerts_secret_with_four_base64_keys() {
        let (_tmp, trust) = generated();
        let ca = &trust.clusters["cluster1"];
        let manifest = manifest("istio-system", ca);
        let secret: serde_json::Value = serde_yaml::from_str(manifest.expose()).unwrap();
        assert_eq!(secret["apiVersion"], "v1");
        assert_eq!(secret["kind"], "Secret");
        assert_eq!(secret["type"], "Opaque");
        assert_eq!(secret["metadata"]["name"], "cacerts");
        assert_eq!(secret["metadata"]["namespace"], "istio-system");
        assert_eq!(
            secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "meshup"
        );
        let data = secret["data"].as_object().unwrap();
        let decoded = |key: &str| {
            String::from_utf8(BASE64.decode(data[key].as_str().unwrap()).unwrap()).unwrap()
        };
        assert_eq!(data.len(), 4);
        assert_eq!(decoded("ca-cert.pem"), ca.ca_cert_pem);
        assert_eq!(&decoded("ca-key.pem"), ca.ca_key_pem.expose());
        assert_eq!(decoded("root-cert.pem"), ca.root_cert_pem);
        assert_eq!(decoded("cert-chain.pem"), ca.cert_chain_pem);
    }

    #[test]
    fn manifest_namespace_stays_a_string() {
        let (_tmp, trust) = generated();
        let manifest = manifest("true", &trust.clusters["cluster1"]);
        let secret: serde_json::Value = serde_yaml::from_str(manifest.expose()).unwrap();
        assert_eq!(secret["metadata"]["namespace"], "true");
    }

    #[test]
    fn live_secret_from_the_manifest_matches_and_shows_the_root() {
        let (_tmp, trust) = generated();
        let ca = &trust.clusters["cluster1"];
        let live = live_from(&manifest("istio-system", ca));
        assert!(matches(&live, ca));
        assert_eq!(
            root_fingerprint(&live).unwrap(),
            Some(trust::fingerprint(&trust.root_cert_pem).unwrap())
        );
    }

    #[test]
    fn live_secret_with_another_value_or_an_extra_key_does_not_match() {
        let (_tmp, trust) = generated();
        let ca = &trust.clusters["cluster1"];
        let other = &trust.clusters["cluster2"];
        assert!(!matches(&live_from(&manifest("istio-system", other)), ca));

        let mut extra = live_from(&manifest("istio-system", ca));
        extra
            .data
            .insert("tls.crt".into(), Sensitive::new(BASE64.encode("x")));
        assert!(!matches(&extra, ca));

        let mut fewer = live_from(&manifest("istio-system", ca));
        fewer.data.remove("ca-key.pem");
        assert!(!matches(&fewer, ca));
        assert!(!matches(&Secret::default(), ca));
    }

    #[test]
    fn root_fingerprint_is_none_without_root_cert() {
        let secret = with_data(serde_json::json!({"ca-cert.pem": "eA=="}));
        assert_eq!(root_fingerprint(&secret).unwrap(), None);
        assert_eq!(root_fingerprint(&Secret::default()).unwrap(), None);
    }

    #[test]
    fn root_fingerprint_rejects_a_value_that_is_not_a_certificate() {
        for value in ["not base64!", "eA=="] {
            let secret = with_data(serde_json::json!({"root-cert.pem": value}));
            let err = root_fingerprint(&secret).unwrap_err();
            assert!(err.starts_with("has a `root-cert.pem` that"), "{err}");
        }
    }
}
