//! A canary upgrade run by the engine (`meshup export --upgrade PHASE`): what each cluster
//! runs at the stand its upgrade reaches, as releases the engine installs. The same order as
//! `meshup upgrade` (see `flows::upgrade`), written as desired state:
//!
//! | stand | istio-base | istiod | the rest (gateway, node agents, plain manifests) |
//! | --- | --- | --- | --- |
//! | `Old` | new chart, default revision old | old | old |
//! | `Started` | new chart, default revision old | old, and new beside it | old |
//! | `Promoted` | new chart, default revision new | old without its tags, new with them | new |
//! | `New` | new chart, default revision new | new, with the tags | new |
//!
//! Revision tags are rendered by the release of the revision they point at (the istiod
//! chart's `revisionTags`), so that they move with the releases: at `Promoted` the old
//! release renders none, and the new release `dependsOn` it (Flux) or follows it (Argo CD's
//! waves), so that the old one gives them up first (Helm refuses an object another release
//! owns). A revision-less old istiod's injector is itself the `default` one: at `Promoted`
//! its release leaves it out (`global.operatorManageWebhooks`, the chart's switch for it),
//! so that it does not inject the pods the new `default` tag injects.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::fleet::parts::{ClusterHandoff, ReleasePart, handoffs};
use crate::model::mesh::Mesh;
use crate::observe::revisions::{DEFAULT_TAG, Stand};

/// The upgrade's two ends and each cluster's stand.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// The phase this export is (`start`, ...).
    pub phase: &'static str,
    /// The running revision at the version it runs (its charts, its revision).
    pub old: Mesh,
    /// The new charts with the running revision (istio-base before `promote`).
    pub from: Mesh,
    /// The new charts and the new revision.
    pub to: Mesh,
    pub stands: BTreeMap<String, Stand>,
    /// Per cluster, the tags that move from the old revision to the new (`default` first).
    pub tags: BTreeMap<String, Vec<String>>,
}

impl Upgrade {
    fn tags(&self, cluster: &str) -> Vec<String> {
        self.tags
            .get(cluster)
            .cloned()
            .unwrap_or_else(|| vec![DEFAULT_TAG.to_string()])
    }
}

/// What every cluster hands over at its stand.
pub fn handoffs_at(upgrade: &Upgrade) -> Vec<ClusterHandoff> {
    let by_cluster = |mesh: &Mesh| -> BTreeMap<String, ClusterHandoff> {
        handoffs(mesh)
            .into_iter()
            .map(|p| (p.cluster.clone(), p))
            .collect()
    };
    let old = by_cluster(&upgrade.old);
    let from = by_cluster(&upgrade.from);
    handoffs(&upgrade.to)
        .into_iter()
        .map(|new| {
            let c = new.cluster.clone();
            let stand = upgrade.stands.get(&c).copied().unwrap_or(Stand::New);
            let (Some(old), Some(from)) = (old.get(&c), from.get(&c)) else {
                return new;
            };
            at_stand(stand, old, from, new, &upgrade.tags(&c), &upgrade.old)
        })
        .collect()
}

/// One cluster at `stand`, from its three hand-offs (the same parts, of three meshes).
fn at_stand(
    stand: Stand,
    old: &ClusterHandoff,
    from: &ClusterHandoff,
    new: ClusterHandoff,
    tags: &[String],
    old_mesh: &Mesh,
) -> ClusterHandoff {
    let moved = matches!(stand, Stand::Promoted | Stand::New);
    let (rest, base) = if moved { (&new, &new) } else { (old, from) };
    let old_named = old_mesh.revision.is_some();
    let mut releases = Vec::new();
    for release in &rest.releases {
        if release.chart.name == "base" {
            releases.extend(same_chart(base, "base"));
        } else if release.istiod {
            if stand != Stand::New {
                let mut istiod = istiod_of(old);
                let own: Vec<String> = if stand == Stand::Promoted {
                    Vec::new()
                } else if old_named {
                    tags.to_vec()
                } else {
                    // The revision-less injector is `default` itself.
                    tags.iter().filter(|t| *t != DEFAULT_TAG).cloned().collect()
                };
                set_tags(&mut istiod, &own);
                if let (Stand::Promoted, false, Some(istiod)) = (stand, old_named, &mut istiod) {
                    istiod.values["global"]["operatorManageWebhooks"] = json!(true);
                }
                releases.extend(istiod);
            }
            if stand != Stand::Old {
                let mut istiod = istiod_of(&new);
                set_tags(&mut istiod, if moved { tags } else { &[] });
                releases.extend(istiod);
            }
        } else {
            releases.push(release.clone());
        }
    }
    ClusterHandoff {
        cluster: new.cluster.clone(),
        releases,
        manifests: rest.manifests.clone(),
        kept: new.kept.clone(),
    }
}

