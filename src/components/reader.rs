//! A cluster as a source of credentials: its `istio-reader-service-account`, a long-lived token
//! secret for it, and from those the cluster's remote secret, built in memory (never printed
//! or written) for the peers that watch this cluster.

use std::time::{Duration, Instant};

use super::{Action, ClusterCtx, Component, ScriptCx};
use crate::components::handoff::{Handoff, LINK_COMMAND};
use crate::observe::drift::ObjectDiff;
use crate::tools::kubectl;
use crate::tools::live::{Live, Object, Secret};
use crate::tools::remote_secret::{
    READER_ACCOUNT, READER_TOKEN_LABEL, RemoteSecret, TOKEN_SECRET, read_token,
    token_secret_manifest,
};
use crate::tools::runner::{self, StepError};
use crate::trust::sensitive::Sensitive;

/// This cluster's remote secret, built for its peers.
pub struct Reader {
    pub namespace: String,
    /// The API server address peers reach this cluster at.
    pub server: String,
}

impl Component for Reader {
    fn handoff(&self) -> Vec<Handoff> {
        vec![Handoff::Kept {
            what: "the reader token other clusters' istiods use here".into(),
            by: LINK_COMMAND,
        }]
    }

    fn label(&self, _: Action) -> &'static str {
        "remote secret"
    }

    fn acts_on(&self, action: Action) -> bool {
        // The token secret goes with the namespace.
        action == Action::Install
    }

    fn part_of_link(&self) -> bool {
        true
    }

    fn converge(&self, cx: &mut ClusterCtx) -> Result<String, StepError> {
        let name = cx.cluster.name.clone();
        let secret = build(&cx.live, &name, &self.namespace, &self.server)?;
        cx.board
            .secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, secret);
        Ok("built".into())
    }

    /// The remote secret `install` would build, read-only: from the newest filled reader
    /// token, put on the board for the peers' comparison. Without one, install would ask for
    /// a new token (a token secret), so every copy of this cluster's remote secret changes.
    fn diff(&self, cx: &mut ClusterCtx) -> Result<Vec<ObjectDiff>, StepError> {
        let name = cx.cluster.name.clone();
        let secrets = token_secrets(&cx.live, &self.namespace)?;
        if let Some((ca, token)) = secrets.iter().rev().find_map(read_token) {
            let secret = RemoteSecret::new(&name, &self.server, &ca, &token);
            cx.board
                .secrets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, secret);
            return Ok(Vec::new());
        }
        cx.board
            .new_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name);
        if !secrets.is_empty() {
            // One is waiting for the token controller: install waits for it.
            return Ok(Vec::new());
        }
        let manifest: serde_json::Value =
            serde_yaml::from_str(&token_secret_manifest(&self.namespace, TOKEN_SECRET))
                .expect("the manifest is YAML");
        Ok(vec![ObjectDiff::create("remote secret", &manifest, false)])
    }

    fn script(&self, _: &ScriptCx, _: Action) -> String {
        // The script builds each remote secret where it is applied (see peers.rs).
        String::new()
    }
}

/// The reader token secrets meshup made in a cluster (the first, and each rotation's), in the
/// order they were made: the last is the one in use.
pub fn token_secrets(live: &Live, namespace: &str) -> Result<Vec<Secret>, StepError> {
    let mut secrets: Vec<Secret> = live.list(
        "secrets",
        Some(namespace),
        Some(&format!("{READER_TOKEN_LABEL}=true")),
    )?;
    // `…-token`, then `…-token-YYYYMMDDHHMMSS` for each rotation: the names sort by age.
    secrets.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(secrets)
}

