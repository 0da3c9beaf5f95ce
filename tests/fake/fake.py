#!/usr/bin/env -S python3 -S
"""Fake `helm` and `kubectl` for meshup's integration tests and benchmark.

Installed as `tests/fake/helm` and `tests/fake/kubectl` (symlinks to this file); the name it is
called by picks the tool. Python 3 standard library only.

Every call appends one JSON line to $FAKE_LOG (when set):
    {"tool", "argv", "context", "stdin", "code", "start", "end", "pid", "cpu"}
(`start` is when the script began, after the interpreter started; `cpu` is the process's user
plus system seconds, interpreter start included.)
and reads or changes the cluster state of its context in $FAKE_STATE/<context>.json, under a
per-context lock, so that parallel calls to different clusters run in parallel and calls to
one cluster see each other's effects. Only the argv shapes meshup uses are understood; anything
else fails loudly (exit 1, `fake: unsupported ...`) so that a new call shows up in the tests.

Knobs (environment):
    FAKE_LOG            file to append the call log to
    FAKE_STATE          directory holding one JSON state file per context (required for calls
                        that name a context)
    FAKE_DOWN           comma-separated contexts whose API server refuses connections
    FAKE_FAIL           `context:substring` (several: one per line); a call to that context whose
                        argv (joined by spaces) contains the substring exits 1 with a tool-like
                        error; a failing `helm upgrade` leaves the release `failed`, as helm does
    FAKE_FAIL_STDERR    the stderr of such a failure (default: a helm/kubectl-like message)
    FAKE_HELM_VERSION   what `helm version --template {{.Version}}` prints (default v3.19.0)
    FAKE_LATENCY_MS     sleep this long in every call (for the benchmark)
"""

import binascii
import fcntl
import os
import sys
import time

# A call must cost little: the benchmark runs thousands and the tests must stay fast. The
# interpreter starts in ~12 ms (with -S); `import json` would double that, because it imports
# `re`. So JSON goes through the C module `_json` directly (see `loads`/`dumps`), and `re` is
# imported only by the calls that parse YAML or chart names (see `_re`).
try:
    import _json
except ImportError:  # not CPython
    _json = None

TOOL = os.path.basename(sys.argv[0])
if TOOL not in ("helm", "kubectl"):
    TOOL = sys.argv.pop(1) if len(sys.argv) > 1 else ""

CLIENT_VERSION = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0",
    "gitTreeState": "clean",
    "goVersion": "go1.24.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}
SERVER_VERSION = dict(CLIENT_VERSION, gitVersion="v1.34.0")
DEFAULT_CHART_VERSION = "1.28.1"
ISTIO_CRDS = [
    "destinationrules.networking.istio.io",
    "gateways.networking.istio.io",
    "peerauthentications.security.istio.io",
    "virtualservices.networking.istio.io",
]


class Fail(Exception):
    """The tool exits 1 with this message on stderr."""


# --- a YAML subset: what serde_yaml emits from JSON, values files, Chart.yaml ---------------

def yaml_docs(text):
    """Parses multi-document YAML (block mappings and sequences, plain/quoted/block scalars,
    empty flow collections). JSON documents are read as JSON."""
    docs, current = [], []
    for line in text.splitlines():
        if line.rstrip() in ("---", "...") or line.startswith("--- "):
            docs.append(current)
            current = []
        else:
            current.append(line)
    docs.append(current)
    out = []
    for lines in docs:
        body = "\n".join(lines).strip()
        if not body or all(not l.strip() or l.lstrip().startswith("#") for l in lines):
            continue
        if body[0] in "{[":
            out.append(loads(body))
            continue
        parser = _Yaml(lines)
        node = parser.node(0)
        parser.skip()
        if parser.i < len(parser.lines):
            raise Fail("error: fake yaml: cannot parse line %r" % parser.lines[parser.i])
        out.append(node)
    return out


