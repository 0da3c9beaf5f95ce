//! What the commands share: the session (mesh, tools, runner), checks, trust, confirmation
//! and the summary.

use super::output::print_json;
use super::prelude::*;

/// A validated mesh with the tools to act on it.
pub(super) struct Session {
    pub(super) mesh: Mesh,
    pub(super) global_kubeconfig: Option<PathBuf>,
    /// Clusters changed at once.
    pub(super) jobs: usize,
    /// Clusters read at once.
    pub(super) read_jobs: usize,
    pub(super) retries: u32,
    pub(super) wait_for_lock: Option<std::time::Duration>,
    pub(super) timeout: std::time::Duration,
    pub(super) helm: Result<PathBuf, String>,
    pub(super) kubectl: Result<PathBuf, String>,
    pub(super) runner: ProcessRunner,
    pub(super) reporter: Arc<Reporter>,
    /// The snapshots read-only walks share within this command.
    read_caches: Arc<crate::engine::run::Caches>,
}

impl Session {
    /// Validates everything (mesh file, flags, kubeconfig contexts) before any call.
    pub(super) fn open(
        global: &GlobalArgs,
        mesh_args: &MeshArgs,
        reporter: &Arc<Reporter>,
    ) -> Result<Self, Error> {
        let kubeconfig = Kubeconfig::load(global.kubeconfig.as_deref())?;
        let mesh = mesh::load(mesh_args, Some(&kubeconfig))?;
        Ok(Self::with_mesh(global, mesh, reporter))
    }

    /// A session for `mesh`, however it was made (a file, flags, or discovered).
    pub(super) fn with_mesh(global: &GlobalArgs, mesh: Mesh, reporter: &Arc<Reporter>) -> Self {
        let helm = preflight::locate(Tool::Helm, global.helm.as_deref());
        let kubectl = preflight::locate(Tool::Kubectl, global.kubectl.as_deref());
        let runner = ProcessRunner {
            helm: helm.clone().unwrap_or_else(|_| PathBuf::from("helm")),
            kubectl: kubectl.clone().unwrap_or_else(|_| PathBuf::from("kubectl")),
            timeout: global.timeout,
            grace: crate::tools::runner::GRACE,
            reporter: reporter.clone(),
        };
        let clusters = mesh.clusters.len();
        let jobs = Jobs::resolve(global.jobs, clusters, DEFAULT_JOBS);
        let read_jobs = Jobs::resolve(global.jobs, clusters, DEFAULT_READ_JOBS);
        Self {
            mesh,
            global_kubeconfig: global.kubeconfig.clone(),
            jobs,
            read_jobs,
            retries: global.retries,
            wait_for_lock: global.wait_for_lock,
            timeout: global.timeout,
            helm,
            kubectl,
            runner,
            reporter: reporter.clone(),
            read_caches: Default::default(),
        }
    }

    pub(super) fn require_tools(&self) -> Result<(), Error> {
        for found in [&self.helm, &self.kubectl] {
            if let Err(message) = found {
                return Err(Error::MissingTool(message.clone()));
            }
        }
        Ok(())
    }

