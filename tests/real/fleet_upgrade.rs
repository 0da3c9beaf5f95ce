//! A canary upgrade through the engine, on real clusters: Flux's real helm-controller in a hub
//! applies each phase `meshup export --upgrade PHASE` writes, and `meshup upgrade PHASE
//! --wait-only` waits for it between commits, until one istiod of the new version runs.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::engines::{FLUX_NS, export_flux, fleet_mesh_file, point_flux_at, push, wait_releases};

/// The istiod Deployments of `context`: (name, the version its image runs).
fn istiods(real: &Real, context: &str) -> Vec<(String, String)> {
    let list = real.json(
        context,
        &["get", "deployments", "-n", NS, "-l", "app=istiod"],
    );
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default();
            (
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                image.rsplit(':').next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The Helm releases of `context` (helm's own list): (name, chart).
fn helm_releases(real: &Real, context: &str) -> Vec<(String, String)> {
    let out = real.helm(context, &["list", "-A", "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["chart"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The hub's HelmReleases, by name.
fn hub_releases(real: &Real) -> Vec<String> {
    let list = real.json("real-1", &["get", "helmreleases", "-n", FLUX_NS]);
    names(&list)
}

/// One phase through the engine: export, commit, `--wait-only`; returns how long the wait took.
fn phase(real: &Real, engines: &Engines, work: &Path, mesh: &str, name: &str) -> Duration {
    export_flux(real, work, mesh, &["--layout", "hub", "--upgrade", name]);
    push(engines, work, &[]);
    let started = Instant::now();
    let run = real
        .meshup(&[
            "upgrade",
            name,
            "--wait-only",
            "--timeout",
            "300s",
            "-f",
            mesh,
        ])
        .expect(0);
    let took = started.elapsed();
    eprintln!("{name}: the engine applied it, --wait-only passed after {took:.1?}");
    eprintln!("{}", run.stderr);
    took
}

#[test]
fn a_canary_upgrade_through_exported_phases_on_flux_ends_with_one_new_istiod() {
    let real = Real::up(2);
    let engines = Engines::up(&real, "hub");
    let from = fleet_mesh_file(&real, &engines, "from.yaml", FROM);
    let work = real.path("fleet");
    export_flux(&real, &work, &from, &["--layout", "hub"]);
    push(&engines, &work, &[]);
    point_flux_at(&real, &engines, "real-1", "hub");
    real.meshup(&["install", "--only", "trust", "--hub", "real-1", "-f", &from])
        .expect(0);
    let installed: Vec<String> = ["cluster1", "cluster2"]
        .iter()
        .flat_map(|c| [format!("{c}-istio-base"), format!("{c}-istiod")])
        .collect();
    wait_releases(&real, &engines, &installed, Duration::from_secs(300));
    real.meshup(&["link", "-f", &from]).expect(0);
    real.meshup(&["verify", "--wait", "2m", "-f", &from])
        .expect(0);

    // The mesh file raised to the next minor version; nothing moves before a commit.
    let to = fleet_mesh_file(&real, &engines, "to.yaml", TO);
    let before: Vec<_> = ["real-1", "real-2"]
        .iter()
        .map(|c| helm_releases(&real, c))
        .collect();
    let refused = real
        .meshup(&[
            "export",
            "--format",
            "flux",
            "--upgrade",
            "finish",
            "--out",
            real.path("refused").to_str().unwrap(),
            "-f",
            &to,
        ])
        .expect(2);
    eprintln!("finish before start: {}", refused.stderr);
    let waited = real
        .meshup(&[
            "upgrade",
            "start",
            "--wait-only",
            "--timeout",
            "5s",
            "-f",
            &to,
        ])
        .expect(1);
    assert!(waited.stderr.contains("beside default"), "{}", waited.all());
    let after: Vec<_> = ["real-1", "real-2"]
        .iter()
        .map(|c| helm_releases(&real, c))
        .collect();
    assert_eq!(
        before, after,
        "a refused export or --wait-only changed a cluster"
    );

    let revision = format!("istiod-{}", TO.replace('.', "-"));
    let mut took = Vec::new();
    took.push(phase(&real, &engines, &work, &to, "start"));
    for context in ["real-1", "real-2"] {
        let running = istiods(&real, context);
        assert_eq!(
            running,
            [
                ("istiod".to_string(), FROM.to_string()),
                (revision.clone(), TO.to_string())
            ],
            "{context}"
        );
    }
    real.meshup(&["verify", "--wait", "2m", "-f", &to])
        .expect(0);
    took.push(phase(&real, &engines, &work, &to, "promote"));
    let status = real.meshup(&["status", "-f", &to]);
    eprintln!("{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("Flux (HelmRelease flux-system/cluster1-istiod"),
        "{}",
        status.all()
    );
    took.push(phase(&real, &engines, &work, &to, "finish"));
    for context in ["real-1", "real-2"] {
        assert_eq!(
            istiods(&real, context),
            [(revision.clone(), TO.to_string())],
            "{context}"
        );
        let releases = helm_releases(&real, context);
        assert!(
            releases.iter().all(|(name, _)| name != "istiod"),
            "{context}: {releases:?}"
        );
        assert!(
            releases.contains(&(revision.clone(), format!("istiod-{TO}"))),
            "{context}: {releases:?}"
        );
    }
    let hub = hub_releases(&real);
    assert!(!hub.contains(&"cluster1-istiod".to_string()), "{hub:?}");
    let settled: Vec<String> = ["cluster1", "cluster2"]
        .iter()
        .flat_map(|c| [format!("{c}-istio-base"), format!("{c}-{revision}")])
        .collect();
    wait_releases(&real, &engines, &settled, Duration::from_secs(120));
    real.meshup(&["verify", "--wait", "2m", "-f", &to])
        .expect(0);
    eprintln!(
        "start, promote, finish through Flux: {:.1?} waited ({took:.1?})",
        took.iter().sum::<Duration>()
    );
    eprintln!("{}", engines.status());
}
