#!/usr/bin/env python3
"""Real clusters on one machine, for meshup's real test tier (scripts/real-clusters.sh up|down).

    launcher.py up N DIR      starts N clusters; exits 0 once every API server answers and its
                              node is Ready; on failure stops what it started and exits 1
    launcher.py down DIR      stops everything `up` started in DIR and removes what it created
    launcher.py supervise DIR (started by `up`) runs a real istiod per istiod pod and gives
                              LoadBalancer Services an address

Per cluster i (contexts `real-1` ... `real-N` in DIR/kubeconfig): etcd, kube-apiserver,
kube-controller-manager and kube-scheduler as plain processes bound to 10.K.0.(10+i), an address
of a bridge `mrXXXX` that this script creates (K and XXXX derive from DIR), and kwok with one
node (`real-i-node`, pod CIDR 10.K.i.0/24) standing in for the kubelet.

A pod labelled `app=istiod` is not made Ready by kwok (its own stage gives it an IP and leaves it
unready). The supervisor runs pilot-discovery for it, built for the Istio version of the pod's
image tag, in a network namespace whose address is the pod's IP, with the pod's args and env,
its volumes written under the pod's directory (pilot-discovery's default paths are relative to
its working directory), and a kubeconfig holding a token of the pod's service account bound to
the pod. The pod turns Ready when that istiod's readiness probe answers 200. A kwok `Exec` per
pod makes `kubectl exec POD -c discovery -- pilot-discovery ...` run inside that namespace, and a
kwok `Logs` per pod serves the process's output (CRI log format) to `kubectl logs`.

Binaries come from scripts/real-clusters.sh build (its cache; versions from scripts/pins.env).
Only the Python standard library, openssl and iproute2 are used.
"""

import base64
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = ".meshup-real"
MAX_CLUSTERS = 9


def log(msg):
    print(f"[real] {msg}", file=sys.stderr, flush=True)


