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

mod gates;
mod steps;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::components::{Action, ClusterNotes, Component, RunBoard};
use crate::engine::plan::{AllOf, Chain, Gate, Plan, Task, Wave};
use crate::engine::run::Run;
use crate::engine::topology::{self, Choices};
use crate::model::mesh::Mesh;
use crate::model::values;
use crate::model::version::IstioVersion;
use crate::observe::revisions::{
    DEFAULT_TAG, Installed, Reading, Revision, Stand, installed, revision_of,
};
use crate::tools::runner::StepError;

use gates::{OnRevision, Stands, Synced};
use steps::{Converge, HelmBack, MoveTags, ReaderRbac, RestartWorkloads, Retire};
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
                        ..Default::default()
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

    /// Changes nothing: waits until every cluster of the phase stands where `stand` says, and on
    /// the phase's gates (new istiod synced, proxies moved), while a fleet engine applies the
    /// phase (`meshup export --upgrade PHASE`, then `meshup upgrade PHASE --wait-only`).
    pub fn waiting(&self, stand: Stand) -> Plan<'static> {
        let clusters: Vec<String> = self.waves.concat();
        let on_revision = |revision: &str, from: &str| -> Arc<dyn Gate> {
            Arc::new(OnRevision {
                clusters: clusters.clone(),
                namespace: self.to.namespace.clone(),
                revision: revision.to_string(),
                from: from.to_string(),
                workloads: false,
            })
        };
        let mut gates: Vec<Arc<dyn Gate>> = vec![Arc::new(Stands {
            clusters: clusters.clone(),
            namespace: self.to.namespace.clone(),
            old: self.old.clone(),
            new: self.new.clone(),
            stand,
        })];
        match stand {
            Stand::Started => gates.push(self.synced(&clusters, &self.new)),
            Stand::Promoted => {
                gates.push(on_revision(&self.new, &self.old));
                gates.push(self.synced(&clusters, &self.new));
            }
            Stand::New => {}
            Stand::Old => {
                gates.push(on_revision(&self.old, &self.new));
                gates.push(self.synced(&clusters, &self.old));
            }
        }
        let mut wave = Wave::new(
            format!("the engine's change in {}", clusters.join(", ")),
            Vec::new(),
        );
        wave.gate = Some(Arc::new(AllOf(gates)));
        Plan { waves: vec![wave] }
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
