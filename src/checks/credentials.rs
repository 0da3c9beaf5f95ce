//! Whether the credentials in the remote secrets still work, asked where they were issued.
//!
//! istiod's `/debug/clusterz` cannot tell: once a remote cluster first synced it stays `synced`
//! for good, whatever happens to its token later (pkg/kube/multicluster/cluster.go
//! `SyncStatus`). So for every remote secret a watcher holds, meshup asks the source cluster
//! itself, with the operator's credentials:
//!
//! - a TokenReview (`authentication.k8s.io/v1`) of the token, sent on stdin and never shown:
//!   refused means istiod loses that cluster at its next reconnect or restart;
//! - whether the CA in the kubeconfig is the source's cluster CA, the `ca.crt` its token
//!   controller puts in the reader token secret: any other CA fails TLS verification.
//!
//! One TokenReview per distinct token and source (every watcher normally holds the same one).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use crate::components::reader::token_secrets;
use crate::components::{ClusterNotes, RunBoard};
use crate::engine::run::{Run, parallel};
use crate::engine::topology::Topology;
use crate::observe::finding::Finding;
use crate::tools::kubectl;
use crate::tools::live::Secret;
use crate::tools::remote_secret::{self, credentials_of, read_token};
use crate::trust::sensitive::Sensitive;

const WHAT: &str = "credentials";

/// A remote secret one cluster holds for another, with what istiod would use from it.
struct Held {
    watcher: String,
    source: String,
    secret: String,
    ca_data: Option<String>,
    token: Option<Sensitive<String>>,
}

/// What the source cluster says of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    Accepted,
    Refused(String),
    /// The review itself could not be made (no permission, cluster unreachable).
    Unknown(String),
}

/// Every pair whose token is refused or whose CA is not the source's, as failures of the
/// watcher that holds it; a check that could not be made is a warning.
pub fn check(run: &Run, topology: &Topology) -> Vec<Finding> {
    let watchers: Vec<(&String, &Vec<String>)> = topology
        .watches
        .iter()
        .filter(|(_, sources)| !sources.is_empty())
        .collect();
    let held: Vec<Held> = parallel(run.jobs, &watchers, |(watcher, sources)| {
        held_in(run, watcher, sources)
    })
    .into_iter()
    .flatten()
    .collect();
    let mut by_source: BTreeMap<&str, Vec<&Held>> = BTreeMap::new();
    for h in &held {
        by_source.entry(h.source.as_str()).or_default().push(h);
    }
    let sources: Vec<(&str, Vec<&Held>)> = by_source.into_iter().collect();
    parallel(run.jobs, &sources, |(source, held)| {
        check_source(run, source, held)
    })
    .into_iter()
    .flatten()
    .collect()
}

/// The remote secrets `watcher` holds for `sources` (none when they cannot be read: status
/// and verify report that already).
fn held_in(run: &Run, watcher: &str, sources: &[String]) -> Vec<Held> {
    let Some(cluster) = run.mesh.cluster(watcher) else {
        return Vec::new();
    };
    let (mut memo, board) = (ClusterNotes::default(), RunBoard::default());
    let secrets: Vec<Secret> = run
        .in_cluster(cluster, &mut memo, &board, |cx| {
            cx.live.list(
                "secrets",
                Some(&run.mesh.namespace),
                Some(&remote_secret::multicluster_selector()),
            )
        })
        .unwrap_or_default();
    remote_secret::found(&secrets)
        .into_iter()
        .filter(|f| sources.contains(&f.cluster))
        .map(|f| {
            let credentials = credentials_of(&f.data);
            Held {
                watcher: watcher.to_string(),
                source: f.cluster,
                secret: f.secret,
                ca_data: credentials.ca_data,
                token: credentials.token,
            }
        })
        .collect()
}

