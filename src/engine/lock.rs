//! One run at a time per cluster: a `coordination.k8s.io/v1` Lease that `install`, `link` and
//! `uninstall` hold for as long as they change a cluster, renewed while they run and released
//! at the end (after Ctrl-C it stays, as after a crash, for the next run to take over). A second run that finds a live holder stops before changing anything (or waits,
//! with `--wait-for-lock`); a dead holder (same host and its process is gone, or its renewals
//! stopped for longer than the lease duration) is taken over, and that is reported — and only
//! then may meshup recover what the dead run left pending.
//!
//! The Lease lives in `kube-system`, named `meshup-<mesh namespace>`: that namespace exists on
//! every cluster before Istio does and outlives `uninstall`, so the lock never moves while a
//! run holds it. Taking a free lock is one create; releasing it one delete conditional on this
//! run's last write (a lock someone took over is left alone); a renewal is written only when a
//! run outlives the renewal period.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::engine::run::{Locks, Run, parallel};
pub use crate::error::{Held, LockError};
use crate::model::mesh::Cluster;
use crate::tools::kubectl;
use crate::tools::live::{Lease, Live};
use crate::tools::runner::{self, StepError};
use crate::tools::step::Target;
use crate::trust::sensitive::Sensitive;

/// Where the Lease lives.
pub const LOCK_NAMESPACE: &str = "kube-system";
/// How long a holder's renewal counts: after this without one, the holder is taken for dead.
pub const LEASE_SECONDS: i64 = 30;
/// How often a holder renews.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How often a waiting run looks again.
const POLL: Duration = Duration::from_secs(2);

const HOST: &str = "meshup.io/host";
const PID: &str = "meshup.io/pid";
const PID_START: &str = "meshup.io/pid-start";
const USER: &str = "meshup.io/user";
const COMMAND: &str = "meshup.io/command";
const STARTED: &str = "meshup.io/started";

/// Who holds (or wants) a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// When the process started (ticks since boot on Linux), so a reused pid is not taken for
    /// the holder.
    pub pid_start: String,
    pub user: String,
    pub command: String,
    pub started: OffsetDateTime,
}

impl Holder {
    /// This process, running `command`.
    pub fn me(command: &str) -> Holder {
        let pid = std::process::id();
        Holder {
            host: hostname(),
            pid,
            pid_start: process_start(pid).unwrap_or_default(),
            user: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "unknown".into()),
            command: command.to_string(),
            started: OffsetDateTime::now_utc(),
        }
    }

    /// `meshup install by alice@build-7 (pid 4242)`: the Lease's `holderIdentity`.
    pub fn identity(&self) -> String {
        format!(
            "meshup {} by {}@{} (pid {})",
            self.command, self.user, self.host, self.pid
        )
    }

    /// The holder a Lease names, when a meshup holds it.
    fn of(lease: &Lease) -> Option<Holder> {
        let identity = lease.spec.holder_identity.as_deref().unwrap_or_default();
        if identity.is_empty() {
            return None;
        }
        let a = &lease.metadata.annotations;
        Some(Holder {
            host: a.get(HOST).cloned().unwrap_or_default(),
            pid: a.get(PID).and_then(|p| p.parse().ok()).unwrap_or(0),
            pid_start: a.get(PID_START).cloned().unwrap_or_default(),
            user: a.get(USER).cloned().unwrap_or_default(),
            command: a
                .get(COMMAND)
                .cloned()
                .unwrap_or_else(|| identity.to_string()),
            started: a
                .get(STARTED)
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        })
    }
}

/// Whether the holder of `lease` is gone, and why; `None` while it may still run.
pub fn dead(lease: &Lease, now: OffsetDateTime, here: &str) -> Option<String> {
    let holder = Holder::of(lease)?;
    let renewed = lease
        .spec
        .renew_time
        .as_deref()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    let duration = lease.spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS);
    match renewed {
        Some(renewed) if now - renewed > time::Duration::seconds(duration) => {
            return Some(format!(
                "its last renewal was at {} (the lease lasts {duration}s)",
                stamp(renewed)
            ));
        }
        None => return Some("it never renewed the lease".into()),
        Some(_) => {}
    }
    if holder.host == here && !process_alive(holder.pid, &holder.pid_start) {
        return Some(format!("its process {} on this host is gone", holder.pid));
    }
    None
}

