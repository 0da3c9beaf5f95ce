//! The remote secrets a cluster holds: one per peer its istiod watches (the topology says
//! which), applied together in one `kubectl apply` through stdin; remote secrets meshup made
//! for clusters no longer in the mesh file are deleted. Status reports present, missing,
//! stale, unexpected and duplicate ones.

use super::{Action, ClusterCtx, Component, ScriptCx, Stage};
use crate::components::handoff::{Handoff, LINK_COMMAND};
use crate::observe::facts::ClusterStatus;
use crate::observe::finding::Finding;
use crate::tools::kubectl;
use crate::tools::live::Secret;
use crate::tools::remote_secret::{self, Found, RemoteSecret};
use crate::tools::runner::StepError;
use crate::tools::step::shell_quote;
use crate::trust::sensitive::Sensitive;

/// A cluster whose remote secret this cluster holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub context: String,
    /// The API server address its remote secret must carry.
    pub server: String,
    /// Whether `server` came from `apiServer` (the plan script passes it on).
    pub server_overridden: bool,
}

/// The remote secrets one cluster holds.
pub struct Peers {
    pub namespace: String,
    pub sources: Vec<Source>,
}

/// The script line that gives `cx`'s cluster `source`'s remote secret: `meshup remote-secret`
/// built from the source's context, piped into `kubectl apply` here.
pub fn pipe(cx: &ScriptCx, ns: &str, source: &Source) -> String {
    let server = if source.server_overridden {
        format!(" --server {}", shell_quote(&source.server))
    } else {
        String::new()
    };
    format!(
        "meshup remote-secret{} --context {} --name {} --namespace {ns}{server} \\\n  | {}\n",
        cx.kubeconfig_flag(),
        shell_quote(&source.context),
        source.name,
        kubectl::apply(&cx.target, Sensitive::default(), cx.timeout).command_line()
    )
}

impl Peers {
    /// The remote secrets here (whoever made them).
    fn observe(&self, cx: &ClusterCtx) -> Result<Vec<Found>, StepError> {
        let secrets: Vec<Secret> = cx.live.list(
            "secrets",
            Some(&self.namespace),
            Some(&remote_secret::multicluster_selector()),
        )?;
        Ok(remote_secret::found(&secrets))
    }
}

impl Component for Peers {
    fn handoff(&self) -> Vec<Handoff> {
        if self.sources.is_empty() {
            return Vec::new();
        }
        let names: Vec<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        vec![Handoff::Kept {
            what: format!("the remote secrets of {}", names.join(", ")),
            by: LINK_COMMAND,
        }]
    }