def pins():
    out = {}
    with open(os.path.join(REPO, "scripts", "pins.env")) as f:
        for line in f:
            m = re.match(r'^([A-Z0-9_]+)="([^"]*)"', line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


def cache_root():
    return os.environ.get("MESHUP_REAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "meshup", "real"
    )


def binaries():
    p = pins()
    root = cache_root()
    b = {
        "etcd": os.path.join(root, f"etcd-{p['REAL_ETCD_VERSION']}", "etcd"),
        "kwok": os.path.join(root, f"kwok-{p['REAL_KWOK_VERSION']}", "kwok"),
    }
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        b[name] = os.path.join(root, f"kubernetes-{p['REAL_KUBERNETES_VERSION']}", name)
    missing = [path for path in b.values() if not os.access(path, os.X_OK)]
    if missing:
        sys.exit(
            "error: missing real-tier binaries: "
            + ", ".join(missing)
            + "; run scripts/real-clusters.sh build"
        )
    return b


def istio_builds():
    """Istio version -> pilot-discovery path, for the builds present in the cache."""
    out = {}
    for pair in pins()["ISTIO_BUILDS"].split():
        version = pair.split("=", 1)[0]
        path = os.path.join(cache_root(), f"pilot-discovery-{version}", "pilot-discovery")
        if os.access(path, os.X_OK):
            out[version] = path
    return out


def kubectl():
    path = os.environ.get("MESHUP_REAL_KUBECTL") or os.path.join(REPO, ".tools", "helm4", "kubectl")
    if not os.access(path, os.X_OK):
        sys.exit(f"error: no kubectl at {path}; run scripts/fetch-tools.sh")
    return path


# ---- addresses -------------------------------------------------------------------------------


class Net:
    """The addresses of DIR's clusters: a /16 of 10.0.0.0/8 picked from DIR's path."""

    def __init__(self, state):
        self.id = state["id"]
        self.k = state["k"]
        self.bridge = f"mr{self.id}"

    def host(self, i):
        return f"10.{self.k}.0.{10 + i}"

    def gateway(self):
        return f"10.{self.k}.0.1"

    def pod_cidr(self, i):
        return f"10.{self.k}.{i}.0/24"

    def lb_pool(self, i):
        return [f"10.{self.k}.{200 + i}.{n}" for n in range(1, 250)]

    def netns(self, n):
        return f"mr{self.id}p{n}"


def pick_net(dir_):
    digest = hashlib.sha1(os.path.realpath(dir_).encode()).hexdigest()
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    used = set(re.findall(r"^10\.(\d+)\.", routes, re.M))
    start = int(digest[:4], 16)
    for step in range(100):
        k = 100 + (start + step) % 100
        if str(k) not in used:
            return {"id": digest[:4], "k": k}
    sys.exit("error: no free 10.K.0.0/16 for the real clusters' bridge")


def sh(*argv, check=True, **kw):
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
    return r


# ---- certificates ----------------------------------------------------------------------------


def openssl(*args, cwd):
    sh("openssl", *args, cwd=cwd)


def make_pki(d, host, name):
    """A cluster CA; the API server's serving cert; client certs; the service-account key."""
    os.makedirs(d, exist_ok=True)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=d)
    openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-days", "30", "-subj", f"/CN={name}-ca",
        "-out", "ca.crt", cwd=d,
    )

    def leaf(stem, subject, sans=None):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{stem}.key", cwd=d)
        openssl("req", "-new", "-key", f"{stem}.key", "-subj", subject, "-out", f"{stem}.csr", cwd=d)
        ext = os.path.join(d, f"{stem}.ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n")
            if sans:
                f.write("extendedKeyUsage=serverAuth,clientAuth\n")
                f.write("subjectAltName=" + ",".join(sans) + "\n")
            else:
                f.write("extendedKeyUsage=clientAuth\n")
        openssl(
            "x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "30", "-extfile", ext, "-out", f"{stem}.crt", cwd=d,
        )

    leaf(
        "apiserver",
        "/CN=kube-apiserver",
        [
            f"IP:{host}", "IP:10.96.0.1", "IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ],
    )
    leaf("admin", "/O=system:masters/CN=real-admin")
    leaf("controller-manager", "/CN=system:kube-controller-manager")
    leaf("scheduler", "/CN=system:kube-scheduler")
    leaf("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=d)
    openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    for f in os.listdir(d):
        if f.endswith(".key"):
            os.chmod(os.path.join(d, f), 0o600)


def b64file(path):
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def kubeconfig_text(entries):
    """entries: (context, server, ca path, cert path, key path)."""
    doc = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}
    for ctx, server, ca, cert, key in entries:
        doc["clusters"].append(
            {"name": ctx, "cluster": {"server": server, "certificate-authority-data": b64file(ca)}}
        )
        doc["users"].append(
            {
                "name": ctx,
                "user": {"client-certificate-data": b64file(cert), "client-key-data": b64file(key)},
            }
        )
        doc["contexts"].append({"name": ctx, "context": {"cluster": ctx, "user": ctx}})
    doc["current-context"] = entries[0][0]
    return json.dumps(doc, indent=1)


def write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# ---- a small API client ----------------------------------------------------------------------


class Api:
    def __init__(self, host, pki):
        self.host = host
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))

    def call(self, method, path, body=None, ctype="application/json", timeout=10):
        conn = http.client.HTTPSConnection(self.host, 6443, context=self.ctx, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = ctype
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            text = r.read().decode(errors="replace")
            try:
                return r.status, json.loads(text) if text else None
            except json.JSONDecodeError:
                return r.status, text
        finally:
            conn.close()

    def get(self, path):
        status, body = self.call("GET", path)
        return body if status == 200 else None


# ---- up / down -------------------------------------------------------------------------------


class Procs:
    """Processes started for DIR, recorded in DIR/pids so that `down` finds them."""

    def __init__(self, dir_):
        self.dir = dir_
        self.path = os.path.join(dir_, "pids")

    def start(self, name, argv, logfile, env=None, cwd=None):
        out = open(logfile, "ab")
        p = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=cwd,
        )
        out.close()
        with open(self.path, "a") as f:
            f.write(f"{p.pid} {name}\n")
        return p


def wait_for(what, check, timeout, interval=0.5):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            ok = check()
            if ok:
                return ok
        except Exception as e:  # noqa: BLE001 - reported at the timeout
            last = e
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}" + (f" (last: {last})" if last else ""))


KWOK_STAGES_HEAD = r"""
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  enableCRDs: [Exec, Logs]
  # Given here: a KwokConfiguration read from --config gets no defaults for these.
  nodePlayStageParallelism: 4
  podPlayStageParallelism: 4
  nodeLeaseParallelism: 4
  nodeLeaseDurationSeconds: 40
  podsOnNodeSyncParallelism: 4
  enableDebuggingHandlers: true
---
# A node: Ready, with the kubelet endpoint kwok serves.
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: real-node-ready}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: NotIn, values: ['True']}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
      addresses:
      - {address: {{ NodeIP | Quote }}, type: InternalIP}
      - {address: {{ NodeName | Quote }}, type: Hostname}
      daemonEndpoints:
        kubeletEndpoint:
          Port: {{ NodePort }}
      allocatable: {cpu: "2", memory: 8Gi, pods: "110"}
      capacity: {cpu: "2", memory: 8Gi, pods: "110"}
      nodeInfo:
        architecture: amd64
        kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
        operatingSystem: linux
      phase: Running
---
# A node's heartbeat: its conditions renewed (and its lease, which kwok keeps itself).
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: real-node-heartbeat}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.phase', operator: In, values: [Running]}
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: In, values: ['True']}
  delay: {durationMilliseconds: 20000, jitterDurationMilliseconds: 25000}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
---
# A deleted pod goes at once (no grace period to wait out: no container runs, and the
# supervisor stops istiod's process when its pod goes).
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: real-pod-delete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: Exists}
  next:
    finalizers: {empty: true}
    delete: true
"""


