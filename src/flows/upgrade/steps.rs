//! The steps of a canary upgrade that are not a component's: a component of another shape
//! converged, a release helm-rolled back, the old revision retired, the tags moved, the new
//! revision's reader RBAC, the workloads restarted.

use serde::Deserialize;
use serde_json::{Value, json};
use serde_yaml::Mapping;

use crate::components::{Action, ClusterCtx, Component, ScriptCx};
use crate::engine::plan::Work;
use crate::model::chart::Chart;
use crate::model::values;
use crate::model::version::IstioVersion;
use crate::observe::revisions::{
    DEFAULT_TAG, TAG_LABEL, default_injector, describe, proxies, tags,
};
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

/// A component of another shape of the mesh (the new revision's istiod, istio-base with the
/// new chart), converged as a step of the upgrade. In the script its values are the rendered
/// file's with `sets` on top (what differs from the mesh file: the revision).
pub(super) struct Converge {
    pub(super) component: Box<dyn Component>,
    pub(super) sets: Vec<(&'static str, String)>,
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
pub(super) struct HelmBack {
    pub(super) release: String,
    pub(super) namespace: String,
    /// The old control plane's version: a chart of it needs no rollback.
    pub(super) chart_version: Option<IstioVersion>,
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
pub(super) struct Retire {
    pub(super) component: Box<dyn Component>,
    pub(super) revision: String,
    pub(super) check: bool,
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
pub(super) struct MoveTags {
    pub(super) namespace: String,
    pub(super) chart: Chart,
    /// The istiod values of the mesh whose revision the tags move to.
    pub(super) values: Mapping,
    pub(super) revision: String,
    pub(super) tags: Vec<String>,
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
pub(super) struct ReaderRbac {
    pub(super) release: String,
    pub(super) namespace: String,
    pub(super) chart: Chart,
    pub(super) values: Mapping,
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
pub(super) struct RestartWorkloads {
    pub(super) from: String,
    pub(super) namespace: String,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::{ClusterNotes, RunBoard};
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
