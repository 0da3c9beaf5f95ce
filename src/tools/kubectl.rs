//! The kubectl calls meshup makes, one function per verb. `connect` is the only place that
//! adds `--context`, `--kubeconfig` and the request timeout.

use std::time::Duration;

use crate::tools::helm::go_duration;
use crate::tools::step::{Step, Target, Tool};
use crate::trust::sensitive::Sensitive;

/// meshup's field manager for server-side apply.
pub const FIELD_MANAGER: &str = "meshup";

/// `kubectl version --client -o json`.
pub fn client_version() -> Step {
    Step {
        cluster: String::new(),
        tool: Tool::Kubectl,
        args: words(&["version", "--client", "--output", "json"]),
        stdin: None,
    }
}

/// `kubectl version -o json` against a cluster: proves it answers, and says its version.
pub fn server_version(target: &Target, timeout: Duration) -> Step {
    connect(target, words(&["version", "--output", "json"]), timeout)
}

/// `kubectl get KIND NAME -o json --ignore-not-found`: empty stdout when absent.
pub fn get(
    target: &Target,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    timeout: Duration,
) -> Step {
    let mut args = words(&["get", kind, name]);
    push_namespace(&mut args, namespace);
    args.extend(words(&["--output", "json", "--ignore-not-found"]));
    connect(target, args, timeout)
}

/// `kubectl get KIND/NAME... -o json --ignore-not-found`: several objects in one call. kubectl
/// prints a List of those that exist, or nothing.
pub fn get_each(
    target: &Target,
    objects: &[(&str, &str)],
    namespace: Option<&str>,
    timeout: Duration,
) -> Step {
    let mut args = vec!["get".to_string()];
    args.extend(objects.iter().map(|(kind, name)| format!("{kind}/{name}")));
    push_namespace(&mut args, namespace);
    args.extend(words(&["--output", "json", "--ignore-not-found"]));
    connect(target, args, timeout)
}

/// `kubectl get TYPE/NAME... -o json --ignore-not-found --show-managed-fields`: objects of any
/// types (`deployment.v1.apps/istiod`, cluster-scoped ones too) in one call, with the field
/// managers kubectl otherwise leaves out.
pub fn get_managed(
    target: &Target,
    objects: &[String],
    namespace: &str,
    timeout: Duration,
) -> Step {
    let mut args = vec!["get".to_string()];
    args.extend(objects.iter().cloned());
    push_namespace(&mut args, Some(namespace));
    args.extend(words(&[
        "--output",
        "json",
        "--ignore-not-found",
        "--show-managed-fields",
    ]));
    connect(target, args, timeout)
}

/// `kubectl get KIND -l SELECTOR -o json` (a List).
pub fn list(
    target: &Target,
    kind: &str,
    namespace: Option<&str>,
    selector: Option<&str>,
    timeout: Duration,
) -> Step {
    let mut args = words(&["get", kind]);
    push_namespace(&mut args, namespace);
    if let Some(selector) = selector {
        args.extend(["--selector".to_string(), selector.to_string()]);
    }
    args.extend(words(&["--output", "json"]));
    connect(target, args, timeout)
}

/// Every object of `kind` in every namespace (`--all-namespaces`), matching `selector`.
pub fn list_everywhere(
    target: &Target,
    kind: &str,
    selector: Option<&str>,
    timeout: Duration,
) -> Step {
    let mut args = words(&["get", kind, "--all-namespaces"]);
    if let Some(selector) = selector {
        args.extend(["--selector".to_string(), selector.to_string()]);
    }
    args.extend(words(&["--output", "json"]));
    connect(target, args, timeout)
}

/// `kubectl apply --server-side -f URL`: objects kubectl downloads itself (the Gateway API
/// CRDs from their release page).
pub fn apply_url(target: &Target, url: &str, timeout: Duration) -> Step {
    apply_filename(target, url, timeout)
}

