//! `meshup export --upgrade PHASE` and `meshup upgrade PHASE --wait-only`: a canary upgrade a
//! fleet engine applies. The export reads the clusters (nothing changes) for the guards of
//! `meshup upgrade` and writes each phase's releases; `--wait-only` waits on the phase's
//! gates and changes nothing. Here `meshup upgrade PHASE` itself stands in for the engine
//! between the two (the real tier runs Flux's helm-controller: tests/real/fleet_upgrade.rs).

use std::path::Path;

use serde_json::Value;

use super::common::*;
use meshup_testcluster::ISTIO_TO_REVISION as NEW_REV;

/// The HelmRelease `name` of `cluster` in the export under `out`, if written.
fn helm_release(out: &Path, cluster: &str, name: &str) -> Option<Value> {
    let path = out
        .join(cluster)
        .join("releases")
        .join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_yaml::from_str(&text).unwrap())
}

/// (chart version, values) of a written HelmRelease.
fn chart_and_values(release: &Value) -> (&str, &Value) {
    (
        release["spec"]["chart"]["spec"]["version"]
            .as_str()
            .unwrap_or_default(),
        &release["spec"]["values"],
    )
}

/// Helm's records in every cluster: what no export and no `--wait-only` may change.
fn records(env: &Env) -> Vec<std::collections::BTreeSet<(String, String)>> {
    env.clusters.iter().map(helm_records).collect()
}

