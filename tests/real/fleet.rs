//! meshup's own exports on the real engines: every document `meshup export --format argocd`
//! writes, judged by a real API server holding Argo CD's CRDs; and the per-cluster Flux layout
//! run by Flux's real controllers in every cluster, then linked, verified, rotated and doctored
//! by meshup, whose upgrade guards read the releases helm-controller made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::*;
use crate::engines::{
    FLUX_NS, apply, condition, export_flux, point_flux_at, push, state_str, text, wait_ready,
};

/// Argo CD's namespace, as `scripts/engines.sh up` creates it and the export names it.
const ARGOCD_NS: &str = "argocd";

/// The releases of a cluster on its own network, in install order: what the Flux export
/// names its HelmReleases in the per-cluster layout.
const RELEASES: [&str; 3] = ["istio-base", "istiod", "istio-eastwestgateway"];

/// A mesh file of two clusters on two networks (`cluster1` on `real-1`, `cluster2` on
/// `real-2`) at Istio `FROM`, whose charts come from `repository` (the engines' Helm
/// repository, which the engines reach; a local folder they could not).
fn fleet_mesh(real: &Real, repository: &str) -> String {
    let mut text = format!(
        "meshID: mesh1\nistio:\n  version: {FROM}\n  charts: {repository}\ntrust:\n  dir: {}\nclusters:\n",
        real.path("certs").display()
    );
    for i in 1..=2 {
        text.push_str(&format!(
            "  - name: cluster{i}\n    context: real-{i}\n    network: network{i}\n"
        ));
    }
    let path = real.path("mesh.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Every YAML document under `dir` (recursively, files in name order), with its file.
fn documents(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let content = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&content) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            if !value.is_null() {
                out.push((file.strip_prefix(dir).unwrap().to_path_buf(), value));
            }
        }
    }
    out
}

/// The kinds `context`'s API server serves in `api_version`; empty when it serves no such
/// group version.
fn served_kinds(real: &Real, context: &str, api_version: &str) -> Vec<String> {
    let path = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let out = real.kubectl_out(context, &["get", "--raw", &path]);
    if !out.status.success() {
        return Vec::new();
    }
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["kind"].as_str().map(str::to_string))
        .collect()
}

/// `kubectl apply --server-side --dry-run=server` of one object (kubectl's default field
/// validation is `Strict`: an unknown field is refused, not dropped).
fn dry_run(real: &Real, context: &str, object: &Value) -> std::process::Output {
    real.kubectl_stdin(
        context,
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &object.to_string(),
    )
}

