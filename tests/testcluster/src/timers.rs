//! What real controllers do some time after a write, driven by a ticker in the server: the
//! kubelet's readiness (pods Ready after [`Timing::pod_ready`]), the namespace controller's
//! finalization (a terminating namespace goes away after [`Timing::namespace_finalize`] once
//! empty), a cloud load-balancer controller (addresses after [`Timing::load_balancer`]) and
//! istiod's validation controller (webhooks switched to `failurePolicy: Fail`).

use std::sync::Weak;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::Shared;
use crate::store::{Key, State, WriteMode, meta_str};
use crate::util::{now_rfc3339, random_string};

/// How often the ticker looks for due work.
const TICK: Duration = Duration::from_millis(20);

/// How often a ztunnel that is not ready yet is probed again (its readiness probe's period,
/// shortened like the other delays).
const ZTUNNEL_PROBE_PERIOD: Duration = Duration::from_millis(100);

/// The delays of the controllers that act over time (see `Options`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub pod_ready: Duration,
    pub namespace_finalize: Duration,
    pub load_balancer: Duration,
    pub load_balancer_hostname: bool,
    pub pod_termination: Duration,
}

/// Work a controller does at a given instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// The pod's readiness probe passes.
    PodReady(Key),
    /// The namespace controller removes the emptied, terminating namespace.
    FinalizeNamespace(Key),
    /// The cloud controller gives the LoadBalancer Service its address.
    LoadBalancer(Key),
    /// A terminating pod's containers have stopped: the kubelet removes it.
    PodGone(Key),
    /// The ReplicaSet or Job controller syncs its object again (a pod create was refused).
    Resync(Key),
}

/// Runs the timers of a cluster until it is dropped.
pub async fn run(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let pending = {
            let mut st = shared.state.lock().unwrap();
            st.tick(Instant::now());
            st.take_pending()
        };
        crate::server::spawn_pending(&shared, pending);
    }
}

/// The containers of a pod whose readiness probe has not passed yet: running, started, not
/// ready; the pod's `Ready` and `ContainersReady` conditions False (as the kubelet's status
/// manager words them).
pub fn unready(pod: &mut Value) {
    let names: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    let message = format!("containers with unready status: [{}]", names.join(" "));
    if let Some(Value::Array(cs)) = pod.pointer_mut("/status/conditions") {
        for c in cs {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                c["status"] = json!("False");
                c["reason"] = json!("ContainersNotReady");
                c["message"] = json!(message);
            }
        }
    }
    if let Some(Value::Array(cs)) = pod.pointer_mut("/status/containerStatuses") {
        for c in cs {
            c["ready"] = json!(false);
        }
    }
}

fn make_ready(pod: &mut Value) {
    let now = now_rfc3339();
    if let Some(Value::Array(cs)) = pod.pointer_mut("/status/conditions") {
        for c in cs {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                *c = json!({"type": c["type"], "status": "True", "lastProbeTime": null,
                            "lastTransitionTime": now});
            }
        }
    }
    if let Some(Value::Array(cs)) = pod.pointer_mut("/status/containerStatuses") {
        for c in cs {
            c["ready"] = json!(true);
        }
    }
}

fn waiting_for_probe(pod: &Value) -> bool {
    pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
        && !crate::proxy::pod_ready(pod)
        && pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().all(|c| c.pointer("/state/running").is_some()))
}

/// An AWS-style load-balancer host name: `a<32 hex>-<16 hex>.elb.<region>.amazonaws.com`.
fn elb_hostname(uid: &str) -> String {
    let hex = b"0123456789abcdef";
    let mut id: String = uid.chars().filter(|c| *c != '-').take(32).collect();
    while id.len() < 32 {
        id.push('0');
    }
    format!(
        "a{id}-{}.elb.us-east-1.amazonaws.com",
        random_string(16, hex)
    )
}

impl State {
    /// Schedules `timer` after `delay`.
    pub(crate) fn schedule(&mut self, delay: Duration, timer: Timer) {
        self.timers.push((Instant::now() + delay, timer));
    }

