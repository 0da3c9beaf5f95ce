//! `meshup remote-secret`: one cluster's remote secret, printed to stdout.

use super::output::print_stdout;
use super::prelude::*;

/// `meshup remote-secret`: the only command that prints a token, and only to stdout.
pub(super) fn remote_secret_command(
    global: &GlobalArgs,
    reporter: &Arc<Reporter>,
    context: &str,
    name: &str,
    server: Option<String>,
    namespace: &str,
) -> Result<(), Error> {
    let kubeconfig = Kubeconfig::load(global.kubeconfig.as_deref())?;
    let mut problems = Vec::new();
    if !mesh::is_dns_label(name) {
        problems.push(format!(
            "--name: `{name}` is not a DNS-1123 label (lowercase letters, digits, `-`)"
        ));
    }
    if !mesh::is_dns_label(namespace) {
        problems.push(format!(
            "--namespace: `{namespace}` is not a DNS-1123 label"
        ));
    }
    let context_server = kubeconfig.servers.get(context).cloned();
    if context_server.is_none() {
        problems.push(format!(
            "--context: `{context}` is not in the kubeconfig ({}); check `kubectl config get-contexts`",
            kubeconfig.describe()
        ));
    }
    if let Some(s) = &server
        && !(s.starts_with("https://") || s.starts_with("http://"))
    {
        problems.push(format!(
            "--server: `{s}` must be a URL such as https://172.18.0.2:6443"
        ));
    }
    if !problems.is_empty() {
        return Err(InputError {
            source: "meshup remote-secret".into(),
            problems,
        }
        .into());
    }
    let server = server.or(context_server).unwrap_or_default();
    if server.is_empty() {
        return Err(InputError::new(
            "meshup remote-secret",
            format!("context `{context}` names no server; pass --server"),
        )
        .into());
    }
    if remote_secret::is_loopback(&server) {
        reporter.warn(&format!(
            "the server {server} is a loopback address, which istiod in other clusters cannot reach; pass --server (or set `apiServer` in the mesh file)"
        ));
    }
    let kubectl =
        preflight::locate(Tool::Kubectl, global.kubectl.as_deref()).map_err(Error::MissingTool)?;
    let runner = ProcessRunner {
        helm: PathBuf::from("helm"),
        kubectl,
        timeout: global.timeout,
        grace: crate::tools::runner::GRACE,
        reporter: reporter.clone(),
    };
    let target = Target {
        cluster: name.to_string(),
        context: context.to_string(),
        kubeconfig: global.kubeconfig.clone(),
    };
    let live = Live::new(&runner, &target, global.timeout);
    let secret = reader::build(&live, name, namespace, &server)?;
    print_stdout(secret.manifest(namespace).expose())
}