/// `kubectl apply --server-side --force-conflicts --field-manager meshup --filename F`.
fn apply_filename(target: &Target, filename: &str, timeout: Duration) -> Step {
    let args = words(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        FIELD_MANAGER,
        "--filename",
        filename,
    ]);
    connect(target, args, timeout)
}

/// `kubectl label KIND NAME --namespace NS LABEL --overwrite` (`key=value` sets, `key-`
/// removes).
pub fn label(
    target: &Target,
    kind: &str,
    name: &str,
    namespace: &str,
    label: &str,
    timeout: Duration,
) -> Step {
    let args = words(&[
        "label",
        kind,
        name,
        "--namespace",
        namespace,
        label,
        "--overwrite",
    ]);
    connect(target, args, timeout)
}

/// `kubectl patch KIND NAME --type json --patch P`: RFC 6902 operations on one object.
pub fn patch_json(target: &Target, kind: &str, name: &str, patch: &str, timeout: Duration) -> Step {
    let args = words(&["patch", kind, name, "--type", "json", "--patch", patch]);
    connect(target, args, timeout)
}

/// `kubectl patch TYPE/NAME --type json --field-manager meshup --patch-file /dev/stdin`: an
/// RFC 6902 patch (with `test` guards) on one object, recorded under meshup's field manager.
/// The patch travels on stdin: it may carry values of the object.
pub fn patch_guarded(
    target: &Target,
    object: &str,
    namespace: Option<&str>,
    patch: &str,
    timeout: Duration,
) -> Step {
    let mut args = words(&["patch", object]);
    push_namespace(&mut args, namespace);
    args.extend(words(&[
        "--type",
        "json",
        "--field-manager",
        FIELD_MANAGER,
        "--patch-file",
        "/dev/stdin",
    ]));
    let mut step = connect(target, args, timeout);
    step.stdin = Some(Sensitive::new(patch.as_bytes().to_vec()));
    step
}

/// `kubectl apply --server-side -f -`: the manifest travels on stdin, so secrets never reach
/// argv or disk, and no last-applied annotation copies them.
pub fn apply(target: &Target, manifest: Sensitive<Vec<u8>>, timeout: Duration) -> Step {
    let mut step = apply_filename(target, "-", timeout);
    step.stdin = Some(manifest);
    step
}

/// `kubectl create -f - -o json`: creates the object on stdin and prints it; fails with
/// `AlreadyExists` when it exists (what a lock needs: exactly one creator wins).
pub fn create(target: &Target, manifest: Sensitive<Vec<u8>>, timeout: Duration) -> Step {
    let mut step = connect(
        target,
        words(&["create", "--filename", "-", "--output", "json"]),
        timeout,
    );
    step.stdin = Some(manifest);
    step
}

/// `kubectl replace -f - -o json`: replaces the object on stdin and prints it; with a
/// `resourceVersion` in it, fails with `Conflict` when the object changed since it was read.
pub fn replace(target: &Target, manifest: Sensitive<Vec<u8>>, timeout: Duration) -> Step {
    let mut step = connect(
        target,
        words(&["replace", "--filename", "-", "--output", "json"]),
        timeout,
    );
    step.stdin = Some(manifest);
    step
}

/// `kubectl create serviceaccount`.
pub fn create_service_account(
    target: &Target,
    name: &str,
    namespace: &str,
    timeout: Duration,
) -> Step {
    connect(
        target,
        words(&["create", "serviceaccount", name, "--namespace", namespace]),
        timeout,
    )
}

/// `kubectl delete KIND NAMES... --ignore-not-found`.
pub fn delete(
    target: &Target,
    kind: &str,
    names: &[String],
    namespace: Option<&str>,
    timeout: Duration,
) -> Step {
    let mut args = words(&["delete", kind]);
    args.extend(names.iter().cloned());
    push_namespace(&mut args, namespace);
    args.extend(words(&["--ignore-not-found", "--wait=true", "--timeout"]));
    args.push(go_duration(timeout));
    connect(target, args, timeout)
}

