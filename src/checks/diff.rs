//! `meshup diff` (and `status --drift`): for each cluster, what `install` would change and
//! what drifted, from every component's `diff`, without changing anything.
//!
//! Two passes over the clusters, each in parallel up to `--jobs`: first every part of each
//! cluster (namespace, `cacerts`, each Helm release, the cluster's reader token, which puts the
//! remote secret install would build on the run board), then the remote secrets each cluster
//! holds, compared with those. A held token that differs from the one install would hand out
//! is reviewed where it was issued (a TokenReview, as `verify` does): the report says whether
//! the peer's istiod can still use it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::checks::credentials::{self, Review};
use crate::components::{ClusterNotes, RunBoard, Stage};
use crate::engine::run::{Run, parallel};
use crate::engine::topology::Topology;
use crate::observe::drift::{Action, ObjectDiff};
use crate::tools::runner::StepError;

/// One cluster's differences.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDiff {
    pub cluster: String,
    /// The first read or render that failed: the cluster could not be compared whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `istiod: 1 object would change`, or `no changes`.
    pub summary: String,
    pub objects: Vec<ObjectDiff>,
}

impl ClusterDiff {
    /// Objects that differ (install changes them, or they drifted).
    pub fn changed(&self) -> usize {
        self.objects.len()
    }

    /// Objects with drift only `install --repair` converges.
    pub fn drifted(&self) -> usize {
        self.objects.iter().filter(|o| o.drifted()).count()
    }
}

/// Every cluster's differences.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Some cluster has something to change or repair.
    pub changes: bool,
    /// Some cluster could not be read or compared.
    pub failed: bool,
    pub clusters: Vec<ClusterDiff>,
}

/// Compares the clusters named in `only` (all when empty) with what `install` would make of
/// them.
pub fn collect(run: &Run, topology: &Topology, only: &[String]) -> Report {
    let selected: Vec<&crate::engine::topology::ClusterParts> = topology
        .nodes
        .iter()
        .filter(|n| only.is_empty() || only.contains(&n.cluster))
        .collect();
    // Sources of the selected clusters' remote secrets that are not selected: their reader
    // token is read, nothing else.
    let sources: Vec<&crate::engine::topology::ClusterParts> = topology
        .nodes
        .iter()
        .filter(|n| !selected.iter().any(|s| s.cluster == n.cluster))
        .filter(|n| {
            selected.iter().any(|s| {
                topology
                    .watches
                    .get(&s.cluster)
                    .is_some_and(|w| w.contains(&n.cluster))
            })
        })
        .collect();
    let board = RunBoard::default();
    struct Pass {
        memo: ClusterNotes,
        objects: Vec<ObjectDiff>,
        error: Option<StepError>,
    }
    let first = |node: &&crate::engine::topology::ClusterParts, whole: bool| -> Pass {
        let cluster = run
            .mesh
            .cluster(&node.cluster)
            .expect("the topology's clusters are the mesh's");
        let mut memo = ClusterNotes::default();
        let mut objects = Vec::new();
        let error = run.in_cluster(cluster, &mut memo, &board, |cx| {
            for component in &node.components {
                let reader = component.part_of_link() && component.stage() != Stage::Mesh;
                if component.stage() == Stage::Mesh || !(whole || reader) {
                    continue;
                }
                match component.diff(cx) {
                    Ok(found) => objects.extend(found),
                    Err(e) => return Some(e),
                }
            }
            None
        });
        Pass {
            memo,
            objects,
            error,
        }
    };
    let passes: Vec<Pass> = parallel(run.jobs, &selected, |node| first(node, true));
    // A source that cannot be read leaves its peers' remote secrets uncompared (its own report
    // is not asked for).
    let _: Vec<Pass> = parallel(run.jobs, &sources, |node| first(node, false));
    let mut memos: Vec<std::sync::Mutex<ClusterNotes>> = Vec::new();
    let mut firsts = Vec::new();
    for pass in passes {
        memos.push(std::sync::Mutex::new(pass.memo));
        firsts.push((pass.objects, pass.error));
    }
    let indices: Vec<usize> = (0..selected.len()).collect();
    let second: Vec<Result<Vec<ObjectDiff>, StepError>> = parallel(run.jobs, &indices, |i| {
        let node = selected[*i];
        let cluster = run
            .mesh
            .cluster(&node.cluster)
            .expect("the topology's clusters are the mesh's");
        let mut memo = memos[*i].lock().unwrap_or_else(|e| e.into_inner());
        run.in_cluster(cluster, &mut memo, &board, |cx| {
            let mut objects = Vec::new();
            for component in node.components.iter().filter(|c| c.stage() == Stage::Mesh) {
                objects.extend(component.diff(cx)?);
            }
            Ok(objects)
        })
    });
    let mut clusters = Vec::new();
    for ((node, (objects, error)), second) in selected.iter().zip(firsts).zip(second) {
        let mut objects = objects;
        let mut error = error.map(|e| e.to_string());
        if error.is_none() {
            match second {
                Ok(found) => objects.extend(found),
                Err(e) => error = Some(e.to_string()),
            }
        }
        clusters.push(ClusterDiff {
            cluster: node.cluster.clone(),
            summary: String::new(),
            error,
            objects,
        });
    }
    review_tokens(run, &mut clusters);
    for cluster in &mut clusters {
        cluster.summary = summary(cluster);
    }
    Report {
        changes: clusters.iter().any(|c| !c.objects.is_empty()),
        failed: clusters.iter().any(|c| c.error.is_some()),
        clusters,
    }
}

