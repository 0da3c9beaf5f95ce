#!/usr/bin/env python3
"""GitOps engines on the real clusters, for proving meshup's exports (scripts/engines.sh up|down).

    engines.py up DIR [hub|every]  starts Flux's controllers against the clusters of DIR (a
                                   running `scripts/real-clusters.sh up` directory); exits 0 once
                                   every controller is ready; on failure stops what it started
    engines.py down DIR            stops them; the clusters stay up
    engines.py status DIR          the processes, alive or not, and their resident memory
    engines.py serve DIR ADDR PORT (started by `up`) the chart repository and the Git server

Modes:
  hub    one source-controller, kustomize-controller and helm-controller against real-1; they
         reach every cluster through kubeconfig Secrets `real-N-kubeconfig` (key `value`) in
         real-1's `flux-system` namespace (`spec.kubeConfig.secretRef` of a HelmRelease or
         Kustomization). Flux's and Argo CD's CRDs are applied to real-1 alone.
  every  a set of the three controllers per cluster, each against its own cluster; the CRDs go
         to every cluster.

The controllers are host processes (as in a cluster, but out of it): KUBECONFIG naming the
cluster's admin kubeconfig (DIR/real-N/admin.kubeconfig; they have no --kubeconfig flag),
`--enable-leader-election=false`, `--watch-all-namespaces=true`, RUNTIME_NAMESPACE=flux-system,
`--requeue-dependency=5s` (Flux's default is 30s), no events address, metrics and health on
free ports of the address of the cluster they serve (10.K.0.(10+N), the cluster's own address
on the bridge). Each source-controller stores artifacts under DIR/engines/real-N/storage and
serves them on a free port of that address, which `--storage-adv-addr` names: there is no
cluster DNS, and the other controllers (host processes too) fetch artifacts from it.

One more process, on the bridge's host address (10.K.0.1, the clusters' "outside world"):
  - a Helm chart repository, http://10.K.0.1:PORT/charts (index.yaml): every chart of
    DIR/charts/VERSION/ packaged (`helm package`), all versions in one index, as Istio's own
    repository serves them (charts base, istiod, gateway; versions 1.30.0, 1.31.0);
  - a Git server (git's own `git http-backend`, smart HTTP, read and push), serving every bare
    repository under DIR/engines/git as http://10.K.0.1:PORT/git/NAME.git. `up` creates an
    empty `fleet.git` (branch main); push to it over HTTP or to its path, then point a
    GitRepository at it (the source of a Kustomization).

Everything `up` knows is written to DIR/engines/engines.json (addresses, ports, the Secrets);
the logs go to DIR/engines/logs. The processes are recorded in DIR/engines/pids and also in
DIR/pids, so that `scripts/real-clusters.sh down` stops them too when `down` was never run.

Binaries and CRDs come from scripts/engines.sh build (the real tier's cache; versions from
scripts/pins.env). Only the Python standard library, git, helm and kubectl are used.
"""

import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import time
import urllib.request

# No __pycache__ beside the scripts from importing the launcher.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launcher  # noqa: E402 - the real clusters' launcher: pins, cache, addresses, kubectl

REPO = launcher.REPO
SUBDIR = "engines"
STATE = "engines.json"
NAMESPACE = "flux-system"
ARGOCD_NAMESPACE = "argocd"
CONTROLLERS = ("source-controller", "kustomize-controller", "helm-controller")
GIT_REPO = "fleet"


def log(msg):
    print(f"[engines] {msg}", file=sys.stderr, flush=True)


def binaries():
    """Controller name -> (binary, CRD directory), and the Argo CD CRD directory."""
    p = launcher.pins()
    root = launcher.cache_root()
    out = {}
    for name in CONTROLLERS:
        version = p[f"FLUX_{name.upper().replace('-', '_')}_VERSION"]
        d = os.path.join(root, f"flux-{name}-{version}")
        out[name] = (os.path.join(d, name), os.path.join(d, "crds"))
    argocd = os.path.join(root, f"argocd-crds-{p['ARGOCD_VERSION']}", "crds")
    missing = [b for b, _ in out.values() if not os.access(b, os.X_OK)]
    if not os.path.isdir(argocd):
        missing.append(argocd)
    if missing:
        sys.exit("error: missing engine binaries or CRDs: " + ", ".join(missing) + "; run scripts/engines.sh build")
    return out, argocd


def helm():
    path = os.environ.get("MESHUP_REAL_HELM") or os.path.join(REPO, ".tools", "helm4", "helm")
    if not os.access(path, os.X_OK):
        sys.exit(f"error: no helm at {path}; run scripts/fetch-tools.sh")
    return path