    /// A new pod waits for its readiness probe when [`Timing::pod_ready`] is set.
    /// A ztunnel pod also waits for an istiod that accepts it (see `ambient::ztunnel_accepted`).
    pub(crate) fn delay_readiness(&mut self, key: &Key, pod: &mut Value) {
        let gated = crate::ambient::waits_for_istiod(pod);
        if (self.timing.pod_ready.is_zero() && !gated) || !waiting_for_probe_or_ready(pod) {
            return;
        }
        unready(pod);
        self.schedule(self.timing.pod_ready, Timer::PodReady(key.clone()));
    }

    /// The address a load balancer gets now: an IP from the cluster's range, or (with
    /// [`Timing::load_balancer_hostname`]) only a host name, as AWS ELBs have.
    pub(crate) fn load_balancer_ingress(&mut self, svc: &Value) -> Value {
        if self.timing.load_balancer_hostname {
            json!({"hostname": elb_hostname(meta_str(svc, "uid"))})
        } else {
            let ip = self.allocate_ip(&self.load_balancer_prefix());
            json!({"ip": ip, "ipMode": "VIP"})
        }
    }

    /// The status of a LoadBalancer Service being written: kept once it has an address;
    /// otherwise an address now, or after [`Timing::load_balancer`], or never (no
    /// load-balancer controller).
    pub(crate) fn load_balancer_status(&mut self, key: &Key, svc: &mut Value) {
        if svc.pointer("/status/loadBalancer/ingress/0").is_some() {
            return;
        }
        if !self.load_balancer || !self.timing.load_balancer.is_zero() {
            svc["status"] = json!({"loadBalancer": {}});
            if self.load_balancer {
                self.schedule(self.timing.load_balancer, Timer::LoadBalancer(key.clone()));
            }
            return;
        }
        let ingress = self.load_balancer_ingress(svc);
        svc["status"] = json!({"loadBalancer": {"ingress": [ingress]}});
    }