/// A token held in object `.1` of cluster `.0`'s report.
type Held = (usize, usize, crate::trust::sensitive::Sensitive<String>);

/// Asks each source cluster whether the tokens its peers hold, where they differ from the one
/// `install` would hand out, still work, and says so in those objects' notes.
fn review_tokens(run: &Run, clusters: &mut [ClusterDiff]) {
    let mut by_source: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (c, cluster) in clusters.iter().enumerate() {
        for (o, object) in cluster.objects.iter().enumerate() {
            if let Some((source, _)) = &object.review {
                by_source.entry(source.clone()).or_default().push((c, o));
            }
        }
    }
    let work: Vec<(String, Vec<Held>)> = by_source
        .into_iter()
        .map(|(source, at)| {
            let tokens = at
                .into_iter()
                .filter_map(|(c, o)| {
                    let (_, token) = clusters[c].objects[o].review.clone()?;
                    Some((c, o, token))
                })
                .collect();
            (source, tokens)
        })
        .collect();
    let answers = parallel(run.jobs, &work, |(source, tokens)| {
        let Some(cluster) = run.mesh.cluster(source) else {
            return Vec::new();
        };
        let (mut memo, board) = (ClusterNotes::default(), RunBoard::default());
        run.in_cluster(cluster, &mut memo, &board, |cx| {
            let mut answers: Vec<(usize, usize, Review)> = Vec::new();
            let mut seen: Vec<(crate::trust::sensitive::Sensitive<String>, Review)> = Vec::new();
            for (c, o, token) in tokens {
                let review = match seen.iter().find(|(t, _)| t == token) {
                    Some((_, r)) => r.clone(),
                    None => {
                        let r = credentials::review(cx, token);
                        seen.push((token.clone(), r.clone()));
                        r
                    }
                };
                answers.push((*c, *o, review));
            }
            answers
        })
    });
    for ((source, _), answers) in work.iter().zip(answers) {
        for (c, o, review) in answers {
            let watcher = clusters[c].cluster.clone();
            let object = &mut clusters[c].objects[o];
            let said = match review {
                Review::Accepted => format!(
                    "the token it holds still works in `{source}`; install hands out the newest"
                ),
                Review::Refused(why) => format!(
                    "the token it holds is refused by `{source}`'s API server ({why}): istiod in `{watcher}` loses `{source}` at its next reconnect"
                ),
                Review::Unknown(why) => {
                    format!(
                        "whether `{source}` still accepts the token it holds is unknown ({why})"
                    )
                }
            };
            object.note = Some(match object.note.take() {
                Some(note) => format!("{note}; {said}"),
                None => said,
            });
            object.review = None;
        }
    }
}

