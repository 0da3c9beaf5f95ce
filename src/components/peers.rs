//! The remote secrets a cluster holds: one per peer its istiod watches (the topology says
//! which), applied together in one `kubectl apply` through stdin; remote secrets meshup made
//! for clusters no longer in the mesh file are deleted. Status reports present, missing,
//! stale, unexpected and duplicate ones.

use serde_json::json;

use super::{Action, ClusterCtx, Component, ScriptCx, Stage};
use crate::components::handoff::{Handoff, LINK_COMMAND};
use crate::observe::drift::{self, FieldDiff, ObjectDiff, Seg};
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

    /// Each remote secret here against the one `install` would apply (built from its
    /// source's newest reader token, see `reader.rs`): missing, another server, CA or token,
    /// not meshup's; and meshup's remote secrets for clusters no longer in the mesh file.
    /// What a kubeconfig holds is shown as its server only: the CA and token are masked.
    fn diff(&self, cx: &mut ClusterCtx) -> Result<Vec<ObjectDiff>, StepError> {
        let ns = &self.namespace;
        let secrets: Vec<serde_json::Value> = cx.live.list(
            "secrets",
            Some(ns),
            Some(&remote_secret::multicluster_selector()),
        )?;
        let typed: Vec<Secret> = secrets
            .iter()
            .filter_map(|s| serde_json::from_value(s.clone()).ok())
            .collect();
        let found = remote_secret::found(&typed);
        let built = cx
            .board
            .secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let new_tokens = cx
            .board
            .new_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out = Vec::new();
        for source in &self.sources {
            let name = remote_secret::secret_name(&source.name);
            let wanted = built.get(&source.name);
            if wanted.is_none() && !new_tokens.contains(&source.name) {
                // The source could not be read: its report says why.
                continue;
            }
            let in_place: Vec<&Found> = found.iter().filter(|f| f.secret == name).collect();
            let view = |server: Option<&str>, ca: &str, token: &str| {
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": name, "namespace": ns},
                       "data": {source.name.clone(): {"kubeconfig": {
                           "server": server, "certificate-authority-data": ca, "token": token}}}})
            };
            let wanted_server = wanted.map_or(source.server.as_str(), |w| w.server.as_str());
            let Some(held) = in_place.first() else {
                out.push(ObjectDiff::create(
                    "link",
                    &view(Some(wanted_server), drift::MASK, drift::MASK),
                    false,
                ));
                continue;
            };
            let same = in_place.len() == 1
                && held.managed
                && held.cluster == source.name
                && wanted.is_some_and(|w| w.data == held.data);
            if same {
                continue;
            }
            let have = remote_secret::credentials_of(&held.data);
            let want = wanted.map(|w| remote_secret::credentials_of(&w.data));
            let changed = format!("{}, changed", drift::MASK);
            let ca_changes = want.as_ref().is_none_or(|w| w.ca_data != have.ca_data);
            let token_changes = want.as_ref().is_none_or(|w| w.token != have.token);
            let live = view(held.server.as_deref(), drift::MASK, drift::MASK);
            let after = view(
                Some(wanted_server),
                if ca_changes { &changed } else { drift::MASK },
                if token_changes { &changed } else { drift::MASK },
            );
            let key = |field: &str| {
                vec![
                    Seg::Field("data".into()),
                    Seg::Field(source.name.clone()),
                    Seg::Field("kubeconfig".into()),
                    Seg::Field(field.into()),
                ]
            };
            let mut fields = Vec::new();
            if held.server.as_deref() != Some(wanted_server) {
                let at = key("server");
                fields.push(FieldDiff {
                    path: drift::path_text(&at),
                    at,
                    live: held.server.as_ref().map(|s| json!(s)),
                    wanted: Some(json!(wanted_server)),
                    managers: Vec::new(),
                    drift: false,
                });
            }
            for (field, changes) in [
                ("certificate-authority-data", ca_changes),
                ("token", token_changes),
            ] {
                if changes {
                    let at = key(field);
                    fields.push(FieldDiff {
                        path: drift::path_text(&at),
                        at,
                        live: Some(json!(drift::MASK)),
                        wanted: Some(json!(changed)),
                        managers: Vec::new(),
                        drift: false,
                    });
                }
            }
            let mut object = ObjectDiff::update("link", &live, Vec::new());
            object.after = Some(after);
            object.fields = fields;
            let mut notes = Vec::new();
            if !held.managed {
                notes.push("not made by meshup: install applies its own in its place".to_string());
            }
            if in_place.len() > 1 || held.cluster != source.name {
                notes.push(format!(
                    "it does not hold exactly one kubeconfig for `{}`",
                    source.name
                ));
            }
            if wanted.is_none() {
                notes.push(format!(
                    "`{}` has no filled reader token: install asks for a new one",
                    source.name
                ));
            }
            if token_changes && let Some(token) = have.token.clone() {
                object.review = Some((source.name.clone(), token));
            }
            object.note = (!notes.is_empty()).then(|| notes.join("; "));
            out.push(object);
        }
        let wanted_names: Vec<String> = self
            .sources
            .iter()
            .map(|s| remote_secret::secret_name(&s.name))
            .collect();
        let mut stale: Vec<&Found> = found
            .iter()
            .filter(|f| f.managed && !wanted_names.contains(&f.secret))
            .collect();
        stale.dedup_by(|a, b| a.secret == b.secret);
        for f in stale {
            let view = json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": f.secret, "namespace": ns},
                "data": {f.cluster.clone(): {"kubeconfig": {"server": f.server, "token": drift::MASK}}}});
            let mut gone = ObjectDiff::delete("link", &view);
            gone.note = Some(format!(
                "`{}` is not in the mesh file: install deletes meshup's remote secret for it",
                f.cluster
            ));
            out.push(gone);
        }
        Ok(out)
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
