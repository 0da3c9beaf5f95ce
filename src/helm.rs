//! The helm calls meshup makes, one function per verb. `connect` is the only place that adds
//! `--kube-context` and `--kubeconfig`.

use std::path::Path;
use std::time::Duration;

use crate::mesh::Charts;
use crate::step::{Step, Target, Tool};

/// The two Istio charts meshup installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chart {
    Base,
    Istiod,
}

impl Chart {
    /// The chart's name in Istio's repository.
    pub fn name(self) -> &'static str {
        match self {
            Chart::Base => "base",
            Chart::Istiod => "istiod",
        }
    }
}

/// Whether `helm list`'s `chart` field (e.g. `istiod-1.28.1`) is `chart` at `version`
/// (a leading `v` is ignored on both sides).
pub fn chart_is_version(listed: &str, chart: Chart, version: &str) -> bool {
    listed
        .trim_start_matches(chart.name())
        .trim_start_matches('-')
        .trim_start_matches('v')
        == version.trim_start_matches('v')
}

/// `helm version --template {{.Version}}`: prints e.g. `v3.19.0`.
pub fn version() -> Step {
    Step {
        cluster: String::new(),
        tool: Tool::Helm,
        args: words(&["version", "--template", "{{.Version}}"]),
        stdin: None,
        mutates: false,
    }
}

/// What to install: a release of one of the charts, from a chart source, with a values file.
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    pub name: &'a str,
    pub chart: Chart,
    pub charts: &'a Charts,
    pub version: Option<&'a str>,
    pub namespace: &'a str,
    pub values_file: &'a Path,
}

/// `helm upgrade --install`, waiting until the release's resources are ready.
pub fn upgrade_install(target: &Target, release: &Release, timeout: Duration) -> Step {
    let Release {
        name,
        chart,
        charts,
        version,
        namespace,
        values_file,
    } = *release;
    let mut args = words(&["upgrade", "--install", name]);
    match charts {
        Charts::Repo(url) => {
            args.push(chart.name().to_string());
            args.extend(["--repo".to_string(), url.clone()]);
        }
        Charts::Oci(prefix) => args.push(format!("{prefix}/{}", chart.name())),
        Charts::Local { base, istiod, .. } => args.push(
            match chart {
                Chart::Base => base,
                Chart::Istiod => istiod,
            }
            .display()
            .to_string(),
        ),
    }
    // A local chart is the version it is; --version only selects from a repository.
    if let (Some(version), false) = (version, matches!(charts, Charts::Local { .. })) {
        args.extend(["--version".to_string(), version.to_string()]);
    }
    args.extend(words(&[
        "--namespace",
        namespace,
        "--create-namespace",
        "--values",
    ]));
    args.push(values_file.display().to_string());
    args.extend([
        "--wait".to_string(),
        "--timeout".to_string(),
        go_duration(timeout),
    ]);
    connect(target, args, true)
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
        false,
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
        false,
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
    connect(target, args, true)
}

/// The one place that points helm at a cluster.
fn connect(target: &Target, mut args: Vec<String>, mutates: bool) -> Step {
    args.extend(["--kube-context".to_string(), target.context.clone()]);
    if let Some(kubeconfig) = &target.kubeconfig {
        args.extend(["--kubeconfig".to_string(), kubeconfig.display().to_string()]);
    }
    Step {
        cluster: target.cluster.clone(),
        tool: Tool::Helm,
        args,
        stdin: None,
        mutates,
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
    use std::path::PathBuf;

    fn target(kubeconfig: Option<&str>) -> Target {
        Target {
            cluster: "cluster1".into(),
            context: "kind-cluster1".into(),
            kubeconfig: kubeconfig.map(PathBuf::from),
        }
    }

    #[test]
    fn repo_charts_use_repo_and_version_flags() {
        let charts = Charts::Repo("https://charts.example".into());
        let release = Release {
            name: "istiod",
            chart: Chart::Istiod,
            charts: &charts,
            version: Some("1.28.1"),
            namespace: "istio-system",
            values_file: Path::new("v/cluster1/istiod-values.yaml"),
        };
        let step = upgrade_install(&target(None), &release, Duration::from_secs(300));
        assert_eq!(
            step.command_line(),
            "helm upgrade --install istiod istiod --repo https://charts.example --version 1.28.1 \
             --namespace istio-system --create-namespace --values v/cluster1/istiod-values.yaml \
             --wait --timeout 300s --kube-context kind-cluster1"
        );
        assert!(step.mutates);
    }

    #[test]
    fn oci_and_local_charts_are_addressed_by_reference() {
        let oci_charts = Charts::Oci("oci://gcr.io/istio-release/charts".into());
        let base = |charts| Release {
            name: "istio-base",
            chart: Chart::Base,
            charts,
            version: Some("1.28.1"),
            namespace: "istio-system",
            values_file: Path::new("b.yaml"),
        };
        let oci = upgrade_install(
            &target(Some("/k")),
            &base(&oci_charts),
            Duration::from_secs(60),
        );
        assert!(
            oci.args
                .contains(&"oci://gcr.io/istio-release/charts/base".to_string())
        );
        assert!(
            oci.command_line()
                .ends_with("--kube-context kind-cluster1 --kubeconfig /k")
        );
        let local_charts = Charts::Local {
            base: "charts/base".into(),
            istiod: "charts/istiod-1.28.1.tgz".into(),
            version: Some("1.28.1".into()),
        };
        let local = upgrade_install(&target(None), &base(&local_charts), Duration::from_secs(60));
        assert!(local.args.contains(&"charts/base".to_string()));
        assert!(!local.args.contains(&"--version".to_string()));
    }

    #[test]
    fn listed_charts_compare_by_version() {
        assert!(chart_is_version("istiod-1.28.1", Chart::Istiod, "1.28.1"));
        assert!(chart_is_version("base-1.28.1", Chart::Base, "v1.28.1"));
        assert!(!chart_is_version("istiod-1.27.0", Chart::Istiod, "1.28.1"));
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