/// Reviews each distinct token held for `source` and compares each CA with `source`'s.
fn check_source(run: &Run, source: &str, held: &[&Held]) -> Vec<Finding> {
    let Some(cluster) = run.mesh.cluster(source) else {
        return Vec::new();
    };
    let (mut memo, board) = (ClusterNotes::default(), RunBoard::default());
    let (cluster_ca, reviews) = run.in_cluster(cluster, &mut memo, &board, |cx| {
        let ca = token_secrets(&cx.live, &run.mesh.namespace)
            .ok()
            .and_then(|secrets| secrets.iter().rev().find_map(read_token))
            .map(|(ca, _)| ca);
        let mut reviews: Vec<(Sensitive<String>, Review)> = Vec::new();
        for token in held.iter().filter_map(|h| h.token.as_ref()) {
            if reviews.iter().any(|(t, _)| t == token) {
                continue;
            }
            let review = review(cx, token);
            reviews.push((token.clone(), review));
        }
        (ca, reviews)
    });
    let mut findings = Vec::new();
    for h in held {
        let watcher = Some(h.watcher.as_str());
        let pair = format!(
            "the remote secret `{}` in `{}` for `{source}`",
            h.secret, h.watcher
        );
        let fix = format!(
            "run `meshup install` (or `meshup link`) to give `{}` a working credential for `{source}`",
            h.watcher
        );
        let review = h
            .token
            .as_ref()
            .and_then(|t| reviews.iter().find(|(r, _)| r == t))
            .map(|(_, r)| r.clone());
        match review {
            None => findings.push(
                Finding::fail(watcher, WHAT, format!("{pair} holds no token")).fix(fix.clone()),
            ),
            Some(Review::Accepted) => {}
            Some(Review::Refused(error)) => findings.push(
                Finding::fail(
                    watcher,
                    WHAT,
                    format!(
                        "{pair} holds a token that `{source}`'s API server refuses ({error}); istiod may still report `{source}` synced, but loses it at its next reconnect"
                    ),
                )
                .fix(fix.clone()),
            ),
            Some(Review::Unknown(error)) => findings.push(Finding::warn(
                watcher,
                WHAT,
                format!("{pair}: whether `{source}` accepts its token could not be checked ({error})"),
            )),
        }
        if let Some(cluster_ca) = &cluster_ca
            && !same_pem(h.ca_data.as_deref(), cluster_ca)
        {
            findings.push(
                Finding::fail(
                    watcher,
                    WHAT,
                    format!(
                        "{pair} holds a CA that is not `{source}`'s cluster CA (the `ca.crt` of its reader token), so istiod in `{}` cannot verify `{source}`'s API server",
                        h.watcher
                    ),
                )
                .fix(fix),
            );
        }
    }
    findings
}

/// A TokenReview of `token` in the cluster of `cx`, the token on stdin.
pub fn review(cx: &crate::components::ClusterCtx, token: &Sensitive<String>) -> Review {
    #[derive(Deserialize, Default)]
    struct Status {
        #[serde(default)]
        authenticated: bool,
        #[serde(default)]
        error: String,
    }
    #[derive(Deserialize)]
    struct TokenReview {
        #[serde(default)]
        status: Status,
    }
    let manifest = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": { "token": token.expose() },
    });
    let step = kubectl::create(
        cx.target(),
        Sensitive::new(manifest.to_string().into_bytes()),
        cx.timeout(),
    );
    let answer = cx.live.run(&step).and_then(|output| {
        serde_json::from_str::<TokenReview>(&output.stdout)
            .map_err(|e| crate::tools::runner::StepError::malformed(&step, e))
    });
    match answer {
        Ok(r) if r.status.authenticated => Review::Accepted,
        Ok(r) if r.status.error.is_empty() => Review::Refused("not authenticated".into()),
        Ok(r) => Review::Refused(r.status.error),
        Err(e) => Review::Unknown(e.to_string().lines().next().unwrap_or_default().into()),
    }
}

