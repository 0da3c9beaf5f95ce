//! Canary upgrades of a live mesh, across clusters, in waves (`meshup upgrade`), the way
//! Istio's Helm canary upgrade does it in one cluster, ordered for many:
//!
//! 1. `start`: in every cluster first, istio-base to the new chart (CRDs) and the new
//!    revision's reader RBAC (rendered from the new istiod chart, which holds it per revision:
//!    a newer istiod reads more of its peers than an older reader role grants), then, wave by
//!    wave, `istiod-REV` beside the running revision with the same mesh values; gate: the new
//!    istiod reports every peer synced.
//! 2. `promote`: wave by wave, the revision tags (`default` and every tag on the old revision)
//!    rendered by the new istiod chart (`revisionTags`) and applied, the revision-less
//!    injector switched off as `istioctl tag set default` does, istio-base's
//!    `defaultRevision`, the east-west gateway's `revision`, and on request the injected
//!    Deployments restarted; gate: those proxies run the new revision.
//! 3. `finish`: the old istiod removed, refused while proxies of it still run.
//! 4. `rollback` (before `finish`): tags, base and gateway back, then the new istiod removed.
//!
//! Every step is a plan run by the engine (`exec.rs`); the state lives in the clusters (which
//! istiod revisions run, where the tags point), so any machine can continue an upgrade.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use serde_yaml::Mapping;

use crate::components::{Action, ClusterCtx, ClusterNotes, Component, RunBoard, ScriptCx};
use crate::engine::plan::{AllOf, Chain, Gate, Plan, ScriptOptions, Task, Wave, Work};
use crate::engine::run::Run;
use crate::engine::topology::{self, Choices};
use crate::model::chart::Chart;
use crate::model::mesh::Mesh;
use crate::model::values;
use crate::model::version::IstioVersion;
use crate::observe::revisions::{
    DEFAULT_TAG, Installed, Reading, Revision, TAG_LABEL, describe, installed, proxies,
    revision_of, tags,
};
use crate::observe::sync;
use crate::tools::helm;
use crate::tools::kubectl;
use crate::tools::live::Deployment;
use crate::tools::remote_secret::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::tools::runner::StepError;
use crate::tools::step::shell_quote;
use crate::trust::sensitive::Sensitive;

/// What `istioctl tag set default` puts into the revision-less injector's selectors so that
/// it never matches (istioctl/pkg/util/common.go `NeverMatch`).
const NEVER_MATCH: (&str, &str) = ("istio.io/deactivated", "never-match");
/// Every cluster's revisions and tags, read in parallel (the clusters of `run.mesh`).
pub fn observe(run: &Run) -> Vec<(String, Result<Installed, StepError>)> {
    crate::engine::run::parallel(run.jobs, &run.mesh.clusters, |cluster| {
        let (mut memo, board) = (ClusterNotes::default(), RunBoard::default());
        let result = run.in_cluster(cluster, &mut memo, &board, |cx| {
            let ns = &run.mesh.namespace;
            let mut found = installed(&cx.live, ns)?;
            // A release whose Deployment is gone (an uninstall stopped half-way) or not yet
            // there (an install stopped half-way) is a revision too, to be finished.
            for release in cx.live.helm_releases(ns)? {
                if !release.chart.starts_with("istiod-") {
                    continue;
                }
                let name = match release.name.strip_prefix("istiod-") {
                    _ if release.name == "istiod" => DEFAULT_TAG,
                    Some(rev) => rev,
                    None => continue,
                };
                if !found.revisions.iter().any(|r| r.name == name) {
                    let reading = Reading {
                        release_chart: Some(&release.chart),
                        ..Reading::default()
                    };
                    found.revisions.push(Revision {
                        name: name.to_string(),
                        version: reading.version(),
                        chart: reading.chart(),
                        found: reading.found(),
                    });
                }
            }
            crate::observe::revisions::oldest_first(&mut found.revisions);
            Ok(found)
        });
        (cluster.name.clone(), result)
    })
}

/// Each cluster's istiod revisions (from the snapshot of its mesh namespace); a cluster that
/// could not be read is left out (the command reports it).
pub fn running_everywhere(run: &Run) -> Vec<(String, Vec<Revision>)> {
    crate::engine::run::parallel(run.jobs, &run.mesh.clusters, |cluster| {
        let (mut memo, board) = (ClusterNotes::default(), RunBoard::default());
        let found = run.in_cluster(cluster, &mut memo, &board, |cx| {
            crate::observe::revisions::running(&cx.live, &run.mesh.namespace)
        });
        found
            .ok()
            .map(|revisions| (cluster.name.clone(), revisions))
    })
    .into_iter()
    .flatten()
    .collect()
}