def free_port(addr):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Procs:
    """Processes started for DIR's engines: in DIR/engines/pids (for `down`) and DIR/pids (so
    that the clusters' own `down` stops them as well)."""

    def __init__(self, dir_):
        self.dir = dir_
        self.path = os.path.join(dir_, SUBDIR, "pids")

    def start(self, name, argv, logfile, env=None, cwd=None):
        out = open(logfile, "ab")
        p = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=cwd,
        )
        out.close()
        for path in (self.path, os.path.join(self.dir, "pids")):
            with open(path, "a") as f:
                f.write(f"{p.pid} {name}\n")
        return p

    def list(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [(int(line.split()[0]), line.split()[1]) for line in f if line.strip()]


# ---- up --------------------------------------------------------------------------------------


def up(dir_, mode):
    if mode not in ("hub", "every"):
        sys.exit(f"error: mode must be `hub` or `every`, not `{mode}`")
    dir_ = os.path.realpath(dir_)
    marker = os.path.join(dir_, launcher.MARKER)
    if not os.path.exists(marker):
        sys.exit(f"error: {dir_} holds no real clusters; start them with scripts/real-clusters.sh up N {dir_}")
    with open(marker) as f:
        cluster_state = json.load(f)
    net = launcher.Net(cluster_state)
    n = cluster_state["n"]
    bins, argocd_crds = binaries()
    helm_ = helm()
    kubectl_ = launcher.kubectl()
    if not shutil.which("git"):
        sys.exit("error: `git` is not on PATH (the Git server runs `git http-backend`)")
    home = os.path.join(dir_, SUBDIR)
    if os.path.exists(os.path.join(home, STATE)) or Procs(dir_).list():
        log(f"{dir_} has engines up already: taking them down first")
        down(dir_)
    shutil.rmtree(home, ignore_errors=True)
    os.makedirs(os.path.join(home, "logs"))
    started = time.time()
    try:
        state = bring_up(dir_, mode, n, net, bins, argocd_crds, helm_, kubectl_)
    except BaseException as e:
        log(f"up failed: {e}; stopping what was started (logs in {home}/logs)")
        down(dir_)
        sys.exit(1)
    with open(os.path.join(home, STATE), "w") as f:
        json.dump(state, f, indent=2)
    log(f"engines up ({mode}) in {time.time() - started:.1f}s; {home}/{STATE}:")
    print(json.dumps(state, indent=2))


def package_charts(dir_, home, helm_):
    """Every chart of DIR/charts/VERSION/CHART, packaged into one Helm repository."""
    repo = os.path.join(home, "helm-repo")
    os.makedirs(repo)
    charts = os.path.join(dir_, "charts")
    found = []
    for version in sorted(os.listdir(charts)):
        for chart in sorted(os.listdir(os.path.join(charts, version))):
            path = os.path.join(charts, version, chart)
            if os.path.isfile(os.path.join(path, "Chart.yaml")):
                launcher.sh(helm_, "package", path, "--destination", repo)
                found.append(f"{chart}-{version}")
    if not found:
        raise RuntimeError(f"no charts in {charts}")
    launcher.sh(helm_, "repo", "index", repo)
    return found


def make_git(home):
    root = os.path.join(home, "git")
    bare = os.path.join(root, f"{GIT_REPO}.git")
    os.makedirs(root)
    launcher.sh("git", "init", "--quiet", "--bare", "--initial-branch=main", bare)
    # git http-backend refuses pushes from an unauthenticated client unless the repository
    # allows them.
    launcher.sh("git", "-C", bare, "config", "http.receivepack", "true")
    return root


def kubeconfig_of(dir_, i):
    return os.path.join(dir_, f"real-{i}", "admin.kubeconfig")


def apply_crds(kubectl_, dir_, i, dirs):
    kc = kubeconfig_of(dir_, i)
    names = []
    for d in dirs:
        for f in sorted(os.listdir(d)):
            if f.endswith(".yaml"):
                launcher.sh(kubectl_, "--kubeconfig", kc, "apply", "--server-side", "--force-conflicts", "-f", os.path.join(d, f))
                names.append(f)
    # A CRD created a moment ago may have no conditions yet, which `kubectl wait` takes for an
    # error: ask again until every one is Established.
    launcher.wait_for(
        f"real-{i}'s CRDs Established",
        lambda: launcher.sh(kubectl_, "--kubeconfig", kc, "wait", "--for=condition=Established", "--timeout=10s", "crd", "--all", check=False).returncode == 0,
        60,
    )
    for ns in (NAMESPACE, ARGOCD_NAMESPACE):
        r = launcher.sh(kubectl_, "--kubeconfig", kc, "create", "namespace", ns, check=False)
        if r.returncode != 0 and "AlreadyExists" not in r.stderr:
            raise RuntimeError(f"real-{i}: creating namespace {ns}: {r.stderr.strip()}")
    return names


def kubeconfig_secrets(kubectl_, dir_, n):
    """In real-1's flux-system: `real-N-kubeconfig` (key `value`) for every cluster N, holding
    DIR/real-N/admin.kubeconfig (the cluster's address and CA, an admin client certificate)."""
    names = []
    for j in range(1, n + 1):
        name = f"real-{j}-kubeconfig"
        manifest = launcher.sh(
            kubectl_, "--kubeconfig", kubeconfig_of(dir_, 1), "create", "secret", "generic", name, "--namespace", NAMESPACE,
            f"--from-file=value={kubeconfig_of(dir_, j)}", "--dry-run=client", "-o", "json",
        ).stdout
        launcher.sh(kubectl_, "--kubeconfig", kubeconfig_of(dir_, 1), "apply", "--server-side", "-f", "-", input=manifest)
        names.append(name)
    return names


def start_controllers(procs, dir_, home, i, addr, bins):
    """The three controllers against real-i, their servers on ADDR."""
    c = os.path.join(home, f"real-{i}")
    os.makedirs(os.path.join(c, "home"))
    os.makedirs(os.path.join(c, "storage"))
    env = dict(
        os.environ,
        RUNTIME_NAMESPACE=NAMESPACE,
        # The controllers take no --kubeconfig flag (controller-runtime registers it on Go's
        # flag set, which Flux's pflag command line does not include): controller-runtime reads
        # KUBECONFIG.
        KUBECONFIG=kubeconfig_of(dir_, i),
        # helm-controller's Helm and the controllers' caches: not the host user's.
        HOME=os.path.join(c, "home"),
    )
    env.pop("KUBERNETES_SERVICE_HOST", None)
    out = {}
    storage = f"{addr}:{free_port(addr)}"
    for name in CONTROLLERS:
        metrics = f"{addr}:{free_port(addr)}"
        health = f"{addr}:{free_port(addr)}"
        argv = [
            bins[name][0],
            "--enable-leader-election=false",
            "--watch-all-namespaces=true",
            f"--metrics-addr={metrics}",
            f"--health-addr={health}",
            "--events-addr=",
            "--log-level=info",
            # Dependencies (a HelmRelease's or Kustomization's dependsOn) are re-checked every
            # 5s rather than Flux's 30s: install chains finish within a test's patience.
            "--requeue-dependency=5s",
        ]
        if name == "source-controller":
            argv += [
                f"--storage-path={os.path.join(c, 'storage')}",
                f"--storage-addr={storage}",
                f"--storage-adv-addr={storage}",
            ]
        logfile = os.path.join(home, "logs", f"real-{i}-{name}.log")
        process = procs.start(f"real-{i}/{name}", argv, logfile, env=env, cwd=c)
        out[name] = {"metrics": metrics, "health": health, "log": logfile, "pid": process.pid}
    out["source-controller"]["storage"] = f"http://{storage}"
    return out


def ready(name, c):
    """The controller answers /readyz; fails at once, with its log's tail, if it exited."""
    if not alive(c["pid"]):
        with open(c["log"], errors="replace") as f:
            tail = "".join(f.readlines()[-5:])
        raise RuntimeError(f"{name} exited:\n{tail}")
    return http_ok(f"http://{c['health']}/readyz")


def bring_up(dir_, mode, n, net, bins, argocd_crds, helm_, kubectl_):
    home = os.path.join(dir_, SUBDIR)
    procs = Procs(dir_)
    charts = package_charts(dir_, home, helm_)
    git_root = make_git(home)
    gw = net.gateway()
    port = free_port(gw)
    procs.start(
        "server",
        [sys.executable, os.path.abspath(__file__), "serve", dir_, gw, str(port)],
        os.path.join(home, "logs", "server.log"),
    )
    base = f"http://{gw}:{port}"
    launcher.wait_for("the chart repository", lambda: http_ok(f"{base}/charts/index.yaml"), 30)

    targets = [1] if mode == "hub" else list(range(1, n + 1))
    crd_dirs = [bins[name][1] for name in CONTROLLERS] + [argocd_crds]
    crds = []
    for i in targets:
        crds = apply_crds(kubectl_, dir_, i, crd_dirs)
    secrets = kubeconfig_secrets(kubectl_, dir_, n) if mode == "hub" else []

    clusters = {}
    for i in targets:
        clusters[f"real-{i}"] = start_controllers(procs, dir_, home, i, net.host(i), bins)
    deadline = time.time() + 60
    for cluster, controllers in clusters.items():
        for name, c in controllers.items():
            while not ready(f"{cluster} {name}", c):
                if time.time() > deadline:
                    raise RuntimeError(f"timed out after 60s waiting for {cluster} {name} (/readyz at {c['health']})")
                time.sleep(0.5)
    log("controllers ready")
    return {
        "mode": mode,
        "namespace": NAMESPACE,
        "argocd_namespace": ARGOCD_NAMESPACE,
        "helm_repository": f"{base}/charts",
        "charts": charts,
        "git": {
            "url": f"{base}/git",
            "root": git_root,
            "repository": f"{base}/git/{GIT_REPO}.git",
            "path": os.path.join(git_root, f"{GIT_REPO}.git"),
            "branch": "main",
        },
        "kubeconfig_secrets": {f"real-{j}": s for j, s in zip(range(1, n + 1), secrets)},
        "crds": {f"real-{i}": crds for i in targets},
        "controllers": clusters,
    }


# ---- down / status ---------------------------------------------------------------------------


def alive(pid):
    """PID's process group has a live process (a child of this process that exited is reaped:
    `up` stops what it started when it fails)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def down(dir_):
    dir_ = os.path.realpath(dir_)
    procs = Procs(dir_)
    started = procs.list()
    for pid, _ in started:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for pid, name in started:
        while alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        if alive(pid):
            log(f"{name} ({pid}) did not stop on SIGTERM: killing it")
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            kill_deadline = time.time() + 5
            while alive(pid) and time.time() < kill_deadline:
                time.sleep(0.1)
    # Out of the clusters' list too (a pid can be reused once its process is gone).
    ours = {pid for pid, _ in started}
    shared = os.path.join(dir_, "pids")
    if ours and os.path.exists(shared):
        with open(shared) as f:
            keep = [line for line in f if line.strip() and int(line.split()[0]) not in ours]
        with open(shared, "w") as f:
            f.writelines(keep)
    home = os.path.join(dir_, SUBDIR)
    for name in os.listdir(home) if os.path.isdir(home) else []:
        if name != "logs":
            path = os.path.join(home, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
    left = [f"{name} ({pid})" for pid, name in started if alive(pid)]
    if left:
        sys.exit("error: still running: " + ", ".join(left))
    log(f"down ({len(started)} processes stopped; logs kept in {home}/logs)")


def rss_kib(pid):
    """Resident memory of PID's process group (the controller and anything it runs)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pid:  # pgrp
                continue
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


def status(dir_):
    started = Procs(os.path.realpath(dir_)).list()
    total = 0
    for pid, name in started:
        kib = rss_kib(pid) if alive(pid) else 0
        total += kib
        print(f"{name:34} {pid:>8} {'running' if alive(pid) else 'gone':8} {kib / 1024:8.1f} MiB")
    print(f"{'total':34} {'':>8} {'':8} {total / 1024:8.1f} MiB")


# ---- serve: the chart repository and the Git server -------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    """/charts/FILE from DIR/engines/helm-repo; /git/... through `git http-backend`."""

    home = ""

    def do_GET(self):
        self.route()

    def do_HEAD(self):
        self.route()

    def do_POST(self):
        self.route()

    def route(self):
        path = self.path.split("?", 1)[0]
        if path.startswith("/charts/") and self.command in ("GET", "HEAD"):
            self.static(path[len("/charts/"):])
        elif path.startswith("/git/"):
            self.git()
        else:
            self.send_error(404)

    def static(self, name):
        if not name or "/" in name or name.startswith("."):
            self.send_error(404)
            return
        path = os.path.join(self.home, "helm-repo", name)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            data = f.read()
        self.send_response(200)
        ctype = "text/yaml" if name.endswith(".yaml") else "application/gzip"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(data)

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def git(self):
        path, _, query = self.path.partition("?")
        data = self.body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": os.path.join(self.home, "git"),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path[len("/git"):],
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(data)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        r = subprocess.run(["git", "http-backend"], input=data, env=env, capture_output=True, timeout=120)
        if r.stderr:
            sys.stderr.write(r.stderr.decode(errors="replace"))
        out = r.stdout
        cut = out.find(b"\r\n\r\n")
        sep = 4
        if cut < 0 or (out.find(b"\n\n") >= 0 and out.find(b"\n\n") < cut):
            cut, sep = out.find(b"\n\n"), 2
        if r.returncode != 0 or cut < 0:
            self.send_error(500, "git http-backend failed")
            return
        head, payload = out[:cut].decode(errors="replace"), out[cut + sep:]
        code, headers = 200, []
        for line in head.splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                code = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(code)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def serve(dir_, addr, port):
    Handler.home = os.path.join(os.path.realpath(dir_), SUBDIR)
    server = Server((addr, int(port)), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(f"serving http://{addr}:{port}/charts and http://{addr}:{port}/git")
    server.serve_forever()


def main():
    args = sys.argv[1:]
    if len(args) in (2, 3) and args[0] == "up":
        up(args[1], args[2] if len(args) == 3 else "hub")
    elif len(args) == 2 and args[0] == "down":
        down(args[1])
    elif len(args) == 2 and args[0] == "status":
        status(args[1])
    elif len(args) == 4 and args[0] == "serve":
        serve(args[1], args[2], args[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