/// How many objects a `kubectl delete` says it deleted: one line each, `secret "a" deleted`
/// (kubectl 1.34) or `secret "a" deleted from istio-system namespace` (1.35).
pub fn deleted_count(stdout: &str) -> usize {
    stdout.lines().filter(|l| l.contains("\" deleted")).count()
}

/// `kubectl delete KIND --selector SELECTOR --ignore-not-found`.
pub fn delete_selected(
    target: &Target,
    kind: &str,
    selector: &str,
    namespace: &str,
    timeout: Duration,
) -> Step {
    let mut args = words(&[
        "delete",
        kind,
        "--selector",
        selector,
        "--namespace",
        namespace,
    ]);
    args.extend(words(&["--ignore-not-found", "--wait=true", "--timeout"]));
    args.push(go_duration(timeout));
    connect(target, args, timeout)
}

/// `kubectl create secret generic NAME --from-file=KEY=PATH... --dry-run=client -o yaml`:
/// prints a Secret built from files without sending it. Only the plan script uses it, so
/// that key files are read by kubectl and never shown.
pub fn secret_from_files(
    target: &Target,
    name: &str,
    namespace: &str,
    files: &[(&str, String)],
    timeout: Duration,
) -> Step {
    let mut args = words(&[
        "create",
        "secret",
        "generic",
        name,
        "--namespace",
        namespace,
    ]);
    args.extend(
        files
            .iter()
            .map(|(key, path)| format!("--from-file={key}={path}")),
    );
    args.extend(words(&["--dry-run=client", "--output", "yaml"]));
    connect(target, args, timeout)
}

/// `kubectl rollout restart deployment/NAME`.
pub fn rollout_restart(
    target: &Target,
    deployment: &str,
    namespace: &str,
    timeout: Duration,
) -> Step {
    connect(
        target,
        words(&[
            "rollout",
            "restart",
            &format!("deployment/{deployment}"),
            "--namespace",
            namespace,
        ]),
        timeout,
    )
}

/// `kubectl rollout status deployment/NAME --timeout`.
pub fn rollout_status(
    target: &Target,
    deployment: &str,
    namespace: &str,
    timeout: Duration,
) -> Step {
    rollout_status_of(
        target,
        &format!("deployment/{deployment}"),
        namespace,
        timeout,
    )
}

/// `kubectl rollout status KIND/NAME --timeout` (a Deployment or a DaemonSet).
pub fn rollout_status_of(
    target: &Target,
    object: &str,
    namespace: &str,
    timeout: Duration,
) -> Step {
    let mut args = words(&[
        "rollout",
        "status",
        object,
        "--namespace",
        namespace,
        "--timeout",
    ]);
    args.push(go_duration(timeout));
    connect(target, args, timeout)
}

/// `kubectl wait --for=CONDITION KIND/NAME --timeout`.
pub fn wait(
    target: &Target,
    condition: &str,
    object: &str,
    namespace: &str,
    timeout: Duration,
) -> Step {
    let mut args = words(&[
        "wait",
        &format!("--for={condition}"),
        object,
        "--namespace",
        namespace,
        "--timeout",
    ]);
    args.push(go_duration(timeout));
    connect(target, args, timeout)
}

/// `kubectl logs KIND/NAME --container C [--since=Ns]`: what a pod (of a Job) printed, all of
/// it or the last `since` (whole seconds, rounded up).
pub fn logs(
    target: &Target,
    object: &str,
    container: &str,
    namespace: &str,
    since: Option<Duration>,
    timeout: Duration,
) -> Step {
    let mut args = words(&[
        "logs",
        object,
        "--container",
        container,
        "--namespace",
        namespace,
    ]);
    if let Some(since) = since {
        let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        args.push(format!("--since={}s", secs.max(1)));
    }
    connect(target, args, timeout)
}