/// The revision the mesh runs when the mesh file names none: the oldest one every cluster
/// with an istiod runs, when that is not the revision-less `default` (after an upgrade,
/// `1-29-0`), so that every command finds istiod where it runs.
pub fn settled(found: &[(String, Vec<Revision>)]) -> Option<String> {
    let running: Vec<&Vec<Revision>> = found
        .iter()
        .map(|(_, r)| r)
        .filter(|r| !r.is_empty())
        .collect();
    let first = running.first()?;
    let common: Vec<&Revision> = first
        .iter()
        .filter(|r| running.iter().all(|rs| rs.iter().any(|x| x.name == r.name)))
        .collect();
    if common.iter().any(|r| r.name == DEFAULT_TAG) {
        return None;
    }
    common.first().map(|r| r.name.clone())
}

/// The name of the revision-less istiod's injector configuration.
fn default_injector(namespace: &str) -> String {
    if namespace == "istio-system" {
        "istio-sidecar-injector".to_string()
    } else {
        format!("istio-sidecar-injector-{namespace}")
    }
}

/// A canary upgrade from one revision to another: the mesh as it runs (`from`) and as it
/// will (`to`), both with the new charts, and the clusters in waves.
pub struct Canary {
    pub from: Mesh,
    pub to: Mesh,
    /// The old and the new revision (`default` for istiod without one).
    pub old: String,
    pub new: String,
    pub version: String,
    /// The old revision's Istio version, when known.
    pub old_version: Option<IstioVersion>,
    pub waves: Vec<Vec<String>>,
    /// Per cluster, the tags that move (`default` and the others on the moving revision).
    pub tags: BTreeMap<String, Vec<String>>,
    pub restart_workloads: bool,
    pub force: bool,
    /// `finish` read every cluster's proxies before its plan (and found none of the old
    /// revision): its `Retire`s do not read them again.
    pub proxies_checked: bool,
    pub force_conflicts: bool,
}

impl Canary {
    /// `mesh` is the mesh file's, with the new charts; `old` the running revision.
    pub fn new(mesh: &Mesh, old: &str, version: &str, waves: Vec<Vec<String>>) -> Canary {
        let mut from = mesh.clone();
        from.revision = (old != DEFAULT_TAG).then(|| old.to_string());
        let mut to = mesh.clone();
        let new = revision_of(version);
        to.revision = Some(new.clone());
        Canary {
            from,
            to,
            old: old.to_string(),
            new,
            version: version.to_string(),
            old_version: None,
            waves,
            tags: BTreeMap::new(),
            restart_workloads: false,
            force: false,
            proxies_checked: false,
            force_conflicts: false,
        }
    }