    /// For commands that change clusters.
    pub(super) fn run(&self) -> Run<'_> {
        Run {
            mesh: &self.mesh,
            runner: &self.runner,
            reporter: &self.reporter,
            jobs: self.jobs,
            timeout: self.timeout,
            kubeconfig: self.global_kubeconfig.clone(),
            retry: exec::Retry {
                times: self.retries,
                ..exec::Retry::DEFAULT
            },
            locks: None,
            caches: Some(Default::default()),
        }
    }

    /// Runs `f` holding every cluster's lock.
    pub(super) fn locked<R>(&self, command: &str, f: impl FnOnce(&Run) -> R) -> Result<R, Error> {
        let run = self.run();
        Ok(lock::hold(&run, command, self.wait_for_lock, |locks| {
            // Snapshots are read once the locks are held: nothing changes them meanwhile.
            f(&Run {
                locks: Some(locks),
                caches: Some(Default::default()),
                ..run.clone()
            })
        })?)
    }

    /// For commands that only read: they may fan out wider, and share one snapshot per
    /// cluster.
    pub(super) fn read(&self) -> Run<'_> {
        Run {
            jobs: self.read_jobs,
            caches: Some(self.read_caches.clone()),
            ..self.run()
        }
    }

    /// When the mesh file names no revision, the one the clusters run (after `meshup
    /// upgrade`, `istiod-1-29-0`), so that the command finds istiod where it runs.
    pub(super) fn settle_revision(&mut self) {
        if self.mesh.revision.is_some() {
            return;
        }
        let found = crate::flows::upgrade::running_everywhere(&self.read());
        self.mesh.revision = crate::flows::upgrade::settled(&found);
    }

    /// Tools, then (if kubectl is there) every cluster, with its Kubernetes version.
    pub(super) fn preflight(&self, topology: &Topology) -> Vec<Finding> {
        let mut checks = self.tool_checks().checks;
        if self.kubectl.is_err() {
            return checks;
        }
        checks.extend(preflight::cluster_checks(&self.read(), topology, true));
        checks
    }

    /// What a changing command needs before it reaches a cluster: the local tools checked
    /// (a failure reported, nothing changed) and every chart the mesh needs fetched once and
    /// pinned. Returns the tools (`helm_major` decides `--force-conflicts`).
    pub(super) fn tools_and_charts(&mut self) -> Result<preflight::Tools, Error> {
        let tools = self.tool_checks();
        if tools.checks.iter().any(Finding::is_failure) {
            report_checks(&self.reporter, &tools.checks)?;
            self.reporter
                .line("error: preflight failed; nothing was changed");
            return Err(Error::Reported);
        }
        warn_checks(&self.reporter, &tools.checks);
        self.require_tools()?;
        let fetched = pull::fetch(
            &self.runner,
            &self.reporter,
            &self.mesh.charts,
            self.mesh.version.as_deref(),
            &self.mesh.charts_needed(),
            &pull::cache_dir(),
        )?;
        self.mesh.charts = fetched.charts;
        if let Some(version) = fetched.pinned {
            self.mesh.version = Some(version);
        }
        Ok(tools)
    }

    /// The local helm and kubectl: found, and of a version meshup works with.
    pub(super) fn tool_checks(&self) -> preflight::Tools {
        let mut tools = match (&self.helm, &self.kubectl) {
            (Ok(helm), Ok(kubectl)) => preflight::tool_checks(&self.runner, helm, kubectl),
            _ => preflight::Tools::default(),
        };
        let missing = [("helm", &self.helm), ("kubectl", &self.kubectl)]
            .into_iter()
            .filter_map(|(name, found)| {
                found
                    .as_ref()
                    .err()
                    .map(|message| Finding::fail(None, name, message.clone()))
            });
        tools.checks.splice(0..0, missing);
        tools
    }
}

/// Prints the warnings among `checks`.
pub(super) fn warn_checks(reporter: &Reporter, checks: &[Finding]) {
    for check in checks.iter().filter(|c| c.level == Level::Warn) {
        reporter.warn(&format!(
            "{}{}",
            check
                .cluster
                .as_deref()
                .map(|c| format!("[{c}] "))
                .unwrap_or_default(),
            check.sentence()
        ));
    }
}

pub(super) fn report_checks(reporter: &Reporter, checks: &[Finding]) -> Result<(), Error> {
    if reporter.mode() == Mode::Json {
        let ok = !checks.iter().any(Finding::is_failure);
        print_json(&serde_json::json!({ "ok": ok, "checks": checks }))
    } else {
        preflight::print(reporter, checks);
        Ok(())
    }
}

/// Every name must be a cluster of the mesh file.
pub(super) fn check_cluster_names(
    mesh: &Mesh,
    what: &str,
    names: &[String],
) -> Result<(), InputError> {
    let known: Vec<&str> = mesh.clusters.iter().map(|c| c.name.as_str()).collect();
    let problems: Vec<String> = names
        .iter()
        .filter(|n| !known.contains(&n.as_str()))
        .map(|n| {
            format!(
                "{what}: `{n}` is not a cluster of the mesh (its clusters: {})",
                known.join(", ")
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InputError {
            source: mesh.source.clone(),
            problems,
        })
    }
}

/// A primary cannot leave while a remote it runs istiod for stays.
pub(super) fn check_primaries_leave_with_remotes(
    mesh: &Mesh,
    leaving: &[String],
) -> Result<(), InputError> {
    let problems: Vec<String> = leaving
        .iter()
        .flat_map(|primary| {
            mesh.remotes_of(primary)
                .filter(|r| !leaving.contains(&r.name))
                .map(move |r| {
                    format!(
                        "CLUSTER: `{primary}` runs istiod for remote `{}`; take `{}` out too, or give it another primary first",
                        r.name, r.name
                    )
                })
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InputError {
            source: mesh.source.clone(),
            problems,
        })
    }
}

/// Creates or loads the CA material the mesh's `trust` asks for.
pub(super) fn prepare_trust(
    reporter: &Reporter,
    mesh: &Mesh,
    key_type: KeyType,
) -> Result<Option<Trust>, Error> {
    let clusters: Vec<(&str, &str)> = mesh
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), mesh.namespace.as_str()))
        .collect();
    let dir = &mesh.trust.dir;
    match mesh.trust.mode {
        TrustMode::None => Ok(None),
        TrustMode::Generate => {
            let (trust, written) = trust::generate(dir, &clusters, key_type)?;
            if !written.is_empty() {
                reporter.info(&format!(
                    "trust: wrote {} CA file(s) under {} (keys mode 0600)",
                    written.len(),
                    dir.display()
                ));
            }
            Ok(Some(trust))
        }
        TrustMode::Provided => Ok(Some(trust::load_provided(dir, &clusters)?)),
    }
}