/// Builds cluster `name`'s remote secret from its own context, with the reader token in use:
/// makes sure the reader service account and a token secret exist, waits (bounded, with
/// backoff) for the token controller to fill the token, and assembles the secret. Nothing is
/// printed or written.
pub fn build(
    live: &Live,
    name: &str,
    namespace: &str,
    server: &str,
) -> Result<RemoteSecret, StepError> {
    let secrets = token_secrets(live, namespace)?;
    if let Some((ca, token)) = secrets.iter().rev().find_map(read_token) {
        return Ok(RemoteSecret::new(name, server, &ca, &token));
    }
    let token_secret = match secrets.last() {
        Some(waiting) => waiting.metadata.name.clone(),
        None => {
            // Before the first run (or from a meshup that did not label it): the first one.
            // istio-base made the reader account; `wait_for_token` makes it where it did not.
            create_token_secret(live, namespace, TOKEN_SECRET)?;
            TOKEN_SECRET.to_string()
        }
    };
    let (ca, token) = wait_for_token(live, namespace, &token_secret)?;
    Ok(RemoteSecret::new(name, server, &ca, &token))
}

/// Makes sure the reader service account exists (istio-base makes it unless
/// `global.enableReaderRBAC` is off).
pub fn ensure_account(live: &Live, namespace: &str) -> Result<(), StepError> {
    let account: Option<Object> = live.get("serviceaccount", READER_ACCOUNT, Some(namespace))?;
    if account.is_none() {
        live.run(&kubectl::create_service_account(
            live.target,
            READER_ACCOUNT,
            namespace,
            live.timeout,
        ))?;
    }
    Ok(())
}

/// Asks the token controller for a long-lived token of the reader account in a secret `name`.
pub fn create_token_secret(live: &Live, namespace: &str, name: &str) -> Result<(), StepError> {
    let manifest = token_secret_manifest(namespace, name);
    live.run(&kubectl::apply(
        live.target,
        Sensitive::new(manifest.into_bytes()),
        live.timeout,
    ))?;
    Ok(())
}

/// Waits (bounded, with backoff) until the token controller filled secret `name`; returns
/// its `ca.crt` (base64) and token.
pub fn wait_for_token(
    live: &Live,
    namespace: &str,
    name: &str,
) -> Result<(String, Sensitive<String>), StepError> {
    wait_for_token_of(live, namespace, name, READER_ACCOUNT, &|| {
        // The token controller deletes a token secret whose account does not exist
        // (istio-base without `global.enableReaderRBAC`): make the account, then ask again.
        ensure_account(live, namespace)?;
        create_token_secret(live, namespace, name)
    })
}