    fn choices(&self) -> Choices<'static> {
        Choices {
            force_conflicts: self.force_conflicts,
            ..Choices::default()
        }
    }

    /// `mesh`'s component labelled `label` in `cluster`, owned.
    fn part(&self, mesh: &Mesh, cluster: &str, label: &str) -> Option<Box<dyn Component>> {
        topology::parts_of(mesh, cluster, &self.choices())
            .into_iter()
            .find(|c| c.label(Action::Install) == label)
    }

    fn converge(&self, mesh: &Mesh, cluster: &str, label: &str) -> Option<Task<'static>> {
        // What the values of `mesh` add to the mesh file's, for the script.
        let sets = match (&mesh.revision, label) {
            (Some(rev), "istio-base") => vec![("defaultRevision", rev.clone())],
            (Some(rev), "istiod" | "east-west gateway release") => vec![("revision", rev.clone())],
            _ => Vec::new(),
        };
        self.part(mesh, cluster, label)
            .map(|component| Task::Work(Arc::new(Converge { component, sets })))
    }

    fn istiod_watches(&self, cluster: &str) -> Vec<String> {
        topology::watches(&self.to)
            .remove(cluster)
            .unwrap_or_default()
    }

    fn synced(&self, clusters: &[String], revision: &str) -> Arc<dyn Gate> {
        Arc::new(Synced {
            namespace: self.to.namespace.clone(),
            revision: revision.to_string(),
            clusters: clusters
                .iter()
                .map(|c| (c.clone(), self.istiod_watches(c)))
                .collect(),
        })
    }

    fn tags_for(&self, cluster: &str) -> Vec<String> {
        self.tags
            .get(cluster)
            .cloned()
            .unwrap_or_else(|| vec![DEFAULT_TAG.to_string()])
    }

    fn move_tags(&self, mesh: &Mesh, cluster: &str, revision: &str) -> Task<'static> {
        let values = mesh
            .cluster(cluster)
            .map(|c| values::istiod(mesh, c))
            .unwrap_or_default();
        Task::Work(Arc::new(MoveTags {
            namespace: mesh.namespace.clone(),
            chart: self.to.chart("istiod"),
            values,
            revision: revision.to_string(),
            tags: self.tags_for(cluster),
        }))
    }

    fn reader_rbac(&self, cluster: &str) -> Task<'static> {
        let values = self
            .to
            .cluster(cluster)
            .map(|c| values::istiod(&self.to, c))
            .unwrap_or_default();
        Task::Work(Arc::new(ReaderRbac {
            release: self.to.istiod_release(),
            namespace: self.to.namespace.clone(),
            chart: self.to.chart("istiod"),
            values,
        }))
    }

    /// istio-base to the new chart everywhere, then the new istiod beside the old, wave by
    /// wave, each wave waiting for it to sync with every peer.
    pub fn start(&self) -> Plan<'static> {
        let everyone: Vec<String> = self.to.clusters.iter().map(|c| c.name.clone()).collect();
        let mut waves = vec![Wave::new(
            format!(
                "istio-base {} and the new reader RBAC in every cluster, before any new istiod",
                self.version
            ),
            everyone
                .iter()
                .filter_map(|c| {
                    let mut tasks = vec![self.converge(&self.from, c, "istio-base")?];
                    tasks.push(self.reader_rbac(c));
                    chain(c, tasks)
                })
                .collect(),
        )];
        for group in &self.waves {
            let mut wave = Wave::new(
                format!(
                    "istiod {} beside {} in {}",
                    self.new,
                    self.old,
                    group.join(", ")
                ),
                group
                    .iter()
                    .filter_map(|c| chain(c, vec![self.converge(&self.to, c, "istiod")?]))
                    .collect(),
            );
            wave.gate = Some(self.synced(group, &self.new));
            waves.push(wave);
        }
        Plan { waves }
    }

    /// The tags, istio-base's default revision and the gateway to the new revision, wave by
    /// wave; each wave waits for their proxies to run it.
    pub fn promote(&self) -> Plan<'static> {
        self.switch(&self.to, &self.new, &self.old, "to")
    }

    /// Back to the old revision, then the new istiod removed, wave by wave.
    pub fn rollback(&self) -> Plan<'static> {
        let mut plan = Plan::default();
        for (group, switched) in self.waves.iter().zip(
            self.switch(&self.from, &self.old, &self.new, "back to")
                .waves,
        ) {
            plan.waves.push(switched);
            plan.waves.push(self.retire(group, &self.to, &self.new));
        }
        plan
    }

    /// The old istiod removed, wave by wave.
    pub fn finish(&self) -> Plan<'static> {
        Plan {
            waves: self
                .waves
                .iter()
                .map(|group| self.retire(group, &self.from, &self.old))
                .collect(),
        }
    }

    fn switch(&self, mesh: &Mesh, to: &str, from: &str, how: &str) -> Plan<'static> {
        let waves = self
            .waves
            .iter()
            .map(|group| {
                let chains = group
                    .iter()
                    .filter_map(|c| {
                        let back = how == "back to";
                        let mut tasks = Vec::new();
                        // Ambient: ztunnel and istio-cni never run ahead of the control plane
                        // (Istio's ambient Helm upgrade page): upgraded in place after it moved,
                        // rolled back to their previous release before it moves back.
                        if back && mesh.ambient() {
                            for release in ["ztunnel", "istio-cni"] {
                                tasks.push(Task::Work(Arc::new(HelmBack {
                                    release: release.to_string(),
                                    namespace: mesh.namespace.clone(),
                                    chart_version: self.old_version,
                                })));
                            }
                        }
                        tasks.push(self.move_tags(mesh, c, to));
                        tasks.extend(self.converge(mesh, c, "istio-base"));
                        tasks.extend(self.converge(mesh, c, "east-west gateway release"));
                        if !back {
                            tasks.extend(self.converge(mesh, c, "istio-cni"));
                            tasks.extend(self.converge(mesh, c, "ztunnel"));
                        }
                        if self.restart_workloads {
                            tasks.push(Task::Work(Arc::new(RestartWorkloads {
                                from: from.to_string(),
                                namespace: mesh.namespace.clone(),
                            })));
                        }
                        chain(c, tasks)
                    })
                    .collect();
                let mut wave = Wave::new(
                    format!(
                        "default revision and tags {how} {to} in {}",
                        group.join(", ")
                    ),
                    chains,
                );
                wave.gate = Some(Arc::new(AllOf(vec![
                    Arc::new(OnRevision {
                        clusters: group.clone(),
                        namespace: mesh.namespace.clone(),
                        revision: to.to_string(),
                        from: from.to_string(),
                        workloads: self.restart_workloads,
                    }),
                    self.synced(group, to),
                ])));
                wave
            })
            .collect();
        Plan { waves }
    }

    fn retire(&self, group: &[String], mesh: &Mesh, revision: &str) -> Wave<'static> {
        Wave::new(
            format!("remove istiod {revision} from {}", group.join(", ")),
            group
                .iter()
                .filter_map(|c| {
                    let component = self.part(mesh, c, "istiod")?;
                    chain(
                        c,
                        vec![Task::Work(Arc::new(Retire {
                            component,
                            revision: revision.to_string(),
                            check: !self.force && !self.proxies_checked,
                        }))],
                    )
                })
                .collect(),
        )
    }
}

