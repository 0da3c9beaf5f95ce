//! The pod `exec` subresource over WebSocket, as kubectl 1.30+ speaks it (KEP-4006): `GET
//! /api/v1/namespaces/NS/pods/NAME/exec?command=...&container=...&stdout=true&stderr=true`
//! with `Upgrade: websocket` and subprotocol `v5.channel.k8s.io` (or `v4.channel.k8s.io`);
//! every message is binary, its first byte the channel: 1 stdout, 2 stderr, 3 the final
//! `metav1.Status`; the server closes the connection normally after the status.
//!
//! The one command that does something is istiod's `pilot-discovery request METHOD PATH`
//! (pilot/pkg/request/command.go) in the `discovery` container of an istiod pod: it calls
//! `127.0.0.1:15014` from inside the pod, which istiod's debug handlers accept, and prints
//! the body with a newline. Any other command fails as containerd does for a missing binary.
//! SPDY (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`) is not served.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::{self, Who};
use crate::proxy::{is_istiod, pod_key, pod_ready};
use crate::server::Shared;
use crate::store::ApiError;
use crate::util::{random_string, url_decode};

/// The subprotocols served, most preferred first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// `NS` and `NAME` of `/api/v1/namespaces/NS/pods/NAME/exec`.
pub fn exec_target(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [ns, "pods", name, "exec"] => Some((ns.to_string(), name.to_string())),
        _ => None,
    }
}

fn status_response(e: &ApiError) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(&e.status()).unwrap()));
    *r.status_mut() = StatusCode::from_u16(e.code).unwrap();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// What a finished command leaves: its output and the status sent on channel 3.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub status: Value,
}

fn success(stdout: String) -> Outcome {
    Outcome {
        stdout,
        stderr: String::new(),
        status: json!({"metadata": {}, "status": "Success"}),
    }
}

/// A non-zero exit, as the kubelet reports it (reason `NonZeroExitCode`, cause `ExitCode`).
fn exited(argv: &[String], stderr: String, code: i32) -> Outcome {
    Outcome {
        stdout: String::new(),
        stderr,
        status: json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", argv.join(" ")),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}}),
    }
}

/// containerd's answer to an exec of a binary the image does not have.
fn not_found(binary: &str) -> Outcome {
    let id = random_string(64, b"0123456789abcdef");
    Outcome {
        stdout: String::new(),
        stderr: String::new(),
        status: json!({"metadata": {}, "status": "Failure",
            "message": format!("Internal error occurred: error executing command in container: failed to exec in container: failed to start exec \"{id}\": OCI runtime exec failed: exec failed: unable to start container process: exec: \"{binary}\": executable file not found in $PATH: unknown"),
            "reason": "InternalError",
            "details": {"causes": [{"message": format!("error executing command in container: failed to exec in container: failed to start exec \"{id}\": OCI runtime exec failed: exec failed: unable to start container process: exec: \"{binary}\": executable file not found in $PATH: unknown")}]},
            "code": 500}),
    }
}

/// Runs `argv` in container `container` of istiod pod `pod` (whose clusterz is `clusterz`,
/// `None` when no istiod runs there).
pub fn run(argv: &[String], container: &str, istiod: bool, clusterz: Option<Value>) -> Outcome {
    let binary = argv.first().map(String::as_str).unwrap_or("");
    let is_pilot = binary == "pilot-discovery" || binary == "/usr/local/bin/pilot-discovery";
    if !(istiod && container == "discovery" && is_pilot) {
        return not_found(binary);
    }
    if argv.get(1).map(String::as_str) != Some("request") {
        // Only `request` is emulated: anything else is what cobra says about an unknown
        // command (pilot-discovery exits with -1).
        return exited(
            argv,
            format!(
                "Error: unknown command {:?} for \"pilot-discovery\"\n",
                argv.get(1).map(String::as_str).unwrap_or("")
            ),
            255,
        );
    }
    let args = &argv[2..];
    if args.len() < 2 {
        return exited(
            argv,
            format!(
                "Error: requires at least 2 arg(s), only received {}\n",
                args.len()
            ),
            255,
        );
    }
    let path = args[1].trim_start_matches('/');
    let path = path.split('?').next().unwrap_or("");
    match (path, clusterz) {
        ("debug/clusterz", Some(view)) => success(format!("{view}\n")),
        // A 404 prints its body (and Println's newline) and exits 0.
        _ => success("404 page not found\n\n".into()),
    }
}

/// The WebSocket accept key (RFC 6455): base64 of SHA-1 of the key and the fixed GUID.
fn accept_key(key: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    STANDARD.encode(digest.as_ref())
}

