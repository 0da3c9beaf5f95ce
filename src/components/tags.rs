//! Revision tags and the revisions beside them: what `status` shows of a cluster's istiod
//! revisions (versions, where each tag points, proxies per revision), and the tag objects
//! `meshup upgrade promote` applied, removed again by `uninstall` (before istiod: a tag's
//! injector with `failurePolicy: Fail` and no istiod behind it would refuse every new pod of
//! the namespaces that follow it).

use super::{Action, ClusterCtx, Component, ScriptCx};
use crate::components::handoff::Handoff;
use crate::observe::facts::{ClusterStatus, column};
use crate::observe::finding::Finding;
use crate::observe::revisions::{self, Phase, TAG_LABEL};
use crate::tools::kubectl;
use crate::tools::remote_secret::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::tools::runner::StepError;

/// The revision tags of one cluster's mesh namespace.
pub struct RevisionTags {
    pub namespace: String,
}

impl RevisionTags {
    fn selector() -> String {
        format!("{TAG_LABEL},{MANAGED_BY_LABEL}={MANAGED_BY}")
    }
}

impl Component for RevisionTags {
    fn handoff(&self) -> Vec<Handoff> {
        // Through the engine (`meshup export --upgrade`) the istiod releases render them
        // (`revisionTags`); `meshup upgrade` applies them itself.
        vec![Handoff::Kept {
            what: "revision tags of an upgrade meshup runs (through the engine: the istiod releases render them, `meshup export --upgrade`)".into(),
            by: "meshup upgrade promote",
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        "revision tags"
    }

    fn acts_on(&self, action: Action) -> bool {
        action == Action::Remove
    }

    fn converge(&self, _: &mut ClusterCtx) -> Result<String, StepError> {
        Ok("nothing to do".into())
    }

    fn remove(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let output = cx.live.run(&kubectl::delete_selected(
            cx.target(),
            "mutatingwebhookconfigurations,services",
            &Self::selector(),
            &self.namespace,
            cx.timeout(),
        ))?;
        Ok(match kubectl::deleted_count(&output.stdout) {
            0 => "absent".into(),
            n => format!("{n} removed"),
        })
    }

    fn script(&self, cx: &ScriptCx, action: Action) -> String {
        match action {
            Action::Install => String::new(),
            Action::Remove => format!(
                "{}\n",
                kubectl::delete_selected(
                    &cx.target,
                    "mutatingwebhookconfigurations,services",
                    &Self::selector(),
                    &self.namespace,
                    cx.timeout
                )
                .command_line()
            ),
        }
    }

    fn inspect(&self, cx: &mut ClusterCtx, status: &mut ClusterStatus) {
        let cluster = Some(cx.cluster.name.as_str());
        let installed = match revisions::installed(&cx.live, &self.namespace) {
            Ok(installed) => installed,
            Err(e) => {
                status.problem(Finding::warn(
                    cluster,
                    "revisions",
                    format!(
                        "could not be read: {}",
                        crate::observe::sync::first_line(&e.to_string())
                    ),
                ));
                return;
            }
        };
        let names: Vec<String> = installed
            .revisions
            .iter()
            .map(|r| format!("{} {}", r.name, r.version_text()))
            .collect();
        if !names.is_empty() {
            status.cell(column::REVISIONS, names.join(", "));
        }
        if !installed.tags.is_empty() {
            let tags: Vec<String> = installed
                .tags
                .iter()
                .map(|(tag, rev)| format!("{tag}→{rev}"))
                .collect();
            status.cell(column::TAGS, tags.join(", "));
        }
        match revisions::proxies(&cx.live) {
            Ok(proxies) if !proxies.is_empty() => {
                let counts: Vec<String> = proxies
                    .iter()
                    .map(|(rev, namespaces)| {
                        format!("{rev}:{}", namespaces.values().sum::<usize>())
                    })
                    .collect();
                status.cell(column::PROXIES, counts.join(" "));
            }
            Ok(_) => {}
            Err(e) => status.problem(Finding::warn(
                cluster,
                "proxies",
                format!(
                    "could not be read: {}",
                    crate::observe::sync::first_line(&e.to_string())
                ),
            )),
        }
        status.revisions = Some(installed.clone());
        match installed.phase() {
            Phase::Started { old, new } => status.cell(
                column::UPGRADE,
                format!("{} beside {}: promote next", new.name, old.name),
            ),
            Phase::Promoted { old, new } => status.cell(
                column::UPGRADE,
                format!(
                    "default on {}: finish next, once no proxy of {} is left",
                    new.name, old.name
                ),
            ),
            Phase::Tangled(revs) => status.problem(Finding::warn(
                cluster,
                "revisions",
                format!(
                    "{} istiod revisions run; meshup expects one, or two during an upgrade",
                    revs.len()
                ),
            )),
            Phase::Empty | Phase::Steady(_) => {}
        }
    }
}
