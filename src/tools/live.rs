//! Typed reads of live cluster state, in one place. Each read runs one helm or kubectl call
//! and parses what it printed into a struct. Output meshup cannot parse is an error naming the
//! command ([`StepError::Malformed`]), never an empty value: "absent" is only ever what the
//! tool said (`--ignore-not-found` printing nothing).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::tools::cache::Cache;
use crate::tools::helm;
use crate::tools::kubectl;
use crate::tools::runner::{Output, Runner, StepError, run_ok};
use crate::tools::step::{Step, Target};
use crate::trust::sensitive::Sensitive;

/// One cluster as meshup reaches it: the runner, the target and the per-call timeout, and
/// for a run the snapshot of its mesh namespace (`cache.rs`).
#[derive(Clone, Copy)]
pub struct Live<'a> {
    pub runner: &'a dyn Runner,
    pub target: &'a Target,
    pub timeout: Duration,
    cache: Option<(&'a Cache, &'a str)>,
}

impl<'a> Live<'a> {
    pub fn new(runner: &'a dyn Runner, target: &'a Target, timeout: Duration) -> Self {
        Self {
            runner,
            target,
            timeout,
            cache: None,
        }
    }

    /// The same, answering reads of `namespace` from `cache`.
    pub fn cached(mut self, cache: &'a Cache, namespace: &'a str) -> Self {
        self.cache = Some((cache, namespace));
        self
    }

    /// Runs a step; a non-zero exit is an error. Applies waiting in the cache go out first;
    /// what the step writes is read from the cluster afterwards.
    pub fn run(&self, step: &Step) -> Result<Output, StepError> {
        self.flush()?;
        let result = run_ok(self.runner, step);
        if let Some((cache, _)) = self.cache {
            cache.wrote(step);
        }
        result
    }

    /// Applies `manifest` together with the others waiting, before the next call that reads
    /// or writes this cluster (or [`Live::flush`]). Without a cache, at once.
    pub fn apply_later(&self, manifest: Sensitive<String>) -> Result<(), StepError> {
        match self.cache {
            Some((cache, _)) => {
                cache.defer(manifest);
                Ok(())
            }
            None => self
                .run(&kubectl::apply(
                    self.target,
                    Sensitive::new(manifest.expose().clone().into_bytes()),
                    self.timeout,
                ))
                .map(drop),
        }
    }

    /// Applies what waits, in one `kubectl apply` (in the order it was given).
    pub fn flush(&self) -> Result<(), StepError> {
        let Some((cache, _)) = self.cache else {
            return Ok(());
        };
        let pending = cache.take_pending();
        if pending.is_empty() {
            return Ok(());
        }
        let mut documents = String::new();
        for manifest in &pending {
            documents.push_str("---\n");
            documents.push_str(manifest.expose());
        }
        let step = kubectl::apply(
            self.target,
            Sensitive::new(documents.into_bytes()),
            self.timeout,
        );
        let result = run_ok(self.runner, &step);
        cache.wrote(&step);
        if result.is_err() {
            cache.put_back(pending);
        }
        result.map(drop)
    }

    /// The snapshot, when `kind` (named `name`, or all of them) in `namespace` can be read
    /// from it: read now if it was not yet.
    fn snapshot(
        &self,
        kind: &str,
        name: Option<&str>,
        selector: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<Option<(&'a Cache, String)>, StepError> {
        let Some((cache, mesh_ns)) = self.cache else {
            return Ok(None);
        };
        let Some(kind) = cache.answers(kind, name, selector, namespace, mesh_ns) else {
            return Ok(None);
        };
        self.load(cache, mesh_ns)?;
        Ok(Some((cache, kind)))
    }

    /// Reads the snapshot of `namespace` into `cache`, unless it was read.
    fn load(&self, cache: &Cache, namespace: &str) -> Result<(), StepError> {
        if cache.loaded(namespace) {
            return Ok(());
        }
        self.flush()?;
        let step = kubectl::list(
            self.target,
            &Cache::kinds(),
            Some(namespace),
            Some(crate::tools::cache::SELECTOR),
            self.timeout,
        );
        let list: List<serde_json::Value> = parse_json(&step, &run_ok(self.runner, &step)?.stdout)?;
        cache.store(namespace, list.items);
        Ok(())
    }

    /// The API server's version (`kubectl version -o json`); proves that it answers.
    pub fn server_version(&self) -> Result<String, StepError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Versions {
            server_version: Option<GitVersion>,
        }
        let step = kubectl::server_version(self.target, self.timeout);
        let versions: Versions = parse_json(&step, &self.run(&step)?.stdout)?;
        versions
            .server_version
            .map(|v| v.git_version)
            .ok_or_else(|| StepError::malformed(&step, "no `serverVersion`"))
    }