# A running pod's status: scheduled, started, with an IP from the node's pod CIDR; Ready as
# READY says ("True": nothing to wait for; "False": the supervisor's istiod decides).
POD_RUNNING_STAGE = r"""
---
# {comment}
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: {name}}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - {{key: '.metadata.deletionTimestamp', operator: DoesNotExist}}
    - {{key: '.metadata.labels.app', operator: {istiod_operator}, values: [istiod]}}
    - {{key: '.status.phase', operator: In, values: [Pending]}}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: Initialized}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "{ready}", type: Ready{reason}}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "{ready}", type: ContainersReady{reason}}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: PodScheduled}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - {{image: {{{{ .image | Quote }}}}, name: {{{{ .name | Quote }}}}, ready: {ready_flag}, started: true, restartCount: 0, state: {{running: {{startedAt: {{{{ $now | Quote }}}}}}}}}}
      {{{{ end }}}}
      {{{{ with NodeIPsWith .spec.nodeName }}}}
      hostIP: {{{{ index . 0 | Quote }}}}
      {{{{ end }}}}
      {{{{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}}}
      podIP: {{{{ index . 0 | Quote }}}}
      podIPs:
      {{{{ range . }}}}
      - ip: {{{{ . | Quote }}}}
      {{{{ end }}}}
      {{{{ end }}}}
      phase: Running
      startTime: {{{{ $now | Quote }}}}
"""


def pod_running_stage(name, comment, istiod, ready):
    value = "True" if ready else "False"
    return POD_RUNNING_STAGE.format(
        name=name,
        comment=comment,
        istiod_operator="In" if istiod else "NotIn",
        ready=value,
        ready_flag="true" if ready else "false",
        reason="" if ready else ", reason: ContainersNotReady",
    )


KWOK_STAGES = (
    KWOK_STAGES_HEAD
    + pod_running_stage(
        "real-pod-ready",
        "Any pod but istiod's: running and Ready once scheduled (there is no container to wait for).",
        istiod=False,
        ready=True,
    )
    + pod_running_stage(
        "real-istiod-pod-running",
        "istiod's pods: running with an IP, not Ready; the supervisor's istiod makes them Ready.",
        istiod=True,
        ready=False,
    )
)


def up(n, dir_):
    if not 1 <= n <= MAX_CLUSTERS:
        sys.exit(f"error: N must be 1..{MAX_CLUSTERS}, not {n}")
    if os.geteuid() != 0:
        sys.exit("error: the real clusters need root (network namespaces, a bridge); run as root")
    for tool in ("ip", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"error: `{tool}` is not on PATH (iproute2, openssl)")
    bins = binaries()
    builds = istio_builds()
    if not builds:
        sys.exit("error: no pilot-discovery build in the cache; run scripts/real-clusters.sh build")
    kwok_crds = os.environ.get("MESHUP_REAL_KWOK_CRDS")
    if not kwok_crds or not os.path.isdir(kwok_crds):
        sys.exit("error: MESHUP_REAL_KWOK_CRDS must name kwok's CRD directory (scripts/real-clusters.sh sets it)")
    if os.path.exists(os.path.join(dir_, MARKER)):
        log(f"{dir_} holds clusters already: taking them down first")
        down(dir_)
    os.makedirs(dir_, exist_ok=True)
    if os.listdir(dir_):
        sys.exit(f"error: {dir_} is not empty and was not made by `up`; give an empty or new directory")
    dir_ = os.path.realpath(dir_)
    started = time.time()
    state = pick_net(dir_)
    state["n"] = n
    with open(os.path.join(dir_, MARKER), "w") as f:
        json.dump(state, f)
    net = Net(state)
    try:
        bring_up(n, dir_, net, bins, builds, kwok_crds)
    except BaseException as e:
        log(f"up failed: {e}; stopping what was started")
        down(dir_, keep_logs=True)
        sys.exit(1)
    log(f"{n} clusters up in {time.time() - started:.1f}s; KUBECONFIG={dir_}/kubeconfig, contexts real-1..real-{n}")


