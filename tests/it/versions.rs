//! Istio versions as meshup reads them from a live mesh, with Istio's own charts (stamped as a
//! release build stamps them, `meshup_testcluster::istio_charts`): a variant suffix
//! (`pilot:1.30.0-distroless`, which the ambient profile asks for) is no part of the version in
//! any phase of an upgrade; an istiod whose image names no version (`latest`, a digest) is read
//! from its labels; one whose version nothing names (Istio's unstamped charts: `1.0.0`,
//! `latest`) is not moved to another chart by `install` without `--in-place`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::common::*;
use meshup_testcluster::{ISTIO_FROM, ISTIO_TO, TestCluster, istio_charts};

/// A mesh file for `env`'s clusters with Istio's charts in `charts` at `version`; ambient puts
/// cluster1 on network1 and the others on network2, with the Gateway API CRDs `version` is built
/// against.
fn mesh_file(env: &Env, name: &str, charts: &Path, version: &str, ambient: bool) -> String {
    let mut text = format!(
        "meshID: mesh1\nistio:\n  version: {version}\n  charts: {}\ntrust:\n  dir: {}\n",
        charts.display(),
        env.path("certs").display()
    );
    if ambient {
        text.push_str(&format!(
            "dataplane: ambient\ngatewayApiCrds: {}\n",
            meshup_testcluster::istio_gateway_api_crds(version).display()
        ));
    } else {
        text.push_str("network: network1\n");
    }
    text.push_str("clusters:\n");
    for (i, cluster) in env.clusters.iter().enumerate() {
        text.push_str(&format!(
            "  - name: {0}\n    context: {0}\n",
            cluster.name()
        ));
        if ambient {
            let network = if i == 0 { "network1" } else { "network2" };
            text.push_str(&format!("    network: {network}\n"));
        }
    }
    let path = env.path(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of Istio's charts at `version` in `dir`, each file passed through `edit(chart, file
/// name, text)`.
fn charts_edited(
    dir: &Path,
    version: &str,
    edit: impl Fn(&str, &str, String) -> String,
) -> PathBuf {
    copy_tree(&istio_charts(version), dir);
    for chart in ["base", "istiod", "gateway", "cni", "ztunnel"] {
        for file in ["Chart.yaml", "values.yaml"] {
            let path = dir.join(chart).join(file);
            if let Ok(text) = std::fs::read_to_string(&path) {
                std::fs::write(&path, edit(chart, file, text)).unwrap();
            }
        }
    }
    dir.to_path_buf()
}

/// Replaces `from` with `to` in `text`, which must hold it.
fn swap(text: String, from: &str, to: &str) -> String {
    assert!(text.contains(from), "`{from}` is not in:\n{text}");
    text.replace(from, to)
}

fn deployment(cluster: &TestCluster, name: &str) -> Option<Value> {
    cluster.get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}"))
}

/// The image of a workload's first container.
fn image_of(object: &Value) -> String {
    object["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn istiod_image(cluster: &TestCluster, name: &str) -> String {
    image_of(
        &deployment(cluster, name)
            .unwrap_or_else(|| panic!("{}: deployment {name} missing", cluster.name())),
    )
}

fn ztunnel_image(cluster: &TestCluster) -> String {
    image_of(
        &cluster
            .get(&format!("/apis/apps/v1/namespaces/{NS}/daemonsets/ztunnel"))
            .unwrap_or_else(|| panic!("{}: ztunnel missing", cluster.name())),
    )
}

/// The istiod Deployments in `cluster`.
fn istiods(cluster: &TestCluster) -> BTreeSet<String> {
    names(&cluster.list(&format!("/apis/apps/v1/namespaces/{NS}/deployments")))
        .into_iter()
        .filter(|n| n.starts_with("istiod"))
        .collect()
}

/// Every cluster's request count, to see later what a run wrote.
fn marks(env: &Env) -> Vec<usize> {
    env.clusters
        .iter()
        .map(|c| c.requests_log().len())
        .collect()
}

/// Nothing but meshup's lock was written in any cluster since `marks`.
#[track_caller]
fn nothing_written(env: &Env, marks: &[usize]) {
    for (cluster, &n) in env.clusters.iter().zip(marks) {
        let writes = mesh_writes(cluster, n);
        assert!(writes.is_empty(), "{}: {writes:?}", cluster.name());
    }
}

/// An ambient mesh on Istio's charts runs `pilot:1.30.0-distroless`, ztunnel and istio-cni
/// too; the upgrade to the next minor version reads every phase by (major, minor, patch):
/// start → promote → rollback brings back the old control plane and ztunnel, and start →
/// promote → finish leaves one istiod of the new version.
#[test]
fn an_ambient_mesh_of_distroless_images_upgrades_and_rolls_back() {
    let env = Env::new("helm4", 1);
    let old = mesh_file(
        &env,
        "old.yaml",
        &istio_charts(ISTIO_FROM),
        ISTIO_FROM,
        true,
    );
    let new = mesh_file(&env, "new.yaml", &istio_charts(ISTIO_TO), ISTIO_TO, true);
    env.meshup(&["install", "-f", &old]).expect(0);
    let from_image = format!(":{ISTIO_FROM}-distroless");
    let to_image = format!(":{ISTIO_TO}-distroless");
    for cluster in &env.clusters {
        assert!(
            istiod_image(cluster, "istiod").ends_with(&from_image),
            "{}",
            istiod_image(cluster, "istiod")
        );
        assert!(ztunnel_image(cluster).ends_with(&from_image));
    }
    let status = env.meshup(&["status", "-f", &old]).expect(0);
    assert!(
        status.stdout.contains(&format!("default {ISTIO_FROM}")),
        "{}",
        status.stdout
    );

    env.meshup(&["upgrade", "start", "-f", &new]).expect(0);
    env.meshup(&["upgrade", "promote", "-f", &new]).expect(0);
    for cluster in &env.clusters {
        assert!(
            ztunnel_image(cluster).ends_with(&to_image),
            "{}: {}",
            cluster.name(),
            ztunnel_image(cluster)
        );
    }
    env.meshup(&["upgrade", "rollback", "-f", &new]).expect(0);
    for cluster in &env.clusters {
        assert_eq!(
            istiods(cluster),
            BTreeSet::from(["istiod".to_string()]),
            "{}",
            cluster.name()
        );
        assert!(istiod_image(cluster, "istiod").ends_with(&from_image));
        assert!(
            ztunnel_image(cluster).ends_with(&from_image),
            "{}: {}",
            cluster.name(),
            ztunnel_image(cluster)
        );
    }
    // Rolled back: nothing is under way, and a second rollback changes nothing.
    let since = marks(&env);
    let run = env.meshup(&["upgrade", "rollback", "-f", &new]).expect(0);
    assert!(run.all().contains("nothing to roll back"), "{}", run.all());
    nothing_written(&env, &since);

    env.meshup(&["upgrade", "start", "-f", &new]).expect(0);
    env.meshup(&["upgrade", "promote", "-f", &new]).expect(0);
    env.meshup(&["upgrade", "finish", "-f", &new]).expect(0);
    let revision = format!("istiod-{}", ISTIO_TO.replace('.', "-"));
    for cluster in &env.clusters {
        assert_eq!(
            istiods(cluster),
            BTreeSet::from([revision.clone()]),
            "{}",
            cluster.name()
        );
        assert!(istiod_image(cluster, &revision).ends_with(&to_image));
        assert!(ztunnel_image(cluster).ends_with(&to_image));
    }
    let status = env.meshup(&["status", "-f", &new]).expect(0);
    assert!(
        status
            .stdout
            .contains(&format!("{} {ISTIO_TO}", ISTIO_TO.replace('.', "-"))),
        "{}",
        status.stdout
    );
}

/// istiod's image says no version (`latest`, or pinned by a digest, as a tag or as the whole
/// image): its labels say 1.30.0, so `install` of 1.31.0 is the minor version change in place
/// it refuses, with nothing changed; `--in-place` makes it. One cluster each: the refusal is
/// the same in every cluster.
#[test]
fn install_reads_the_version_of_an_image_without_one_from_its_labels() {
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let global_tag = format!("    tag: {ISTIO_FROM}\n");
    let cases: [(&str, String, String, &str); 3] = [
        (
            "latest",
            global_tag.clone(),
            "    tag: latest\n".to_string(),
            ":latest",
        ),
        (
            "digest as tag",
            global_tag.clone(),
            format!("    tag: \"{ISTIO_FROM}@{digest}\"\n"),
            "@sha256:",
        ),
        (
            "digest as image",
            "  image: pilot\n".to_string(),
            format!("  image: docker.io/istio/pilot@{digest}\n"),
            "pilot@sha256:",
        ),
    ];
    for (name, from, to, pinned) in &cases {
        let env = Env::new("helm4", 1);
        let charts = charts_edited(&env.path("charts"), ISTIO_FROM, |chart, file, text| {
            if (chart, file) == ("istiod", "values.yaml") {
                swap(text, from, to)
            } else {
                text
            }
        });
        let old = mesh_file(&env, "old.yaml", &charts, ISTIO_FROM, false);
        env.meshup(&["install", "-f", &old]).expect(0);
        let image = istiod_image(&env.clusters[0], "istiod");
        assert!(image.contains(pinned), "{name}: {image}");
        let new = mesh_file(&env, "new.yaml", &istio_charts(ISTIO_TO), ISTIO_TO, false);
        let since = marks(&env);
        let run = env.meshup(&["install", "-f", &new]).expect(2);
        assert!(
            run.stderr.contains(&format!("runs Istio {ISTIO_FROM}"))
                && run.stderr.contains("--in-place"),
            "{name}: {}",
            run.all()
        );
        nothing_written(&env, &since);
        // status names the version too, not the tag.
        let status = env.meshup(&["status", "-f", &old]).expect(0);
        assert!(
            status.stdout.contains(&format!("default {ISTIO_FROM}")),
            "{name}: {}",
            status.stdout
        );
        if *name == "latest" {
            env.meshup(&["install", "--in-place", "-f", &new]).expect(0);
            let image = istiod_image(&env.clusters[0], "istiod");
            assert!(image.ends_with(&format!(":{ISTIO_TO}")), "{image}");
        }
    }
}

/// Istio's charts as its sources carry them (Chart version 1.0.0, image tag `latest`): the
/// version istiod runs is unknown, so `install` of another chart is refused, saying what it
/// found, with nothing changed; `upgrade start` too; `--in-place` proceeds.
#[test]
fn install_over_an_unknown_version_is_refused_unless_in_place() {
    let env = Env::new("helm4", 2);
    let charts = charts_edited(&env.path("unstamped"), ISTIO_FROM, |_, file, text| {
        let version = format!(": {ISTIO_FROM}");
        match file {
            "Chart.yaml" => text
                .replace(&format!("\nversion{version}"), "\nversion: 1.0.0")
                .replace(&format!("\nappVersion{version}"), "\nappVersion: 1.0.0"),
            _ => text.replace(&format!("tag{version}"), "tag: latest"),
        }
    });
    let old = mesh_file(&env, "old.yaml", &charts, "1.0.0", false);
    env.meshup(&["install", "-f", &old]).expect(0);
    assert!(istiod_image(&env.clusters[0], "istiod").ends_with(":latest"));
    // The same charts again: nothing to refuse.
    env.meshup(&["install", "-f", &old]).expect(0);

    let new = mesh_file(&env, "new.yaml", &istio_charts(ISTIO_TO), ISTIO_TO, false);
    let since = marks(&env);
    let run = env.meshup(&["install", "-f", &new]).expect(2);
    assert!(
        run.stderr.contains("unknown Istio version")
            && run.stderr.contains("pilot:latest")
            && run.stderr.contains("istiod-1.0.0")
            && run.stderr.contains("--in-place"),
        "{}",
        run.all()
    );
    let run = env.meshup(&["upgrade", "start", "-f", &new]).expect(2);
    assert!(
        run.stderr.contains("unknown Istio version"),
        "{}",
        run.all()
    );
    nothing_written(&env, &since);
    let status = env.meshup(&["status", "-f", &old]).expect(0);
    assert!(
        status.stdout.contains("default unknown") && !status.stdout.contains("default latest"),
        "{}",
        status.stdout
    );

    let run = env
        .meshup(&["install", "--in-place", "--verbose", "-f", &new])
        .expect(0);
    // One cluster at a time: cluster1's istiod is upgraded before cluster2's starts.
    let istiod_upgrades: Vec<String> = run
        .commands()
        .into_iter()
        .filter(|(_, c)| c.contains("upgrade --install istiod "))
        .map(|(cluster, _)| cluster)
        .collect();
    assert_eq!(istiod_upgrades, ["cluster1", "cluster2"], "{}", run.all());
    for cluster in &env.clusters {
        assert!(
            istiod_image(cluster, "istiod").ends_with(&format!(":{ISTIO_TO}")),
            "{}",
            istiod_image(cluster, "istiod")
        );
    }
}
