//! The GitOps engines' smoke tests: Flux's own controllers (source-controller, helm-controller,
//! kustomize-controller, built from their Go modules by `scripts/engines.sh build`) reconcile
//! hand-written objects on real clusters, and Argo CD's own CRDs judge a hand-written
//! Application. What `meshup export --format flux|argocd` writes is proven on the same engines;
//! these tests prove the engines themselves first: a release in another cluster through a
//! kubeconfig Secret (the hub layout), a Kustomization from the local Git server in every
//! cluster (the per-cluster layout), and what the API server says about an Application.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// Where the engines keep their objects (Flux's own convention).
pub(crate) const FLUX_NS: &str = "flux-system";

pub(crate) fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
pub(crate) fn apply(real: &Real, context: &str, yaml: &str) {
    let out = real.kubectl_stdin(context, &["apply", "--server-side", "-f", "-"], yaml);
    assert!(out.status.success(), "apply in {context}: {}", text(&out));
}

/// The `type` condition of `kind/name` in `context`: (status, reason, message), if it has one.
pub(crate) fn condition(
    real: &Real,
    context: &str,
    kind: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let out = real.kubectl_out(context, &["get", kind, "-n", FLUX_NS, name, "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let object: Value = serde_json::from_slice(&out.stdout).ok()?;
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

/// Waits until `kind/name` in `context` has Ready=`want`; on time-out, fails with its
/// conditions and the tail of the controllers' logs.
#[track_caller]
pub(crate) fn wait_ready(
    real: &Real,
    engines: &Engines,
    context: &str,
    kind: &str,
    name: &str,
    want: &str,
    timeout: Duration,
) -> (String, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let ready = condition(real, context, kind, name, "Ready");
        if let Some((status, reason, message)) = &ready
            && status == want
        {
            return (reason.clone(), message.clone());
        }
        if Instant::now() > deadline {
            let object =
                real.kubectl_out(context, &["get", kind, "-n", FLUX_NS, name, "-o", "yaml"]);
            panic!(
                "{context} {kind}/{name}: Ready is not {want} after {timeout:?} (last: {ready:?})\n{}\n{}",
                String::from_utf8_lossy(&object.stdout),
                engines.logs(context, 15)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub(crate) fn state_str<'a>(engines: &'a Engines, pointer: &str) -> &'a str {
    engines
        .state
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("engines.json has no {pointer}: {}", engines.state))
}

/// A HelmRelease in the hub (real-1) whose `kubeConfig` names real-2's Secret: installed by
/// the real helm-controller into real-2, where the real helm lists it, and not into the hub.
/// A release of a chart the repository lacks stays not Ready, and says why.
#[test]
fn flux_in_a_hub_installs_a_helm_release_into_another_cluster() {
    let real = Real::up(2);
    let engines = Engines::up(&real, "hub");
    assert_eq!(
        engines.state["kubeconfig_secrets"]["real-2"], "real-2-kubeconfig",
        "{}",
        engines.state
    );
    let repository = state_str(&engines, "/helm_repository");

    let release = |name: &str, chart: &str| {
        format!(
            r#"
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: {name}
  namespace: {FLUX_NS}
spec:
  interval: 10m
  releaseName: istio-base
  targetNamespace: {NS}
  storageNamespace: {NS}
  kubeConfig:
    secretRef:
      name: real-2-kubeconfig
      key: value
  install:
    createNamespace: true
    remediation:
      retries: 1
  chart:
    spec:
      chart: {chart}
      version: "{TO}"
      interval: 10m
      sourceRef:
        kind: HelmRepository
        name: meshup-charts
  values:
    defaultRevision: default
"#
        )
    };
    apply(
        &real,
        "real-1",
        &format!(
            r#"
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata:
  name: meshup-charts
  namespace: {FLUX_NS}
spec:
  url: {repository}
  interval: 10m
---{}---{}"#,
            release("real-2-istio-base", "base"),
            release("real-2-missing", "no-such-chart"),
        ),
    );

    let (reason, message) = wait_ready(
        &real,
        &engines,
        "real-1",
        "helmrelease",
        "real-2-istio-base",
        "True",
        Duration::from_secs(180),
    );
    eprintln!("real-2-istio-base: Ready ({reason}: {message})");

    let list = real.helm("real-2", &["list", "-n", NS, "-o", "json"]);
    assert!(
        list.status.success(),
        "helm list in real-2: {}",
        text(&list)
    );
    let releases: Value = serde_json::from_slice(&list.stdout).unwrap();
    let base = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "istio-base")
        .unwrap_or_else(|| panic!("no istio-base in real-2's `helm list`: {releases}"));
    assert_eq!(base["status"], "deployed", "{base}");
    assert_eq!(base["chart"], format!("base-{TO}"), "{base}");
    // The hub holds the Flux objects, not the release.
    let hub = real.helm("real-1", &["list", "-A", "-o", "json"]);
    assert!(hub.status.success(), "helm list in real-1: {}", text(&hub));
    assert_eq!(
        serde_json::from_slice::<Value>(&hub.stdout).unwrap(),
        serde_json::json!([]),
        "a release in the hub"
    );
    // What the base chart carries, now in real-2.
    real.kubectl(
        "real-2",
        &["get", "crd", "virtualservices.networking.istio.io"],
    );

    // The chart the repository lacks: its HelmChart fails, the release never turns Ready.
    let chart = format!("{FLUX_NS}-real-2-missing");
    let (reason, message) = wait_ready(
        &real,
        &engines,
        "real-1",
        "helmchart",
        &chart,
        "False",
        Duration::from_secs(60),
    );
    eprintln!("helmchart {chart}: not Ready ({reason}: {message})");
    // source-controller's words for a chart name its repository's index lacks.
    assert_eq!(reason, "InvalidChartReference", "{message}");
    assert!(
        message.contains("no chart name found"),
        "{reason}: {message}"
    );
    let missing = condition(&real, "real-1", "helmrelease", "real-2-missing", "Ready");
    assert!(
        matches!(&missing, Some((s, _, _)) if s == "False"),
        "real-2-missing: {missing:?}"
    );
    eprintln!("real-2-missing: {missing:?}");
    eprintln!("{}", engines.status());
}

/// Commits `files` (path, content) to the engines' Git repository, through its HTTP server.
pub(crate) fn push(engines: &Engines, work: &Path, files: &[(String, String)]) -> String {
    let url = state_str(engines, "/git/repository");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(work)
            .args([
                "-c",
                "user.name=meshup",
                "-c",
                "user.email=meshup@example.invalid",
            ])
            .args(args)
            .env("HOME", work)
            .stdin(Stdio::null())
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {}: {}",
            args.join(" "),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    std::fs::create_dir_all(work).unwrap();
    git(&["init", "--quiet", "--initial-branch=main"]);
    for (path, content) in files {
        let file = work.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }
    git(&["add", "--all"]);
    git(&["commit", "--quiet", "-m", "clusters"]);
    git(&["push", "--quiet", url, "main"]);
    git(&["rev-parse", "HEAD"])
}

/// A GitRepository `fleet` of the engines' Git server, branch main.
pub(crate) fn git_repository(url: &str, interval: &str) -> String {
    format!(
        "
apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata:
  name: fleet
  namespace: {FLUX_NS}
spec:
  url: {url}
  ref:
    branch: main
  interval: {interval}
"
    )
}

/// Flux in every cluster: each cluster's own controllers apply its folder of the Git
/// repository (a GitRepository from the engines' Git server, a Kustomization per cluster).
#[test]
fn flux_in_every_cluster_applies_its_folder_from_git() {
    let real = Real::up(2);
    let engines = Engines::up(&real, "every");
    let files: Vec<(String, String)> = (1..=real.n)
        .map(|i| {
            (
                format!("clusters/real-{i}/configmap.yaml"),
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: engines-smoke\n  namespace: default\ndata:\n  cluster: real-{i}\n"),
            )
        })
        .collect();
    let commit = push(&engines, &real.path("fleet"), &files);
    let url = state_str(&engines, "/git/repository");

    for i in 1..=real.n {
        let context = format!("real-{i}");
        apply(
            &real,
            &context,
            &format!(
                r#"{}---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: {context}
  namespace: {FLUX_NS}
spec:
  sourceRef:
    kind: GitRepository
    name: fleet
  path: ./clusters/{context}
  prune: true
  interval: 10m
"#,
                git_repository(url, "10m")
            ),
        );
    }
    for i in 1..=real.n {
        let context = format!("real-{i}");
        let (reason, message) = wait_ready(
            &real,
            &engines,
            &context,
            "kustomization",
            &context,
            "True",
            Duration::from_secs(120),
        );
        eprintln!("{context} kustomization: Ready ({reason}: {message})");
        assert!(
            message.contains(&commit),
            "{context}: not the pushed commit {commit}: {message}"
        );
        let cm = real.json(
            &context,
            &["get", "configmap", "-n", "default", "engines-smoke"],
        );
        assert_eq!(cm["data"]["cluster"], context.as_str(), "{cm}");
    }
    eprintln!("{}", engines.status());
}

/// Argo CD's own CRDs (from the argo-cd module) take a parent Application and a child with a
/// sync wave, ignoreDifferences and sync options, as a server-side dry run; one without a
/// project is refused, so the schema is really judging.
#[test]
fn argocd_crds_accept_an_application_with_sync_waves() {
    let real = Real::up(1);
    let engines = Engines::up(&real, "hub");
    let git = state_str(&engines, "/git/repository");
    let charts = state_str(&engines, "/helm_repository");
    let applications = format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: real-1
  namespace: argocd
spec:
  project: default
  source:
    repoURL: {git}
    targetRevision: main
    path: argocd/real-1
  destination:
    server: https://kubernetes.default.svc
    namespace: argocd
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
---
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: real-1-istiod
  namespace: argocd
  annotations:
    argocd.argoproj.io/sync-wave: "2"
  finalizers:
  - resources-finalizer.argocd.argoproj.io
spec:
  project: default
  source:
    repoURL: {charts}
    chart: istiod
    targetRevision: "{TO}"
    helm:
      releaseName: istiod
      valuesObject:
        global:
          meshID: mesh1
  destination:
    server: https://kubernetes.default.svc
    namespace: {NS}
  ignoreDifferences:
  - group: admissionregistration.k8s.io
    kind: ValidatingWebhookConfiguration
    jqPathExpressions:
    - .webhooks[]?.failurePolicy
    - .webhooks[]?.clientConfig.caBundle
  - group: admissionregistration.k8s.io
    kind: MutatingWebhookConfiguration
    jqPathExpressions:
    - .webhooks[]?.clientConfig.caBundle
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
    syncOptions:
    - CreateNamespace=true
    - ServerSideApply=true
    - RespectIgnoreDifferences=true
"#
    );
    let out = real.kubectl_stdin(
        "real-1",
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &applications,
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("application.argoproj.io/real-1-istiod serverside-applied (server dry run)"),
        "{said}"
    );

    let no_project = applications.replacen("  project: default\n", "", 1);
    let out = real.kubectl_stdin(
        "real-1",
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &no_project,
    );
    assert!(
        !out.status.success(),
        "an Application without a project was accepted: {}",
        text(&out)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("spec.project: Required value"), "{said}");
    // A dry run stores nothing.
    let list = real.json(
        "real-1",
        &["get", "applications.argoproj.io", "-n", "argocd"],
    );
    assert_eq!(names(&list), Vec::<String>::new());
}

/// Waits until every HelmRelease `names` in the hub is Ready; returns how long it took.
pub(crate) fn wait_releases(
    real: &Real,
    engines: &Engines,
    names: &[String],
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    for name in names {
        let left = timeout.saturating_sub(started.elapsed());
        let (reason, _) = wait_ready(real, engines, "real-1", "helmrelease", name, "True", left);
        eprintln!("{name}: Ready ({reason}) after {:.1?}", started.elapsed());
    }
    started.elapsed()
}

/// istiod's container env in `context`, as name=value pairs.
pub(crate) fn istiod_env(real: &Real, context: &str) -> Vec<String> {
    let deployment = real.json(context, &["get", "deployment", "istiod", "-n", NS]);
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap_or_default(),
                e["value"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// A mesh file `name` of the real clusters at `version`, whose charts come from the engines'
/// chart repository (an engine cannot read a local chart directory).
pub(crate) fn fleet_mesh_file(real: &Real, engines: &Engines, name: &str, version: &str) -> String {
    let repository = state_str(engines, "/helm_repository").to_string();
    let mesh = real.mesh_file(name, version, None, "");
    let local = format!("charts: {}", real.charts(version).display());
    let text = std::fs::read_to_string(&mesh).unwrap();
    assert!(text.contains(&local), "{text}");
    std::fs::write(
        &mesh,
        text.replace(&local, &format!("charts: {repository}")),
    )
    .unwrap();
    mesh
}

/// `meshup export --format flux` of `mesh` into `work/meshup` (its path in the Git repository
/// `./meshup`, its Kustomizations reading `GitRepository/fleet`, reconciled every 20 s), with
/// `extra` arguments (`--layout hub`, `--upgrade PHASE`).
pub(crate) fn export_flux(real: &Real, work: &Path, mesh: &str, extra: &[&str]) -> Run {
    let started = Instant::now();
    let out = work.join("meshup");
    let mut args = vec![
        "export",
        "--format",
        "flux",
        "--out",
        out.to_str().unwrap(),
        "--path",
        "./meshup",
        "--source",
        "GitRepository/fleet",
        "--interval",
        "20s",
        "-f",
        mesh,
    ];
    args.extend_from_slice(extra);
    let run = real.meshup(&args).expect(0);
    eprintln!("export {} in {:.1?}", extra.join(" "), started.elapsed());
    run
}

/// Flux in `context` pointed at the export's `folder` (`hub`, or a cluster's) in the engines'
/// Git server: a GitRepository `fleet` and a Kustomization `meshup` (pruning).
pub(crate) fn point_flux_at(real: &Real, engines: &Engines, context: &str, folder: &str) {
    let url = state_str(engines, "/git/repository");
    apply(
        real,
        context,
        &format!(
            r#"{}---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: meshup
  namespace: {FLUX_NS}
spec:
  sourceRef:
    kind: GitRepository
    name: fleet
  path: ./meshup/{folder}
  prune: true
  interval: 20s
"#,
            git_repository(url, "10s")
        ),
    );
}

/// The whole hand-off on the real engine: `meshup export --format flux --layout hub` pushed to
/// Git and pointed at by one Kustomization in the hub; `meshup install --only trust --hub`
/// puts trust in place and gives the hub its kubeconfig Secrets; the real helm-controller
/// installs every release into both clusters; `meshup link` and `verify` pass with the real
/// istiods; status names Flux and install refuses to take over; a hand edit of istiod is
/// reverted by drift detection while istiod's own webhook patches stay; a second export with a
/// new value reconciles.
#[test]
fn meshup_export_runs_on_flux_in_a_hub_and_meshup_links_and_verifies_it() {
    let real = Real::up(2);
    let engines = Engines::up(&real, "hub");
    let mesh = fleet_mesh_file(&real, &engines, "mesh.yaml", FROM);
    let work = real.path("fleet");
    let export = |mesh: &str| export_flux(&real, &work, mesh, &["--layout", "hub"]);
    export(&mesh);
    let commit = push(&engines, &work, &[]);
    point_flux_at(&real, &engines, "real-1", "hub");
    let releases: Vec<String> = ["cluster1", "cluster2"]
        .iter()
        .flat_map(|c| [format!("{c}-istio-base"), format!("{c}-istiod")])
        .collect();
    // Trust first: without the gate, the engine installs nothing in a cluster.
    let started = Instant::now();
    let mut waiting = None;
    real.until(
        "the hub's HelmReleases wait for the trust gate",
        Duration::from_secs(120),
        || {
            waiting = condition(
                &real,
                "real-1",
                "helmrelease",
                "cluster1-istio-base",
                "Ready",
            );
            // The gate, or the kubeconfig Secret: both come with `install --only trust --hub`.
            matches!(&waiting, Some((s, _, m)) if s == "False"
            && (m.contains("meshup-trust-cluster1") || m.contains("meshup-kubeconfig-cluster1")))
        },
    );
    eprintln!(
        "cluster1-istio-base waits for the gate after {:.1?}: {waiting:?}",
        started.elapsed()
    );
    for context in ["real-1", "real-2"] {
        let list = real.helm(context, &["list", "-A", "-o", "json"]);
        assert_eq!(
            serde_json::from_slice::<Value>(&list.stdout).unwrap(),
            serde_json::json!([]),
            "{context}: a release before the trust gate"
        );
    }

    let run = real
        .meshup(&["install", "--only", "trust", "--hub", "real-1", "-f", &mesh])
        .expect(0);
    for i in 1..=real.n {
        let secret = real.json(
            "real-1",
            &[
                "get",
                "secret",
                "-n",
                FLUX_NS,
                &format!("meshup-kubeconfig-cluster{i}"),
            ],
        );
        let kubeconfig = decode(&secret["data"]["value"]);
        let token = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .expect("a token in the kubeconfig");
        assert!(!run.all().contains(token), "the fleet token was printed");
    }
    let took = wait_releases(&real, &engines, &releases, Duration::from_secs(300));
    eprintln!("every HelmRelease Ready {took:.1?} after the trust gate (commit {commit})");

    real.meshup(&["link", "-f", &mesh]).expect(0);
    let verify = real
        .meshup(&["verify", "--wait", "2m", "-f", &mesh])
        .expect(0);
    eprintln!("{}", verify.stdout);
    let status = real.meshup(&["status", "-f", &mesh]);
    assert!(
        status
            .stdout
            .contains("Flux (HelmRelease flux-system/cluster1-istiod)"),
        "{}",
        status.all()
    );
    let refused = real.meshup(&["install", "-f", &mesh]).expect(2);
    assert!(
        refused.stderr.contains("Flux") && refused.stderr.contains("--take-over"),
        "{}",
        refused.all()
    );

    // Hand edits of istiod: a value the chart renders is changed, and a variable added.
    // helm-controller's drift detection (a server-side dry-run apply of the release) puts the
    // changed value back; the added one stays, since no field of the release holds it (that is
    // what `meshup diff` calls drift); istiod's own webhook patches (caBundle) are ignored.
    let rendered = istiod_env(&real, "real-2")
        .into_iter()
        .find(|e| e.starts_with("PILOT_ENABLE_ANALYSIS=") || e.starts_with("PILOT_TRACE_SAMPLING="))
        .expect("istiod renders PILOT_ENABLE_ANALYSIS or PILOT_TRACE_SAMPLING");
    let (name, _) = rendered.split_once('=').unwrap();
    let edited = format!("{name}=9");
    real.kubectl(
        "real-2",
        &[
            "set",
            "env",
            "deployment/istiod",
            "-n",
            NS,
            &edited,
            "MESHUP_HAND_ADDED=1",
        ],
    );
    let bundle = |context: &str| {
        let hooks = real.json(
            context,
            &[
                "get",
                "mutatingwebhookconfiguration",
                "istio-sidecar-injector",
            ],
        );
        hooks["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let patched = bundle("real-2");
    assert!(!patched.is_empty(), "istiod has not patched its injector");
    let started = Instant::now();
    real.until(
        "drift detection reverts the hand edit",
        Duration::from_secs(120),
        || istiod_env(&real, "real-2").contains(&rendered),
    );
    eprintln!(
        "{edited} reverted to {rendered} after {:.1?}",
        started.elapsed()
    );
    assert!(
        istiod_env(&real, "real-2").contains(&"MESHUP_HAND_ADDED=1".to_string()),
        "drift detection removed a variable no field of the release holds"
    );
    assert_eq!(
        bundle("real-2"),
        patched,
        "the engine reverted istiod's caBundle"
    );

    // A second export with a new value: the engine rolls it out.
    let text = std::fs::read_to_string(&mesh).unwrap();
    std::fs::write(
        &mesh,
        text.replacen(
            "clusters:\n",
            "values:\n  pilot:\n    env:\n      MESHUP_EXPORTED: \"2\"\nclusters:\n",
            1,
        ),
    )
    .unwrap();
    export(&mesh);
    let second = push(&engines, &work, &[]);
    assert_ne!(second, commit);
    let started = Instant::now();
    real.until(
        "the new value reaches both istiods",
        Duration::from_secs(180),
        || {
            ["real-1", "real-2"]
                .iter()
                .all(|c| istiod_env(&real, c).contains(&"MESHUP_EXPORTED=2".to_string()))
        },
    );
    eprintln!("second export reconciled after {:.1?}", started.elapsed());
    real.meshup(&["verify", "--wait", "2m", "-f", &mesh])
        .expect(0);
    eprintln!("{}", engines.status());
}