fn chain(cluster: &str, tasks: Vec<Task<'static>>) -> Option<Chain<'static>> {
    (!tasks.is_empty()).then(|| Chain {
        cluster: cluster.to_string(),
        tasks,
    })
}

/// A component of another shape of the mesh (the new revision's istiod, istio-base with the
/// new chart), converged as a step of the upgrade. In the script its values are the rendered
/// file's with `sets` on top (what differs from the mesh file: the revision).
struct Converge {
    component: Box<dyn Component>,
    sets: Vec<(&'static str, String)>,
}

impl Work for Converge {
    fn label(&self) -> &'static str {
        self.component.label(Action::Install)
    }

    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        self.component.converge(cx)
    }

    fn script(&self, cx: &ScriptCx) -> String {
        let script = self.component.script(cx, Action::Install);
        let sets: String = self
            .sets
            .iter()
            .map(|(key, value)| format!(" \\\n  --set {}", shell_quote(&format!("{key}={value}"))))
            .collect();
        match script.strip_suffix('\n') {
            Some(line) if !sets.is_empty() => format!("{line}{sets}\n"),
            _ => script,
        }
    }
}

/// A release back to its previous Helm revision (`helm rollback`), unless it already runs the
/// old chart: the ambient node agents, before the control plane moves back.
struct HelmBack {
    release: String,
    namespace: String,
    /// The old control plane's version: a chart of it needs no rollback.
    chart_version: Option<IstioVersion>,
}

impl Work for HelmBack {
    fn label(&self) -> &'static str {
        if self.release == "ztunnel" {
            "ztunnel"
        } else {
            "istio-cni"
        }
    }

    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let Some(release) = cx.release(&self.release)? else {
            return Ok("absent".into());
        };
        let chart = IstioVersion::of_chart(&release.chart);
        if self.chart_version.is_some() && chart == self.chart_version {
            return Ok("unchanged".into());
        }
        if release.revision == "1" {
            return Ok("no earlier revision".into());
        }
        cx.live.run(&helm::rollback(
            cx.target(),
            &self.release,
            &self.namespace,
            cx.timeout(),
        ))?;
        cx.memo.releases = None;
        Ok(format!("rolled back from {}", release.chart))
    }

    fn script(&self, cx: &ScriptCx) -> String {
        format!(
            "{}\n",
            helm::rollback(&cx.target, &self.release, &self.namespace, cx.timeout).command_line()
        )
    }
}

/// An istiod revision removed, refused while pods still run its proxies (unless forced, or
/// the command already read them).
struct Retire {
    component: Box<dyn Component>,
    revision: String,
    check: bool,
}

impl Work for Retire {
    fn label(&self) -> &'static str {
        "istiod"
    }

    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        if self.check {
            let left = proxies(&cx.live)?
                .remove(&self.revision)
                .unwrap_or_default();
            if !left.is_empty() {
                return Err(StepError::other(
                    &cx.cluster.name,
                    format!(
                        "istiod {} is kept: its proxies still run in {}",
                        self.revision,
                        describe(&left)
                    ),
                    Some(
                        "restart them (`meshup upgrade promote --restart-workloads`, or `kubectl rollout restart deployment -n NAMESPACE`), or pass --force to remove it anyway".to_string(),
                    ),
                ));
            }
        }
        self.component.remove(cx)
    }

    fn script(&self, cx: &ScriptCx) -> String {
        self.component.script(cx, Action::Remove)
    }
}