/// Every Helm release in `context`, as `helm list -A -o json` says.
fn helm_list(real: &Real, context: &str) -> Value {
    let out = real.helm(context, &["list", "-A", "-o", "json"]);
    assert!(
        out.status.success(),
        "helm list in {context}: {}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every document of `meshup export --format argocd`, in both layouts, for a two-network
/// mesh: the parent and child Applications, the `argocd-cm` merge file and the plain
/// manifests (the cross-network Gateway, whose CRD istio-base brings) go through a real API
/// server with Argo CD's CRDs as a server-side dry run, and every one is accepted; a copy of
/// an exported Application with a wrong type in `spec.syncPolicy` is refused, so the schema
/// really judges them.
#[test]
fn meshups_argocd_export_is_accepted_by_argo_cds_crds() {
    let real = Real::up(1);
    let engines = Engines::up(&real, "hub");
    let repository = state_str(&engines, "/helm_repository").to_string();
    let git = state_str(&engines, "/git/repository").to_string();
    let mesh = fleet_mesh(&real, &repository);
    // Istio's CRDs (istio-base's templates) and the mesh namespace: the plain manifests'
    // kinds and namespace, as they are once Argo CD synced istio-base.
    let base = real.charts(FROM).join("base");
    let out = real.helm(
        "real-1",
        &[
            "install",
            "istio-base",
            base.to_str().unwrap(),
            "-n",
            NS,
            "--create-namespace",
        ],
    );
    assert!(
        out.status.success(),
        "helm install istio-base: {}",
        text(&out)
    );

    let started = Instant::now();
    for layout in ["every", "hub"] {
        let dir = real.path(&format!("argocd-{layout}"));
        real.meshup(&[
            "export",
            "--format",
            "argocd",
            "--layout",
            layout,
            "--repo-url",
            &git,
            "--path",
            "./meshup",
            "--out",
            dir.to_str().unwrap(),
            "-f",
            &mesh,
        ])
        .expect(0);
        let docs = documents(&dir);
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        let mut skipped = Vec::new();
        let mut served: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (file, doc) in &docs {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            let known = served
                .entry(api_version.clone())
                .or_insert_with(|| served_kinds(&real, "real-1", &api_version));
            if !known.contains(&kind) {
                skipped.push(format!(
                    "{}: {api_version} {kind} `{name}`: real-1 serves no such kind (no CRD)",
                    file.display()
                ));
                continue;
            }
            let out = dry_run(&real, "real-1", doc);
            assert!(
                out.status.success(),
                "{layout}: {} ({kind} `{name}`) refused: {}",
                file.display(),
                text(&out)
            );
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                said.contains(&format!("/{name} serverside-applied (server dry run)")),
                "{layout}: {}: {said}",
                file.display()
            );
            *kinds.entry(kind).or_default() += 1;
        }
        eprintln!(
            "{layout}: {} documents accepted by real-1's API server ({kinds:?}); skipped: {skipped:?}",
            docs.len()
        );
        // Nothing goes unjudged: Argo CD's and Istio's CRDs are both in place.
        assert!(skipped.is_empty(), "{layout}: skipped {skipped:#?}");
        // Per cluster a parent, one child per release and one for the plain manifests; one
        // argocd-cm; a cross-network Gateway per cluster.
        let want = BTreeMap::from([
            ("Application".to_string(), 2 * (RELEASES.len() + 2)),
            ("ConfigMap".to_string(), 1),
            ("Gateway".to_string(), 2),
        ]);
        assert_eq!(kinds, want, "{layout}: the export's documents");
    }
    eprintln!(
        "both layouts judged in {:.1?} (exports and dry runs)",
        started.elapsed()
    );

    // The check can fail: a wrong type in an exported Application is refused.
    let dir = real.path("argocd-every");
    let (_, istiod) = documents(&dir)
        .into_iter()
        .find(|(file, _)| file == Path::new("cluster1/apps/istiod.yaml"))
        .expect("the export has cluster1/apps/istiod.yaml");
    let mut broken = istiod.clone();
    broken["spec"]["syncPolicy"]["syncOptions"] = json!("ServerSideApply=true");
    let out = dry_run(&real, "real-1", &broken);
    assert!(
        !out.status.success(),
        "an Application whose syncOptions is a string was accepted: {}",
        text(&out)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    eprintln!("the broken copy: {}", said.trim());
    assert!(
        // The API server's structured-merge typing of the CRD's schema.
        said.contains(".spec.syncPolicy.syncOptions: expected list"),
        "{said}"
    );
    // The same object unbroken is accepted (it is the type, not something else).
    let out = dry_run(&real, "real-1", &istiod);
    assert!(out.status.success(), "{}", text(&out));
    // A dry run stores nothing.
    let list = real.json(
        "real-1",
        &["get", "applications.argoproj.io", "-n", ARGOCD_NS],
    );
    assert_eq!(names(&list), Vec::<String>::new());
}

/// Ready of every HelmRelease of `RELEASES` in each of `contexts`; returns how long it took.
/// A release helm-controller gave up on (`Stalled`: its remediation retries spent) fails at
/// once, with its message.
fn wait_releases(real: &Real, engines: &Engines, contexts: &[&str], timeout: Duration) -> Duration {
    let started = Instant::now();
    for context in contexts {
        for name in RELEASES {
            real.until(
                &format!("{context} helmrelease/{name} not stalled before Ready"),
                timeout.saturating_sub(started.elapsed()),
                || {
                    let stalled = condition(real, context, "helmrelease", name, "Stalled");
                    if let Some((s, reason, message)) = &stalled
                        && s == "True"
                    {
                        panic!(
                            "{context} helmrelease/{name} stalled ({reason}): {message}\n{}",
                            engines.logs(context, 10)
                        );
                    }
                    matches!(
                        condition(real, context, "helmrelease", name, "Ready"),
                        Some((s, _, _)) if s == "True"
                    )
                },
            );
            eprintln!("{context} {name}: Ready after {:.1?}", started.elapsed());
        }
    }
    started.elapsed()
}

/// Istio `FROM` two minor versions on (`1.30.0` → `1.32.0`).
fn two_minors_on() -> String {
    let mut parts = FROM.split('.');
    let major = parts.next().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    format!("{major}.{}.0", minor + 2)
}

/// The per-cluster Flux layout on Flux in every cluster: `meshup export --format flux`
/// pushed to Git, in each cluster a GitRepository and a Kustomization of `./meshup/CLUSTER`
/// (whose `flux.yaml` makes `meshup-releases` and `meshup-objects`). Nothing is installed
/// before `meshup install --only trust`; then every HelmRelease in both clusters is Ready and
/// the plain manifests applied; `meshup link` and `verify` pass with the real istiods and
/// `status` names Flux; `link --rotate` replaces every reader token (the old ones refused by
/// the real API servers) and verify passes again; `doctor` finds nothing; the upgrade guards
/// read helm-controller's releases and refuse (promote with no upgrade under way, start two
/// minor versions on), changing no release.
#[test]
fn meshups_flux_export_in_every_cluster_runs_and_meshup_links_verifies_rotates_and_doctors_it() {
    let real = Real::up(2);
    let engines = Engines::up(&real, "every");
    let repository = state_str(&engines, "/helm_repository").to_string();
    let url = state_str(&engines, "/git/repository").to_string();
    let mesh = fleet_mesh(&real, &repository);
    let contexts = ["real-1", "real-2"];

    let work = real.path("fleet");
    let out = work.join("meshup");
    export_flux(&real, &work, &mesh, &[]);
    // What each cluster's folder makes: the two Kustomizations, reading the named source.
    for i in 1..=2 {
        let flux = documents(&out.join(format!("cluster{i}")));
        let kustomizations: Vec<(String, &Value)> = flux
            .iter()
            .filter(|(file, _)| file == Path::new("flux.yaml"))
            .map(|(_, d)| (d["metadata"]["name"].as_str().unwrap().to_string(), d))
            .collect();
        assert_eq!(
            kustomizations
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["meshup-releases", "meshup-objects"],
            "cluster{i}/flux.yaml"
        );
        for (_, k) in &kustomizations {
            assert_eq!(
                k["spec"]["sourceRef"],
                json!({"kind": "GitRepository", "name": "fleet"}),
                "{k}"
            );
        }
    }
    let commit = push(&engines, &work, &[]);
    for (i, context) in contexts.iter().enumerate() {
        point_flux_at(&real, &engines, context, &format!("cluster{}", i + 1));
    }
    let started = Instant::now();
    for (i, context) in contexts.iter().enumerate() {
        let (_, message) = wait_ready(
            &real,
            &engines,
            context,
            "kustomization",
            "meshup",
            "True",
            Duration::from_secs(180),
        );
        assert!(message.contains(&commit), "{context}: {message}");
        // Trust first: istio-base waits for the gate, which only `install --only trust` writes.
        let gate = format!("meshup-trust-cluster{}", i + 1);
        let mut waiting = None;
        real.until(
            &format!("{context}'s istio-base waits for {gate}"),
            Duration::from_secs(120),
            || {
                waiting = condition(&real, context, "helmrelease", "istio-base", "Ready");
                matches!(&waiting, Some((s, _, m)) if s == "False" && m.contains(&gate))
            },
        );
        eprintln!(
            "{context}: istio-base waits for the gate after {:.1?}: {waiting:?}",
            started.elapsed()
        );
    }
    for context in contexts {
        assert_eq!(
            helm_list(&real, context),
            json!([]),
            "{context}: a release before the trust gate"
        );
        assert!(
            !real
                .kubectl_out(context, &["get", "namespace", NS])
                .status
                .success(),
            "{context}: {NS} exists before `install --only trust`"
        );
    }

    real.meshup(&[
        "install",
        "--only",
        "trust",
        "--engine-namespace",
        FLUX_NS,
        "-f",
        &mesh,
    ])
    .expect(0);
    let took = wait_releases(&real, &engines, &contexts, Duration::from_secs(300));
    eprintln!("every HelmRelease in both clusters Ready {took:.1?} after the trust gate");
    for context in contexts {
        let releases = helm_list(&real, context);
        let mut listed: Vec<&str> = releases
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r["status"], "deployed", "{context}: {r}");
                assert_eq!(r["namespace"], NS, "{context}: {r}");
                r["name"].as_str().unwrap()
            })
            .collect();
        listed.sort();
        let mut want = RELEASES.to_vec();
        want.sort();
        assert_eq!(listed, want, "{context}: helm list");
        // The plain manifests, after the releases.
        wait_ready(
            &real,
            &engines,
            context,
            "kustomization",
            "meshup-objects",
            "True",
            Duration::from_secs(120),
        );
        real.kubectl(
            context,
            &[
                "get",
                "gateways.networking.istio.io",
                "-n",
                NS,
                "cross-network-gateway",
            ],
        );
    }
    eprintln!(
        "the plain manifests applied {:.1?} after the trust gate",
        started.elapsed()
    );

    real.meshup(&["link", "-f", &mesh]).expect(0);
    real.meshup(&["verify", "--wait", "2m", "-f", &mesh])
        .expect(0);
    let status = real.meshup(&["status", "-f", &mesh]);
    eprintln!("{}", status.stdout);
    assert!(
        status.stdout.contains("MANAGED BY")
            && status
                .stdout
                .contains(&format!("Flux (HelmRelease {FLUX_NS}/istiod)")),
        "{}",
        status.all()
    );

    // Rotation on the engine-run mesh: new reader tokens, the old ones revoked.
    let old: Vec<(String, String)> = contexts.iter().flat_map(|c| real.held_tokens(c)).collect();
    assert_eq!(old.len(), 2, "{old:?}");
    let started = Instant::now();
    real.meshup(&["link", "--rotate", "-f", &mesh]).expect(0);
    eprintln!("link --rotate in {:.1?}", started.elapsed());
    let new: Vec<(String, String)> = contexts.iter().flat_map(|c| real.held_tokens(c)).collect();
    assert_eq!(new.len(), 2, "{new:?}");
    for ((cluster, before), (_, after)) in old.iter().zip(&new) {
        assert_ne!(before, after, "{cluster}'s reader token did not change");
        let context = cluster.replace("cluster", "real-");
        let started = Instant::now();
        real.until(
            &format!("{cluster} refuses its old reader token (within its secret informer's lag)"),
            Duration::from_secs(30),
            || real.status_with_token(&context, before) == 401,
        );
        eprintln!(
            "{cluster} refuses the old token {:.1?} after the rotation",
            started.elapsed()
        );
        assert_eq!(real.status_with_token(&context, after), 200, "{cluster}");
    }
    real.meshup(&["verify", "--wait", "2m", "-f", &mesh])
        .expect(0);
    let doctor = real.meshup(&["doctor", "-f", &mesh]);
    eprintln!("{}", doctor.stdout);
    assert_eq!(doctor.code, Some(0), "{}", doctor.all());

    // The upgrade guards read helm-controller's releases; a refusal changes nothing.
    let before: Vec<Value> = contexts.iter().map(|c| helm_list(&real, c)).collect();
    let promote = real.meshup(&["upgrade", "promote", "-f", &mesh]).expect(2);
    eprintln!("upgrade promote: {}", promote.stderr.trim());
    assert!(
        promote
            .stderr
            .contains("no upgrade is under way: every cluster runs one istiod revision"),
        "{}",
        promote.all()
    );
    // Two minor versions on, from charts that say so (FROM's, stamped again): refused
    // before anything is installed.
    let ahead = two_minors_on();
    let charts = real.path(&format!("charts-{ahead}"));
    std::fs::create_dir_all(&charts).unwrap();
    for chart in ["base", "istiod", "gateway"] {
        let source = real.charts(FROM).join(chart);
        let out = real.helm(
            "real-1",
            &[
                "package",
                source.to_str().unwrap(),
                "--version",
                &ahead,
                "--app-version",
                &ahead,
                "--destination",
                charts.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "helm package {chart}: {}", text(&out));
    }
    let upgrade_mesh = real.path("upgrade.yaml");
    std::fs::write(
        &upgrade_mesh,
        std::fs::read_to_string(&mesh)
            .unwrap()
            .replace(&format!("version: {FROM}"), &format!("version: {ahead}"))
            .replace(&repository, charts.to_str().unwrap()),
    )
    .unwrap();
    let start = real
        .meshup(&[
            "upgrade",
            "start",
            "--to",
            &ahead,
            "-f",
            upgrade_mesh.to_str().unwrap(),
        ])
        .expect(2);
    eprintln!("upgrade start --to {ahead}: {}", start.stderr.trim());
    assert!(
        start.stderr.contains(FROM) && start.stderr.contains(&ahead),
        "{}",
        start.all()
    );
    // The skew guard answers first (it counts the version being installed), before the
    // one-minor-step guard would say "skips 1 minor version".
    assert!(
        start
            .stderr
            .contains(&format!("runs Istio {FROM} and the mesh file"))
            && start
                .stderr
                .contains(&format!("{ahead}: more than one minor version apart")),
        "{}",
        start.all()
    );
    let after: Vec<Value> = contexts.iter().map(|c| helm_list(&real, c)).collect();
    assert_eq!(before, after, "a refused upgrade changed a release");
    for context in contexts {
        for name in RELEASES {
            let ready = condition(&real, context, "helmrelease", name, "Ready");
            assert!(
                matches!(&ready, Some((s, _, _)) if s == "True"),
                "{context} {name}: {ready:?}"
            );
        }
    }
    eprintln!("{}", engines.status());
}
