//! The helm calls meshup makes, one function per verb. `connect` is the only place that adds
//! `--kube-context` and `--kubeconfig`.

use std::path::Path;
use std::time::Duration;

use crate::model::chart::{Chart, Location};
use crate::tools::step::{Step, Target, Tool};
use crate::trust::sensitive::Sensitive;

/// `helm version --template {{.Version}}`: prints e.g. `v3.19.0`.
pub fn version() -> Step {
    Step {
        cluster: String::new(),
        tool: Tool::Helm,
        args: words(&["version", "--template", "{{.Version}}"]),
        stdin: None,
    }
}

/// Where helm reads a release's values from.
#[derive(Debug, Clone)]
pub enum Values<'a> {
    /// A values file (the `plan` script's form, after `meshup render`).
    File(&'a Path),
    /// Standard input (`--values -`), so that `install` writes no file.
    Stdin(Vec<u8>),
}

/// What to install: a release of a chart into a namespace, with its values.
#[derive(Debug, Clone)]
pub struct Install<'a> {
    pub release: &'a str,
    pub chart: &'a Chart,
    pub namespace: &'a str,
    pub values: Values<'a>,
    /// Helm 4's server-side apply takes over fields another manager owns (istiod owns its
    /// webhooks' `failurePolicy` once it runs; istio/istio#59367) instead of failing.
    pub force_conflicts: bool,
}

/// `helm upgrade --install`, waiting until the release's resources are ready.
pub fn upgrade_install(target: &Target, install: Install, timeout: Duration) -> Step {
    let Install {
        release,
        chart,
        namespace,
        values,
        force_conflicts,
    } = install;
    let mut args = words(&["upgrade", "--install", release]);
    push_chart(&mut args, chart);
    args.extend(words(&[
        "--namespace",
        namespace,
        "--create-namespace",
        "--values",
    ]));
    let stdin = match values {
        Values::File(path) => {
            args.push(path.display().to_string());
            None
        }
        Values::Stdin(bytes) => {
            args.push("-".to_string());
            Some(Sensitive::new(bytes))
        }
    };
    args.extend([
        "--wait".to_string(),
        "--timeout".to_string(),
        go_duration(timeout),
    ]);
    if force_conflicts {
        args.push("--force-conflicts".to_string());
    }
    let mut step = connect(target, args);
    step.stdin = stdin;
    step
}

/// `helm template RELEASE CHART --namespace NS --values -`: what a chart renders with these
/// values, printed (revision tags are applied from it, as Istio's Helm upgrade guide does).
pub fn template(
    target: &Target,
    release: &str,
    chart: &Chart,
    namespace: &str,
    values: Vec<u8>,
) -> Step {
    let mut args = words(&["template", release]);
    push_chart(&mut args, chart);
    args.extend(words(&["--namespace", namespace, "--values", "-"]));
    Step {
        cluster: target.cluster.clone(),
        tool: Tool::Helm,
        args,
        stdin: Some(Sensitive::new(values)),
    }
}

/// `helm template RELEASE CHART --namespace NS --values - [--is-upgrade]`: the manifest an
/// install (or, with `is_upgrade`, an upgrade) of the release renders, with the same chart
/// reference and values `upgrade_install` uses. No cluster is contacted.
pub fn render(
    target: &Target,
    release: &str,
    chart: &Chart,
    namespace: &str,
    values: Vec<u8>,
    is_upgrade: bool,
) -> Step {
    let mut step = template(target, release, chart, namespace, values);
    if is_upgrade {
        step.args.push("--is-upgrade".into());
    }
    step
}

/// The chart's address and, from a repository, its version.
fn push_chart(args: &mut Vec<String>, chart: &Chart) {
    match &chart.location {
        Location::Repo(url) => {
            args.push(chart.name.clone());
            args.extend(["--repo".to_string(), url.clone()]);
        }
        Location::Oci(reference) => args.push(reference.clone()),
        Location::Local(path) => args.push(path.display().to_string()),
    }
    // A local chart is the version it is; --version only selects from a repository.
    if let (Some(version), false) = (&chart.version, matches!(chart.location, Location::Local(_))) {
        args.extend(["--version".to_string(), version.clone()]);
    }
}

/// `helm list -o json` in one namespace: every live release with its status and chart.
/// The state flags are spelled out because Helm 4 dropped `--all` and Helm 3 shows only
/// deployed releases without them.
pub fn list(target: &Target, namespace: &str) -> Step {
    connect(
        target,
        words(&[
            "list",
            "--namespace",
            namespace,
            "--deployed",
            "--failed",
            "--pending",
            "--uninstalling",
            "--output",
            "json",
        ]),
    )
}

/// `helm get values -o json`: the user-supplied values of the deployed revision.
pub fn get_values(target: &Target, release: &str, namespace: &str) -> Step {
    connect(
        target,
        words(&[
            "get",
            "values",
            release,
            "--namespace",
            namespace,
            "--output",
            "json",
        ]),
    )
}

/// `helm uninstall --wait`.
pub fn uninstall(target: &Target, release: &str, namespace: &str, timeout: Duration) -> Step {
    let mut args = words(&[
        "uninstall",
        release,
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
    ]);
    args.push(go_duration(timeout));
    connect(target, args)
}

/// A private repository configuration under meshup's cache, so the user's `helm repo list`
/// is never touched.
pub struct RepoConfig<'a> {
    pub config: &'a Path,
    pub cache: &'a Path,
}