/// The revision tags pointed at `revision`: rendered by the new istiod chart (`revisionTags`,
/// as Istio's Helm upgrade guide renders them with `helm template`) and applied; away from the
/// revision-less istiod, its injector is switched off as `istioctl tag set default` does, so
/// that it does not inject the same pods again.
struct MoveTags {
    namespace: String,
    chart: Chart,
    /// The istiod values of the mesh whose revision the tags move to.
    values: Mapping,
    revision: String,
    tags: Vec<String>,
}

impl MoveTags {
    fn values(&self) -> Mapping {
        let mut values = self.values.clone();
        let revision = if self.revision == DEFAULT_TAG {
            ""
        } else {
            self.revision.as_str()
        };
        values::set(&mut values, &["revision"], revision);
        values.insert(
            "revisionTags".into(),
            serde_yaml::Value::Sequence(self.tags.iter().map(|t| t.as_str().into()).collect()),
        );
        values
    }
}

impl Work for MoveTags {
    fn label(&self) -> &'static str {
        "revision tags"
    }

    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let now = tags(&cx.live)?;
        let tags_done = self.tags.iter().all(|t| {
            now.get(t) == Some(&self.revision)
                || (t == DEFAULT_TAG && !now.contains_key(t) && self.revision == DEFAULT_TAG)
        });
        let mut done = Vec::new();
        if !tags_done {
            let rendered = render(cx, "istiod", &self.chart, &self.namespace, &self.values())?;
            let manifest = tag_objects(&rendered).map_err(|e| {
                StepError::other(
                    &cx.cluster.name,
                    format!("`helm template` of the istiod chart printed {e}"),
                    None,
                )
            })?;
            if manifest.is_empty() {
                return Err(StepError::other(
                    &cx.cluster.name,
                    format!(
                        "the istiod chart {} rendered no revision tag objects",
                        self.chart.version.as_deref().unwrap_or("")
                    ),
                    Some(
                        "meshup needs an istiod chart with `revisionTags` (Istio 1.17 or later)"
                            .to_string(),
                    ),
                ));
            }
            cx.live.run(&kubectl::apply(
                cx.target(),
                Sensitive::new(manifest.into_bytes()),
                cx.timeout(),
            ))?;
            done.push(format!("{} → {}", self.tags.join(", "), self.revision));
        }
        if self.revision != DEFAULT_TAG
            && self.tags.iter().any(|t| t == DEFAULT_TAG)
            && deactivate_default_injector(cx, &self.namespace)?
        {
            done.push("revision-less injector switched off".to_string());
        }
        Ok(if done.is_empty() {
            "unchanged".into()
        } else {
            done.join("; ")
        })
    }

    fn script(&self, cx: &ScriptCx) -> String {
        let values = serde_yaml::to_string(&self.values()).unwrap_or_default();
        let step = helm::template(
            &cx.target,
            "istiod",
            &self.chart,
            &self.namespace,
            Vec::new(),
        );
        let mut out = format!(
            "# revision tags {} → {}: the istiod chart renders them (objects labelled {TAG_LABEL}), kubectl applies them\n{} <<'VALUES' \\\n  | yq 'select(.metadata.labels[\"{TAG_LABEL}\"] != null)' \\\n  | kubectl apply --server-side --force-conflicts --field-manager meshup -f - --context {}{}\n{values}VALUES\n",
            self.tags.join(", "),
            self.revision,
            step.command_line(),
            shell_quote(&cx.cluster.context),
            cx.kubeconfig_flag(),
        );
        if self.revision != DEFAULT_TAG {
            out.push_str(&format!(
                "# then the revision-less injector ({}) never matches: every webhook's selectors become {}={}\n",
                default_injector(&self.namespace),
                NEVER_MATCH.0,
                NEVER_MATCH.1
            ));
        }
        out
    }
}

/// The objects labelled `istio.io/tag` among the documents `helm template` printed, as one
/// YAML stream meshup applies (labelled as meshup's).
fn tag_objects(rendered: &str) -> Result<String, String> {
    pick(
        rendered,
        |labels| labels.contains_key(TAG_LABEL),
        &[(MANAGED_BY_LABEL, MANAGED_BY)],
        &[],
    )
}

