//! A Helm release, generic over its chart: (release name, chart, values). istio-base and
//! istiod are two values of this type; so are a gateway release or a second istiod revision.

use serde_yaml::Mapping;

use super::{Action, ClusterCtx, Component, ScriptCx, Stage};
use crate::components::handoff::Handoff;
use crate::model::chart::Chart;
use crate::model::values;
use crate::observe::drift::{self, ObjectDiff};
use crate::observe::facts::{ClusterStatus, Readiness, ReleaseStatus, column};
use crate::observe::finding::Finding;
use crate::observe::manager::Manager;
use crate::observe::revisions;
use crate::observe::sync;
use crate::tools::helm::{self, Install, Values};
use crate::tools::kubectl;
use crate::tools::live::{ConfigMap, Deployment, HelmRecord, HelmRelease};
use crate::tools::runner::StepError;

/// One Helm release in one cluster.
pub struct Release {
    /// The release name: `istio-base`, `istiod`, `istiod-canary`.
    pub name: String,
    /// What progress lines call it (`istiod` whatever its revision).
    pub label: &'static str,
    pub chart: Chart,
    pub namespace: String,
    /// The values, layered (see `values.rs`).
    pub values: Mapping,
    /// Set when this release runs istiod: what status and preflight check of it.
    pub istiod: Option<Istiod>,
    /// When its install runs (a remote's istiod waits for its primary's gateway).
    pub stage: Stage,
    /// A remote's istiod: the primary whose east-west gateway address becomes
    /// `global.remotePilotAddress`, when the mesh file does not give it.
    pub pilot_from: Option<String>,
    /// Helm 4: take over fields another manager owns (see `helm::Install`).
    pub force_conflicts: bool,
    /// `install --repair`: after converging, bring drifted objects back to what the chart
    /// renders (see [`Release::repair`]).
    pub repair: bool,
}

/// What an istiod release must show: its Deployment ready, and (before an install) no istiod
/// of another mesh or cluster name in the way.
pub struct Istiod {
    pub deployment: String,
    /// The ConfigMap holding the mesh config (`istio`, or `istio-REV`).
    pub mesh_configmap: String,
    pub mesh_id: String,
    pub cluster_id: String,
    /// `istio.io/rev` of its pods (`default` without a revision).
    pub revision: String,
    /// The peers it must watch (whose remote secrets its cluster holds).
    pub watches: Vec<String>,
}

impl Release {
    /// The values to install: the layered ones, with the primary's gateway address this run
    /// found for a remote's istiod.
    fn values(&self, cx: &ClusterCtx) -> Result<Mapping, StepError> {
        let mut values = self.values.clone();
        if let Some(primary) = &self.pilot_from {
            let known = cx
                .board
                .addresses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(primary)
                .cloned();
            let Some(address) = known else {
                return Err(StepError::other(
                    &cx.cluster.name,
                    format!(
                        "the address of primary `{primary}`'s east-west gateway is not known, so this remote cluster's istiod has nowhere to point"
                    ),
                    Some(format!(
                        "install `{primary}` first (meshup install does), or set `eastWestGateway.address` for `{primary}` in the mesh file"
                    )),
                ));
            };
            values::set(&mut values, &["global", "remotePilotAddress"], &address);
        }
        Ok(values)
    }

    /// Whether this run may touch a pending release: it left it so itself (a failed attempt),
    /// or took the lock over from the dead run that did, or the release has been pending for
    /// longer than any helm call may take (`--timeout`) while nobody held the lock.
    fn may_recover(&self, cx: &ClusterCtx, pending: &HelmRelease) -> Result<(), StepError> {
        let ours = cx.memo.attempted.contains(&self.name);
        let stale = pending
            .updated_at()
            .is_some_and(|at| time::OffsetDateTime::now_utc() - at > cx.timeout());
        if ours || cx.took_over || stale {
            return Ok(());
        }
        Err(StepError::other(
            &cx.cluster.name,
            format!(
                "helm release `{}` is `{}` since {}: a helm run that meshup does not know of may still be working on it",
                self.name, pending.status, pending.updated
            ),
            Some(format!(
                "wait for that run to end; if none runs, meshup recovers the release once it has been pending for longer than --timeout ({}s)",
                cx.timeout().as_secs()
            )),
        ))
    }