/// `istiod: 1 object would change; link: 1 object drifted`, or `no changes`.
fn summary(cluster: &ClusterDiff) -> String {
    if let Some(error) = &cluster.error {
        let first = error.lines().next().unwrap_or_default();
        return format!("could not be compared: {first}");
    }
    let mut parts: Vec<(&str, usize, usize)> = Vec::new();
    for object in &cluster.objects {
        let part = match parts.iter_mut().find(|(p, _, _)| *p == object.part) {
            Some(part) => part,
            None => {
                parts.push((&object.part, 0, 0));
                parts.last_mut().expect("just pushed")
            }
        };
        if object.install_changes() {
            part.1 += 1;
        } else {
            part.2 += 1;
        }
    }
    if parts.is_empty() {
        return "no changes".into();
    }
    let objects = |n: usize| {
        if n == 1 {
            "1 object".to_string()
        } else {
            format!("{n} objects")
        }
    };
    parts
        .iter()
        .map(|(part, change, drift)| {
            let mut said = Vec::new();
            if *change > 0 {
                said.push(format!("{} would change", objects(*change)));
            }
            if *drift > 0 {
                said.push(format!("{} drifted", objects(*drift)));
            }
            format!("{part}: {}", said.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The report for people: a line per cluster, then a unified diff per object (secret values
/// masked), each followed by what differs and why.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    for cluster in &report.clusters {
        out.push_str(&format!("{}: {}\n", cluster.cluster, cluster.summary));
    }
    for cluster in &report.clusters {
        for object in &cluster.objects {
            out.push('\n');
            out.push_str(&unified(&cluster.cluster, object));
        }
    }
    if report.clusters.iter().any(|c| c.drifted() > 0) {
        out.push_str(
            "\nDrift is what `meshup install` leaves as it is (helm keeps fields other managers own); `meshup install --repair` converges it.\n",
        );
    }
    out
}

/// One object's unified diff, from the live object to what it would be after
/// `install --repair`, then its fields.
fn unified(cluster: &str, object: &ObjectDiff) -> String {
    let yaml = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .map(|v| serde_yaml::to_string(v).unwrap_or_default())
            .unwrap_or_default()
    };
    let (before, after) = (yaml(&object.before), yaml(&object.after));
    let title = object.title();
    let after_what = if object.install_changes() {
        "after meshup install"
    } else {
        "after meshup install --repair"
    };
    let (old, new) = match object.action {
        Action::Create => (
            "/dev/null".to_string(),
            format!("{cluster}: {title} ({after_what})"),
        ),
        Action::Delete => (
            format!("{cluster}: {title} (live)"),
            "/dev/null".to_string(),
        ),
        Action::Update => (
            format!("{cluster}: {title} (live)"),
            format!("{cluster}: {title} ({after_what})"),
        ),
    };
    let mut text = similar::TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(3)
        .header(&old, &new)
        .to_string();
    if text.is_empty() {
        text = format!("--- {old}\n+++ {new}\n");
    }
    for field in &object.fields {
        let kind = if field.drift { "drift" } else { "change" };
        let by = if field.managers.is_empty() {
            String::new()
        } else {
            format!(", set by {}", field.managers.join(", "))
        };
        let what = match (&field.live, &field.wanted) {
            (Some(live), Some(wanted)) => format!("{} → {}", short(live), short(wanted)),
            (None, Some(wanted)) => format!("absent → {}", short(wanted)),
            (Some(live), None) => format!("{} → removed", short(live)),
            (None, None) => "removed".into(),
        };
        text.push_str(&format!("# {kind}: {}: {what}{by}\n", field.path));
    }
    if object.drift {
        let what = match object.action {
            Action::Create => "missing",
            _ => "present",
        };
        text.push_str(&format!(
            "# drift: the object is {what}; `meshup install --repair` restores it\n"
        ));
    }
    if let Some(note) = &object.note {
        text.push_str(&format!("# note: {note}\n"));
    }
    text
}

/// A value on one line, cut at 80 characters.
fn short(value: &serde_json::Value) -> String {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 80 || text.lines().count() > 1 {
        format!("{}…", line.chars().take(80).collect::<String>())
    } else {
        line.to_string()
    }
}