fn same_chart(part: &ClusterHandoff, chart: &str) -> Option<ReleasePart> {
    part.releases
        .iter()
        .find(|r| r.chart.name == chart)
        .cloned()
}

fn istiod_of(part: &ClusterHandoff) -> Option<ReleasePart> {
    part.releases.iter().find(|r| r.istiod).cloned()
}

/// The tags a release renders (none: the list left empty, so that no default applies).
fn set_tags(release: &mut Option<ReleasePart>, tags: &[String]) {
    if let Some(ReleasePart {
        values: Value::Object(values),
        ..
    }) = release
    {
        if tags.is_empty() {
            values.remove("revisionTags");
        } else {
            values.insert("revisionTags".into(), json!(tags));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use crate::trust::TrustMode;

    fn upgrade(stand: Stand) -> Upgrade {
        let mesh = testing::mesh(2, TrustMode::Generate);
        let mut old = mesh.clone();
        old.version = Some("1.30.0".into());
        let mut from = mesh.clone();
        from.version = Some("1.31.0".into());
        let mut to = from.clone();
        to.revision = Some("1-31-0".into());
        Upgrade {
            phase: "start",
            old,
            from,
            to,
            stands: ["cluster1", "cluster2"]
                .iter()
                .map(|c| (c.to_string(), stand))
                .collect(),
            tags: BTreeMap::new(),
        }
    }

    /// (release, chart version, revision value, revisionTags, operatorManageWebhooks) of
    /// cluster1.
    fn releases(stand: Stand) -> Vec<(String, String, Value, Value, Value)> {
        handoffs_at(&upgrade(stand))[0]
            .releases
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.chart.version.clone().unwrap_or_default(),
                    r.values
                        .get("revision")
                        .or(r.values.get("defaultRevision"))
                        .cloned()
                        .unwrap_or(Value::Null),
                    r.values.get("revisionTags").cloned().unwrap_or(Value::Null),
                    r.values["global"]["operatorManageWebhooks"].clone(),
                )
            })
            .collect()
    }

    fn row(
        name: &str,
        version: &str,
        rev: Value,
        tags: Value,
        off: Value,
    ) -> (String, String, Value, Value, Value) {
        (name.into(), version.into(), rev, tags, off)
    }

    #[test]
    fn each_stand_runs_the_releases_of_its_row() {
        let null = Value::Null;
        assert_eq!(
            releases(Stand::Old),
            [
                row(
                    "istio-base",
                    "1.31.0",
                    null.clone(),
                    null.clone(),
                    null.clone()
                ),
                row("istiod", "1.30.0", null.clone(), null.clone(), null.clone()),
            ]
        );
        assert_eq!(
            releases(Stand::Started),
            [
                row(
                    "istio-base",
                    "1.31.0",
                    null.clone(),
                    null.clone(),
                    null.clone()
                ),
                row("istiod", "1.30.0", null.clone(), null.clone(), null.clone()),
                row(
                    "istiod-1-31-0",
                    "1.31.0",
                    json!("1-31-0"),
                    null.clone(),
                    null.clone()
                ),
            ]
        );
        assert_eq!(
            releases(Stand::Promoted),
            [
                row(
                    "istio-base",
                    "1.31.0",
                    json!("1-31-0"),
                    null.clone(),
                    null.clone()
                ),
                row("istiod", "1.30.0", null.clone(), null.clone(), json!(true)),
                row(
                    "istiod-1-31-0",
                    "1.31.0",
                    json!("1-31-0"),
                    json!(["default"]),
                    null.clone()
                ),
            ]
        );
        assert_eq!(
            releases(Stand::New),
            [
                row(
                    "istio-base",
                    "1.31.0",
                    json!("1-31-0"),
                    null.clone(),
                    null.clone()
                ),
                row(
                    "istiod-1-31-0",
                    "1.31.0",
                    json!("1-31-0"),
                    json!(["default"]),
                    null
                ),
            ]
        );
    }
}