/// `kubectl delete --raw PATH --filename -`: a DELETE on any API path with a body (the
/// `DeleteOptions`, e.g. preconditions) on stdin.
pub fn delete_raw(
    target: &Target,
    path: &str,
    body: Sensitive<Vec<u8>>,
    timeout: Duration,
) -> Step {
    let mut step = connect(
        target,
        words(&["delete", "--raw", path, "--filename", "-"]),
        timeout,
    );
    step.stdin = Some(body);
    step
}

/// `kubectl get --raw PATH`: a GET on any API path, e.g. a pod's `proxy` subresource.
pub fn get_raw(target: &Target, path: &str, timeout: Duration) -> Step {
    connect(target, words(&["get", "--raw", path]), timeout)
}

/// `kubectl exec POD --container C -- COMMAND...`: runs a command in a pod's container and
/// prints what it printed. The connection flags go before `--`, where kubectl reads them.
pub fn exec(
    target: &Target,
    pod: &str,
    container: &str,
    namespace: &str,
    command: &[&str],
    timeout: Duration,
) -> Step {
    let mut step = connect(
        target,
        words(&[
            "exec",
            pod,
            "--container",
            container,
            "--namespace",
            namespace,
        ]),
        timeout,
    );
    step.args.push("--".into());
    step.args.extend(command.iter().map(|w| w.to_string()));
    step
}

/// The one place that points kubectl at a cluster. Every request gets the step timeout too,
/// so a black-holed API server fails the call instead of hanging it.
fn connect(target: &Target, mut args: Vec<String>, timeout: Duration) -> Step {
    args.extend(["--context".to_string(), target.context.clone()]);
    if let Some(kubeconfig) = &target.kubeconfig {
        args.extend(["--kubeconfig".to_string(), kubeconfig.display().to_string()]);
    }
    args.push(format!("--request-timeout={}", go_duration(timeout)));
    Step {
        cluster: target.cluster.clone(),
        tool: Tool::Kubectl,
        args,
        stdin: None,
    }
}

fn push_namespace(args: &mut Vec<String>, namespace: Option<&str>) {
    if let Some(ns) = namespace {
        args.extend(["--namespace".to_string(), ns.to_string()]);
    }
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            cluster: "cluster2".into(),
            context: "kind-cluster2".into(),
            kubeconfig: None,
        }
    }

    #[test]
    fn deletions_are_counted_in_the_words_of_either_kubectl() {
        let old =
            "secret \"istio-remote-secret-a\" deleted\nsecret \"istio-remote-secret-b\" deleted\n";
        let new = "secret \"istio-remote-secret-a\" deleted from istio-system namespace\n";
        assert_eq!(deleted_count(old), 2);
        assert_eq!(deleted_count(new), 1);
        assert_eq!(deleted_count("No resources found\n"), 0);
    }

    #[test]
    fn apply_reads_the_manifest_from_stdin() {
        let step = apply(
            &target(),
            Sensitive::new(b"kind: Secret".to_vec()),
            Duration::from_secs(30),
        );
        assert_eq!(
            step.command_line(),
            "kubectl apply --server-side --force-conflicts --field-manager meshup --filename - \
             --context kind-cluster2 --request-timeout=30s"
        );
        assert_eq!(step.stdin.as_ref().unwrap().expose(), b"kind: Secret");
    }

    #[test]
    fn get_each_names_every_object() {
        let step = get_each(
            &target(),
            &[("configmap", "istio"), ("deployment", "istiod")],
            Some("ns"),
            Duration::from_secs(5),
        );
        assert!(step.command_line().starts_with("kubectl get configmap/istio deployment/istiod --namespace ns --output json --ignore-not-found"));
    }

    #[test]
    fn get_tolerates_absence() {
        let step = get(
            &target(),
            "configmap",
            "istio",
            Some("istio-system"),
            Duration::from_secs(5),
        );
        assert!(step.args.contains(&"--ignore-not-found".to_string()));
        assert!(
            step.args
                .windows(2)
                .any(|w| w == ["--context", "kind-cluster2"])
        );
    }
}