    /// Every release in `namespace` that is deployed, failed or pending (`helm list`).
    pub fn helm_releases(&self, namespace: &str) -> Result<Vec<HelmRelease>, StepError> {
        // Helm keeps a release's records in its namespace: none there, no release.
        if let Some((cache, mesh_ns)) = self.cache
            && namespace == mesh_ns
        {
            self.load(cache, namespace)?;
            if cache.absent_at_start("namespace", namespace) {
                return Ok(Vec::new());
            }
        }
        let step = helm::list(self.target, namespace);
        let output = self.run(&step)?;
        // helm prints nothing at all (not `[]`) for an empty namespace in some versions.
        if output.stdout.trim().is_empty() {
            return Ok(Vec::new());
        }
        parse_json(&step, &output.stdout)
    }

    /// The values a release was installed with (`helm get values -o json`); `null` when none.
    pub fn helm_values(
        &self,
        release: &str,
        namespace: &str,
    ) -> Result<serde_json::Value, StepError> {
        let step = helm::get_values(self.target, release, namespace);
        parse_json(&step, &self.run(&step)?.stdout)
    }

    /// The newest record of every release in `namespace` that is not superseded (deployed,
    /// failed, pending), read from the Secrets helm keeps them in (`owner=helm`): each holds
    /// what `helm list`, `helm get values` and `helm get manifest` print, so one kubectl call
    /// answers for every release.
    pub fn helm_records(&self, namespace: &str) -> Result<Vec<HelmRecord>, StepError> {
        let step = kubectl::list(
            self.target,
            "secrets",
            Some(namespace),
            Some("owner=helm,status!=superseded"),
            self.timeout,
        );
        let list: List<Secret> = parse_json(&step, &self.run(&step)?.stdout)?;
        let mut newest: BTreeMap<String, HelmRecord> = BTreeMap::new();
        for secret in &list.items {
            let Some(data) = secret.data.get("release") else {
                continue;
            };
            let record = decode_record(data.expose()).map_err(|why| {
                StepError::malformed(&step, format!("secret `{}`: {why}", secret.metadata.name))
            })?;
            if newest
                .get(&record.name)
                .is_none_or(|r| r.version < record.version)
            {
                newest.insert(record.name.clone(), record);
            }
        }
        Ok(newest.into_values().collect())
    }

    /// Objects of any types (`deployment.v1.apps/istiod`) in one `kubectl get`, with their
    /// `managedFields`; those that do not exist are left out.
    pub fn objects(
        &self,
        objects: &[String],
        namespace: &str,
    ) -> Result<Vec<serde_json::Value>, StepError> {
        if objects.is_empty() {
            return Ok(Vec::new());
        }
        let step = kubectl::get_managed(self.target, objects, namespace, self.timeout);
        let output = self.run(&step)?;
        if output.stdout.trim().is_empty() {
            return Ok(Vec::new());
        }
        let value: serde_json::Value = parse_json(&step, &output.stdout)?;
        Ok(match (value["kind"].as_str(), value["items"].as_array()) {
            (Some(kind), Some(items)) if kind.ends_with("List") => items.clone(),
            _ => vec![value],
        })
    }