    fn label(&self, action: Action) -> &'static str {
        match action {
            Action::Install => "link",
            Action::Remove => "remote secrets",
        }
    }

    fn stage(&self) -> Stage {
        Stage::Mesh
    }

    fn part_of_link(&self) -> bool {
        true
    }

    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let ns = &self.namespace;
        let found = self.observe(cx)?;
        let wanted: Vec<RemoteSecret> = {
            let built = cx.board.secrets.lock().unwrap_or_else(|e| e.into_inner());
            self.sources
                .iter()
                .filter_map(|source| built.get(&source.name).cloned())
                .collect()
        };
        let changed: Vec<&RemoteSecret> = wanted
            .iter()
            .filter(|secret| {
                let name = remote_secret::secret_name(&secret.cluster);
                let in_place: Vec<&Found> = found.iter().filter(|f| f.secret == name).collect();
                !(in_place.len() == 1
                    && in_place[0].managed
                    && in_place[0].cluster == secret.cluster
                    && in_place[0].data == secret.data)
            })
            .collect();
        // A changed secret is applied in place: istiod compares the kubeconfig's SHA-256 and
        // rebuilds that cluster (pkg/kube/multicluster/secretcontroller.go, 1.26 on); deleting
        // it first would drop the peer's endpoints for nothing.
        if !changed.is_empty() {
            // All of this cluster's new secrets go through one apply, on stdin.
            let mut documents = String::new();
            for secret in &changed {
                documents.push_str("---\n");
                documents.push_str(secret.manifest(ns).expose());
            }
            cx.live.run(&kubectl::apply(
                cx.target(),
                Sensitive::new(documents.into_bytes()),
                cx.timeout(),
            ))?;
        }

        let wanted_names: Vec<String> = wanted
            .iter()
            .map(|s| remote_secret::secret_name(&s.cluster))
            .collect();
        let mut stale: Vec<String> = found
            .iter()
            .filter(|f| f.managed && !wanted_names.contains(&f.secret))
            .map(|f| f.secret.clone())
            .collect();
        stale.dedup();
        let departed = found
            .iter()
            .filter(|f| f.managed && cx.mesh.cluster(&f.cluster).is_none());
        for f in departed {
            cx.board
                .departed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(f.cluster.clone());
        }
        if !stale.is_empty() {
            cx.live.run(&kubectl::delete(
                cx.target(),
                "secrets",
                &stale,
                Some(ns),
                cx.timeout(),
            ))?;
        }
        let outcome = match (changed.len(), stale.len()) {
            (0, 0) => format!("unchanged ({} peers)", wanted.len()),
            (a, 0) => format!("{a} applied"),
            (0, r) => format!("{r} stale removed"),
            (a, r) => format!("{a} applied, {r} stale removed"),
        };
        Ok(outcome)
    }

    fn remove(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let step = kubectl::delete_selected(
            cx.target(),
            "secrets",
            &remote_secret::managed_selector(),
            &self.namespace,
            cx.timeout(),
        );
        let output = cx.live.run(&step)?;
        let n = kubectl::deleted_count(&output.stdout);
        Ok(if n == 0 {
            "none".into()
        } else {
            format!("{n} removed")
        })
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        let ns = &self.namespace;
        if action == Action::Remove {
            return format!(
                "{}\n",
                kubectl::delete_selected(
                    &cx.target,
                    "secrets",
                    &remote_secret::managed_selector(),
                    ns,
                    cx.timeout
                )
                .command_line()
            );
        }
        let mut text = String::new();
        for source in &self.sources {
            text.push_str(&pipe(cx, ns, source));
        }
        if text.is_empty() {
            text.push_str("# (no istiod here watches a peer)\n");
        }
        text.push_str("# meshup link also deletes remote secrets here that meshup made for clusters no longer in the mesh.\n");
        text
    }

    fn inspect(&self, cx: &mut ClusterCtx, status: &mut ClusterStatus) {
        let here = cx.cluster.name.clone();
        let cluster = Some(here.as_str());
        let what = "remote secrets";
        let found = match self.observe(cx) {
            Ok(found) => found,
            Err(e) => {
                status.problem(Finding::fail(cluster, what, e.to_string()));
                return;
            }
        };
        for source in &self.sources {
            let holders: Vec<&str> = found
                .iter()
                .filter(|f| f.cluster == source.name)
                .map(|f| f.secret.as_str())
                .collect();
            if holders.len() > 1 {
                status.problem(Finding::fail(
                    cluster,
                    what,
                    format!(
                        "{} secrets give istiod cluster `{}` ({}); istiod uses only one of them, so delete the others",
                        holders.len(),
                        source.name,
                        holders.join(", ")
                    ),
                ));
            }
            let secrets = &mut status.remote_secrets;
            match found.iter().find(|f| f.cluster == source.name) {
                None => secrets.missing.push(source.name.clone()),
                Some(f)
                    if !source.server.is_empty()
                        && f.server.as_deref() != Some(source.server.as_str()) =>
                {
                    secrets.stale.push(source.name.clone());
                    status.problem(
                        Finding::fail(
                            cluster,
                            what,
                            format!(
                                "the remote secret for `{}` points at {}, not {}",
                                source.name,
                                f.server.as_deref().unwrap_or("nothing readable"),
                                source.server
                            ),
                        )
                        .fix("run `meshup link`"),
                    );
                }
                Some(_) => secrets.present.push(source.name.clone()),
            }
        }
        for f in &found {
            if self.sources.iter().any(|s| s.name == f.cluster) {
                continue;
            }
            status.remote_secrets.unexpected.push(f.cluster.clone());
            let whom = if f.cluster == here {
                "this cluster itself"
            } else {
                "not in the mesh"
            };
            status.problem(Finding::fail(
                cluster,
                what,
                format!(
                    "secret `{}` gives istiod cluster `{}`, which is {whom}",
                    f.secret, f.cluster
                ),
            ));
        }
        if !status.remote_secrets.missing.is_empty() {
            let missing = status.remote_secrets.missing.join(", ");
            status.problem(
                Finding::fail(
                    cluster,
                    what,
                    format!("remote secrets missing for {missing}"),
                )
                .fix("run `meshup link`"),
            );
        }
    }
}
