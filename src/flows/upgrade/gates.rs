//! What a canary upgrade waits on between waves: the new istiod synced, proxies on the revision.

use std::collections::BTreeMap;

use crate::components::{ClusterCtx, ClusterNotes, RunBoard};
use crate::engine::plan::{Gate, ScriptOptions};
use crate::engine::run::Run;
use crate::model::mesh::Mesh;
use crate::observe::revisions::{
    DEFAULT_TAG, Phase, Revision, Stand, describe, installed, proxies,
};
use crate::observe::sync;
use crate::tools::runner::StepError;
use crate::tools::step::shell_quote;

/// Waits until istiod of `revision` reports every peer synced in each of `clusters`.
pub(super) struct Synced {
    pub(super) namespace: String,
    pub(super) revision: String,
    /// Each cluster and the peers its istiod must watch.
    pub(super) clusters: BTreeMap<String, Vec<String>>,
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
pub(super) struct OnRevision {
    pub(super) clusters: Vec<String>,
    pub(super) namespace: String,
    pub(super) revision: String,
    pub(super) from: String,
    pub(super) workloads: bool,
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
        waiting_in(
            run,
            &self.clusters,
            |cx| proxies(&cx.live).map(|mut p| p.remove(&self.from).unwrap_or_default()),
            |name, left| {
                let left: BTreeMap<String, usize> = left
                    .into_iter()
                    .filter(|(ns, _)| self.workloads || *ns == self.namespace)
                    .collect();
                (!left.is_empty())
                    .then(|| format!("{name}: proxies of {} in {}", self.from, describe(&left)))
            },
        )
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

/// Waits until each of `clusters` runs the revisions `stand` says (its istiod Deployments, and
/// where the `default` tag points).
pub(super) struct Stands {
    pub(super) clusters: Vec<String>,
    pub(super) namespace: String,
    pub(super) old: String,
    pub(super) new: String,
    pub(super) stand: Stand,
}

impl Stands {
    fn reached(&self, phase: &Phase) -> bool {
        let pair = |old: &Revision, new: &Revision| old.name == self.old && new.name == self.new;
        match (self.stand, phase) {
            (Stand::Started, Phase::Started { old, new })
            | (Stand::Promoted, Phase::Promoted { old, new }) => pair(old, new),
            (Stand::New, Phase::Steady(r)) => r.name == self.new,
            (Stand::Old, Phase::Steady(r)) => r.name == self.old,
            _ => false,
        }
    }

    fn wanted(&self) -> String {
        match self.stand {
            Stand::Started => format!("istiod {} beside {}", self.new, self.old),
            Stand::Promoted => format!("`default` on {} (beside {})", self.new, self.old),
            Stand::New => format!("only istiod {}", self.new),
            Stand::Old => format!("only istiod {}", self.old),
        }
    }
}

impl Gate for Stands {
    fn title(&self) -> String {
        format!("{} run {}", self.clusters.join(", "), self.wanted())
    }

    fn check(&self, run: &Run, _: &RunBoard) -> Result<Option<String>, StepError> {
        waiting_in(
            run,
            &self.clusters,
            |cx| installed(&cx.live, &self.namespace),
            |name, found| {
                if self.reached(&found.phase()) {
                    return None;
                }
                let names: Vec<&str> = found.revisions.iter().map(|r| r.name.as_str()).collect();
                Some(format!(
                    "{name}: istiod {} (default: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    },
                    found.default_revision().unwrap_or("none")
                ))
            },
        )
    }

    fn script(&self, _: &Mesh, _: &ScriptOptions) -> String {
        format!("# wait until {}\n", self.title())
    }
}

/// Reads each of `clusters` (`read`; a failed read ends the look) and joins what `left` says
/// each still waits for; `None` once none waits.
fn waiting_in<T>(
    run: &Run,
    clusters: &[String],
    read: impl Fn(&mut ClusterCtx) -> Result<T, StepError>,
    left: impl Fn(&str, T) -> Option<String>,
) -> Result<Option<String>, StepError> {
    let mut waiting = Vec::new();
    for name in clusters {
        let Some(cluster) = run.mesh.cluster(name) else {
            continue;
        };
        let (mut memo, board) = (ClusterNotes::default(), RunBoard::default());
        let found = run.in_cluster(cluster, &mut memo, &board, &read)?;
        waiting.extend(left(name, found));
    }
    Ok((!waiting.is_empty()).then(|| waiting.join(", ")))
}