def bring_up(n, dir_, net, bins, builds, kwok_crds):
    sh("ip", "link", "add", net.bridge, "type", "bridge")
    sh("ip", "addr", "add", f"{net.gateway()}/16", "dev", net.bridge)
    for i in range(1, n + 1):
        sh("ip", "addr", "add", f"{net.host(i)}/16", "dev", net.bridge)
    sh("ip", "link", "set", net.bridge, "up")

    procs = Procs(dir_)
    bin_dir = os.path.join(dir_, "bin")
    os.makedirs(bin_dir)
    shim = os.path.join(bin_dir, "pilot-discovery")
    with open(shim, "w") as f:
        f.write(
            "#!/bin/sh\n"
            "# kwok runs `kubectl exec` argv on its host: enter the pod's network namespace,\n"
            "# where its istiod listens on 127.0.0.1:15014.\n"
            'exec ip netns exec "$MESHUP_NETNS" "$MESHUP_PILOT" "$@"\n'
        )
    os.chmod(shim, 0o755)

    entries = []
    for i in range(1, n + 1):
        name = f"real-{i}"
        c = os.path.join(dir_, name)
        pki = os.path.join(c, "pki")
        logs = os.path.join(c, "logs")
        os.makedirs(logs)
        host = net.host(i)
        make_pki(pki, host, name)
        server = f"https://{host}:6443"
        for who, cert in (("admin", "admin"), ("controller-manager", "controller-manager"), ("scheduler", "scheduler")):
            write_private(
                os.path.join(c, f"{who}.kubeconfig"),
                kubeconfig_text([(name, server, f"{pki}/ca.crt", f"{pki}/{cert}.crt", f"{pki}/{cert}.key")]),
            )
        entries.append((name, server, f"{pki}/ca.crt", f"{pki}/admin.crt", f"{pki}/admin.key"))
        procs.start(
            "etcd",
            [
                bins["etcd"], "--name", name, "--data-dir", os.path.join(c, "etcd"),
                "--listen-client-urls", f"http://{host}:2379",
                "--advertise-client-urls", f"http://{host}:2379",
                "--listen-peer-urls", f"http://{host}:2380",
                "--initial-advertise-peer-urls", f"http://{host}:2380",
                "--initial-cluster", f"{name}=http://{host}:2380",
                "--listen-metrics-urls", f"http://{host}:2381",
                "--unsafe-no-fsync", "--quota-backend-bytes", str(2 << 30),
            ],
            os.path.join(logs, "etcd.log"),
        )
        procs.start(
            "kube-apiserver",
            [
                bins["kube-apiserver"],
                f"--etcd-servers=http://{host}:2379",
                f"--bind-address={host}", f"--advertise-address={host}", "--secure-port=6443",
                f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
                f"--client-ca-file={pki}/ca.crt",
                "--authorization-mode=Node,RBAC",
                f"--service-account-key-file={pki}/sa.pub",
                f"--service-account-signing-key-file={pki}/sa.key",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--enable-aggregator-routing=true",
                "--allow-privileged=true",
                f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
                f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
                "--kubelet-preferred-address-types=InternalIP",
                f"--cert-dir={c}/apiserver-certs",
                "--profiling=false",
                "--v=1",
            ],
            os.path.join(logs, "kube-apiserver.log"),
        )
    write_private(os.path.join(dir_, "kubeconfig"), kubeconfig_text(entries))

    apis = {}
    for i in range(1, n + 1):
        api = Api(net.host(i), os.path.join(dir_, f"real-{i}", "pki"))
        wait_for(
            f"real-{i}'s API server (/readyz)",
            lambda api=api: api.call("GET", "/readyz")[0] == 200,
            120,
        )
        apis[i] = api
    log("API servers ready")

    kubectl_ = kubectl()
    stages = os.path.join(dir_, "kwok.yaml")
    with open(stages, "w") as f:
        f.write(KWOK_STAGES)
    env = dict(os.environ, PATH=bin_dir + ":" + os.environ.get("PATH", ""))
    for i in range(1, n + 1):
        name = f"real-{i}"
        c = os.path.join(dir_, name)
        logs = os.path.join(c, "logs")
        host = net.host(i)
        pki = os.path.join(c, "pki")
        for crd in ("kwok.x-k8s.io_execs.yaml", "kwok.x-k8s.io_logs.yaml"):
            sh(kubectl_, "--kubeconfig", os.path.join(c, "admin.kubeconfig"), "apply", "--server-side", "-f", os.path.join(kwok_crds, crd))
        status, body = apis[i].call(
            "POST",
            "/api/v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"{name}-node",
                    "labels": {"kubernetes.io/hostname": f"{name}-node", "kubernetes.io/os": "linux", "type": "kwok"},
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                },
                "spec": {"podCIDR": net.pod_cidr(i), "podCIDRs": [net.pod_cidr(i)]},
            },
        )
        if status not in (201, 409):
            raise RuntimeError(f"{name}: creating the node: {status} {body}")
        procs.start(
            "kube-controller-manager",
            [
                bins["kube-controller-manager"],
                f"--kubeconfig={c}/controller-manager.kubeconfig",
                f"--authentication-kubeconfig={c}/controller-manager.kubeconfig",
                f"--authorization-kubeconfig={c}/controller-manager.kubeconfig",
                f"--service-account-private-key-file={pki}/sa.key",
                f"--root-ca-file={pki}/ca.crt",
                f"--cluster-signing-cert-file={pki}/ca.crt",
                f"--cluster-signing-key-file={pki}/ca.key",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                f"--bind-address={host}",
                "--controllers=*",
                "--v=1",
            ],
            os.path.join(logs, "kube-controller-manager.log"),
        )
        procs.start(
            "kube-scheduler",
            [
                bins["kube-scheduler"],
                f"--kubeconfig={c}/scheduler.kubeconfig",
                f"--authentication-kubeconfig={c}/scheduler.kubeconfig",
                f"--authorization-kubeconfig={c}/scheduler.kubeconfig",
                "--leader-elect=false",
                f"--bind-address={host}",
                "--v=1",
            ],
            os.path.join(logs, "kube-scheduler.log"),
        )
        procs.start(
            "kwok",
            [
                bins["kwok"], f"--kubeconfig={c}/admin.kubeconfig", f"--config={stages}",
                "--manage-all-nodes=true", f"--node-ip={host}", "--node-port=10250",
                f"--server-address={host}:10250", f"--cidr={net.pod_cidr(i)}",
            ],
            os.path.join(logs, "kwok.log"),
            env=env,
        )

    for i in range(1, n + 1):
        api = apis[i]

        def node_ready(api=api, i=i):
            node = api.get(f"/api/v1/nodes/real-{i}-node")
            return node and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions", [])
            )

        wait_for(f"real-{i}'s node Ready", node_ready, 120)
        # The controllers run: the service-account controller made `default`, and the token
        # controller has what it needs.
        wait_for(
            f"real-{i}'s default service account",
            lambda api=api: api.get("/api/v1/namespaces/default/serviceaccounts/default"),
            120,
        )
    log("nodes Ready, controllers running")

    charts = os.path.join(dir_, "charts")
    for version in sorted(builds):
        source = os.path.join(REPO, ".tools", "istio", version)
        if not os.path.isfile(os.path.join(source, "istiod", "Chart.yaml")):
            raise RuntimeError(f"Istio's {version} charts are missing from {source}; run scripts/istio-charts.sh")
        for chart in ("base", "istiod", "gateway"):
            shutil.copytree(os.path.join(source, chart), os.path.join(charts, version, chart))

    procs.start(
        "supervisor",
        [sys.executable, os.path.abspath(__file__), "supervise", dir_],
        os.path.join(dir_, "supervisor.log"),
        env=env,
    )
    wait_for("the supervisor", lambda: os.path.exists(os.path.join(dir_, "supervisor.ready")), 30)


