//! A cluster as a source of credentials: its `istio-reader-service-account`, a long-lived token
//! secret for it, and from those the cluster's remote secret, built in memory (never printed
//! or written) for the peers that watch this cluster.

use std::time::{Duration, Instant};

use super::{Action, Component, Cx, ScriptCx};
use crate::kubectl;
use crate::live::{Live, Object, Secret};
use crate::remote_secret::{
    READER_ACCOUNT, RemoteSecret, TOKEN_SECRET, read_token, token_secret_manifest,
};
use crate::runner::{self, StepError};
use crate::sensitive::Sensitive;

/// This cluster's remote secret, built for its peers.
pub struct Reader {
    pub namespace: String,
    /// The API server address peers reach this cluster at.
    pub server: String,
}

impl Component for Reader {
    fn label(&self, _: Action) -> &'static str {
        "remote secret"
    }

    fn does(&self, action: Action) -> bool {
        // The token secret goes with the namespace.
        action == Action::Install
    }

    fn in_link(&self) -> bool {
        true
    }

    fn converge(&self, cx: &mut Cx) -> Result<String, StepError> {
        let name = cx.cluster.name.clone();
        let secret = build(&cx.live, &name, &self.namespace, &self.server)?;
        cx.board
            .secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, secret);
        Ok("built".into())
    }

    fn script(&self, _: &ScriptCx, _: Action) -> String {
        // The script builds each remote secret where it is applied (see peers.rs).
        String::new()
    }
}

/// Builds cluster `name`'s remote secret from its own context: makes sure the reader service
/// account and its token secret exist, waits (bounded, with backoff) for the token controller
/// to fill the token, and assembles the secret. Nothing is printed or written.
pub fn build(
    live: &Live,
    name: &str,
    namespace: &str,
    server: &str,
) -> Result<RemoteSecret, StepError> {
    let (target, timeout) = (live.target, live.timeout);
    let found = live.get_each(
        &[("serviceaccount", READER_ACCOUNT), ("secret", TOKEN_SECRET)],
        Some(namespace),
    )?;
    if found
        .find::<Object>("ServiceAccount", READER_ACCOUNT)?
        .is_none()
    {
        live.run(&kubectl::create_service_account(
            target,
            READER_ACCOUNT,
            namespace,
            timeout,
        ))?;
    }
    match found.find::<Secret>("Secret", TOKEN_SECRET)? {
        None => {
            let manifest = token_secret_manifest(namespace);
            live.run(&kubectl::apply(
                target,
                Sensitive::new(manifest.into_bytes()),
                timeout,
            ))?;
        }
        Some(secret) => {
            if let Some((ca, token)) = read_token(&secret) {
                return Ok(RemoteSecret::new(name, server, &ca, &token));
            }
        }
    }

    // The token controller fills the secret within a second or two on a healthy cluster.
    let deadline = Instant::now() + timeout.min(Duration::from_secs(60));
    let mut pause = Duration::from_millis(100);
    loop {
        runner::sleep(pause)?;
        let secret: Option<Secret> = live.get("secret", TOKEN_SECRET, Some(namespace))?;
        if let Some((ca, token)) = secret.as_ref().and_then(read_token) {
            return Ok(RemoteSecret::new(name, server, &ca, &token));
        }
        if Instant::now() >= deadline {
            return Err(StepError::other(
                &target.cluster,
                format!(
                    "the token controller did not fill `token` and `ca.crt` of secret `{TOKEN_SECRET}` in namespace `{namespace}`"
                ),
                Some(format!(
                    "check that kube-controller-manager runs in context `{}` and that service account `{READER_ACCOUNT}` exists",
                    target.context
                )),
            ));
        }
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
    use crate::runner::{Output, RecordingRunner};
    use crate::step::{Step, Target};
    use crate::testing::ok;

    fn token_json(filled: bool) -> String {
        let data = if filled {
            json!({"token": B64.encode("eyJhbGciOiJSUzI1NiJ9.reader"), "ca.crt": "Q0E=", "namespace": "aXN0aW8tc3lzdGVt"})
        } else {
            json!({})
        };
        json!({"kind": "Secret", "metadata": {"name": TOKEN_SECRET}, "data": data}).to_string()
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
            if args.starts_with("get serviceaccount/") {
                // Neither the account nor the token secret exists.
                ok("")
            } else if args.starts_with("get secret") {
                // Not yet filled, then filled.
                match gets.fetch_add(1, Ordering::SeqCst) {
                    0 => ok(&token_json(false)),
                    _ => ok(&token_json(true)),
                }
            } else {
                ok("")
            }
        });
        let secret = built(&runner).unwrap();
        let lines = runner.command_lines();
        let verbs: Vec<&str> = lines.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
        assert_eq!(verbs, ["get", "create", "apply", "get", "get"]);
        assert_eq!(secret.server, "https://10.0.0.1");
        let applied = runner.calls.lock().unwrap()[2].stdin.clone().unwrap();
        let applied = String::from_utf8(applied.expose().clone()).unwrap();
        assert!(
            applied.contains("kubernetes.io/service-account-token"),
            "{applied}"
        );
    }

    #[test]
    fn build_reuses_a_filled_token_in_one_call() {
        let runner = RecordingRunner::new(|_: &Step| {
            let token: Value = serde_json::from_str(&token_json(true)).unwrap();
            let account = json!({"kind": "ServiceAccount", "metadata": {"name": READER_ACCOUNT}});
            ok(&json!({"kind": "List", "items": [account, token]}).to_string())
        });
        built(&runner).unwrap();
        assert_eq!(runner.command_lines().len(), 1);
    }

    #[test]
    fn an_unreadable_token_secret_is_an_error_not_a_wait() {
        let runner = RecordingRunner::new(|step: &Step| {
            if step.args[1].starts_with("serviceaccount/") {
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