    /// Does the work that is due at `now`.
    pub fn tick(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timers)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.timers = later;
        for (_, timer) in due {
            match timer {
                Timer::PodReady(key) => self.pod_probe_passes(&key),
                Timer::LoadBalancer(key) => self.load_balancer_arrives(&key),
                Timer::FinalizeNamespace(key) => self.finalize_namespace(&key),
                Timer::Resync(key) => self.resync(&key),
                Timer::PodGone(key) => {
                    self.removing = true;
                    self.delete(&key);
                    self.removing = false;
                }
            }
        }
        self.istiod_validation_fail_closed();
        self.istiod_gateway_controllers();
    }

    fn resync(&mut self, key: &Key) {
        let Some(obj) = self.objects.get(key).cloned() else {
            return;
        };
        match (key.group.as_str(), key.plural.as_str()) {
            ("apps", "replicasets") => self.reconcile_pods(key, &obj),
            ("batch", "jobs") => self.start_job(key, &obj),
            ("apps", "daemonsets") => self.reconcile_daemon_pods(key, &obj),
            _ => {}
        }
    }

    fn pod_probe_passes(&mut self, key: &Key) {
        let Some(mut pod) = self.objects.get(key).cloned() else {
            return;
        };
        if !waiting_for_probe(&pod) || !meta_str(&pod, "deletionTimestamp").is_empty() {
            return;
        }
        if crate::ambient::waits_for_istiod(&pod) && !crate::ambient::ztunnel_accepted(self, &pod) {
            // The probe fails until istiod accepts ztunnel; the kubelet probes again.
            self.schedule(ZTUNNEL_PROBE_PERIOD, Timer::PodReady(key.clone()));
            return;
        }
        make_ready(&mut pod);
        if let Some(res) = self.resource("", "v1", "pods") {
            let _ = self.update(&res, key, pod, WriteMode::Internal, false);
        }
    }

    fn load_balancer_arrives(&mut self, key: &Key) {
        let Some(mut svc) = self.objects.get(key).cloned() else {
            return;
        };
        if !self.load_balancer
            || svc.pointer("/spec/type").and_then(Value::as_str) != Some("LoadBalancer")
            || svc.pointer("/status/loadBalancer/ingress/0").is_some()
        {
            return;
        }
        let ingress = self.load_balancer_ingress(&svc);
        svc["status"] = json!({"loadBalancer": {"ingress": [ingress]}});
        if let Some(res) = self.resource("", "v1", "services") {
            let _ = self.update(&res, key, svc, WriteMode::Internal, false);
        }
    }

    /// Marks a namespace Terminating (deletionTimestamp, `status.phase`), deletes its
    /// contents and schedules its removal; the namespace controller's work
    /// (pkg/controller/namespace/deletion `namespacedResourcesDeleter.Delete`).
    pub(crate) fn terminate_namespace(&mut self, key: &Key) -> Option<Value> {
        let mut ns = self.objects.get(key).cloned()?;
        if meta_str(&ns, "deletionTimestamp").is_empty() {
            ns["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            ns["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            ns["status"] = json!({"phase": "Terminating"});
            ns = self.commit_modified(key.clone(), ns);
            self.schedule(
                self.timing.namespace_finalize,
                Timer::FinalizeNamespace(key.clone()),
            );
        }
        let contents: Vec<Key> = self
            .objects
            .keys()
            .filter(|k| k.namespace == key.name)
            .cloned()
            .collect();
        for k in contents {
            self.delete(&k);
        }
        Some(ns)
    }

    /// Graceful deletion of a pod (pkg/registry/core/pod `podStrategy.CheckGracefulDelete`,
    /// the kubelet's `killPod`): it gets a `deletionTimestamp` (now + its
    /// `terminationGracePeriodSeconds`, default 30) and stops being Ready, its ReplicaSet no
    /// longer counts it (and replaces it at once); it is removed after
    /// [`Timing::pod_termination`], as a container that exits on SIGTERM.
    pub(crate) fn terminate_pod(&mut self, key: &Key) -> Option<Value> {
        let mut pod = self.objects.get(key).cloned()?;
        if !meta_str(&pod, "deletionTimestamp").is_empty() {
            return Some(pod);
        }
        let grace = pod
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        pod["metadata"]["deletionTimestamp"] =
            json!(crate::util::rfc3339(crate::util::now_secs() + grace));
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        unready(&mut pod);
        let pod = self.commit_modified(key.clone(), pod);
        self.owner_status_stale(&pod);
        self.schedule(self.timing.pod_termination, Timer::PodGone(key.clone()));
        Some(pod)
    }

    fn finalize_namespace(&mut self, key: &Key) {
        let Some(ns) = self.objects.get(key) else {
            return;
        };
        if meta_str(ns, "deletionTimestamp").is_empty() {
            return;
        }
        if self.objects.keys().any(|k| k.namespace == key.name) {
            // Something is left (a controller raced the deletion): delete it, try again.
            self.terminate_namespace(key);
            self.schedule(
                self.timing.namespace_finalize,
                Timer::FinalizeNamespace(key.clone()),
            );
            return;
        }
        self.remove_now(key);
    }

    /// istiod's validation controller (pilot pkg/webhooks/validation/controller): once a
    /// Ready istiod of a revision runs, the ValidatingWebhookConfigurations of that revision
    /// (label `istio.io/rev`; the default revision also owns `istiod-default-validator`) are
    /// switched from `failurePolicy: Ignore` to `Fail`.
    fn istiod_validation_fail_closed(&mut self) {
        let Some(res) = self.resource(
            "admissionregistration.k8s.io",
            "v1",
            "validatingwebhookconfigurations",
        ) else {
            return;
        };
        let ignoring: Vec<(Key, Value)> = self
            .select(&res, None)
            .filter(|(_, w)| {
                w.pointer("/webhooks")
                    .and_then(Value::as_array)
                    .is_some_and(|hs| hs.iter().any(|h| h["failurePolicy"] == "Ignore"))
            })
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        for (key, mut hook) in ignoring {
            let Some(rev) = crate::admission::owning_revision(&hook) else {
                continue;
            };
            if !self.revision_runs(&rev) {
                continue;
            }
            for h in hook["webhooks"].as_array_mut().unwrap() {
                h["failurePolicy"] = json!("Fail");
            }
            // An update by istiod (its user agent names `pilot-discovery`): it owns the field
            // from now on, and a later server-side apply of `Ignore` conflicts with it.
            self.writer = Some(crate::fields::Writer {
                manager: "pilot-discovery".into(),
                applied: None,
                force: false,
            });
            let _ = self.update(&res, &key, hook, WriteMode::Main, false);
            self.writer = None;
        }
    }
}

/// A pod that is (or would be, once probed) Ready: running containers.
fn waiting_for_probe_or_ready(pod: &Value) -> bool {
    pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
        && pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().all(|c| c.pointer("/state/running").is_some()))
}