/// Runs `f` holding the lock of every cluster of the run: takes them all first (in parallel;
/// none is kept when one cannot be had), renews them while `f` runs, releases them after —
/// also after a failure or Ctrl-C.
pub fn hold<R>(
    run: &Run,
    command: &str,
    wait: Option<Duration>,
    f: impl FnOnce(&Locks) -> R,
) -> Result<R, LockError> {
    let holder = Holder::me(command);
    let name = lease_name(&run.mesh.namespace);
    let clusters = &run.mesh.clusters;
    let acquired = parallel(run.jobs, clusters, |cluster| {
        let target = run.target(cluster);
        let live = Live::new(run.runner, &target, run.timeout);
        // A blinking API server is waited out as any step's would be.
        let mut tries = 0;
        loop {
            match acquire(&live, &name, &holder, wait) {
                Err(Refused::Transient(cause, _)) if tries < run.retry.times => {
                    tries += 1;
                    let delay = run.retry.delay(tries);
                    run.reporter.line(&format!(
                        "[{}] lock: retry {tries}/{} in {}s: {cause}",
                        cluster.name,
                        run.retry.times,
                        delay.as_secs_f64()
                    ));
                    if runner::sleep(delay).is_err() {
                        break Err(Refused::Interrupted);
                    }
                }
                Err(Refused::Transient(_, message)) => {
                    break Err(Refused::Step(cluster.name.clone(), message));
                }
                other => break other,
            }
        }
    });
    let mut locks = Locks::default();
    let mut failure = None;
    for (cluster, result) in clusters.iter().zip(&acquired) {
        match result {
            Ok((_, Some(previous))) => {
                run.reporter.warn(&format!(
                    "[{}] took over the lock of {previous}",
                    cluster.name
                ));
                locks
                    .taken_over
                    .insert(cluster.name.clone(), previous.clone());
            }
            Ok((_, None)) => {}
            Err(e) if failure.is_none() => failure = Some(e.clone()),
            Err(_) => {}
        }
    }
    // Each held lock with the `resourceVersion` of this run's last write to it.
    let held: Vec<(&Cluster, Mutex<LastWrite>)> = clusters
        .iter()
        .zip(&acquired)
        .filter_map(|(c, r)| r.as_ref().ok().map(|(w, _)| (c, Mutex::new(w.clone()))))
        .collect();
    if let Some(failure) = failure {
        release(run, &held, &name);
        return Err(failure.into_error());
    }
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| renew(run, &held, &name, &holder, &locks, &stop));
        let result = f(&locks);
        stop.store(true, Ordering::SeqCst);
        result
    });
    if runner::interrupted() {
        // Ctrl-C may have stopped a helm call half-way (a release left pending): the lock
        // stays, as after a crash, so that the next run takes it over (at once on this
        // host, after the lease expires elsewhere) and may recover what was left.
        run.reporter.warn(&format!(
            "interrupted: meshup's lock stays until the next run takes it over and finishes what this run left half-done (at once from this machine, after {LEASE_SECONDS}s from another)"
        ));
        return Ok(result);
    }
    release(run, &held, &name);
    Ok(result)
}