/// Whether two base64 PEM bundles hold the same certificates (whitespace aside).
fn same_pem(held: Option<&str>, cluster: &str) -> bool {
    use base64::Engine;
    let decode = |b64: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .map(|pem| {
                String::from_utf8_lossy(&pem)
                    .split_whitespace()
                    .collect::<String>()
            })
    };
    match (held.and_then(decode), decode(cluster)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::topology::Choices;
    use crate::testing::{mesh, ok};
    use crate::tools::remote_secret::RemoteSecret;
    use crate::tools::reporter::{Mode, Reporter};
    use crate::tools::runner::{Output, RecordingRunner};
    use crate::tools::step::Step;
    use crate::trust::TrustMode;
    use base64::Engine;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    /// Each cluster holds the others' remote secrets, built with `ca` and token `tok-SOURCE`;
    /// every source's token secret carries `CA`; `accepted(token)` decides the reviews.
    fn check_with(
        ca: &str,
        accepted: impl Fn(&str) -> bool + Send + Sync,
    ) -> (Vec<Finding>, Vec<Step>) {
        let m = mesh(2, TrustMode::None);
        let runner = RecordingRunner::new(move |step: &Step| {
            let args = step.args.join(" ");
            if args.starts_with("get secrets") && args.contains("istio/multiCluster=true") {
                let source = if step.cluster == "cluster1" {
                    "cluster2"
                } else {
                    "cluster1"
                };
                let secret = RemoteSecret::new(
                    source,
                    "https://10.0.0.1:6443",
                    &b64(ca_for(source, ca)),
                    &Sensitive::new(format!("tok-{source}")),
                );
                let manifest: serde_json::Value =
                    serde_yaml::from_str(secret.manifest("istio-system").expose()).unwrap();
                ok(&json!({"kind": "List", "items": [manifest]}).to_string())
            } else if args.starts_with("get secrets") {
                ok(&json!({"kind": "List", "items": [{
                    "metadata": {"name": "istio-reader-service-account-istio-remote-secret-token"},
                    "type": "kubernetes.io/service-account-token",
                    "data": {"ca.crt": b64(CA), "token": b64("whatever")}}]})
                .to_string())
            } else if args.starts_with("create") {
                let sent: serde_json::Value =
                    serde_json::from_slice(step.stdin.as_ref().unwrap().expose()).unwrap();
                let token = sent["spec"]["token"].as_str().unwrap().to_string();
                let status = if accepted(&token) {
                    json!({"authenticated": true, "user": {"username": "system:serviceaccount:istio-system:istio-reader-service-account"}})
                } else {
                    json!({"authenticated": false, "error": "invalid bearer token"})
                };
                ok(&json!({"kind": "TokenReview", "status": status}).to_string())
            } else {
                Output::default()
            }
        });
        let reporter = Reporter::new(Mode::Json, true, false);
        let run = Run {
            jobs: 1,
            timeout: Duration::from_secs(5),
            retry: crate::engine::run::Retry::DEFAULT,
            ..crate::testing::run(&m, &runner, &reporter)
        };
        let topology = Topology::of(&m, &Choices::default());
        let findings = check(&run, &topology);
        let calls = runner.calls.lock().unwrap().clone();
        (findings, calls)
    }

    /// `ca` for cluster2's secret, `CA` for cluster1's.
    fn ca_for<'a>(source: &str, ca: &'a str) -> &'a str {
        if source == "cluster2" { ca } else { CA }
    }

    #[test]
    fn working_tokens_and_the_right_ca_find_nothing() {
        let (findings, calls) = check_with(CA, |_| true);
        assert!(findings.is_empty(), "{findings:?}");
        // One review per source, the token on stdin only.
        let reviews: Vec<&Step> = calls.iter().filter(|s| s.args[0] == "create").collect();
        assert_eq!(reviews.len(), 2);
        assert!(reviews.iter().all(|s| !s.command_line().contains("tok-")));
    }

    #[test]
    fn a_refused_token_names_the_pair_and_the_fix() {
        let (findings, _) = check_with(CA, |token| token != "tok-cluster2");
        assert_eq!(findings.len(), 1, "{findings:?}");
        let f = &findings[0];
        assert_eq!(f.cluster.as_deref(), Some("cluster1"));
        let sentence = f.sentence();
        assert!(
            sentence.contains("`istio-remote-secret-cluster2` in `cluster1` for `cluster2`")
                && sentence.contains("invalid bearer token")
                && sentence.contains("meshup install"),
            "{sentence}"
        );
        assert!(!sentence.contains("tok-"), "{sentence}");
    }

    #[test]
    fn a_ca_that_is_not_the_sources_names_the_pair() {
        let other = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n";
        let (findings, _) = check_with(other, |_| true);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(
            findings[0].why.contains("not `cluster2`'s cluster CA"),
            "{findings:?}"
        );
    }

    #[test]
    fn pem_comparison_ignores_line_breaks_only() {
        assert!(same_pem(Some(&b64("A\nB\n")), &b64("AB")));
        assert!(!same_pem(Some(&b64("AB")), &b64("AC")));
        assert!(!same_pem(None, &b64("AB")));
    }
}