/// Waits (bounded, with backoff) until the token controller filled secret `name` of service
/// account `account`; `again` asks for it anew when the controller deleted it (no account
/// yet). Returns its `ca.crt` (base64) and token.
pub fn wait_for_token_of(
    live: &Live,
    namespace: &str,
    name: &str,
    account: &str,
    again: &dyn Fn() -> Result<(), StepError>,
) -> Result<(String, Sensitive<String>), StepError> {
    let target = live.target;
    // The token controller fills the secret within a second or two on a healthy cluster.
    let deadline = Instant::now() + live.timeout.min(Duration::from_secs(60));
    let mut pause = Duration::from_millis(100);
    loop {
        let secret: Option<Secret> = live.get("secret", name, Some(namespace))?;
        if let Some(filled) = secret.as_ref().and_then(read_token) {
            return Ok(filled);
        }
        if secret.is_none() {
            again()?;
        }
        if Instant::now() >= deadline {
            return Err(StepError::other(
                &target.cluster,
                format!(
                    "the token controller did not fill `token` and `ca.crt` of secret `{name}` in namespace `{namespace}`"
                ),
                Some(format!(
                    "check that kube-controller-manager runs in context `{}` and that service account `{account}` exists",
                    target.context
                )),
            ));
        }
        runner::sleep(pause)?;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use serde_json::{Value, json};

    use super::*;
    use crate::testing::ok;
    use crate::tools::runner::{Output, RecordingRunner};
    use crate::tools::step::{Step, Target};

    fn token_json(name: &str, token: Option<&str>) -> Value {
        let data = match token {
            Some(token) => {
                json!({"token": B64.encode(token), "ca.crt": "Q0E=", "namespace": "aXN0aW8tc3lzdGVt"})
            }
            None => json!({}),
        };
        json!({"kind": "Secret", "metadata": {"name": name}, "data": data})
    }

    fn kubeconfig_of(secret: &RemoteSecret) -> String {
        String::from_utf8(B64.decode(secret.data.expose()).unwrap()).unwrap()
    }

    fn list_of(items: &[Value]) -> String {
        json!({"kind": "List", "items": items}).to_string()
    }

    fn target() -> Target {
        Target {
            cluster: "cluster1".into(),
            context: "kind-cluster1".into(),
            kubeconfig: None,
        }
    }

    fn built(runner: &dyn runner::Runner) -> Result<RemoteSecret, StepError> {
        let t = target();
        let live = Live::new(runner, &t, Duration::from_secs(10));
        build(&live, "cluster1", "istio-system", "https://10.0.0.1")
    }

    #[test]
    fn build_creates_what_is_missing_and_waits_for_the_token() {
        let gets = AtomicUsize::new(0);
        let runner = RecordingRunner::new(|step: &Step| {
            let args = step.args.join(" ");
            if args.starts_with("get secrets") {
                // No token secret yet.
                ok(&list_of(&[]))
            } else if args.starts_with("get serviceaccount ") {
                // Nor the account.
                ok("")
            } else if args.starts_with("get secret ") {
                // Deleted by the token controller (no account), then not yet filled, then
                // filled.
                match gets.fetch_add(1, Ordering::SeqCst) {
                    0 => ok(""),
                    1 => ok(&token_json(TOKEN_SECRET, None).to_string()),
                    _ => ok(&token_json(TOKEN_SECRET, Some("eyJ.reader")).to_string()),
                }
            } else {
                ok("")
            }
        });
        let secret = built(&runner).unwrap();
        let lines = runner.command_lines();
        let verbs: Vec<&str> = lines.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
        assert_eq!(
            verbs,
            [
                "get", "apply", "get", "get", "create", "apply", "get", "get"
            ]
        );
        assert!(lines[0].contains(&format!("--selector {READER_TOKEN_LABEL}=true")));
        assert_eq!(secret.server, "https://10.0.0.1");
        let applied = runner.calls.lock().unwrap()[1].stdin.clone().unwrap();
        let applied = String::from_utf8(applied.expose().clone()).unwrap();
        assert!(
            applied.contains("kubernetes.io/service-account-token")
                && applied.contains(TOKEN_SECRET)
                && applied.contains(READER_TOKEN_LABEL),
            "{applied}"
        );
    }

    #[test]
    fn build_reuses_a_filled_token_in_one_call() {
        let runner = RecordingRunner::new(|_: &Step| {
            ok(&list_of(&[token_json(TOKEN_SECRET, Some("eyJ.first"))]))
        });
        let secret = built(&runner).unwrap();
        assert_eq!(runner.command_lines().len(), 1);
        assert!(kubeconfig_of(&secret).contains("eyJ.first"));
    }

    #[test]
    fn build_takes_the_newest_filled_token_of_the_rotations() {
        let runner = RecordingRunner::new(|_: &Step| {
            // Listed in any order; a rotation still waiting for its token is passed over.
            ok(&list_of(&[
                token_json(
                    &format!("{TOKEN_SECRET}-20261125101010"),
                    Some("eyJ.second"),
                ),
                token_json(&format!("{TOKEN_SECRET}-20261125121212"), None),
                token_json(TOKEN_SECRET, Some("eyJ.first")),
            ]))
        });
        let secret = built(&runner).unwrap();
        assert_eq!(runner.command_lines().len(), 1);
        assert!(kubeconfig_of(&secret).contains("eyJ.second"));
    }

    #[test]
    fn an_unreadable_token_secret_is_an_error_not_a_wait() {
        let runner = RecordingRunner::new(|step: &Step| {
            if step.args[1] == "secrets" {
                Output {
                    code: Some(0),
                    stdout: "<html>gateway timeout</html>".into(),
                    stderr: String::new(),
                }
            } else {
                ok("")
            }
        });
        let err = built(&runner).unwrap_err();
        assert!(matches!(err, StepError::Malformed { .. }), "{err}");
        assert_eq!(runner.command_lines().len(), 1);
    }
}