class _Yaml:
    def __init__(self, lines):
        self.lines = list(lines)
        self.i = 0

    def skip(self):
        while self.i < len(self.lines):
            s = self.lines[self.i].strip()
            if s and not s.startswith("#"):
                return
            self.i += 1

    @staticmethod
    def indent(line):
        return len(line) - len(line.lstrip(" "))

    @staticmethod
    def is_item(s):
        return s == "-" or s.startswith("- ")

    def node(self, min_indent):
        self.skip()
        if self.i >= len(self.lines):
            return None
        line = self.lines[self.i]
        n = self.indent(line)
        if n < min_indent:
            return None
        if self.is_item(line.strip()):
            return self.seq(n)
        return self.mapping(n)

    def seq(self, n):
        out = []
        while True:
            self.skip()
            if self.i >= len(self.lines):
                return out
            line = self.lines[self.i]
            s = line.strip()
            if self.indent(line) != n or not self.is_item(s):
                return out
            rest = s[1:].lstrip()
            if not rest:
                self.i += 1
                out.append(self.node(n + 1))
            elif _split_key(rest) is not None:
                # `- key: value` opens a mapping indented like `key`.
                offset = len(line) - len(rest)
                self.lines[self.i] = " " * offset + rest
                out.append(self.mapping(offset))
            else:
                self.i += 1
                out.append(self.value(rest, n))

    def mapping(self, n):
        out = {}
        while True:
            self.skip()
            if self.i >= len(self.lines):
                return out
            line = self.lines[self.i]
            s = line.strip()
            if self.indent(line) < n or self.is_item(s):
                return out
            if self.indent(line) > n:
                raise Fail("error: fake yaml: bad indentation at %r" % line)
            kv = _split_key(s)
            if kv is None:
                raise Fail("error: fake yaml: expected `key: value` at %r" % line)
            key, rest = kv
            self.i += 1
            if rest:
                out[key] = self.value(rest, n)
                continue
            self.skip()
            if self.i < len(self.lines):
                nxt = self.lines[self.i]
                m = self.indent(nxt)
                if m > n or (m == n and self.is_item(nxt.strip())):
                    out[key] = self.node(m)
                    continue
            out[key] = None

    def value(self, rest, n):
        if rest[0] in "|>":
            keep = rest[1:2] == "+"
            strip = rest[1:2] == "-"
            block = []
            while self.i < len(self.lines):
                line = self.lines[self.i]
                if line.strip() and self.indent(line) <= n:
                    break
                block.append(line)
                self.i += 1
            while block and not block[-1].strip() and not keep:
                block.pop()
            width = min((self.indent(l) for l in block if l.strip()), default=0)
            text = "\n".join(l[width:] for l in block)
            if rest[0] == ">":
                text = _re().sub(r"(?<!\n)\n(?!\n)", " ", text)
            return text if strip else text + "\n"
        return _scalar(rest)


def _split_key(s):
    """`key: rest` → (key, rest); None when `s` is not a mapping entry."""
    if s[0] in "'\"":
        quote = s[0]
        end = 1
        while True:
            end = s.find(quote, end)
            if end < 0:
                return None
            if quote == "'" and s[end + 1:end + 2] == "'":
                end += 2
                continue
            if quote == '"' and s[end - 1] == "\\":
                end += 1
                continue
            break
        key, after = _scalar(s[:end + 1]), s[end + 1:]
        if after == ":" or after.startswith(": "):
            return key, after[1:].strip()
        return None
    if s[0] in "{[":
        return None
    m = _re().match(r"^([^#][^:]*?|[^#]\S*?):(?: +(.*))?$", s)
    if not m or " #" in m.group(1):
        return None
    return m.group(1), (m.group(2) or "").strip()