impl RepoConfig<'_> {
    fn flags(&self) -> Vec<String> {
        vec![
            "--repository-config".into(),
            self.config.display().to_string(),
            "--repository-cache".into(),
            self.cache.display().to_string(),
        ]
    }
}

/// `helm repo add NAME URL --force-update`: reads the repository's index once.
pub fn repo_add(name: &str, url: &str, repos: &RepoConfig) -> Step {
    let mut args = words(&["repo", "add", name, url, "--force-update"]);
    args.extend(repos.flags());
    local(args)
}

/// `helm pull CHART [--version V] --destination DIR`: downloads one chart archive (from a
/// repository added with [`repo_add`], or an `oci://` reference).
pub fn pull(
    chart: &str,
    version: Option<&str>,
    destination: &Path,
    repos: Option<&RepoConfig>,
) -> Step {
    let mut args = words(&["pull", chart]);
    if let Some(version) = version {
        args.extend(["--version".to_string(), version.to_string()]);
    }
    args.extend([
        "--destination".to_string(),
        destination.display().to_string(),
    ]);
    if let Some(repos) = repos {
        args.extend(repos.flags());
    }
    local(args)
}

/// A helm call that touches no cluster.
fn local(args: Vec<String>) -> Step {
    Step {
        cluster: String::new(),
        tool: Tool::Helm,
        args,
        stdin: None,
    }
}

/// `helm rollback RELEASE --wait`: back to the previous revision (the last deployed one, when
/// an upgrade was left pending).
pub fn rollback(target: &Target, release: &str, namespace: &str, timeout: Duration) -> Step {
    let mut args = words(&[
        "rollback",
        release,
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
    ]);
    args.push(go_duration(timeout));
    connect(target, args)
}

/// The one place that points helm at a cluster.
fn connect(target: &Target, mut args: Vec<String>) -> Step {
    args.extend(["--kube-context".to_string(), target.context.clone()]);
    if let Some(kubeconfig) = &target.kubeconfig {
        args.extend(["--kubeconfig".to_string(), kubeconfig.display().to_string()]);
    }
    Step {
        cluster: target.cluster.clone(),
        tool: Tool::Helm,
        args,
        stdin: None,
    }
}

/// A duration as Go's flag parser reads it (`300s`).
pub fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::chart::Charts;
    use std::path::PathBuf;

    fn target(kubeconfig: Option<&str>) -> Target {
        Target {
            cluster: "cluster1".into(),
            context: "kind-cluster1".into(),
            kubeconfig: kubeconfig.map(PathBuf::from),
        }
    }

    fn install<'a>(chart: &'a Chart, values: Values<'a>) -> Install<'a> {
        Install {
            release: "istiod",
            chart,
            namespace: "istio-system",
            values,
            force_conflicts: false,
        }
    }

    #[test]
    fn repo_charts_use_repo_and_version_flags() {
        let chart = Charts::Repo("https://charts.example".into()).chart("istiod", Some("1.28.1"));
        let file = Path::new("v/cluster1/istiod-values.yaml");
        let step = upgrade_install(
            &target(None),
            install(&chart, Values::File(file)),
            Duration::from_secs(300),
        );
        assert_eq!(
            step.command_line(),
            "helm upgrade --install istiod istiod --repo https://charts.example --version 1.28.1 \
             --namespace istio-system --create-namespace --values v/cluster1/istiod-values.yaml \
             --wait --timeout 300s --kube-context kind-cluster1"
        );
        assert!(step.stdin.is_none());
    }

    #[test]
    fn values_on_stdin_are_read_from_dash() {
        let chart = Charts::Repo("https://charts.example".into()).chart("istiod", None);
        let step = upgrade_install(
            &target(None),
            install(&chart, Values::Stdin(b"pilot: {}\n".to_vec())),
            Duration::from_secs(300),
        );
        assert!(
            step.args.windows(2).any(|w| w == ["--values", "-"]),
            "{step}"
        );
        assert!(!step.args.contains(&"--version".to_string()));
        assert_eq!(step.stdin.unwrap().expose(), b"pilot: {}\n");
    }

    #[test]
    fn oci_and_local_charts_are_addressed_by_reference() {
        let oci =
            Charts::Oci("oci://gcr.io/istio-release/charts".into()).chart("base", Some("1.28.1"));
        let step = upgrade_install(
            &target(Some("/k")),
            install(&oci, Values::File(Path::new("b.yaml"))),
            Duration::from_secs(60),
        );
        assert!(
            step.args
                .contains(&"oci://gcr.io/istio-release/charts/base".to_string())
        );
        assert!(
            step.command_line()
                .ends_with("--kube-context kind-cluster1 --kubeconfig /k")
        );
        let local = Chart {
            name: "base".into(),
            location: Location::Local("charts/base".into()),
            version: Some("1.28.1".into()),
        };
        let step = upgrade_install(
            &target(None),
            install(&local, Values::File(Path::new("b.yaml"))),
            Duration::from_secs(60),
        );
        assert!(step.args.contains(&"charts/base".to_string()));
        assert!(!step.args.contains(&"--version".to_string()));
    }

    #[test]
    fn every_cluster_call_names_its_context() {
        let t = target(None);
        for step in [
            list(&t, "ns"),
            get_values(&t, "istiod", "ns"),
            uninstall(&t, "istiod", "ns", Duration::from_secs(5)),
        ] {
            assert!(
                step.args
                    .windows(2)
                    .any(|w| w == ["--kube-context", "kind-cluster1"]),
                "{step}"
            );
        }
        assert!(!version().args.contains(&"--kube-context".to_string()));
    }
}