/// The documents `helm template` printed whose labels satisfy `keep`, with `labels` and
/// `annotations` added, as one YAML stream.
fn pick(
    rendered: &str,
    keep: impl Fn(&serde_yaml::Mapping) -> bool,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> Result<String, String> {
    let mut out = String::new();
    for doc in serde_yaml::Deserializer::from_str(rendered) {
        let mut value =
            serde_yaml::Value::deserialize(doc).map_err(|e| format!("unreadable YAML: {e}"))?;
        let kept = value
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(serde_yaml::Value::as_mapping)
            .is_some_and(&keep);
        if !kept {
            continue;
        }
        let metadata = value
            .get_mut("metadata")
            .and_then(serde_yaml::Value::as_mapping_mut)
            .expect("a labelled object has metadata");
        for (field, pairs) in [("labels", labels), ("annotations", annotations)] {
            if pairs.is_empty() {
                continue;
            }
            let map = metadata
                .entry(field.into())
                .or_insert_with(|| serde_yaml::Value::Mapping(Mapping::new()));
            if let Some(map) = map.as_mapping_mut() {
                for (k, v) in pairs {
                    map.insert((*k).into(), (*v).into());
                }
            }
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// `helm template` of `chart` as release `release` with `values`: what it would install.
fn render(
    cx: &ClusterCtx,
    release: &str,
    chart: &Chart,
    namespace: &str,
    values: &Mapping,
) -> Result<String, StepError> {
    let yaml = serde_yaml::to_string(values).map_err(|e| {
        StepError::other(&cx.cluster.name, format!("cannot write values: {e}"), None)
    })?;
    let step = helm::template(cx.target(), release, chart, namespace, yaml.into_bytes());
    Ok(cx.live.run(&step)?.stdout)
}

/// The new revision's reader RBAC (`istio-reader-clusterrole-REV-NS` and its binding, which the
/// istiod chart renders per revision, labelled `app: istio-reader`) in a cluster before any
/// new istiod anywhere reads it: a newer istiod reads more of its peers than the older role
/// grants (the mesh ConfigMap since 1.29, istio/istio#58455, #59474). Applied with the
/// release's Helm ownership, so that the release's install adopts them.
struct ReaderRbac {
    release: String,
    namespace: String,
    chart: Chart,
    values: Mapping,
}

impl Work for ReaderRbac {
    fn label(&self) -> &'static str {
        "reader RBAC"
    }

    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let rendered = render(
            cx,
            &self.release,
            &self.chart,
            &self.namespace,
            &self.values,
        )?;
        let manifest = pick(
            &rendered,
            |labels| labels.get("app").and_then(serde_yaml::Value::as_str) == Some("istio-reader"),
            &[("app.kubernetes.io/managed-by", "Helm")],
            &[
                ("meta.helm.sh/release-name", &self.release),
                ("meta.helm.sh/release-namespace", &self.namespace),
            ],
        )
        .map_err(|e| {
            StepError::other(
                &cx.cluster.name,
                format!("`helm template` of the istiod chart printed {e}"),
                None,
            )
        })?;
        if manifest.is_empty() {
            return Ok("none in this chart".into());
        }
        cx.live.run(&kubectl::apply(
            cx.target(),
            Sensitive::new(manifest.into_bytes()),
            cx.timeout(),
        ))?;
        Ok("applied".into())
    }

    fn script(&self, cx: &ScriptCx) -> String {
        let step = helm::template(
            &cx.target,
            &self.release,
            &self.chart,
            &self.namespace,
            Vec::new(),
        );
        format!(
            "# the {} reader ClusterRole and binding (labelled app=istio-reader), owned by release {} so that its install adopts them\n{} --values meshup-values/{}/istiod-values.yaml --set revision={} \\\n  | yq 'select(.metadata.labels.app == \"istio-reader\")' | kubectl apply --server-side -f - --context {}{}\n",
            self.release,
            self.release,
            step.command_line().trim_end_matches(" --values -"),
            cx.cluster.name,
            self.release.trim_start_matches("istiod-"),
            shell_quote(&cx.cluster.context),
            cx.kubeconfig_flag(),
        )
    }
}

/// Makes the revision-less istiod's injector match nothing (what `istioctl tag set default`
/// does, istioctl/pkg/tag/util.go `DeactivateIstioInjectionWebhook`); true when it changed.
fn deactivate_default_injector(cx: &ClusterCtx, namespace: &str) -> Result<bool, StepError> {
    let name = default_injector(namespace);
    let Some(config) = cx
        .live
        .get::<Value>("mutatingwebhookconfiguration", &name, None)?
    else {
        return Ok(false);
    };
    let never = json!({"matchLabels": {NEVER_MATCH.0: NEVER_MATCH.1}});
    let hooks = config
        .get("webhooks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ops = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        for selector in ["namespaceSelector", "objectSelector"] {
            if hook.get(selector) != Some(&never) {
                ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/{selector}"), "value": never}));
            }
        }
    }
    if ops.is_empty() {
        return Ok(false);
    }
    cx.live.run(&kubectl::patch_json(
        cx.target(),
        "mutatingwebhookconfiguration",
        &name,
        &Value::Array(ops).to_string(),
        cx.timeout(),
    ))?;
    Ok(true)
}

/// The Deployments whose pods run proxies of revision `from` restarted, namespace by
/// namespace (outside the mesh's own namespace), each rollout waited for.
struct RestartWorkloads {
    from: String,
    namespace: String,
}

impl Work for RestartWorkloads {
    fn label(&self) -> &'static str {
        "workloads"
    }

    fn run(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let namespaces: Vec<String> = proxies(&cx.live)?
            .remove(&self.from)
            .unwrap_or_default()
            .into_keys()
            .filter(|ns| *ns != self.namespace)
            .collect();
        let mut restarted = 0;
        for ns in &namespaces {
            let deployments: Vec<Deployment> = cx.live.list("deployments", Some(ns), None)?;
            for d in &deployments {
                cx.live.run(&kubectl::rollout_restart(
                    cx.target(),
                    &d.metadata.name,
                    ns,
                    cx.timeout(),
                ))?;
                restarted += 1;
            }
            for d in &deployments {
                cx.live.run(&kubectl::rollout_status(
                    cx.target(),
                    &d.metadata.name,
                    ns,
                    cx.timeout(),
                ))?;
            }
        }
        Ok(if restarted == 0 {
            "none to restart".into()
        } else {
            format!(
                "{restarted} Deployments restarted in {}",
                namespaces.join(", ")
            )
        })
    }

    fn script(&self, cx: &ScriptCx) -> String {
        format!(
            "# restart every Deployment in each namespace whose pods run proxies of {} (sidecar.istio.io/status), e.g.\nkubectl rollout restart deployment --namespace NAMESPACE --context {}{}\n",
            self.from,
            shell_quote(&cx.cluster.context),
            cx.kubeconfig_flag()
        )
    }
}