/// One unmasked server frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// Reads client frames until a close frame or the end (answering pings), at most `limit`.
async fn drain<R: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut R) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Parse what is buffered.
        while buf.len() >= 2 {
            let opcode = buf[0] & 0x0f;
            let masked = buf[1] & 0x80 != 0;
            let (len, mut at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            let mask = if masked {
                if buf.len() < at + 4 {
                    break;
                }
                let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
                at += 4;
                Some(m)
            } else {
                None
            };
            if buf.len() < at + len {
                break;
            }
            let mut payload = buf[at..at + len].to_vec();
            if let Some(m) = mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= m[i % 4];
                }
            }
            buf.drain(..at + len);
            match opcode {
                0x8 => return,
                0x9 => {
                    let _ = io.write_all(&frame(0xA, &payload)).await;
                }
                _ => {}
            }
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Answers a request on a pod's `exec` subresource.
pub async fn exec(shared: &Arc<Shared>, who: &Who, ns: &str, name: &str, req: Request) -> Response {
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect();
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let argv: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    // A WebSocket upgrade is a GET; kube-apiserver 1.34 authorizes it as `get` on pods/exec
    // (the `create` check of AuthorizePodWebsocketUpgradeCreatePermission starts in 1.35);
    // SPDY's POST needs `create`.
    let verb = if req.method() == axum::http::Method::GET {
        "get"
    } else {
        "create"
    };
    let (pod, clusterz) = {
        let st = shared.state.lock().unwrap();
        let ask = auth::Attributes {
            verb,
            group: "",
            resource: "pods/exec",
            namespace: Some(ns),
            name: Some(name),
        };
        if !auth::allowed(&st, who, &ask) {
            let message = auth::forbidden_message(who, verb, "", "pods/exec", Some(ns), Some(name));
            let mut e = ApiError::new(403, "Forbidden", message);
            e.name = name.to_string();
            e.plural = "pods".into();
            return status_response(&e);
        }
        let key = pod_key(ns, name);
        let Some(pod) = st.objects.get(&key).cloned() else {
            return status_response(&ApiError::not_found("", "pods", name));
        };
        (
            pod,
            crate::istiod::clusterz(&st, &key).map(|v| crate::istiod::clusterz_json(&v)),
        )
    };
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    let container = match get("container") {
        Some(c) if !c.is_empty() => c.to_string(),
        _ if containers.len() == 1 => containers[0].clone(),
        _ => {
            return status_response(&ApiError::new(
                400,
                "BadRequest",
                format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                ),
            ));
        }
    };
    if !containers.contains(&container) {
        return status_response(&ApiError::new(
            400,
            "BadRequest",
            format!("container {container} is not valid for pod {name}"),
        ));
    }
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") {
        return status_response(&ApiError::new(
            400,
            "BadRequest",
            format!("cannot exec into a container in a completed pod; current phase is {phase}"),
        ));
    }
    let running = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["name"] == container.as_str() && c.pointer("/state/running").is_some())
        });
    if !running {
        return status_response(&ApiError::new(
            500,
            "InternalError",
            format!("unable to upgrade connection: container not found (\"{container}\")"),
        ));
    }
    if argv.is_empty() {
        return status_response(&ApiError::new(
            400,
            "BadRequest",
            "you must specify at least 1 command",
        ));
    }
    let headers = req.headers();
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let protocol = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p));
    let (Some(key), true, Some(protocol)) = (key, websocket, protocol) else {
        return status_response(&ApiError::new(
            400,
            "BadRequest",
            "Upgrade request required",
        ));
    };
    let outcome = run(
        &argv,
        &container,
        is_istiod(&pod) && pod_ready(&pod),
        clusterz,
    );
    let want_stdout = get("stdout").is_some_and(|v| v == "true" || v == "1");
    let want_stderr = get("stderr").is_some_and(|v| v == "true" || v == "1");
    let mut req = req;
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut out = Vec::new();
        if want_stdout && !outcome.stdout.is_empty() {
            let mut m = vec![1u8];
            m.extend_from_slice(outcome.stdout.as_bytes());
            out.extend(frame(0x2, &m));
        }
        if want_stderr && !outcome.stderr.is_empty() {
            let mut m = vec![2u8];
            m.extend_from_slice(outcome.stderr.as_bytes());
            out.extend(frame(0x2, &m));
        }
        let mut m = vec![3u8];
        m.extend_from_slice(outcome.status.to_string().as_bytes());
        out.extend(frame(0x2, &m));
        // Close, normal closure (1000).
        out.extend(frame(0x8, &1000u16.to_be_bytes()));
        if io.write_all(&out).await.is_err() {
            return;
        }
        let _ = io.flush().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain(&mut io)).await;
        let _ = io.shutdown().await;
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept_key(&key)).unwrap(),
    );
    h.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn the_accept_key_follows_rfc_6455() {
        // The example of RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn exec_paths_name_namespace_and_pod() {
        assert_eq!(
            exec_target("/api/v1/namespaces/istio-system/pods/istiod-x/exec"),
            Some(("istio-system".into(), "istiod-x".into()))
        );
        assert_eq!(exec_target("/api/v1/namespaces/a/pods/p/log"), None);
    }

    #[test]
    fn pilot_discovery_request_prints_clusterz_or_a_404_body() {
        let view = json!([{"id": "c1", "secretName": "", "syncStatus": "synced"}]);
        let ok = run(
            &argv("pilot-discovery request GET /debug/clusterz"),
            "discovery",
            true,
            Some(view.clone()),
        );
        assert_eq!(ok.stdout, format!("{view}\n"));
        assert_eq!(ok.status["status"], "Success");
        let missing = run(
            &argv("pilot-discovery request GET debug/nothing"),
            "discovery",
            true,
            Some(view),
        );
        assert_eq!(missing.stdout, "404 page not found\n\n");
        assert_eq!(missing.status["status"], "Success");
    }

    #[test]
    fn other_commands_are_not_in_the_image() {
        let out = run(&argv("ls /"), "discovery", true, None);
        assert_eq!(out.status["reason"], "InternalError");
        assert!(
            out.status["message"]
                .as_str()
                .unwrap()
                .ends_with("exec: \"ls\": executable file not found in $PATH: unknown")
        );
        let few = run(
            &argv("pilot-discovery request GET"),
            "discovery",
            true,
            None,
        );
        assert_eq!(few.status["reason"], "NonZeroExitCode");
        assert_eq!(few.status["details"]["causes"][0]["message"], "255");
    }
}