    /// Brings a pending release back to where helm accepts the next install: a
    /// `pending-install` (or `uninstalling`) is removed to be installed anew; a
    /// `pending-upgrade` or `pending-rollback` is rolled back to its last deployed revision.
    /// Returns what was interrupted.
    fn recover(
        &self,
        cx: &mut ClusterCtx,
        pending: &HelmRelease,
    ) -> Result<&'static str, StepError> {
        self.may_recover(cx, pending)?;
        let (target, ns, timeout) = (cx.target().clone(), &self.namespace, cx.timeout());
        match pending.status.as_str() {
            "pending-upgrade" | "pending-rollback" => {
                cx.live
                    .run(&helm::rollback(&target, &self.name, ns, timeout))?;
                Ok(if pending.status == "pending-upgrade" {
                    "upgrade"
                } else {
                    "rollback"
                })
            }
            status => {
                cx.live
                    .run(&helm::uninstall(&target, &self.name, ns, timeout))?;
                Ok(if status == "uninstalling" {
                    "uninstall"
                } else {
                    "install"
                })
            }
        }
    }

    fn install_step(
        &self,
        cx: &ClusterCtx,
        values: &Mapping,
    ) -> Result<crate::tools::step::Step, StepError> {
        let yaml = serde_yaml::to_string(values).map_err(|e| {
            StepError::other(&cx.cluster.name, format!("cannot write values: {e}"), None)
        })?;
        Ok(helm::upgrade_install(
            cx.target(),
            Install {
                release: &self.name,
                chart: &self.chart,
                namespace: &self.namespace,
                values: Values::Stdin(yaml.into_bytes()),
                force_conflicts: self.force_conflicts,
            },
            cx.timeout(),
        ))
    }
}

impl Release {
    /// The values `install` would use: the layered ones, with a remote's
    /// `global.remotePilotAddress` found this run, else (`diff` waits for no gateway) the
    /// deployed one.
    fn wanted_values(
        &self,
        cx: &ClusterCtx,
        record: Option<&HelmRecord>,
    ) -> Result<Mapping, StepError> {
        self.values(cx).or_else(|missing| {
            let deployed = record
                .and_then(|r| r.config.pointer("/global/remotePilotAddress"))
                .and_then(serde_json::Value::as_str)
                .ok_or(missing)?;
            let mut values = self.values.clone();
            values::set(&mut values, &["global", "remotePilotAddress"], deployed);
            Ok(values)
        })
    }