/// Waits until istiod of `revision` reports every peer synced in each of `clusters`.
struct Synced {
    namespace: String,
    revision: String,
    /// Each cluster and the peers its istiod must watch.
    clusters: BTreeMap<String, Vec<String>>,
}

impl Gate for Synced {
    fn title(&self) -> String {
        format!(
            "istiod {} in {} reports every peer synced",
            self.revision,
            self.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    }

    fn check(&self, run: &Run, _: &RunBoard) -> Result<Option<String>, StepError> {
        let mut waiting = Vec::new();
        for (name, peers) in &self.clusters {
            let Some(cluster) = run.mesh.cluster(name) else {
                continue;
            };
            let watcher = sync::Watcher {
                namespace: self.namespace.clone(),
                revision: self.revision.clone(),
                peers: peers.clone(),
            };
            let (mut memo, board) = (ClusterNotes::default(), RunBoard::default());
            let row = run.in_cluster(cluster, &mut memo, &board, |cx| {
                sync::read(&cx.live, cx.reporter, &watcher)
            });
            if !row.ok() {
                let (synced, expected) = row.synced();
                waiting.push(match &row.error {
                    Some(error) => format!("{name}: {}", sync::first_line(error)),
                    None => format!("{name}: {synced}/{expected} peers synced"),
                });
            }
        }
        Ok((!waiting.is_empty()).then(|| waiting.join(", ")))
    }

    fn script(&self, mesh: &Mesh, options: &ScriptOptions) -> String {
        let kubeconfig = crate::tools::step::kubeconfig_flag(options.kubeconfig);
        let mut out = String::new();
        for (name, peers) in &self.clusters {
            let Some(cluster) = mesh.cluster(name) else {
                continue;
            };
            for peer in peers {
                let deployment = if self.revision == DEFAULT_TAG {
                    "istiod".to_string()
                } else {
                    format!("istiod-{}", self.revision)
                };
                out.push_str(&format!(
                    "until kubectl exec deploy/{deployment} --container discovery --namespace {ns} --context {ctx}{kubeconfig} -- pilot-discovery request GET /debug/clusterz \\\n    | grep -q '\"id\":\"{peer}\"[^}}]*\"syncStatus\":\"synced\"'; do sleep 2; done\n",
                    ns = self.namespace,
                    ctx = shell_quote(&cluster.context),
                ));
            }
        }
        out
    }
}

/// Waits until the east-west gateway (and, when workloads were restarted, every restarted
/// Deployment) runs proxies of `revision` and none of `from` in each of `clusters`.
struct OnRevision {
    clusters: Vec<String>,
    namespace: String,
    revision: String,
    from: String,
    workloads: bool,
}

impl Gate for OnRevision {
    fn title(&self) -> String {
        let what = if self.workloads {
            "the gateway and restarted workloads"
        } else {
            "the gateway"
        };
        format!(
            "{what} in {} run proxies of {}",
            self.clusters.join(", "),
            self.revision
        )
    }