    /// One object, or `None` when it does not exist.
    pub fn get<T: DeserializeOwned>(
        &self,
        kind: &str,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<Option<T>, StepError> {
        let step = kubectl::get(self.target, kind, name, namespace, self.timeout);
        if let Some((cache, kind)) = self.snapshot(kind, Some(name), None, namespace)? {
            return cache
                .find(&kind, name)
                .map(|o| parse_value(&step, o))
                .transpose();
        }
        let output = self.run(&step)?;
        if output.stdout.trim().is_empty() {
            return Ok(None);
        }
        parse_json(&step, &output.stdout).map(Some)
    }

    /// Several objects of different kinds in one call; look them up with [`Fetched::find`].
    pub fn get_each(
        &self,
        objects: &[(&str, &str)],
        namespace: Option<&str>,
    ) -> Result<Fetched, StepError> {
        #[derive(Deserialize)]
        struct Raw {
            kind: Option<String>,
            #[serde(default)]
            items: Vec<serde_json::Value>,
        }
        let step = kubectl::get_each(self.target, objects, namespace, self.timeout);
        if !objects.is_empty() && self.all_cached(objects, namespace)? {
            let mut items = Vec::new();
            for (kind, name) in objects {
                if let Some((cache, kind)) = self.snapshot(kind, Some(name), None, namespace)? {
                    items.extend(cache.find(&kind, name));
                }
            }
            return Ok(Fetched { step, items });
        }
        let output = self.run(&step)?;
        let items = if output.stdout.trim().is_empty() {
            Vec::new()
        } else {
            let value: serde_json::Value = parse_json(&step, &output.stdout)?;
            let raw: Raw = parse_value(&step, value.clone())?;
            match raw.kind.as_deref() {
                Some(kind) if kind.ends_with("List") => raw.items,
                _ => vec![value],
            }
        };
        Ok(Fetched { step, items })
    }

    /// What a GET of an API `path` printed, parsed as JSON (`kubectl get --raw`).
    pub fn get_raw<T: DeserializeOwned>(&self, path: &str) -> Result<T, StepError> {
        let step = kubectl::get_raw(self.target, path, self.timeout);
        parse_json(&step, &self.run(&step)?.stdout)
    }

    /// Every object of `kind` (in `namespace`, matching `selector`).
    pub fn list<T: DeserializeOwned>(
        &self,
        kind: &str,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<T>, StepError> {
        let step = kubectl::list(self.target, kind, namespace, selector, self.timeout);
        if let Some((cache, kind)) = self.snapshot(kind, None, selector, namespace)?
            && let Some(objects) = cache.select(&kind, selector)
        {
            return objects.into_iter().map(|o| parse_value(&step, o)).collect();
        }
        let list: List<T> = parse_json(&step, &self.run(&step)?.stdout)?;
        Ok(list.items)
    }

    /// Every object of `kind` in every namespace (matching `selector`).
    pub fn list_everywhere<T: DeserializeOwned>(
        &self,
        kind: &str,
        selector: Option<&str>,
    ) -> Result<Vec<T>, StepError> {
        let step = kubectl::list_everywhere(self.target, kind, selector, self.timeout);
        let list: List<T> = parse_json(&step, &self.run(&step)?.stdout)?;
        Ok(list.items)
    }

    /// Whether every one of `objects` is answered by the snapshot (present or not).
    fn all_cached(
        &self,
        objects: &[(&str, &str)],
        namespace: Option<&str>,
    ) -> Result<bool, StepError> {
        for (kind, name) in objects {
            if self.snapshot(kind, Some(name), None, namespace)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Objects read by [`Live::get_each`].
pub struct Fetched {
    step: Step,
    items: Vec<serde_json::Value>,
}

impl Fetched {
    /// The object of `kind` named `name`, parsed, or `None` when it was not there.
    pub fn find<T: DeserializeOwned>(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<T>, StepError> {
        self.items
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .map(|o| parse_value(&self.step, o.clone()))
            .transpose()
    }
}

/// The local tools' versions (no cluster involved).
pub mod tools {
    use super::*;

    /// `helm version`, e.g. `v3.19.0`.
    pub fn helm_version(runner: &dyn Runner) -> Result<String, StepError> {
        let step = helm::version();
        let version = run_ok(runner, &step)?.stdout.trim().to_string();
        if version.is_empty() {
            return Err(StepError::malformed(&step, "it printed no version"));
        }
        Ok(version)
    }

    /// `kubectl version --client`, e.g. `v1.35.0`.
    pub fn kubectl_version(runner: &dyn Runner) -> Result<String, StepError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Versions {
            client_version: GitVersion,
        }
        let step = kubectl::client_version();
        let versions: Versions = parse_json(&step, &run_ok(runner, &step)?.stdout)?;
        Ok(versions.client_version.git_version)
    }
}

fn parse_json<T: DeserializeOwned>(step: &Step, stdout: &str) -> Result<T, StepError> {
    // The message says where parsing stopped, never what was printed (it may hold a token).
    serde_json::from_str(stdout.trim()).map_err(|e| StepError::malformed(step, json_problem(&e)))
}

fn parse_value<T: DeserializeOwned>(step: &Step, value: serde_json::Value) -> Result<T, StepError> {
    serde_json::from_value(value).map_err(|e| StepError::malformed(step, json_problem(&e)))
}

fn json_problem(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => format!("unexpected JSON: {e}"),
        _ => format!(
            "not JSON: {:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GitVersion {
    git_version: String,
}

/// A `kubectl get -o json` List.
#[derive(Debug, Deserialize)]
struct List<T> {
    items: Vec<T>,
}

/// A release as helm stores it (`sh.helm.release.v1.NAME.vN`): what `helm list`, `helm get
/// values` and `helm get manifest` print of it.
#[derive(Debug, Clone, Default)]
pub struct HelmRecord {
    pub name: String,
    /// The release revision.
    pub version: u64,
    /// `deployed`, `failed`, `pending-install`, ...
    pub status: String,
    /// Chart name and version, as `helm list` prints them (`istiod-1.28.1`).
    pub chart: String,
    /// The values given to it (`helm get values`); `null` when none.
    pub config: serde_json::Value,
    /// The objects it rendered (`helm get manifest`).
    pub manifest: String,
}

/// Helm's storage encoding (pkg/storage/driver/util.go `decodeRelease`): base64 of gzipped
/// JSON (plain JSON from old helms), here with the Secret's own base64 around it.
fn decode_record(secret_b64: &str) -> Result<HelmRecord, String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let outer = b64
        .decode(secret_b64.trim())
        .map_err(|e| format!("`release` is not base64 ({e})"))?;
    let inner = b64
        .decode(outer.trim_ascii())
        .map_err(|e| format!("the release is not base64 ({e})"))?;
    let json = if inner.starts_with(&[0x1f, 0x8b, 0x08]) {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(inner.as_slice())
            .read_to_end(&mut text)
            .map_err(|e| format!("the release is not gzip ({e})"))?;
        text
    } else {
        inner
    };
    let release: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| format!("the release is not JSON ({e})"))?;
    let text = |p: &str| {
        release
            .pointer(p)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(HelmRecord {
        name: text("/name"),
        version: release["version"].as_u64().unwrap_or(0),
        status: text("/info/status"),
        chart: format!(
            "{}-{}",
            text("/chart/metadata/name"),
            text("/chart/metadata/version")
        ),
        config: release["config"].clone(),
        manifest: text("/manifest"),
    })
}

/// A release as `helm list -o json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HelmRelease {
    pub name: String,
    /// `deployed`, `failed`, `pending-install`, ...
    pub status: String,
    /// Chart name and version, e.g. `istiod-1.28.1`.
    pub chart: String,
    /// The release revision, as helm prints it (a string).
    #[serde(default)]
    pub revision: String,
    /// When its last revision was written, as helm prints it
    /// (`2026-11-25 20:10:48.123456789 +0000 UTC`).
    #[serde(default)]
    pub updated: String,
}

impl HelmRelease {
    /// An install, upgrade or rollback that never finished (helm refuses the next one).
    pub fn is_pending(&self) -> bool {
        self.status.starts_with("pending-") || self.status == "uninstalling"
    }

    /// `updated` as a time, when helm printed one meshup can read.
    pub fn updated_at(&self) -> Option<time::OffsetDateTime> {
        // `YYYY-MM-DD HH:MM:SS[.fraction] +HHMM ZONE`
        let mut words = self.updated.split_whitespace();
        let (date, clock, offset) = (words.next()?, words.next()?, words.next()?);
        let clock = clock.split('.').next()?;
        let offset = format!("{}:{}", offset.get(..3)?, offset.get(3..5)?);
        let text = format!("{date}T{clock}{offset}");
        time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339).ok()
    }
}

/// The metadata meshup reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub resource_version: String,
    pub creation_timestamp: String,
    /// Set once the object is being deleted (a namespace stays `Terminating` until its
    /// contents are gone).
    pub deletion_timestamp: String,
}

/// A Secret. Every value of `data` (base64, as the API returns it) is treated as secret.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Secret {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub data: BTreeMap<String, Sensitive<String>>,
}

/// A Namespace.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Namespace {
    #[serde(default)]
    pub metadata: Meta,
}