    /// What `install` would change in this release's objects, and what drifted: the chart
    /// rendered with the mesh file's values (`helm template`, the chart reference, version
    /// and values `install` uses; `--is-upgrade` for a release that exists) against the live
    /// objects with their field managers (one `kubectl get` naming every object). Whether
    /// helm upgrades at all comes from helm's record of the release, read once per cluster.
    fn compare(&self, cx: &mut ClusterCtx) -> Result<Vec<ObjectDiff>, StepError> {
        let record = cx.record(&self.name)?;
        let values = self.wanted_values(cx, record.as_ref())?;
        let upgrade = match &record {
            None => true,
            Some(r) => {
                r.status != "deployed"
                    || !self.chart.is_listed_as(&r.chart)
                    || !values::same_as_deployed(&values, &r.config)
            }
        };
        let yaml = serde_yaml::to_string(&values).map_err(|e| {
            StepError::other(&cx.cluster.name, format!("cannot write values: {e}"), None)
        })?;
        let step = helm::render(
            cx.target(),
            &self.name,
            &self.chart,
            &self.namespace,
            yaml.into_bytes(),
            record.is_some(),
        );
        let output = cx.live.run(&step)?;
        // Hooks are no part of a release's objects (helm runs them and forgets them).
        let not_hook =
            |o: &serde_json::Value| o.pointer("/metadata/annotations/helm.sh~1hook").is_none();
        let rendered: Vec<serde_json::Value> = drift::documents(&output.stdout)
            .map_err(|e| StepError::malformed(&step, e))?
            .into_iter()
            .filter(not_hook)
            .collect();
        let previous: Vec<serde_json::Value> = match &record {
            Some(r) => drift::documents(&r.manifest).map_err(|e| {
                StepError::other(
                    &cx.cluster.name,
                    format!(
                        "helm's record of release `{}` holds a manifest meshup cannot read: {e}",
                        self.name
                    ),
                    None,
                )
            })?,
            None => Vec::new(),
        };
        let same =
            |a: &serde_json::Value, b: &serde_json::Value| drift::identity(a) == drift::identity(b);
        // What helm deletes on upgrade: objects it rendered last time and no longer renders.
        let gone: Vec<&serde_json::Value> = previous
            .iter()
            .filter(|p| upgrade && !rendered.iter().any(|r| same(r, p)))
            .collect();
        let mut names: Vec<String> = rendered
            .iter()
            .chain(gone.iter().copied())
            .map(|o| format!("{}/{}", drift::kubectl_type(o), drift::identity(o).2))
            .collect();
        names.dedup();
        let live = cx.live.objects(&names, &self.namespace)?;
        let ours = drift::release_managers(
            &cx.live
                .runner
                .program(crate::tools::step::Tool::Helm)
                .unwrap_or_else(|| "helm".into()),
        );
        let mut out = Vec::new();
        for object in &rendered {
            match live.iter().find(|l| same(l, object)) {
                None => out.push(ObjectDiff::create(self.label, object, !upgrade)),
                Some(found) => {
                    let fields = drift::compare(&drift::Compare {
                        rendered: object,
                        live: found,
                        previous: previous.iter().find(|p| same(p, object)),
                        upgrade,
                        ours: &ours,
                    });
                    if !fields.is_empty() {
                        let patched = fields
                            .iter()
                            .any(|f| drift::istiod_patched(&drift::identity(object).1, &f.at));
                        let mut changed = ObjectDiff::update(self.label, found, fields);
                        if patched {
                            changed.note = Some(
                                "helm writes the rendered webhook fields; istiod patches its CA bundle and failure policy back once it runs"
                                    .into(),
                            );
                        }
                        out.push(changed);
                    }
                }
            }
        }
        for object in gone {
            if let Some(found) = live.iter().find(|l| same(l, object)) {
                out.push(ObjectDiff::delete(self.label, found));
            }
        }
        Ok(out)
    }