    fn check(&self, run: &Run, _: &RunBoard) -> Result<Option<String>, StepError> {
        let mut waiting = Vec::new();
        for name in &self.clusters {
            let Some(cluster) = run.mesh.cluster(name) else {
                continue;
            };
            let (mut memo, board) = (ClusterNotes::default(), RunBoard::default());
            let left = run.in_cluster(cluster, &mut memo, &board, |cx| {
                proxies(&cx.live).map(|mut p| p.remove(&self.from).unwrap_or_default())
            })?;
            let left: BTreeMap<String, usize> = left
                .into_iter()
                .filter(|(ns, _)| self.workloads || *ns == self.namespace)
                .collect();
            if !left.is_empty() {
                waiting.push(format!(
                    "{name}: proxies of {} in {}",
                    self.from,
                    describe(&left)
                ));
            }
        }
        Ok((!waiting.is_empty()).then(|| waiting.join(", ")))
    }

    fn script(&self, _: &Mesh, _: &ScriptOptions) -> String {
        format!(
            "# wait until no running pod{} carries sidecar.istio.io/status with \"revision\":\"{}\"\n",
            if self.workloads {
                ""
            } else {
                " of the east-west gateway"
            },
            self.from
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use crate::tools::reporter::{Mode, Reporter};
    use crate::tools::runner::RecordingRunner;
    use crate::trust::TrustMode;

    /// `HelmBack` of ztunnel to the old control plane's version, in cluster1, where helm
    /// lists ztunnel's chart as `chart`: what it said and the commands it ran.
    fn ztunnel_back(chart: &'static str, old: &str) -> (String, Vec<String>) {
        let mesh = testing::mesh(2, TrustMode::None);
        let runner = RecordingRunner::new(move |step: &crate::tools::step::Step| {
            if step.args.first().map(String::as_str) == Some("list") {
                testing::ok(&format!(
                    r#"[{{"name":"ztunnel","status":"deployed","chart":"{chart}","revision":"3"}}]"#
                ))
            } else {
                testing::ok("")
            }
        });
        let reporter = Reporter::new(Mode::Json, true, false);
        let run = testing::run(&mesh, &runner, &reporter);
        let back = HelmBack {
            release: "ztunnel".into(),
            namespace: "istio-system".into(),
            chart_version: IstioVersion::parse(old),
        };
        let (mut memo, board) = (ClusterNotes::default(), RunBoard::default());
        let said = run
            .in_cluster(&mesh.clusters[0], &mut memo, &board, |cx| back.run(cx))
            .unwrap();
        (said, runner.command_lines())
    }

    #[test]
    fn a_node_agent_on_the_old_chart_is_not_rolled_back_again() {
        // The old istiod ran `pilot:1.30.0-distroless`; ztunnel's chart is 1.30.0.
        let (said, commands) = ztunnel_back("ztunnel-1.30.0", "1.30.0-distroless");
        assert_eq!(said, "unchanged");
        assert!(
            !commands.iter().any(|c| c.contains("rollback")),
            "{commands:?}"
        );
        let (said, commands) = ztunnel_back("ztunnel-1.31.0", "1.30.0-distroless");
        assert!(said.starts_with("rolled back"), "{said}");
        assert!(
            commands.iter().any(|c| c.contains("rollback ztunnel")),
            "{commands:?}"
        );
    }

    #[test]
    fn only_tag_objects_are_applied_and_labelled_as_meshups() {
        let rendered = "---\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: istio-sidecar-injector-1-29-0\n  labels:\n    istio.io/rev: 1-29-0\n---\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: istio-revision-tag-default\n  labels:\n    istio.io/tag: default\n    istio.io/rev: 1-29-0\n";
        let out = tag_objects(rendered).unwrap();
        assert!(out.contains("istio-revision-tag-default"));
        assert!(!out.contains("istio-sidecar-injector"));
        assert!(out.contains("app.kubernetes.io/managed-by: meshup"));
    }
}