/// Any object of which only the metadata matters (ServiceAccount, CRD, ...).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Object {
    #[serde(default)]
    pub metadata: Meta,
}

/// A ConfigMap.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigMap {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// A Deployment: its replicas, readiness and pod template.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Deployment {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: DeploymentSpec,
    #[serde(default)]
    pub status: DeploymentStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DeploymentSpec {
    pub replicas: Option<u64>,
    pub template: PodTemplate,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PodTemplate {
    pub metadata: Meta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PodSpec {
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Container {
    pub name: String,
    pub image: Option<String>,
    pub env: Vec<EnvVar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentStatus {
    pub ready_replicas: Option<u64>,
}

/// A `coordination.k8s.io/v1` Lease.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Lease {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: LeaseSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LeaseSpec {
    pub holder_identity: Option<String>,
    pub lease_duration_seconds: Option<i64>,
    pub acquire_time: Option<String>,
    pub renew_time: Option<String>,
    pub lease_transitions: Option<i64>,
}

/// A Pod: its phase and whether it is Ready.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    pub phase: String,
    pub conditions: Vec<Condition>,
    pub start_time: Option<String>,
}

/// A status condition (`Ready`, `Available`, `Complete`, ...).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

impl Pod {
    /// Running, with its `Ready` condition true.
    pub fn is_ready(&self) -> bool {
        self.status.phase == "Running"
            && self
                .status
                .conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.status == "True")
    }
}

impl Deployment {
    /// The value of environment variable `name` in any container of the pod template.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.spec
            .template
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.env)
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    /// The image of its first container (`docker.io/istio/pilot:1.28.1`).
    pub fn image(&self) -> Option<&str> {
        self.spec.template.spec.containers.first()?.image.as_deref()
    }

    /// (ready, desired) replicas; a Deployment without `replicas` wants one.
    pub fn readiness(&self) -> (u64, u64) {
        (
            self.status.ready_replicas.unwrap_or(0),
            self.spec.replicas.unwrap_or(1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::runner::RecordingRunner;

    fn target() -> Target {
        Target {
            cluster: "cluster1".into(),
            context: "kind-cluster1".into(),
            kubeconfig: None,
        }
    }

    fn answering(stdout: &'static str) -> RecordingRunner<impl Fn(&Step) -> Output + Send + Sync> {
        RecordingRunner::new(move |_: &Step| Output {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        })
    }

    #[test]
    fn garbage_is_an_error_naming_the_command_not_absence() {
        let runner = answering("<html>proxy error</html>");
        let t = target();
        let live = Live::new(&runner, &t, Duration::from_secs(5));
        let err = live
            .get::<Secret>("secret", "cacerts", Some("istio-system"))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("[cluster1] `kubectl get secret cacerts"),
            "{text}"
        );
        assert!(text.contains("cannot read"), "{text}");
        assert!(
            !text.contains("proxy error"),
            "output is never quoted: {text}"
        );
        assert!(live.helm_releases("istio-system").is_err());
        assert!(live.server_version().is_err());
    }

    #[test]
    fn nothing_printed_is_absent() {
        let runner = answering("");
        let t = target();
        let live = Live::new(&runner, &t, Duration::from_secs(5));
        assert!(live.get::<Secret>("secret", "x", None).unwrap().is_none());
        assert!(live.helm_releases("ns").unwrap().is_empty());
    }

    #[test]
    fn a_server_that_answers_without_its_version_is_malformed() {
        let runner = answering(r#"{"clientVersion": {"gitVersion": "v1.35.0"}}"#);
        let t = target();
        let live = Live::new(&runner, &t, Duration::from_secs(5));
        let err = live.server_version().unwrap_err();
        assert!(matches!(err, StepError::Malformed { .. }), "{err}");
    }

    #[test]
    fn get_each_finds_objects_in_a_list_or_alone() {
        let runner = answering(
            r#"{"kind":"List","items":[{"kind":"ConfigMap","metadata":{"name":"istio"},"data":{"mesh":"x"}},{"kind":"Deployment","metadata":{"name":"istiod"},"spec":{"template":{"spec":{"containers":[{"name":"d","env":[{"name":"CLUSTER_ID","value":"east"}]}]}}}}]}"#,
        );
        let t = target();
        let live = Live::new(&runner, &t, Duration::from_secs(5));
        let found = live
            .get_each(&[("configmap", "istio"), ("deployment", "istiod")], None)
            .unwrap();
        let cm: ConfigMap = found.find("ConfigMap", "istio").unwrap().unwrap();
        assert_eq!(cm.data["mesh"], "x");
        let d: Deployment = found.find("Deployment", "istiod").unwrap().unwrap();
        assert_eq!(d.env("CLUSTER_ID"), Some("east"));
        assert_eq!(d.readiness(), (0, 1));
        assert!(
            found
                .find::<Deployment>("Deployment", "other")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn helm_update_times_are_read() {
        let release = HelmRelease {
            name: "istiod".into(),
            status: "pending-install".into(),
            chart: "istiod-1.28.1".into(),
            revision: "1".into(),
            updated: "2026-11-25 20:10:48.123456789 +0100 CET".into(),
        };
        assert!(release.is_pending());
        assert_eq!(
            release.updated_at().unwrap().unix_timestamp(),
            1_795_633_848
        );
        let unreadable = HelmRelease {
            updated: "yesterday".into(),
            ..release
        };
        assert_eq!(unreadable.updated_at(), None);
    }

    #[test]
    fn secret_data_is_wrapped() {
        let runner =
            answering(r#"{"kind":"Secret","metadata":{"name":"t"},"data":{"token":"c2VjcmV0"}}"#);
        let t = target();
        let live = Live::new(&runner, &t, Duration::from_secs(5));
        let secret: Secret = live.get("secret", "t", None).unwrap().unwrap();
        assert!(!format!("{secret:?}").contains("c2VjcmV0"));
    }
}