def _scalar(s):
    s = s.strip()
    if s.startswith("'"):
        return s[1:-1].replace("''", "'")
    if s.startswith('"'):
        return loads(s)
    if " #" in s:
        s = s[: s.index(" #")].rstrip()
    if s == "{}":
        return {}
    if s == "[]":
        return []
    if s[:1] in "{[":
        try:
            return loads(s)
        except ValueError:
            raise Fail("error: fake yaml: flow collections are not supported: %r" % s)
    if s in ("", "~", "null", "Null", "NULL"):
        return None
    if s in ("true", "True", "TRUE"):
        return True
    if s in ("false", "False", "FALSE"):
        return False
    if _re().fullmatch(r"[-+]?[0-9]+", s):
        return int(s)
    if _re().fullmatch(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?", s):
        return float(s)
    return s


# --- the command line ------------------------------------------------------------------------

VALUE_FLAGS = {
    "helm": {"--kube-context", "--kubeconfig", "--namespace", "--values", "--version",
             "--repo", "--timeout", "--output", "--template"},
    "kubectl": {"--context", "--kubeconfig", "--namespace", "--selector", "--output",
                "--field-manager", "--filename", "--timeout", "--request-timeout"},
}
BOOL_FLAGS = {
    "helm": {"--install", "--create-namespace", "--wait", "--deployed", "--failed",
             "--pending", "--uninstalling", "--all", "--superseded"},
    "kubectl": {"--client", "--server-side", "--force-conflicts", "--ignore-not-found",
                "--wait", "--dry-run"},
}
SHORT = {
    "helm": {"-n": "--namespace", "-o": "--output", "-f": "--values"},
    "kubectl": {"-n": "--namespace", "-o": "--output", "-l": "--selector", "-f": "--filename"},
}


def parse_args(argv):
    words, flags = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and arg != "-":
            name, value = (arg.split("=", 1) + [None])[:2] if arg.startswith("--") else (arg, None)
            name = SHORT[TOOL].get(name, name)
            if name in VALUE_FLAGS[TOOL]:
                if value is None:
                    i += 1
                    if i >= len(argv):
                        raise Fail("Error: flag needs an argument: %s" % name)
                    value = argv[i]
            elif name in BOOL_FLAGS[TOOL]:
                value = True if value is None else value
            else:
                raise Fail("Error: unknown flag: %s" % name)
            flags.setdefault(name, []).append(value)
        else:
            words.append(arg)
        i += 1
    return words, flags


def flag(flags, name, default=None):
    return flags.get(name, [default])[-1]


# --- cluster state -----------------------------------------------------------------------------

KINDS = {  # resource → (Kind, apiVersion, namespaced)
    "namespaces": ("Namespace", "v1", False),
    "secrets": ("Secret", "v1", True),
    "serviceaccounts": ("ServiceAccount", "v1", True),
    "configmaps": ("ConfigMap", "v1", True),
    "deployments": ("Deployment", "apps/v1", True),
    "customresourcedefinitions": ("CustomResourceDefinition", "apiextensions.k8s.io/v1", False),
}
RESOURCE_OF_KIND = {kind: res for res, (kind, _, _) in KINDS.items()}
ALIASES = {
    "namespace": "namespaces", "ns": "namespaces",
    "secret": "secrets",
    "serviceaccount": "serviceaccounts", "sa": "serviceaccounts",
    "configmap": "configmaps", "cm": "configmaps",
    "deployment": "deployments", "deploy": "deployments",
    "deployments.apps": "deployments",
    "customresourcedefinition": "customresourcedefinitions", "crd": "customresourcedefinitions",
    "crds": "customresourcedefinitions",
}
SINGULAR = {res: kind.lower() for res, (kind, _, _) in KINDS.items()}


def resource(word):
    res = ALIASES.get(word.lower(), word.lower())
    if res not in KINDS:
        raise Fail('error: the server doesn\'t have a resource type "%s"' % word)
    return res


class Cluster:
    def __init__(self, context):
        self.context = context
        directory = os.environ.get("FAKE_STATE")
        if not directory:
            raise Fail("fake: FAKE_STATE is not set")
        os.makedirs(directory, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in context)
        self.path = os.path.join(directory, safe + ".json")
        self.lock = open(os.path.join(directory, safe + ".lock"), "a")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        try:
            with open(self.path) as f:
                self.state = loads(f.read())
        except FileNotFoundError:
            self.state = {"objects": {}, "releases": {}, "managers": {}, "rv": 0}
            for ns in ("default", "kube-system", "kube-public"):
                self.put(self.new_object("namespaces", ns, None))

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(dumps(self.state))
        os.replace(tmp, self.path)

    # objects
    def key(self, res, name, ns):
        return "%s/%s" % (ns or "", name)

    def get(self, res, name, ns):
        return self.state["objects"].get(res, {}).get(self.key(res, name, ns))

    def items(self, res, ns=None):
        objs = self.state["objects"].get(res, {}).values()
        return [o for o in objs if ns is None or o["metadata"].get("namespace") == ns]

    def new_object(self, res, name, ns):
        kind, api, namespaced = KINDS[res]
        meta = {"name": name}
        if namespaced:
            meta["namespace"] = ns
        return {"apiVersion": api, "kind": kind, "metadata": meta}

    def put(self, obj):
        res = RESOURCE_OF_KIND[obj["kind"]]
        meta = obj["metadata"]
        self.state["rv"] += 1
        meta["resourceVersion"] = str(self.state["rv"])
        meta.setdefault("uid", "%s-%08d" % (self.context, self.state["rv"]))
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.state["objects"].setdefault(res, {})[self.key(res, meta["name"], meta.get("namespace"))] = obj

    def delete(self, res, name, ns):
        key = self.key(res, name, ns)
        self.state["managers"].pop(res + ":" + key, None)
        return self.state["objects"].get(res, {}).pop(key, None)

    def require_namespace(self, ns):
        if self.get("namespaces", ns, None) is None:
            raise Fail('Error from server (NotFound): namespaces "%s" not found' % ns)

    def fill_tokens(self):
        """The token controller: fills service-account-token secrets whose account exists."""
        for secret in self.items("secrets"):
            if secret.get("type") != "kubernetes.io/service-account-token":
                continue
            data = secret.setdefault("data", {})
            if data.get("token"):
                continue
            ns = secret["metadata"]["namespace"]
            account = secret["metadata"].get("annotations", {}).get("kubernetes.io/service-account.name")
            if not account or self.get("serviceaccounts", account, ns) is None:
                continue
            token = "fake-token-%s-%s" % (self.context, os.urandom(12).hex())
            ca = "-----BEGIN CERTIFICATE-----\nZmFrZS1jYS0%s\n-----END CERTIFICATE-----\n" % self.context
            data["token"] = b64(token)
            data["ca.crt"] = b64(ca)
            data["namespace"] = b64(ns)

    def apply(self, manifest, manager, namespace, server_side):
        kind = manifest.get("kind")
        if kind not in RESOURCE_OF_KIND:
            raise Fail('error: resource mapping not found for kind "%s"' % kind)
        res = RESOURCE_OF_KIND[kind]
        manifest = deepcopy(manifest)
        meta = manifest.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise Fail("error: error when retrieving current configuration: resource name may not be empty")
        ns = None
        if KINDS[res][2]:
            ns = meta.get("namespace") or namespace or "default"
            meta["namespace"] = ns
            self.require_namespace(ns)
        if kind == "Secret" and "stringData" in manifest:
            data = manifest.setdefault("data", {})
            for k, v in manifest.pop("stringData").items():
                data[k] = b64(v)
        if not server_side:
            meta.setdefault("annotations", {})[
                "kubectl.kubernetes.io/last-applied-configuration"] = dumps(manifest)
        existing = self.get(res, name, ns)
        managers = self.state["managers"].setdefault(res + ":" + self.key(res, name, ns), {})
        obj = deepcopy(existing) if existing else {}
        # Server-side apply, one manager at a time: drop the fields this manager applied
        # before and no longer applies, then set what it applies now.
        if manager in managers:
            _drop_missing(obj, managers[manager], manifest)
        _merge(obj, manifest)
        managers[manager] = manifest
        self.put(obj)
        return "%s/%s serverside-applied" % (kind.lower(), name) if server_side else \
            "%s/%s %s" % (kind.lower(), name, "configured" if existing else "created")


def _drop_missing(obj, old, new):
    for k, v in old.items():
        if k not in new:
            obj.pop(k, None)
        elif isinstance(v, dict) and isinstance(new[k], dict) and isinstance(obj.get(k), dict):
            _drop_missing(obj[k], v, new[k])


def _merge(into, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = deepcopy(v)


class _ScanContext:
    """The attributes `_json.make_scanner` reads (as `json.JSONDecoder` has them)."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float
    memo = None


def loads(text):
    if _json is None:
        import json
        return loads(text)
    ws = " \t\n\r"
    start = len(text) - len(text.lstrip(ws))
    try:
        value, end = _json.make_scanner(_ScanContext())(text, start)
    except StopIteration:
        raise Fail("error: invalid JSON at offset %d" % start)
    if text[end:].strip(ws):
        raise Fail("error: invalid JSON: extra data at offset %d" % end)
    return value


def dumps(value):
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value) if _json else __import__("json").dumps(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(dumps(str(k)) + ": " + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    raise TypeError("cannot encode %r" % type(value))


def deepcopy(value):
    return loads(dumps(value))


def b64(text):
    return binascii.b2a_base64(text.encode(), newline=False).decode()


def _re():
    import re
    return re


def selector_matches(selector, labels):
    for term in filter(None, (selector or "").split(",")):
        term = term.strip()
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


# --- kubectl -------------------------------------------------------------------------------------

def kubectl(words, flags, stdin, out):
    context = flag(flags, "--context")
    verb = words[0] if words else ""
    if verb == "version":
        doc = {"clientVersion": CLIENT_VERSION, "kustomizeVersion": "v5.7.1"}
        if not flag(flags, "--client"):
            if not context:
                raise Fail("fake: kubectl version without --context")
            Cluster(context)  # the state exists once the cluster was asked
            doc["serverVersion"] = SERVER_VERSION
        out.append(dumps(doc))
        return
    if not context:
        raise Fail("fake: kubectl %s without --context (meshup always names the context)" % verb)
    cluster = Cluster(context)
    ns_flag = flag(flags, "--namespace")
    if verb == "get" and "/" in words[1]:
        # kubectl get KIND/NAME...: a List of those that exist (nothing when none does).
        if flag(flags, "--output") != "json":
            raise Fail("fake: kubectl get supports only --output json")
        cluster.fill_tokens()
        cluster.save()
        items = []
        for word in words[1:]:
            kind, name = word.split("/", 1)
            res = resource(kind)
            obj = cluster.get(res, name, (ns_flag or "default") if KINDS[res][2] else None)
            if obj is None and not flag(flags, "--ignore-not-found"):
                raise Fail('Error from server (NotFound): %s "%s" not found' % (res, name))
            if obj is not None:
                items.append(obj)
        if items:
            out.append(dumps({"apiVersion": "v1", "kind": "List", "items": items,
                              "metadata": {"resourceVersion": ""}}))
        return
    if verb == "get":
        res = resource(words[1])
        names = words[2:]
        ns = (ns_flag or "default") if KINDS[res][2] else None
        cluster.fill_tokens()
        cluster.save()
        if flag(flags, "--output") != "json":
            raise Fail("fake: kubectl get supports only --output json")
        if names:
            if len(names) != 1:
                raise Fail("fake: kubectl get with several names")
            obj = cluster.get(res, names[0], ns)
            if obj is None:
                if flag(flags, "--ignore-not-found"):
                    return
                raise Fail('Error from server (NotFound): %s "%s" not found' % (res, names[0]))
            out.append(dumps(obj))
            return
        items = [o for o in cluster.items(res, ns)
                 if selector_matches(flag(flags, "--selector"), o["metadata"].get("labels", {}))]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        out.append(dumps({"apiVersion": "v1", "kind": "List", "items": items,
                          "metadata": {"resourceVersion": ""}}))
        return
    if verb == "apply":
        if flag(flags, "--filename") != "-":
            raise Fail("fake: kubectl apply supports only --filename -")
        server_side = bool(flag(flags, "--server-side"))
        manager = flag(flags, "--field-manager", "kubectl" if server_side else "kubectl-client-side-apply")
        docs = yaml_docs(stdin.decode())
        if not docs:
            raise Fail("error: no objects passed to apply")
        errors = []
        for doc in docs:
            try:
                out.append(cluster.apply(doc, manager, ns_flag, server_side))
            except Fail as e:
                errors.append(str(e))
        cluster.save()
        if errors:
            raise Fail("\n".join(errors))
        return
    if verb == "create" and words[1:2] == ["serviceaccount"]:
        name, ns = words[2], ns_flag or "default"
        if cluster.get("namespaces", ns, None) is None:
            raise Fail('error: failed to create serviceaccount: namespaces "%s" not found' % ns)
        if cluster.get("serviceaccounts", name, ns) is not None:
            raise Fail('error: failed to create serviceaccount: serviceaccounts "%s" already exists' % name)
        cluster.put(cluster.new_object("serviceaccounts", name, ns))
        cluster.save()
        out.append("serviceaccount/%s created" % name)
        return
    if verb == "delete":
        res = resource(words[1])
        ns = (ns_flag or "default") if KINDS[res][2] else None
        selector = flag(flags, "--selector")
        if selector is not None:
            names = [o["metadata"]["name"] for o in cluster.items(res, ns)
                     if selector_matches(selector, o["metadata"].get("labels", {}))]
        else:
            names = words[2:]
            if not names:
                raise Fail("error: resource(s) were provided, but no name was specified")
        missing = []
        for name in names:
            if cluster.delete(res, name, ns) is None:
                missing.append(name)
                continue
            if res == "namespaces":
                for other in KINDS:
                    if KINDS[other][2]:
                        for obj in cluster.items(other, name):
                            cluster.delete(other, obj["metadata"]["name"], name)
                for key in [k for k, r in cluster.state["releases"].items() if r["namespace"] == name]:
                    del cluster.state["releases"][key]
            out.append('%s "%s" deleted' % (SINGULAR[res], name))
        cluster.save()
        if missing and not flag(flags, "--ignore-not-found"):
            raise Fail("\n".join('Error from server (NotFound): %s "%s" not found' % (res, n) for n in missing))
        if selector is not None and not names and not flag(flags, "--ignore-not-found"):
            out.append("No resources found")
        return
    if verb == "rollout" and words[1:2] in (["restart"], ["status"]):
        kind, _, name = words[2].partition("/")
        ns = ns_flag or "default"
        obj = cluster.get(resource(kind), name, ns)
        if obj is None:
            raise Fail('Error from server (NotFound): deployments.apps "%s" not found' % name)
        if words[1] == "restart":
            template = obj.setdefault("spec", {}).setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("annotations", {})[
                "kubectl.kubernetes.io/restartedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            cluster.put(obj)
            cluster.save()
            out.append("deployment.apps/%s restarted" % name)
        else:
            out.append('deployment "%s" successfully rolled out' % name)
        return
    raise Fail("fake: unsupported kubectl call: %s" % " ".join(sys.argv[1:]))


# --- helm ----------------------------------------------------------------------------------------

def chart_of(ref, flags):
    """(chart name, version) of a chart reference."""
    if os.path.isdir(ref):
        with open(os.path.join(ref, "Chart.yaml")) as f:
            meta = yaml_docs(f.read())[0]
        return meta["name"], str(meta["version"])
    m = _re().fullmatch(r"(.*/)?([a-z0-9-]+?)-(v?[0-9][^/]*)\.tgz", ref)
    if m and os.path.isfile(ref):
        return m.group(2), m.group(3)
    if os.path.sep in ref and not ref.startswith("oci://") and not os.path.exists(ref):
        raise Fail('Error: path "%s" not found' % ref)
    name = ref.rstrip("/").rsplit("/", 1)[-1]
    return name, flag(flags, "--version") or DEFAULT_CHART_VERSION


def dig(values, *path):
    for key in path:
        if not isinstance(values, dict):
            return None
        values = values.get(key)
    return values


def chart_objects(chart, ns, values):
    """What installing a chart creates: (resource, object) pairs. CRDs are kept by helm."""
    if chart == "base":
        crds = [{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                 "metadata": {"name": n, "labels": {"app": "istio-pilot"}}} for n in ISTIO_CRDS]
        account = {"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "istio-reader-service-account", "namespace": ns}}
        return [account], crds
    if chart == "istiod":
        rev = dig(values, "revision") or ""
        suffix = "-" + rev if rev else ""
        deployment = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "istiod" + suffix, "namespace": ns, "labels": {"app": "istiod"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{
                "name": "discovery",
                "env": [{"name": "CLUSTER_ID", "value": dig(values, "global", "multiCluster", "clusterName") or "Kubernetes"},
                        {"name": "REVISION", "value": rev or "default"}],
            }]}}},
            "status": {"replicas": 1, "readyReplicas": 1},
        }
        mesh = "defaultConfig:\n  discoveryAddress: istiod%s.%s.svc:15012\n  meshId: %s\ntrustDomain: %s\n" % (
            suffix, ns, dig(values, "global", "meshID") or "cluster.local",
            dig(values, "meshConfig", "trustDomain") or "cluster.local")
        configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "istio" + suffix, "namespace": ns},
                     "data": {"mesh": mesh, "meshNetworks": "networks: {}"}}
        return [deployment, configmap], []
    raise Fail("fake: unknown chart `%s`" % chart)


def go_numbers(value):
    """Numbers as helm prints them: it reads values into Go float64s, and Go's JSON writes an
    integral float without a fraction (`1.0` comes back as `1`)."""
    if isinstance(value, dict):
        return {k: go_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [go_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def helm(words, flags, out, failing, stdin=b""):
    verb = words[0] if words else ""
    if verb == "version":
        version = os.environ.get("FAKE_HELM_VERSION", "v3.19.0")
        if flag(flags, "--template") == "{{.Version}}":
            out.append(version)
        else:
            out.append('version.BuildInfo{Version:"%s", GitTreeState:"clean", GoVersion:"go1.24.7"}' % version)
        return
    context = flag(flags, "--kube-context")
    if not context:
        raise Fail("fake: helm %s without --kube-context (meshup always names the context)" % verb)
    cluster = Cluster(context)
    ns = flag(flags, "--namespace", "default")
    releases = cluster.state["releases"]
    if verb == "upgrade" and flag(flags, "--install"):
        name, ref = words[1], words[2]
        chart, version = chart_of(ref, flags)
        values = {}
        for path in flags.get("--values", []):
            if path == "-":
                docs = yaml_docs(stdin.decode())
            else:
                with open(path) as f:
                    docs = yaml_docs(f.read())
            _merge(values, docs[0] if docs and isinstance(docs[0], dict) else {})
        if cluster.get("namespaces", ns, None) is None:
            if not flag(flags, "--create-namespace"):
                raise Fail('Error: create: failed to create: namespaces "%s" not found' % ns)
            cluster.put(cluster.new_object("namespaces", ns, None))
        key = "%s/%s" % (ns, name)
        old = releases.get(key)
        owned, kept = chart_objects(chart, ns, values)
        for obj in owned:
            res = RESOURCE_OF_KIND[obj["kind"]]
            live = cluster.get(res, obj["metadata"]["name"], ns)
            if live is not None and live["metadata"].get("annotations", {}).get("meta.helm.sh/release-name") != name:
                raise Fail('Error: Unable to continue with install: %s "%s" in namespace "%s" exists and cannot be '
                           "imported into the current release: invalid ownership metadata" % (obj["kind"], obj["metadata"]["name"], ns))
        if old:  # what the old revision made and this one does not
            for res, obj_key in old["owned"]:
                if [res, obj_key] not in [[RESOURCE_OF_KIND[o["kind"]], "%s/%s" % (ns, o["metadata"]["name"])] for o in owned]:
                    obj_ns, obj_name = obj_key.split("/", 1)
                    cluster.delete(res, obj_name, obj_ns)
        for obj in owned:
            meta = obj["metadata"]
            meta.setdefault("labels", {})["app.kubernetes.io/managed-by"] = "Helm"
            meta.setdefault("annotations", {}).update({"meta.helm.sh/release-name": name,
                                                       "meta.helm.sh/release-namespace": ns})
            if failing and obj["kind"] == "Deployment":
                obj["status"]["readyReplicas"] = 0
            cluster.put(obj)
        for obj in kept:
            if cluster.get("customresourcedefinitions", obj["metadata"]["name"], None) is None:
                cluster.put(obj)
        releases[key] = {
            "name": name, "namespace": ns, "revision": (old["revision"] + 1) if old else 1,
            "status": "failed" if failing else "deployed", "chart": "%s-%s" % (chart, version.lstrip("v")),
            "app_version": version.lstrip("v"), "values": values,
            "updated": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime()),
            "owned": [[RESOURCE_OF_KIND[o["kind"]], "%s/%s" % (ns, o["metadata"]["name"])] for o in owned],
        }
        cluster.save()
        if failing:
            return
        out.append('Release "%s" has been %s. Happy Helming!' % (name, "upgraded" if old else "installed"))
        return
    if verb == "list":
        wanted = {s for s in ("deployed", "failed", "pending", "uninstalling") if flag(flags, "--" + s)}
        wanted = wanted or {"deployed", "failed"}
        rows = [dict({k: r[k] for k in ("name", "namespace", "updated", "status", "chart", "app_version")},
                     revision=str(r["revision"]))
                for r in releases.values()
                if r["namespace"] == ns and (r["status"] in wanted or (r["status"].startswith("pending") and "pending" in wanted))]
        rows.sort(key=lambda r: r["name"])
        if flag(flags, "--output") != "json":
            raise Fail("fake: helm list supports only --output json")
        out.append(dumps(rows))
        return
    if verb == "get" and words[1:2] == ["values"]:
        release = releases.get("%s/%s" % (ns, words[2]))
        if release is None:
            raise Fail("Error: release: not found")
        out.append(dumps(go_numbers(release["values"]) or None))
        return
    if verb == "uninstall":
        key = "%s/%s" % (ns, words[1])
        release = releases.pop(key, None)
        if release is None:
            raise Fail("Error: uninstall: Release not loaded: %s: release: not found" % words[1])
        for res, obj_key in release["owned"]:
            obj_ns, obj_name = obj_key.split("/", 1)
            cluster.delete(res, obj_name, obj_ns)
        cluster.save()
        out.append('release "%s" uninstalled' % words[1])
        return
    raise Fail("fake: unsupported helm call: %s" % " ".join(sys.argv[1:]))


# --- main ----------------------------------------------------------------------------------------

def failure_for(context, argv):
    line = " ".join(argv)
    for entry in filter(None, os.environ.get("FAKE_FAIL", "").splitlines()):
        ctx, _, needle = entry.partition(":")
        if ctx == context and needle and needle in line:
            return True
    return False


def main():
    start = time.time()
    argv = sys.argv[1:]
    latency = int(os.environ.get("FAKE_LATENCY_MS", "0") or 0)
    stdin = b"" if os.isatty(0) else sys.stdin.buffer.read()
    if latency:
        time.sleep(latency / 1000.0)
    out, code, err = [], 0, ""
    context = None
    try:
        words, flags = parse_args(argv)
        context = flag(flags, "--context" if TOOL == "kubectl" else "--kube-context")
        down = [c for c in os.environ.get("FAKE_DOWN", "").split(",") if c]
        failing = bool(context) and failure_for(context, argv)
        if context in down:
            if TOOL == "helm":
                raise Fail('Error: Kubernetes cluster unreachable: Get "https://%s.fake:6443/version": '
                           "dial tcp 10.255.0.1:6443: connect: connection refused" % context)
            raise Fail("The connection to the server %s.fake:6443 was refused - did you specify the right host or port?" % context)
        is_upgrade = TOOL == "helm" and words[:1] == ["upgrade"]
        if failing and not is_upgrade:
            raise Fail(os.environ.get("FAKE_FAIL_STDERR") or (
                "Error: context deadline exceeded" if TOOL == "helm" else
                "error: the server was unable to return a response in the time allotted"))
        if TOOL == "helm":
            helm(words, flags, out, failing, stdin)
        elif TOOL == "kubectl":
            kubectl(words, flags, stdin, out)
        else:
            raise Fail("fake: call me as helm or kubectl")
        if failing:
            raise Fail(os.environ.get("FAKE_FAIL_STDERR") or
                       "Error: UPGRADE FAILED: context deadline exceeded\n"
                       "Error: UPGRADE FAILED: timed out waiting for the condition")
    except Fail as e:
        code, err = 1, str(e) + "\n"
    log = os.environ.get("FAKE_LOG")
    if log:
        record = {"tool": TOOL, "argv": argv, "context": context,
                  "stdin": stdin.decode("utf-8", "replace") if stdin else None,
                  "code": code, "start": start, "end": time.time(), "pid": os.getpid(),
                  "cpu": round(sum(os.times()[:2]), 3)}
        with open(log, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(dumps(record) + "\n")
    if out:
        sys.stdout.write("\n".join(out) + "\n")
    sys.stderr.write(err)
    sys.exit(code)


if __name__ == "__main__":
    main()