def down(dir_, keep_logs=False):
    dir_ = os.path.realpath(dir_)
    marker = os.path.join(dir_, MARKER)
    if not os.path.exists(marker):
        log(f"{dir_}: no clusters made by `up` here; nothing to do")
        return
    with open(marker) as f:
        state = json.load(f)
    net = Net(state)
    pids = []
    path = os.path.join(dir_, "pids")
    if os.path.exists(path):
        with open(path) as f:
            pids = [int(line.split()[0]) for line in f if line.strip()]
    # The supervisor first (it would restart istiods), then the rest, then istiods.
    for pid in reversed(pids):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for pid in pids:
        while time.time() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    kill_istiods(dir_)
    for ns in sh("ip", "netns", "list").stdout.split("\n"):
        name = ns.split(" ")[0]
        if name.startswith(f"mr{net.id}p"):
            sh("ip", "netns", "del", name, check=False)
    sh("ip", "link", "del", net.bridge, check=False)
    if keep_logs:
        log(f"logs kept in {dir_}")
        os.remove(marker)
    else:
        shutil.rmtree(dir_, ignore_errors=True)
    log("down")


def kill_istiods(dir_):
    pods = os.path.join(dir_, "pods")
    if not os.path.isdir(pods):
        return
    for root, _, files in os.walk(pods):
        if "pid" in files:
            try:
                with open(os.path.join(root, "pid")) as f:
                    os.killpg(int(f.read()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


# ---- the supervisor --------------------------------------------------------------------------


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def discovery(pod):
    """istiod's container of an istiod pod."""
    return next(c for c in pod["spec"]["containers"] if c["name"] == "discovery")


def image_version(image):
    """The Istio version an image's tag names (`pilot:1.30.0-distroless` -> `1.30.0`), or ""."""
    tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
    return re.sub(r"-.*$", "", tag)


class Istiod:
    """One istiod pod's process, its network namespace and its files."""

    def __init__(self, sup, cluster, pod, netns):
        self.sup = sup
        self.cluster = cluster
        self.ns = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.uid = pod["metadata"]["uid"]
        self.ip = pod["status"]["podIP"]
        self.netns = netns
        self.dir = os.path.join(sup.dir, "pods", f"real-{cluster}", f"{self.ns}_{self.name}")
        self.proc = None
        self.ready = False
        self.restarts = 0
        self.next_start = 0
        self.log_path = os.path.join(self.dir, "discovery.log")

    def api(self):
        return self.sup.apis[self.cluster]

    def setup_net(self):
        net = self.sup.net
        veth = f"v{net.id}{self.netns.split('p')[-1]}"
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "link", "set", veth, "master", net.bridge, "up")
        sh("ip", "netns", "exec", self.netns, "ip", "addr", "add", f"{self.ip}/16", "dev", "eth0")
        sh("ip", "netns", "exec", self.netns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", self.netns, "ip", "route", "add", "default", "via", net.gateway())

    def token(self, sa, audiences=None, seconds=86400):
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        if audiences:
            body["spec"]["audiences"] = audiences
        status, out = self.api().call(
            "POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body
        )
        if status != 201:
            raise RuntimeError(f"token for {self.ns}/{sa}: {status} {out}")
        return out["status"]["token"]

    def write(self, mount, key, data):
        path = os.path.join(self.dir, mount.lstrip("/"), key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())

    def materialize(self, pod, container):
        """The container's volumes under the pod's directory; False when one is not there yet."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        sa = pod["spec"].get("serviceAccountName", "default")
        for m in container.get("volumeMounts", []):
            v = volumes.get(m["name"], {})
            mount = m["mountPath"]
            sources = []
            if "configMap" in v:
                sources.append(("configMap", v["configMap"]))
            if "secret" in v:
                sources.append(("secret", v["secret"]))
            if "projected" in v:
                for s in v["projected"].get("sources", []):
                    for kind in ("configMap", "secret", "serviceAccountToken", "downwardAPI"):
                        if kind in s:
                            sources.append((kind, s[kind]))
            if "emptyDir" in v:
                os.makedirs(os.path.join(self.dir, mount.lstrip("/")), exist_ok=True)
            for kind, src in sources:
                if kind == "configMap":
                    cm = self.api().get(f"/api/v1/namespaces/{self.ns}/configmaps/{src['name']}")
                    if cm is None:
                        if src.get("optional"):
                            continue
                        return False
                    for k, val in cm.get("data", {}).items():
                        self.write(mount, k, val)
                elif kind == "secret":
                    name = src.get("secretName") or src.get("name")
                    secret = self.api().get(f"/api/v1/namespaces/{self.ns}/secrets/{name}")
                    if secret is None:
                        if src.get("optional"):
                            continue
                        return False
                    items = src.get("items")
                    for k, val in secret.get("data", {}).items():
                        target = k
                        if items:
                            match = [it for it in items if it["key"] == k]
                            if not match:
                                continue
                            target = match[0]["path"]
                        self.write(mount, target, base64.b64decode(val))
                elif kind == "serviceAccountToken":
                    aud = [src["audience"]] if src.get("audience") else None
                    self.write(mount, src["path"], self.token(sa, aud, max(src.get("expirationSeconds", 3600), 86400)))
                elif kind == "downwardAPI":
                    for item in src.get("items", []):
                        path = item.get("fieldRef", {}).get("fieldPath", "")
                        if path == "metadata.namespace":
                            self.write(mount, item["path"], self.ns)
        # Where a pod's client finds its API server: a kubeconfig with the pod's own token.
        token = self.token(sa)
        server = f"https://{self.sup.net.host(self.cluster)}:6443"
        ca = b64file(os.path.join(self.sup.dir, f"real-{self.cluster}", "pki", "ca.crt"))
        write_private(
            os.path.join(self.dir, "kubeconfig"),
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": ca}}],
                    "users": [{"name": "u", "user": {"token": token}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "c",
                }
            ),
        )
        return True

    def env(self, pod, container):
        out = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.dir}
        for e in container.get("env", []):
            if "value" in e:
                out[e["name"]] = e["value"]
                continue
            vf = e.get("valueFrom", {})
            if "fieldRef" in vf:
                path = vf["fieldRef"]["fieldPath"]
                value = {
                    "metadata.name": self.name,
                    "metadata.namespace": self.ns,
                    "metadata.uid": self.uid,
                    "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
                    "spec.nodeName": pod["spec"].get("nodeName", ""),
                    "status.podIP": self.ip,
                    "status.hostIP": pod["status"].get("hostIP", ""),
                }.get(path)
                if value is None:
                    m = re.match(r"metadata\.(labels|annotations)\['(.+)'\]", path)
                    value = pod["metadata"].get(m.group(1), {}).get(m.group(2), "") if m else ""
                out[e["name"]] = value
            elif "resourceFieldRef" in vf:
                res = vf["resourceFieldRef"]["resource"]
                limits = container.get("resources", {}).get("limits", {})
                if res == "limits.cpu":
                    out[e["name"]] = str(max(1, int(float(str(limits.get("cpu", "2")).rstrip("m")) / (1000 if str(limits.get("cpu", "")).endswith("m") else 1))))
                elif res == "limits.memory":
                    out[e["name"]] = str(8 << 30)
            elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
                ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef")
                kind = "configmaps" if "configMapKeyRef" in vf else "secrets"
                obj = self.api().get(f"/api/v1/namespaces/{self.ns}/{kind}/{ref['name']}")
                if obj is not None:
                    val = obj.get("data", {}).get(ref["key"])
                    if val is not None:
                        out[e["name"]] = val if kind == "configmaps" else base64.b64decode(val).decode()
        return out

    def start(self, pod):
        container = discovery(pod)
        image = container.get("image", "")
        version = image_version(image)
        binary = self.sup.builds.get(version)
        if binary is None:
            self.event(f"no pilot-discovery build for image {image} (built: {', '.join(sorted(self.sup.builds))}); the pod stays unready")
            self.next_start = time.time() + 30
            return
        os.makedirs(self.dir, exist_ok=True)
        if not self.materialize(pod, container):
            self.next_start = time.time() + 1
            return
        argv = [binary] + list(container.get("command", [])[1:]) + list(container.get("args", []))
        argv += ["--kubeconfig", os.path.join(self.dir, "kubeconfig")]
        env = self.env(pod, container)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns] + argv,
            cwd=self.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        with open(os.path.join(self.dir, "pid"), "w") as f:
            f.write(str(self.proc.pid))
        threading.Thread(target=self.pump, args=(self.proc,), daemon=True).start()
        self.started_at = time.time()
        self.event(f"started pilot-discovery {version} (pid {self.proc.pid}) at {self.ip}")

    def pump(self, proc):
        with open(self.log_path, "a") as out:
            for line in iter(proc.stdout.readline, b""):
                text = line.decode(errors="replace").rstrip("\n")
                out.write(f"{now_rfc3339()} stdout F {text}\n")
                out.flush()

    def event(self, msg):
        log(f"real-{self.cluster} {self.ns}/{self.name}: {msg}")

    def kwok_objects(self, exec_env):
        owner = [{"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}]
        for plural, kind, spec in (
            (
                "execs",
                "Exec",
                {"execs": [{"containers": ["discovery"], "local": {"workDir": self.dir, "envs": exec_env}}]},
            ),
            (
                "logs",
                "Logs",
                {"logs": [{"containers": ["discovery"], "logsFile": self.log_path, "follow": True}]},
            ),
        ):
            body = {
                "apiVersion": "kwok.x-k8s.io/v1alpha1",
                "kind": kind,
                "metadata": {"name": self.name, "namespace": self.ns, "ownerReferences": owner},
                "spec": spec,
            }
            status, out = self.api().call(
                "POST", f"/apis/kwok.x-k8s.io/v1alpha1/namespaces/{self.ns}/{plural}", body
            )
            if status not in (201, 409):
                raise RuntimeError(f"kwok {kind}: {status} {out}")

    def set_ready(self, pod, ready):
        now = now_rfc3339()
        value = "True" if ready else "False"
        statuses = []
        for c in pod["spec"]["containers"]:
            statuses.append(
                {
                    "name": c["name"], "image": c.get("image", ""), "ready": ready, "started": True,
                    "restartCount": self.restarts,
                    "state": {"running": {"startedAt": now}},
                }
            )
        patch = {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": value, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": value, "lastTransitionTime": now},
                ],
                "containerStatuses": statuses,
            }
        }
        status, out = self.api().call(
            "PATCH", f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status", patch,
            ctype="application/strategic-merge-patch+json",
        )
        if status == 200:
            self.ready = ready
            self.event("Ready" if ready else "not Ready")

    def probe(self, container):
        probe = container.get("readinessProbe", {}).get("httpGet")
        if not probe:
            return True
        port = probe.get("port", 8080)
        try:
            conn = http.client.HTTPConnection(self.ip, int(port), timeout=2)
            conn.request("GET", probe.get("path", "/"))
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def tick(self, pod):
        if self.proc is None:
            if time.time() >= self.next_start:
                self.start(pod)
            return
        if self.proc.poll() is not None:
            self.event(f"pilot-discovery exited {self.proc.returncode}; restarting")
            self.proc = None
            self.restarts += 1
            self.next_start = time.time() + min(2 ** self.restarts, 30)
            if self.ready:
                self.set_ready(pod, False)
            return
        ok = self.probe(discovery(pod))
        if ok != self.ready:
            self.set_ready(pod, ok)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        sh("ip", "netns", "del", self.netns, check=False)
        self.event("stopped")


class Supervisor:
    def __init__(self, dir_):
        self.dir = os.path.realpath(dir_)
        with open(os.path.join(self.dir, MARKER)) as f:
            state = json.load(f)
        self.n = state["n"]
        self.net = Net(state)
        self.builds = istio_builds()
        self.apis = {i: Api(self.net.host(i), os.path.join(self.dir, f"real-{i}", "pki")) for i in range(1, self.n + 1)}
        self.istiods = {}  # (cluster, uid) -> Istiod
        self.counter = 0
        self.stopping = False

    def run(self):
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        open(os.path.join(self.dir, "supervisor.ready"), "w").close()
        log("supervisor running")
        while not self.stopping:
            for i in range(1, self.n + 1):
                try:
                    self.pods(i)
                    self.load_balancers(i)
                except Exception as e:  # noqa: BLE001 - a cluster's hiccup must not stop the loop
                    log(f"real-{i}: {e}")
            time.sleep(0.5)
        for istiod in self.istiods.values():
            istiod.stop()

    def pods(self, i):
        api = self.apis[i]
        listed = api.get("/api/v1/pods?labelSelector=" + urllib.parse.quote("app=istiod"))
        if listed is None:
            return
        live = {}
        for pod in listed["items"]:
            if pod["metadata"].get("deletionTimestamp") or not pod.get("status", {}).get("podIP"):
                continue
            live[(i, pod["metadata"]["uid"])] = pod
        for key in [k for k in self.istiods if k[0] == i and k not in live]:
            self.istiods.pop(key).stop()
        for key, pod in live.items():
            istiod = self.istiods.get(key)
            if istiod is None:
                self.counter += 1
                istiod = Istiod(self, i, pod, self.net.netns(self.counter))
                try:
                    istiod.setup_net()
                    istiod.kwok_objects(
                        [
                            {"name": "MESHUP_NETNS", "value": istiod.netns},
                            {"name": "MESHUP_PILOT", "value": self.builds.get(
                                image_version(discovery(pod).get("image", "")), "pilot-discovery-missing")},
                            {"name": "PATH", "value": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"},
                        ]
                    )
                except Exception:
                    sh("ip", "netns", "del", istiod.netns, check=False)
                    raise
                self.istiods[key] = istiod
            istiod.tick(pod)

    def load_balancers(self, i):
        api = self.apis[i]
        listed = api.get("/api/v1/services")
        if listed is None:
            return
        taken = set()
        waiting = []
        for svc in listed["items"]:
            if svc["spec"].get("type") != "LoadBalancer":
                continue
            ingress = svc.get("status", {}).get("loadBalancer", {}).get("ingress") or []
            if ingress:
                taken.update(x.get("ip") for x in ingress)
            else:
                waiting.append(svc)
        pool = [ip for ip in self.net.lb_pool(i) if ip not in taken]
        for svc, ip in zip(waiting, pool):
            meta = svc["metadata"]
            api.call(
                "PATCH",
                f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}/status",
                {"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}},
                ctype="application/merge-patch+json",
            )
            log(f"real-{i} {meta['namespace']}/{meta['name']}: load balancer {ip}")


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "up":
        up(int(args[1]), args[2])
    elif len(args) == 2 and args[0] == "down":
        down(args[1])
    elif len(args) == 2 and args[0] == "supervise":
        Supervisor(args[1]).run()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