/// Why one cluster's lock could not be had (cloneable, to report the first of several).
#[derive(Debug, Clone)]
enum Refused {
    Held(Held),
    Step(String, String),
    /// A failure a blinking API server causes (its cause, the message): tried again.
    Transient(&'static str, String),
    Interrupted,
}

impl Refused {
    fn into_error(self) -> LockError {
        match self {
            Refused::Held(held) => LockError::Held(held),
            Refused::Interrupted => LockError::Step(StepError::Interrupted),
            Refused::Step(cluster, message) if !cluster.is_empty() => {
                LockError::Cluster { cluster, message }
            }
            Refused::Step(_, message) | Refused::Transient(_, message) => {
                LockError::Step(StepError::other("", message, None))
            }
        }
    }
}

impl From<StepError> for Refused {
    fn from(e: StepError) -> Self {
        match e {
            StepError::Interrupted => Refused::Interrupted,
            other => match other.transient_cause() {
                Some(cause) => Refused::Transient(cause, other.to_string()),
                None => Refused::Step(String::new(), other.to_string()),
            },
        }
    }
}

/// What taking a lock gave: the Lease's `resourceVersion` (for the next write) and, when it was
/// taken over from a dead holder, who that was.
type Taken = (LastWrite, Option<String>);

/// Takes one cluster's lock.
fn acquire(
    live: &Live,
    name: &str,
    holder: &Holder,
    wait: Option<Duration>,
) -> Result<Taken, Refused> {
    let cluster = &live.target.cluster;
    let deadline = std::time::Instant::now() + wait.unwrap_or_default();
    let here = hostname();
    loop {
        // Most runs find the lock free, and then no Lease at all: create it straight away.
        let now = OffsetDateTime::now_utc();
        if let Written::Done(version) =
            write(live, kubectl::create, &manifest(name, holder, now, None, 0))?
        {
            return Ok((
                LastWrite {
                    version,
                    transitions: 0,
                },
                None,
            ));
        }
        let lease: Option<Lease> = live.get("lease", name, Some(LOCK_NAMESPACE))?;
        let now = OffsetDateTime::now_utc();
        let attempt = match &lease {
            None => {
                write(live, kubectl::create, &manifest(name, holder, now, None, 0)).map(|w| (w, 0))
            }
            Some(lease) => {
                let transitions = lease.spec.lease_transitions.unwrap_or(0);
                match Holder::of(lease) {
                    None => write(
                        live,
                        kubectl::replace,
                        &manifest(name, holder, now, Some(lease), transitions + 1),
                    )
                    .map(|w| (w, transitions + 1)),
                    Some(other) if other == *holder => {
                        let last = LastWrite {
                            version: lease.metadata.resource_version.clone(),
                            transitions,
                        };
                        return Ok((last, None));
                    }
                    Some(other) => match dead(lease, now, &here) {
                        Some(why) => {
                            match write(
                                live,
                                kubectl::replace,
                                &manifest(name, holder, now, Some(lease), transitions + 1),
                            )? {
                                Written::Done(version) => {
                                    return Ok((
                                        LastWrite {
                                            version,
                                            transitions: transitions + 1,
                                        },
                                        Some(format!(
                                            "`{}` (started {}): {why}",
                                            other.identity(),
                                            stamp(other.started)
                                        )),
                                    ));
                                }
                                Written::Raced => continue,
                            }
                        }
                        None if std::time::Instant::now() < deadline => {
                            runner::sleep(POLL)?;
                            continue;
                        }
                        None => {
                            return Err(Refused::Held(Held {
                                cluster: cluster.clone(),
                                identity: other.identity(),
                                since: stamp(other.started),
                            }));
                        }
                    },
                }
            }
        }?;
        match attempt {
            (Written::Done(version), transitions) => {
                return Ok((
                    LastWrite {
                        version,
                        transitions,
                    },
                    None,
                ));
            }
            // Another run wrote first: look again.
            (Written::Raced, _) => continue,
        }
    }
}

enum Written {
    /// Written; the Lease's new `resourceVersion`.
    Done(String),
    /// `AlreadyExists` or `Conflict`: someone else wrote in between.
    Raced,
}

fn write(
    live: &Live,
    verb: fn(&Target, Sensitive<Vec<u8>>, Duration) -> crate::tools::step::Step,
    manifest: &serde_json::Value,
) -> Result<Written, Refused> {
    let yaml = serde_yaml::to_string(manifest).expect("plain JSON is valid YAML");
    let step = verb(live.target, Sensitive::new(yaml.into_bytes()), live.timeout);
    let output = live.runner.run(&step)?;
    if output.success() {
        let lease: Lease = serde_json::from_str(&output.stdout).map_err(|e| {
            Refused::Step(
                live.target.cluster.clone(),
                StepError::malformed(&step, e).to_string(),
            )
        })?;
        return Ok(Written::Done(lease.metadata.resource_version));
    }
    let stderr = output.stderr.to_lowercase();
    if stderr.contains("alreadyexists")
        || stderr.contains("already exists")
        || stderr.contains("the object has been modified")
    {
        return Ok(Written::Raced);
    }
    let failed = StepError::failed(&step, &output);
    Err(match failed.transient_cause() {
        Some(cause) => Refused::Transient(cause, failed.to_string()),
        None => Refused::Step(live.target.cluster.clone(), failed.to_string()),
    })
}

/// Renews every held lock until `stop`, one write each every `RENEW_EVERY` (conditional on
/// this run's last write), clusters in parallel up to `--jobs`; a lock someone else took is
/// marked lost.
fn renew(
    run: &Run,
    held: &[(&Cluster, Mutex<LastWrite>)],
    name: &str,
    holder: &Holder,
    locks: &Locks,
    stop: &AtomicBool,
) {
    loop {
        let next = std::time::Instant::now() + RENEW_EVERY;
        while std::time::Instant::now() < next {
            if stop.load(Ordering::SeqCst) || runner::interrupted() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // In parallel: one after the other, a round over 100 clusters outlasts the lease.
        parallel(run.jobs, held, |(cluster, version)| {
            let target = run.target(cluster);
            let live = Live::new(run.runner, &target, run.timeout);
            let mut last = version.lock().unwrap_or_else(|e| e.into_inner());
            let renewed = lease_json(name, holder, OffsetDateTime::now_utc(), &last);
            match write(&live, kubectl::replace, &renewed) {
                Ok(Written::Done(new)) => last.version = new,
                // Someone else wrote it: the lock is theirs now.
                Ok(Written::Raced) => {
                    let taker = live
                        .get::<Lease>("lease", name, Some(LOCK_NAMESPACE))
                        .ok()
                        .flatten()
                        .and_then(|l| l.spec.holder_identity)
                        .unwrap_or_else(|| "someone".into());
                    run.reporter.warn(&format!(
                        "[{}] meshup's lock was taken over by `{taker}`",
                        cluster.name
                    ));
                    locks
                        .lost
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(cluster.name.clone());
                }
                // A failed renewal is tried again at the next round; transient trouble is fine.
                Err(_) => {}
            }
        });
    }
}

/// Releases the locks this run still holds (not after Ctrl-C): one delete each, conditional
/// on this run's last write, so a lock someone took over is left alone.
fn release(run: &Run, held: &[(&Cluster, Mutex<LastWrite>)], name: &str) {
    runner::cleanup(|| {
        parallel(run.jobs, held, |(cluster, version)| {
            let target = run.target(cluster);
            let last = version.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let preconditions = json!({
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "preconditions": { "resourceVersion": last.version },
            });
            let step = kubectl::delete_raw(
                &target,
                &format!("/apis/coordination.k8s.io/v1/namespaces/{LOCK_NAMESPACE}/leases/{name}"),
                Sensitive::new(preconditions.to_string().into_bytes()),
                run.timeout,
            );
            let message = match run.runner.run(&step) {
                Ok(output) if output.success() => return,
                Ok(output) => {
                    let stderr = output.stderr.to_lowercase();
                    // Taken over (the precondition failed) or already gone: not ours to touch.
                    if stderr.contains("conflict")
                        || stderr.contains("notfound")
                        || stderr.contains("not found")
                    {
                        return;
                    }
                    StepError::failed(&step, &output).to_string()
                }
                Err(e) => e.to_string(),
            };
            run.reporter.warn(&format!(
                "[{}] could not release meshup's lock (it expires by itself after {LEASE_SECONDS}s): {message}",
                cluster.name
            ));
        });
    });
}

/// The Lease's name for a mesh in `namespace`.
pub fn lease_name(namespace: &str) -> String {
    format!("meshup-{namespace}")
}

/// The Lease as this run last wrote it: its `resourceVersion` and `leaseTransitions`.
#[derive(Debug, Clone, Default)]
struct LastWrite {
    version: String,
    transitions: i64,
}

/// A Lease held by `holder`, renewed `now`, replacing what this run last wrote.
fn lease_json(
    name: &str,
    holder: &Holder,
    now: OffsetDateTime,
    last: &LastWrite,
) -> serde_json::Value {
    let previous = Lease {
        metadata: crate::tools::live::Meta {
            resource_version: last.version.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    manifest(name, holder, now, Some(&previous), last.transitions)
}

fn manifest(
    name: &str,
    holder: &Holder,
    now: OffsetDateTime,
    previous: Option<&Lease>,
    transitions: i64,
) -> serde_json::Value {
    let mut metadata = json!({
        "name": name,
        "namespace": LOCK_NAMESPACE,
        "labels": {"app.kubernetes.io/managed-by": "meshup"},
        "annotations": {
            HOST: holder.host,
            PID: holder.pid.to_string(),
            PID_START: holder.pid_start,
            USER: holder.user,
            COMMAND: holder.command,
            STARTED: holder.started.format(&Rfc3339).unwrap_or_default(),
        },
    });
    if let Some(previous) = previous {
        metadata["resourceVersion"] = json!(previous.metadata.resource_version);
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": holder.identity(),
            "leaseDurationSeconds": LEASE_SECONDS,
            // This run took the lock when it started trying to; renewals keep that time.
            "acquireTime": micro_time(holder.started),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        },
    })
}

/// A Kubernetes MicroTime: RFC 3339 in UTC with microseconds.
fn micro_time(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// A time for people: `2026-11-25 20:10:48 UTC`.
fn stamp(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// When process `pid` started (field 22 of /proc/PID/stat), to tell it from a later process
/// that reused its pid.
fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// Whether process `pid` (started at `start`, when known) still runs.
fn process_alive(pid: u32, start: &str) -> bool {
    if pid == 0 {
        return false;
    }
    match process_start(pid) {
        Some(now) => start.is_empty() || now == start,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &Holder, renewed: OffsetDateTime) -> Lease {
        let value = manifest("meshup-istio-system", holder, renewed, None, 0);
        serde_json::from_value(value).unwrap()
    }

    fn other_process() -> Holder {
        let mut holder = Holder::me("install");
        holder.pid = u32::MAX - 1;
        holder
    }

    #[test]
    fn a_live_holder_on_this_host_is_alive() {
        let me = Holder::me("install");
        let now = OffsetDateTime::now_utc();
        assert_eq!(dead(&lease(&me, now), now, &me.host), None);
    }

    #[test]
    fn a_holder_whose_process_is_gone_is_dead_at_once() {
        let gone = other_process();
        let now = OffsetDateTime::now_utc();
        let why = dead(&lease(&gone, now), now, &gone.host).unwrap();
        assert!(why.contains("on this host is gone"), "{why}");
        // On another host the pid says nothing: only the renewals count.
        assert_eq!(dead(&lease(&gone, now), now, "elsewhere"), None);
    }

    #[test]
    fn a_holder_that_stopped_renewing_is_dead_after_the_lease_duration() {
        let holder = Holder::me("link");
        let renewed = OffsetDateTime::now_utc() - time::Duration::seconds(LEASE_SECONDS + 1);
        let why = dead(
            &lease(&holder, renewed),
            OffsetDateTime::now_utc(),
            "elsewhere",
        )
        .unwrap();
        assert!(why.contains("last renewal"), "{why}");
    }

    #[test]
    fn a_reused_pid_is_not_the_holder() {
        let mut holder = Holder::me("install");
        holder.pid_start = "1".into();
        let now = OffsetDateTime::now_utc();
        assert!(dead(&lease(&holder, now), now, &holder.host).is_some());
    }

    #[test]
    fn the_identity_says_who_and_the_lease_carries_when() {
        let holder = Holder::me("uninstall");
        let identity = holder.identity();
        assert!(identity.starts_with("meshup uninstall by "), "{identity}");
        let parsed = Holder::of(&lease(&holder, OffsetDateTime::now_utc())).unwrap();
        assert_eq!(parsed.pid, holder.pid);
        assert_eq!(parsed.command, "uninstall");
        assert_eq!(stamp(parsed.started), stamp(holder.started));
    }

    #[test]
    fn micro_time_is_what_the_api_server_takes() {
        let t = OffsetDateTime::from_unix_timestamp(1_764_101_448).unwrap()
            + time::Duration::microseconds(123_456);
        assert_eq!(micro_time(t), "2025-11-25T20:10:48.123456Z");
        assert!(OffsetDateTime::parse(&micro_time(t), &Rfc3339).is_ok());
    }
}