#[test]
fn an_upgrade_runs_through_exported_phases_and_wait_only_waits_for_each() {
    let env = Env::new("helm4", 2);
    let installed = env.mesh_file(&[], &[], "");
    env.meshup(&["install", "-f", installed.to_str().unwrap()])
        .expect(0);
    let at = |version: &str, charts: &str, name: &str| {
        mesh_moved(&env, &installed, version, &charts, name)
    };
    // The engine's mesh file names a chart repository; meshup's stand-in installs local charts.
    let fleet = at(ISTIO_TO, "https://charts.example.com/istio", "fleet.yaml");
    let local = at(
        ISTIO_TO,
        &istio_charts(ISTIO_TO).display().to_string(),
        "local.yaml",
    );
    let out = env.path("export");
    let export = |phase: &str| {
        env.meshup(&[
            "export",
            "--format",
            "flux",
            "--upgrade",
            phase,
            "--out",
            out.to_str().unwrap(),
            "-f",
            &fleet,
        ])
    };
    let before = records(&env);

    // Out of order: refused, nothing written.
    let refused = export("promote").expect(2);
    assert!(
        refused.stderr.contains("meshup upgrade start"),
        "{}",
        refused.all()
    );
    assert!(!out.exists(), "a refused export wrote files");
    // Two minor versions ahead: refused by the same skew guard as `meshup upgrade start`.
    let skipping = at("1.32.0", "https://charts.example.com/istio", "skip.yaml");
    let run = env
        .meshup(&[
            "export",
            "--format",
            "flux",
            "--upgrade",
            "start",
            "--out",
            out.to_str().unwrap(),
            "-f",
            &skipping,
        ])
        .expect(2);
    assert!(run.stderr.contains("minor"), "{}", run.all());
    assert!(!out.exists(), "a refused export wrote files");

    // start: the new istiod beside the old one, istio-base on the new chart.
    let run = export("start").expect(0);
    assert!(
        run.stderr.contains("meshup upgrade start --wait-only"),
        "{}",
        run.all()
    );
    for cluster in ["cluster1", "cluster2"] {
        let base = helm_release(&out, cluster, "istio-base").unwrap();
        assert_eq!(chart_and_values(&base).0, ISTIO_TO);
        assert!(chart_and_values(&base).1.get("defaultRevision").is_none());
        let old = helm_release(&out, cluster, "istiod").unwrap();
        assert_eq!(chart_and_values(&old).0, ISTIO_FROM, "{old}");
        assert!(chart_and_values(&old).1.get("revision").is_none());
        let new = helm_release(&out, cluster, &format!("istiod-{NEW_REV}")).unwrap();
        let (version, values) = chart_and_values(&new);
        assert_eq!(
            (version, &values["revision"]),
            (ISTIO_TO, &Value::from(NEW_REV))
        );
        assert!(values.get("revisionTags").is_none(), "{new}");
        assert_eq!(new["spec"]["dependsOn"][0]["name"], "istiod");
    }
    assert_eq!(records(&env), before, "the export changed a cluster");
    // Argo CD: the same releases, the new istiod one wave after the old.
    let argocd = env.path("argocd");
    env.meshup(&[
        "export",
        "--format",
        "argocd",
        "--repo-url",
        "https://git.example.com/mesh.git",
        "--upgrade",
        "start",
        "--out",
        argocd.to_str().unwrap(),
        "-f",
        &fleet,
    ])
    .expect(0);
    let wave = |name: &str| -> Value {
        let path = argocd.join("cluster1/apps").join(format!("{name}.yaml"));
        let app: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"].clone()
    };
    assert_eq!(
        (
            wave("istio-base"),
            wave("istiod"),
            wave(&format!("istiod-{NEW_REV}"))
        ),
        (Value::from("0"), Value::from("1"), Value::from("2"))
    );

    // --wait-only waits for the engine and changes nothing: with nothing applied it gives up.
    let gives_up = |phase: &str| {
        env.meshup(&[
            "upgrade",
            phase,
            "--wait-only",
            "--timeout",
            "3s",
            "-f",
            &local,
        ])
        .expect(1)
    };
    // A wait that saw the clusters before the engine's part (here meshup's own phase) passes
    // once it is done; its stderr.
    let passes_once_applied = |phase: &str| {
        let waiting = wait_in_background(&env, &["upgrade", phase, "--wait-only", "-f", &local]);
        env.meshup(&["upgrade", phase, "-f", &local]).expect(0);
        let (code, stderr) = waiting.join().unwrap();
        assert_eq!(code, Some(0), "{stderr}");
        stderr
    };
    let run = gives_up("start");
    assert!(
        run.stderr
            .contains(&format!("istiod {NEW_REV} beside default")),
        "{}",
        run.all()
    );
    assert_eq!(records(&env), before, "--wait-only changed a cluster");
    let waited = passes_once_applied("start");
    assert!(
        waited.contains("meshup export --upgrade promote"),
        "{waited}"
    );

    // promote: tags and default revision on the new istiod, the revision-less injector out.
    export("promote").expect(0);
    for cluster in ["cluster1", "cluster2"] {
        let base = helm_release(&out, cluster, "istio-base").unwrap();
        assert_eq!(chart_and_values(&base).1["defaultRevision"], NEW_REV);
        let old = helm_release(&out, cluster, "istiod").unwrap();
        assert_eq!(
            chart_and_values(&old).1["global"]["operatorManageWebhooks"],
            true,
            "{old}"
        );
        let new = helm_release(&out, cluster, &format!("istiod-{NEW_REV}")).unwrap();
        assert_eq!(
            chart_and_values(&new).1["revisionTags"],
            serde_json::json!(["default"])
        );
    }
    passes_once_applied("promote");

    // rollback (instead of finish): the old istiod with its injector, no new one.
    export("rollback").expect(0);
    for cluster in ["cluster1", "cluster2"] {
        let base = helm_release(&out, cluster, "istio-base").unwrap();
        assert!(chart_and_values(&base).1.get("defaultRevision").is_none());
        let old = helm_release(&out, cluster, "istiod").unwrap();
        assert_eq!(chart_and_values(&old).0, ISTIO_FROM);
        assert!(
            chart_and_values(&old).1["global"]
                .get("operatorManageWebhooks")
                .is_none()
        );
        assert!(helm_release(&out, cluster, &format!("istiod-{NEW_REV}")).is_none());
    }

    // finish: only the new istiod; a second export writes the same, and so does a plain
    // export once the mesh file names the new revision.
    export("finish").expect(0);
    for cluster in ["cluster1", "cluster2"] {
        assert!(helm_release(&out, cluster, "istiod").is_none());
        assert!(helm_release(&out, cluster, &format!("istiod-{NEW_REV}")).is_some());
    }
    gives_up("finish");
    passes_once_applied("finish");
    let run = env
        .meshup(&["upgrade", "finish", "--wait-only", "-f", &local])
        .expect(0);
    assert!(run.stderr.contains("nothing to finish"), "{}", run.all());
    let finished = std::fs::read_dir(out.join("cluster1/releases"))
        .unwrap()
        .count();
    let first = read_tree(&out);
    export("finish").expect(0);
    assert_eq!(read_tree(&out), first, "a second export of finish differs");
    let named = env.path("named.yaml");
    std::fs::write(
        &named,
        std::fs::read_to_string(&fleet).unwrap().replacen(
            "istio:\n",
            &format!("istio:\n  revision: {NEW_REV}\n"),
            1,
        ),
    )
    .unwrap();
    let plain = env.path("plain");
    env.meshup(&[
        "export",
        "--format",
        "flux",
        "--out",
        plain.to_str().unwrap(),
        "-f",
        named.to_str().unwrap(),
    ])
    .expect(0);
    // The same files but the README, which says where the upgrade stands.
    let mut plain = read_tree(&plain);
    let mut upgraded = first.clone();
    let readme = upgraded.remove("README.md").unwrap();
    assert!(
        readme.contains("| cluster1 | the new revision only |"),
        "{readme}"
    );
    assert!(
        !plain
            .remove("README.md")
            .unwrap()
            .contains("Upgrade under way")
    );
    assert_eq!(
        plain, upgraded,
        "a plain export differs from the finished upgrade"
    );
    assert_eq!(finished, 4, "sources, istio-base, istiod, kustomization");
}

/// Starts meshup with `args` and returns once it printed what it waits for (it read the
/// clusters and found the phase not reached); the thread ends with its exit code and stderr.
fn wait_in_background(env: &Env, args: &[&str]) -> std::thread::JoinHandle<(Option<i32>, String)> {
    use std::io::BufRead;
    let mut child = env
        .command(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "meshup ended before it waited: {seen}"
        );
        seen.push_str(&line);
        // The first look's answer: each cluster and what it runs.
        if line.starts_with("  cluster") {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        let status = child.wait().unwrap();
        (status.code(), seen + &rest)
    })
}