    /// `install --repair`, after the install: the comparison again, then each drifted object
    /// converged on what the chart renders. A field changed or added by another manager is
    /// set back or removed with one JSON patch per object, each change guarded by a `test` of
    /// the value it replaces, under meshup's field manager; what istiod patches at run time
    /// and what the cluster allocated are never touched (see `observe::drift`). An object
    /// deleted by hand comes back with one `helm upgrade` of the release. Returns how many
    /// objects it repaired.
    fn repair(&self, cx: &mut ClusterCtx) -> Result<usize, StepError> {
        // The install may have written a new revision.
        cx.memo.records = None;
        let objects = self.compare(cx)?;
        let mut repaired = 0;
        if objects.iter().any(|o| o.action == drift::Action::Create) {
            let record = cx.record(&self.name)?;
            let values = self.wanted_values(cx, record.as_ref())?;
            let step = self.install_step(cx, &values)?;
            cx.memo.attempted.insert(self.name.clone());
            cx.live.run(&step)?;
            repaired += objects
                .iter()
                .filter(|o| o.action == drift::Action::Create)
                .count();
        }
        for object in objects.iter().filter(|o| o.action == drift::Action::Update) {
            let Some(live) = &object.live else { continue };
            let fields: Vec<&drift::FieldDiff> = object.fields.iter().collect();
            let Some(patch) = drift::repair_patch(live, &fields) else {
                return Err(StepError::other(
                    &cx.cluster.name,
                    format!(
                        "{} of release `{}` drifted where meshup cannot reach with a patch ({})",
                        object.title(),
                        self.name,
                        fields
                            .iter()
                            .map(|f| f.path.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Some("re-run `meshup diff` to see it, and fix it by hand".into()),
                ));
            };
            cx.live.run(&kubectl::patch_guarded(
                cx.target(),
                &format!("{}/{}", drift::kubectl_type(live), object.name),
                object.namespace.as_deref(),
                &patch.to_string(),
                cx.timeout(),
            ))?;
            repaired += 1;
        }
        Ok(repaired)
    }

    /// `helm upgrade --install` when the chart or values differ (recovering a pending release
    /// first); returns the outcome.
    fn install(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let mut existing = cx.release(&self.name)?;
        let mut recovered = None;
        if let Some(pending) = existing.clone().filter(HelmRelease::is_pending) {
            let how = self.recover(cx, &pending)?;
            cx.reporter.line(&format!(
                "[{}] {}: recovered from an interrupted {how}",
                cx.cluster.name, self.label
            ));
            recovered = Some(how);
            cx.memo.releases = None;
            existing = cx.release(&self.name)?;
        }
        let values = self.values(cx)?;
        if let Some(existing) = &existing
            && existing.status == "deployed"
            && self.chart.is_listed_as(&existing.chart)
        {
            let deployed = cx.live.helm_values(&self.name, &self.namespace)?;
            if values::same_as_deployed(&values, &deployed) {
                return Ok("unchanged".into());
            }
        }
        let step = self.install_step(cx, &values)?;
        cx.memo.attempted.insert(self.name.clone());
        cx.live.run(&step)?;
        let done = if existing.is_some() {
            "upgraded"
        } else {
            "installed"
        };
        Ok(match recovered {
            Some(how) => format!("{done} (recovered from an interrupted {how})"),
            None => done.into(),
        })
    }
}

impl Release {
    /// The Argo CD Application that syncs this release's objects, when Argo CD runs it (no
    /// Helm record then): read from the namespace's Deployments, from the snapshot.
    fn run_by_argocd(&self, cx: &ClusterCtx) -> Option<String> {
        let deployments: Vec<Deployment> = cx
            .live
            .list("deployments", Some(&self.namespace), None)
            .ok()?;
        deployments.iter().find_map(|d| {
            match Manager::of(&d.metadata.labels, &d.metadata.annotations) {
                Manager::ArgoCd { application } => Some(application),
                _ => None,
            }
        })
    }

    /// This istiod release is the old revision of an upgrade under way: it runs its own chart
    /// version until `meshup upgrade finish` removes it.
    fn left_by_an_upgrade(&self, cx: &ClusterCtx) -> bool {
        if self.istiod.is_none() {
            return false;
        }
        let revision = match self.name.strip_prefix("istiod-") {
            Some(rev) => rev,
            None if self.name == "istiod" => revisions::DEFAULT_TAG,
            None => return false,
        };
        // Two revisions, oldest first (started or promoted): the Deployments alone tell.
        matches!(
            revisions::running(&cx.live, &self.namespace).as_deref(),
            Ok([old, _]) if old.name == revision
        )
    }
}

impl Component for Release {
    fn handoff(&self) -> Vec<Handoff> {
        vec![Handoff::Release {
            name: self.name.clone(),
            chart: self.chart.clone(),
            namespace: self.namespace.clone(),
            values: self.values.clone(),
            istiod: self.istiod.is_some(),
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        self.label
    }

    fn stage(&self) -> Stage {
        self.stage
    }

    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let outcome = self.install(cx)?;
        if !self.repair {
            return Ok(outcome);
        }
        match self.repair(cx)? {
            0 => Ok(outcome),
            1 => Ok(format!("{outcome}, 1 drifted object repaired")),
            n => Ok(format!("{outcome}, {n} drifted objects repaired")),
        }
    }

    fn diff(&self, cx: &mut ClusterCtx) -> Result<Vec<ObjectDiff>, StepError> {
        self.compare(cx)
    }

    fn remove(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let Some(existing) = cx.release(&self.name)? else {
            return Ok("absent".into());
        };
        if existing.is_pending() {
            // helm uninstall takes a pending release too, but not one a live run works on.
            self.may_recover(cx, &existing)?;
        }
        cx.live.run(&helm::uninstall(
            cx.target(),
            &self.name,
            &self.namespace,
            cx.timeout(),
        ))?;
        Ok("removed".into())
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        let step = match action {
            Action::Install => {
                let file = cx
                    .values_dir
                    .join(&cx.cluster.name)
                    .join(values::file_name(&self.chart.name));
                let step = helm::upgrade_install(
                    &cx.target,
                    Install {
                        release: &self.name,
                        chart: &self.chart,
                        namespace: &self.namespace,
                        values: Values::File(&file),
                        force_conflicts: self.force_conflicts,
                    },
                    cx.timeout,
                );
                if let Some(primary) = self.pilot_from.as_ref().and_then(|p| cx.mesh.cluster(p)) {
                    // The primary's gateway address is only known once it has one.
                    let lookup = format!(
                        "kubectl get service {} --namespace {} --context {}{} --output 'jsonpath={{.status.loadBalancer.ingress[0].ip}}{{.status.loadBalancer.ingress[0].hostname}}'",
                        values::EAST_WEST_GATEWAY,
                        self.namespace,
                        crate::tools::step::shell_quote(&primary.context),
                        cx.kubeconfig_flag()
                    );
                    return format!(
                        "{} \\
  --set \"global.remotePilotAddress=$({lookup})\"\n",
                        step.command_line()
                    );
                }
                step
            }
            Action::Remove => helm::uninstall(&cx.target, &self.name, &self.namespace, cx.timeout),
        };
        format!("{}\n", step.command_line())
    }

    fn inspect(&self, cx: &mut ClusterCtx, status: &mut ClusterStatus) {
        let cluster = Some(cx.cluster.name.as_str());
        let what = self.label;
        match cx.release(&self.name) {
            Ok(found) => {
                let name = &self.name;
                let argo = found.is_none().then(|| self.run_by_argocd(cx)).flatten();
                match &found {
                    // Argo CD applies `helm template` output: no release record to find.
                    None if argo.is_some() => {}
                    None => status.problem(Finding::fail(
                        cluster,
                        what,
                        format!("helm release `{name}` is not installed"),
                    )),
                    Some(r) if r.status != "deployed" => status.problem(Finding::fail(
                        cluster,
                        what,
                        format!("helm release `{name}` is `{}`, not deployed", r.status),
                    )),
                    Some(r)
                        if !self.chart.is_listed_as(&r.chart) && !self.left_by_an_upgrade(cx) =>
                    {
                        status.problem(Finding::fail(
                            cluster,
                            what,
                            format!(
                                "helm release `{name}` runs chart {}, not version {}",
                                r.chart,
                                self.chart.version.as_deref().unwrap_or_default()
                            ),
                        ))
                    }
                    Some(_) => {}
                }
                let release = ReleaseStatus {
                    name: name.clone(),
                    status: found
                        .as_ref()
                        .map(|r| r.status.clone())
                        .or(argo.map(|app| format!("synced by Argo CD ({app})"))),
                    chart: found.map(|r| r.chart),
                };
                status.cell(column::RELEASES, release.text());
                status.releases.push(release);
            }
            Err(e) => {
                // One failed `helm list` is reported once, not per release.
                let finding = Finding::fail(cluster, "helm releases", e.to_string());
                if !status.problems.contains(&finding) {
                    status.problem(finding);
                }
            }
        }
        let Some(istiod) = &self.istiod else { return };
        match cx
            .live
            .get::<Deployment>("deployment", &istiod.deployment, Some(&self.namespace))
        {
            Ok(None) => status.problem(Finding::fail(
                cluster,
                "istiod",
                format!("deployment `{}` does not exist", istiod.deployment),
            )),
            Ok(Some(deployment)) => {
                let manager = Manager::of(
                    &deployment.metadata.labels,
                    &deployment.metadata.annotations,
                );
                if manager.is_engine() {
                    status.cell(column::MANAGED_BY, manager.to_string());
                }
                let (ready, desired) = deployment.readiness();
                if ready == 0 || ready < desired {
                    status.problem(Finding::fail(
                        cluster,
                        "istiod",
                        format!("istiod has {ready}/{desired} ready replicas"),
                    ));
                }
                status.cell(column::ISTIOD, format!("{ready}/{desired}"));
                status.istiod = Some(Readiness { ready, desired });
            }
            Err(e) => status.problem(Finding::fail(cluster, "istiod", e.to_string())),
        }
    }

    fn preflight(&self, cx: &mut ClusterCtx) -> Result<Vec<Finding>, StepError> {
        let Some(istiod) = &self.istiod else {
            return Ok(Vec::new());
        };
        let ns = &self.namespace;
        let cluster = Some(cx.cluster.name.as_str());
        let found = cx.live.get_each(
            &[
                ("configmap", &istiod.mesh_configmap),
                ("deployment", &istiod.deployment),
            ],
            Some(ns),
        )?;
        let mut findings = Vec::new();
        let configmap: Option<ConfigMap> = found.find("ConfigMap", &istiod.mesh_configmap)?;
        if let Some(mesh_id) = configmap.as_ref().and_then(mesh_id_of)
            && mesh_id != istiod.mesh_id
        {
            findings.push(
                Finding::fail(
                    cluster,
                    "existing istio",
                    format!(
                        "Istio in namespace `{ns}` already belongs to mesh `{mesh_id}`, not `{}`",
                        istiod.mesh_id
                    ),
                )
                .fix(format!("uninstall it or use meshID `{mesh_id}`")),
            );
        }
        let deployment: Option<Deployment> = found.find("Deployment", &istiod.deployment)?;
        if let Some(id) = deployment.as_ref().and_then(|d| d.env("CLUSTER_ID"))
            && id != istiod.cluster_id
        {
            findings.push(
                Finding::fail(
                    cluster,
                    "existing istio",
                    format!(
                        "istiod in namespace `{ns}` already runs as cluster `{id}`, not `{}`",
                        istiod.cluster_id
                    ),
                )
                .fix(format!(
                    "rename the cluster to `{id}` in the mesh file or uninstall that istiod"
                )),
            );
        }
        Ok(findings)
    }

    fn sync(&self, cx: &mut ClusterCtx) -> Option<sync::Row> {
        let istiod = self.istiod.as_ref()?;
        let watcher = sync::Watcher {
            namespace: self.namespace.clone(),
            revision: istiod.revision.clone(),
            peers: istiod.watches.clone(),
        };
        Some(sync::read_among(
            &cx.live,
            cx.reporter,
            &watcher,
            cx.memo.istiod_pods.as_deref(),
        ))
    }

    fn values_file(&self) -> Option<(String, &Mapping)> {
        Some((self.chart.name.clone(), &self.values))
    }
}

/// The mesh ID in an `istio` ConfigMap: `meshId` at the top of the mesh config, or under
/// `defaultConfig`.
pub fn mesh_id_of(configmap: &ConfigMap) -> Option<String> {
    let mesh: serde_yaml::Value = serde_yaml::from_str(configmap.data.get("mesh")?).ok()?;
    mesh.get("meshId")
        .or_else(|| mesh.get("defaultConfig").and_then(|d| d.get("meshId")))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::chart::Charts;
    use crate::testing::{ok, run_component};
    use crate::tools::runner::Output;
    use crate::tools::step::Step;

    fn istiod(values: &str) -> Release {
        Release {
            name: "istiod".into(),
            label: "istiod",
            chart: Charts::Repo("https://charts.example".into()).chart("istiod", Some("1.28.1")),
            namespace: "istio-system".into(),
            values: serde_yaml::from_str(values).unwrap(),
            istiod: None,
            stage: Stage::Cluster,
            pilot_from: None,
            force_conflicts: false,
            repair: false,
        }
    }

    /// A cluster where `istiod` is deployed from `chart` with `values` (JSON).
    fn deployed(chart: &'static str, values: &'static str) -> impl Fn(&Step) -> Output {
        move |step: &Step| {
            let args = step.args.join(" ");
            if args.starts_with("list") {
                ok(&format!(
                    r#"[{{"name":"istiod","status":"deployed","chart":"{chart}","revision":"1"}}]"#
                ))
            } else if args.starts_with("get values") {
                ok(values)
            } else {
                ok("")
            }
        }
    }

    #[test]
    fn a_release_with_the_same_chart_and_values_is_left_alone() {
        let (outcome, calls) = run_component(
            &istiod("pilot: {traceSampling: 1.0}"),
            Action::Install,
            deployed("istiod-1.28.1", r#"{"pilot":{"traceSampling":1}}"#),
        );
        assert_eq!(outcome.unwrap(), "unchanged");
        assert!(calls.iter().all(|c| !c.contains("upgrade")), "{calls:?}");
    }

    #[test]
    fn other_values_or_another_chart_version_upgrade_it() {
        let (outcome, calls) = run_component(
            &istiod("pilot: {traceSampling: 1.5}"),
            Action::Install,
            deployed("istiod-1.28.1", r#"{"pilot":{"traceSampling":1}}"#),
        );
        assert_eq!(outcome.unwrap(), "upgraded");
        assert!(calls.last().unwrap().contains("--values -"), "{calls:?}");
        let (outcome, _) = run_component(
            &istiod("{}"),
            Action::Install,
            deployed("istiod-1.27.0", "null"),
        );
        assert_eq!(outcome.unwrap(), "upgraded");
    }

    #[test]
    fn garbage_from_helm_get_values_is_an_error_not_a_reason_to_upgrade() {
        let (outcome, calls) = run_component(
            &istiod("{}"),
            Action::Install,
            deployed("istiod-1.28.1", "Error: release: not found"),
        );
        assert!(
            matches!(outcome, Err(StepError::Malformed { .. })),
            "{outcome:?}"
        );
        assert!(calls.iter().all(|c| !c.contains("upgrade")), "{calls:?}");
    }

    fn pending(status: &'static str, updated: String) -> impl Fn(&Step) -> Output {
        let listed = std::sync::atomic::AtomicBool::new(false);
        move |step: &Step| {
            let args = step.args.join(" ");
            if args.starts_with("list") {
                // Pending until meshup recovered it, then as helm leaves it.
                if listed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    let after = if status == "pending-upgrade" {
                        "deployed"
                    } else {
                        ""
                    };
                    if after.is_empty() {
                        return ok("[]");
                    }
                    return ok(&format!(
                        r#"[{{"name":"istiod","status":"{after}","chart":"istiod-1.27.0","revision":"3","updated":"{updated}"}}]"#
                    ));
                }
                ok(&format!(
                    r#"[{{"name":"istiod","status":"{status}","chart":"istiod-1.28.1","revision":"2","updated":"{updated}"}}]"#
                ))
            } else {
                ok("")
            }
        }
    }

    fn helm_time(t: time::OffsetDateTime) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.5 +0000 UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }

    #[test]
    fn a_fresh_pending_release_that_no_dead_run_left_is_not_touched() {
        let now = helm_time(time::OffsetDateTime::now_utc());
        let (outcome, calls) = run_component(
            &istiod("{}"),
            Action::Install,
            pending("pending-install", now),
        );
        let error = outcome.unwrap_err().to_string();
        assert!(error.contains("is `pending-install` since"), "{error}");
        assert_eq!(calls.len(), 1, "only `helm list` ran: {calls:?}");
    }

    #[test]
    fn a_stale_pending_install_is_removed_and_installed_anew() {
        let old = helm_time(time::OffsetDateTime::now_utc() - time::Duration::hours(1));
        let (outcome, calls) = run_component(
            &istiod("{}"),
            Action::Install,
            pending("pending-install", old),
        );
        assert_eq!(
            outcome.unwrap(),
            "installed (recovered from an interrupted install)"
        );
        let verbs: Vec<&str> = calls.iter().map(|c| c.split(' ').nth(1).unwrap()).collect();
        assert_eq!(verbs, ["list", "uninstall", "list", "upgrade"], "{calls:?}");
    }

    #[test]
    fn a_stale_pending_upgrade_is_rolled_back_then_upgraded() {
        let old = helm_time(time::OffsetDateTime::now_utc() - time::Duration::hours(1));
        let (outcome, calls) = run_component(
            &istiod("{}"),
            Action::Install,
            pending("pending-upgrade", old),
        );
        assert_eq!(
            outcome.unwrap(),
            "upgraded (recovered from an interrupted upgrade)"
        );
        assert!(
            calls[1].starts_with("helm rollback istiod --namespace istio-system --wait"),
            "{calls:?}"
        );
        assert!(
            calls
                .last()
                .unwrap()
                .starts_with("helm upgrade --install istiod"),
            "{calls:?}"
        );
    }

    #[test]
    fn removing_an_absent_release_runs_no_helm_uninstall() {
        let (outcome, calls) = run_component(&istiod("{}"), Action::Remove, |_: &Step| ok("[]"));
        assert_eq!(outcome.unwrap(), "absent");
        assert_eq!(calls.len(), 1, "{calls:?}");
    }

    #[test]
    fn mesh_id_is_read_from_either_place() {
        let cm = |mesh: &str| ConfigMap {
            data: [("mesh".to_string(), mesh.to_string())].into(),
            ..ConfigMap::default()
        };
        assert_eq!(
            mesh_id_of(&cm("meshId: mesh1\ntrustDomain: cluster.local\n")).as_deref(),
            Some("mesh1")
        );
        assert_eq!(
            mesh_id_of(&cm("defaultConfig:\n  meshId: mesh2\n")).as_deref(),
            Some("mesh2")
        );
        assert_eq!(mesh_id_of(&ConfigMap::default()), None);
    }
}