pub(super) fn finish(reporter: &Reporter, command: &str, summary: &Summary) -> Result<(), Error> {
    if reporter.mode() == Mode::Json {
        let mut report = serde_json::json!({ "command": command, "ok": summary.ok, "interrupted": summary.interrupted, "clusters": summary.clusters });
        if !summary.departed.is_empty() {
            report["departed"] = serde_json::json!(summary.departed);
        }
        if !summary.gates.is_empty() {
            report["gates"] = serde_json::json!(summary.gates);
        }
        if !summary.rotated.is_empty() {
            report["rotated"] = serde_json::json!(summary.rotated);
        }
        print_json(&report)?;
    } else {
        for line in rotate::render(&summary.rotated) {
            reporter.line(&line);
        }
        exec::print_summary(reporter, command, summary);
    }
    if summary.interrupted {
        Err(Error::Interrupted)
    } else if summary.ok {
        Ok(())
    } else {
        Err(Error::Reported)
    }
}

pub(super) fn confirm(mesh: &Mesh, leaving: &[String], purge_crds: bool) -> Result<bool, Error> {
    let crds = if purge_crds {
        ", and Istio's CRDs with all Istio config"
    } else {
        ""
    };
    let question = if leaving.is_empty() {
        let names: Vec<&str> = mesh.clusters.iter().map(|c| c.name.as_str()).collect();
        format!(
            "Remove Istio (mesh `{}`, namespace `{}`{crds}) from {}? [y/N] ",
            mesh.mesh_id,
            mesh.namespace,
            names.join(", ")
        )
    } else {
        let staying: Vec<&str> = mesh
            .clusters
            .iter()
            .filter(|c| !leaving.contains(&c.name))
            .map(|c| c.name.as_str())
            .collect();
        format!(
            "Take {} out of mesh `{}`: remove its remote secrets from {}, remove Istio (namespace `{}`{crds}) from it, and rotate the reader tokens it held? [y/N] ",
            leaving.join(", "),
            mesh.mesh_id,
            staying.join(", "),
            mesh.namespace,
        )
    };
    let mut err = std::io::stderr().lock();
    // A terminal that cannot be written to cannot be asked: take it as "no".
    if err
        .write_all(question.as_bytes())
        .and_then(|()| err.flush())
        .is_err()
    {
        return Ok(false);
    }
    let mut answer = String::new();
    crate::tools::runner::PROMPTING.store(true, std::sync::atomic::Ordering::SeqCst);
    let read = std::io::stdin().read_line(&mut answer);
    crate::tools::runner::PROMPTING.store(false, std::sync::atomic::Ordering::SeqCst);
    Ok(read.is_ok() && matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// The rotations asked for with `--rotate`: the named clusters, all when it names none.
pub(super) fn rotation_plan<'t>(
    mesh: &Mesh,
    topology: &Topology,
    rotate: Option<&[String]>,
) -> plan::Plan<'t> {
    match rotate {
        None => plan::Plan::default(),
        Some(names) => {
            let names = (!names.is_empty()).then_some(names);
            rotate::plan(mesh, topology, &rotate::sources(mesh, topology, names))
        }
    }
}

/// After a successful link, when clusters left the mesh file: every token rotated with
/// `--prune`, a warning without (which clusters left is known only once the link ran).
pub(super) fn after_link(run: &Run, topology: &Topology, summary: Summary, prune: bool) -> Summary {
    if !summary.ok || summary.departed.is_empty() {
        return summary;
    }
    let departed = summary.departed.join(", ");
    if !prune {
        run.reporter.warn(&format!(
            "{departed} left the mesh file: its remote secrets were removed from the peers, but it may still hold their reader tokens, which stay valid; run `meshup link --rotate` to revoke them (or re-run with --prune)"
        ));
        return summary;
    }
    run.reporter.info(&format!(
        "{departed} left the mesh file and may still hold its peers' reader tokens: rotating them all"
    ));
    let sources = rotate::sources(run.mesh, topology, None);
    summary.and(exec::execute(
        run,
        &rotate::plan(run.mesh, topology, &sources),
    ))
}
