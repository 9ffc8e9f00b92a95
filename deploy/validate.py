#!/usr/bin/env python3
"""Static checks of refund-worker's deployment files, against each other and the code.

    python3 deploy/validate.py [--overlay deploy/overlays/example] [--no-compose-tool]

Needs python3 with PyYAML, and kubectl (or kustomize) to render the overlay; both work
offline. Optional: docker-compose (1.29) and/or `docker compose` (v2) to validate
docker-compose.yml for real; without them a structural check is done instead (it is also
done with them, because it checks intent the tools cannot know).

What is checked (each line printed as `ok` or `FAIL`):

- Kubernetes (the rendered overlay): every document has apiVersion, kind and metadata.name,
  and no two share kind/namespace/name; the Deployment runs `run`, probes /healthz
  (liveness) and /readyz (readiness) on the port HTTP_ADDR binds on 0.0.0.0,
  terminationGracePeriodSeconds > SHUTDOWN_GRACE_SECS (and > 25), runs as non-root with a
  read-only root filesystem (init container too), an init container runs `migrate` with the
  same image and DATABASE_URL; DATABASE_URL and AMQP_URL come from Secrets; every provider
  key/secret is an optional secretKeyRef to refund-worker-providers; every enabled provider
  (BASE_URL) has its API key and a timeout the claim lease covers (the start-up check in
  src/config.rs); every environment variable set is one the code reads; the Service and
  PodDisruptionBudget select the pods; the ScaledObject targets the Deployment by name,
  scales on exactly the two command queues `refund.commands` and `refund.commands.backlog`
  (one rabbitmq trigger each: QueueLength, a positive value, AMQP, the same existing
  TriggerAuthentication that provides `host`), never to zero and with at least 2 pods for
  the budget, and its maximum fits PostgreSQL's max_connections; every Policy has its own
  name in its vhost; for each command queue exactly one Policy of the highest priority
  matches it, matches no other queue of the worker, applies to (quorum) queues in a rendered
  Vhost and states the queue's arguments from src/broker/topology.rs: for refund.commands
  message-ttl = COMMAND_FRESH_FOR in ms (1000), dead-letter-routing-key
  `refund.commands.backlog`; for refund.commands.backlog dead-letter-routing-key
  `refund.commands.dlq` and no message-ttl; for both dead-letter-exchange `refunds.dlx`,
  delivery-limit = DELIVERY_LIMIT (20), dead-letter-strategy `at-least-once` and overflow
  `reject-publish` (numbers as JSON numbers); the worker's Permission grants configure,
  write and read on every exchange and queue name in src/broker/topology.rs (the command
  queues must be among the names read); the RabbitmqCluster and CloudNativePG Cluster have
  3 members. Names and values are read from src/ where it has them (a note says
  which were not, and the built-in defaults used instead).
- Webhook ingress: an Ingress publishes POST /webhooks/ (and only that prefix: the admin
  API, /metrics and /openapi.json share the listener) to the worker Service's port, with TLS.
- Monitoring (when the overlay includes deploy/components/monitoring): the PodMonitor scrapes
  /metrics on the port the Deployment names `http` and selects the pods; every rule has an
  alert name, an expression and a severity; every metric a rule reads is one src/metrics.rs
  exports; some alert's refund_worker_queue_depth selector takes `refund.commands` and some
  takes `refund.commands.backlog` (commands waiting); with promtool installed, `promtool
  check rules` and the unit tests in rules.test.yaml.
- docker-compose.yml: `config -q` with each compose tool found; structurally, the five
  services, an image or build each, healthchecks where depends_on waits for health,
  depends_on targets that exist, a one-shot `migrate`, the worker wired to the sandbox (which
  binds 0.0.0.0) with matching API key, HTTP_ADDR on 0.0.0.0, a stop grace period longer
  than SHUTDOWN_GRACE_SECS, the RabbitMQ config mounted and setting quorum as default.
- Dockerfile and .dockerignore: the build command, a non-root numeric USER, EXPOSE 8080,
  HTTP_ADDR, ENTRYPOINT/CMD, no HEALTHCHECK in a distroless image; target/ and .git ignored.

Exits 1 listing every failure, 0 when all checks pass.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - the one hard dependency
    sys.exit("validate.py needs PyYAML (pip install pyyaml / apt-get install python3-yaml)")

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT = "refund-worker"
CONTAINER = "refund-worker"
PROVIDER_SECRET = "refund-worker-providers"
PROVIDER_SUFFIXES_SECRET = ("API_KEY", "API_SECRET", "WEBHOOK_SECRET")
DEFAULT_SHUTDOWN_GRACE = 25  # src/config.rs
HTTP_DRAIN = 3  # src/cli/mod.rs: after the drain, HTTP requests in flight get this long
DEFAULT_CLAIM_LEASE = 60  # src/config.rs
DEFAULT_PROVIDER_TIMEOUT_MS = 10_000  # src/config.rs
DEFAULT_DB_MAX_CONNECTIONS = 10  # src/config.rs
SANDBOX_DEFAULT_KEY = "sandbox-va-key"  # src/cli/tools/sandbox.rs


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0
        self.section = ""

    def start(self, title: str) -> None:
        self.section = title
        print(f"\n== {title}")

    def check(self, condition: bool, what: str, why: str = "") -> bool:
        if condition:
            self.passed += 1
            print(f"  ok    {what}")
        else:
            msg = f"{what}: {why}" if why else what
            self.failures.append(f"[{self.section}] {msg}")
            print(f"  FAIL  {msg}")
        return condition

    def note(self, text: str) -> None:
        print(f"  note  {text}")


# --------------------------------------------------------------------------------------------
# What the code says (so the manifests are checked against it, not against a copy in here)
# --------------------------------------------------------------------------------------------


def read_src(rel: str) -> str | None:
    p = ROOT / rel
    return p.read_text(encoding="utf-8") if p.is_file() else None


def code_facts(rep: Report) -> dict:
    """Names and numbers the deployment files must agree with, read from src/."""
    facts: dict = {
        "providers": ["VA_SERVICES", "BPN", "BINANCE_PAY", "BVNK"],
        "env": None,  # None: unknown (src/ missing), skip the env-name check
        "queue": "refund.commands",
        "backlog": "refund.commands.backlog",
        "dlx": "refunds.dlx",
        "dlq": "refund.commands.dlq",
        "delivery_limit": 20,
        # What each command queue dead-letters into: the fresh queue into the backlog (its
        # TTL and delivery limit), the backlog into the DLQ.
        "queue_dead_letters_to": "refund.commands.backlog",
        "backlog_dead_letters_to": "refund.commands.dlq",
        "fresh_for_ms": 1000,  # COMMAND_FRESH_FOR, the fresh queue's x-message-ttl
        "dead_letter_strategy": "at-least-once",
        "overflow": "reject-publish",
        "queue_names": ["refund.commands", "refund.commands.backlog", "refund.commands.dlq",
                        "refunds.unrouted", "provider.webhooks", "provider.webhooks.dlq"],
    }
    fallback: list[str] = []  # facts the code did not yield (the defaults above are used)
    cmd = read_src("src/domain/command.rs")
    if cmd:
        m = re.search(r"impl ProviderName\s*\{.*?fn as_str\(self\).*?\{(.*?)\n\s*\}\n\s*\}", cmd, re.S)
        names = re.findall(r'=>\s*"([a-z_]+)"', m.group(1)) if m else []
        if names:
            facts["providers"] = [n.upper() for n in names]
    topo = read_src("src/broker/topology.rs")
    if topo:
        fields = dict(re.findall(r'(\w+):\s*format!\("\{prefix\}([^"]+)"\)', topo))
        for key, field in (("queue", "commands_queue"), ("backlog", "commands_backlog"), ("dlx", "dlx"), ("dlq", "commands_dlq")):
            if field in fields:
                facts[key] = fields[field]
            else:
                fallback.append(key)
        m = re.search(r"fn with_prefix.*?\n    \}", topo, re.S)
        facts["topology_names"] = sorted(set(re.findall(r'format!\("\{prefix\}([^"]+)"\)', m.group(0)))) if m else []
        m = re.search(r"pub fn queues\(&self\).*?\n    \}", topo, re.S)
        queues = [fields.get(f) for f in re.findall(r"&self\.(\w+)", m.group(0))] if m else []
        if queues and all(queues):
            facts["queue_names"] = queues
        else:
            fallback.append("queue_names")
        m = re.search(r"pub const DELIVERY_LIMIT:\s*i64\s*=\s*(\d+)", topo)
        if m:
            facts["delivery_limit"] = int(m.group(1))
        else:
            fallback.append("delivery_limit")
        m = re.search(r"pub const COMMAND_FRESH_FOR:\s*Duration\s*=\s*Duration::from_(secs|millis)\((\d+)\)", topo)
        if m:
            facts["fresh_for_ms"] = int(m.group(2)) * (1000 if m.group(1) == "secs" else 1)
        else:
            fallback.append("fresh_for_ms")
        # The fresh queue: consumed_queue(channel, &self.commands_queue, <dead-letter target>, ...).
        m = re.search(r"consumed_queue\(\s*channel,\s*&self\.commands_queue,\s*&self\.(\w+),", topo)
        if m and m.group(1) in fields:
            facts["queue_dead_letters_to"] = fields[m.group(1)]
        else:
            fallback.append("queue_dead_letters_to")
        # The backlog: dead_letter_target(channel, &self.commands_backlog, ARGS), where
        # `let ARGS = self.dead_lettering(..., &self.<target>);`.
        m = re.search(r"dead_letter_target\(channel,\s*&self\.commands_backlog,\s*(\w+)\)", topo)
        m = m and re.search(rf"let (?:mut )?{m.group(1)}\s*=\s*self\.dead_lettering\(.*?,\s*&self\.(\w+)\);", topo, re.S)
        if m and m.group(1) in fields:
            facts["backlog_dead_letters_to"] = fields[m.group(1)]
        else:
            fallback.append("backlog_dead_letters_to")
        for key, arg in (("dead_letter_strategy", "x-dead-letter-strategy"), ("overflow", "x-overflow")):
            m = re.search(rf'"{arg}"\.into\(\),\s*long_string\("([^"]+)"\)', topo)
            if m:
                facts[key] = m.group(1)
            else:
                fallback.append(key)
    else:
        fallback.append("everything in src/broker/topology.rs")
    config = read_src("src/config.rs")
    if config:
        env = set(re.findall(r'\b(?:get|num|ms)\("([A-Z][A-Z0-9_]+)"', config))
        suffixes = set(re.findall(r'format!\("\{prefix\}_([A-Z_]+)"\)', config))
        for p in facts["providers"]:
            env |= {f"PROVIDER_{p}_{s}" for s in suffixes}
        for rel in ("src/telemetry.rs", "src/cli/tools/sandbox.rs", "src/main.rs", "src/lib.rs"):
            text = read_src(rel) or ""
            env |= set(re.findall(r'env::var\("([A-Z][A-Z0-9_]+)"\)', text))
            env |= set(re.findall(r'env\s*=\s*"([A-Z][A-Z0-9_]+)"', text))
            if "try_from_default_env" in text:
                env.add("RUST_LOG")  # tracing-subscriber's EnvFilter default variable
        facts["env"] = env
    rep.note(
        "from src/: providers " + ", ".join(facts["providers"])
        + f"; queue {facts['queue']} (TTL {facts['fresh_for_ms']} ms, dead-letters to {facts['queue_dead_letters_to']}),"
        f" backlog {facts['backlog']} (dead-letters to {facts['backlog_dead_letters_to']}), DLX {facts['dlx']}, DLQ {facts['dlq']},"
        f" delivery limit {facts['delivery_limit']}, dead-letter-strategy {facts['dead_letter_strategy']}, overflow {facts['overflow']}; "
        + (f"{len(facts['env'])} known environment variables" if facts["env"] else "src/ not found, env names unchecked")
    )
    if fallback:
        rep.note("not read from src/, the built-in values are used: " + ", ".join(fallback))
    return facts


# --------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------


def render(overlay: Path, rep: Report) -> list[dict] | None:
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if kubectl:
        cmd = [kubectl, "kustomize", str(overlay)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(overlay)]
    else:
        rep.check(False, "render the overlay", "neither kubectl nor kustomize is on PATH")
        return None
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not rep.check(proc.returncode == 0, f"render: {' '.join(cmd)}", proc.stderr.strip()):
        return None
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    rep.note(f"{len(docs)} documents: " + ", ".join(sorted({d.get('kind', '?') for d in docs if isinstance(d, dict)})))
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == kind]


def name_of(doc: dict) -> str:
    return (doc.get("metadata") or {}).get("name", "")


def dig(obj, *path, default=None):
    for key in path:
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and key < len(obj):
            obj = obj[key]
        else:
            return default
    return obj


def to_int(value, default=None):
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def selector_matches(selector: dict | None, labels: dict | None) -> bool:
    sel = (selector or {}).get("matchLabels", selector or {})
    labels = labels or {}
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


def effective_env(container: dict, configmaps: dict[str, dict]) -> tuple[dict, list[str]]:
    """The container's environment: literal values, or ('secret', name, key, optional)."""
    env: dict = {}
    missing: list[str] = []
    for src in container.get("envFrom") or []:
        ref = src.get("configMapRef")
        if ref:
            cm = configmaps.get(ref.get("name"))
            if cm is None:
                if not ref.get("optional"):
                    missing.append(ref.get("name"))
                continue
            env.update({k: str(v) for k, v in (cm.get("data") or {}).items()})
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "valueFrom" in item:
            sk = item["valueFrom"].get("secretKeyRef")
            cmk = item["valueFrom"].get("configMapKeyRef")
            if sk:
                env[item["name"]] = ("secret", sk.get("name"), sk.get("key"), bool(sk.get("optional")))
            elif cmk:
                cm = configmaps.get(cmk.get("name")) or {}
                env[item["name"]] = str((cm.get("data") or {}).get(cmk.get("key"), ""))
            else:
                env[item["name"]] = ("other",)
        else:
            env[item["name"]] = ""
    return env, missing


def port_number(port, container: dict):
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return to_int(port)


def check_kubernetes(docs: list[dict], facts: dict, rep: Report) -> None:
    rep.start("Kubernetes: every document")
    seen: dict[tuple, int] = {}
    bad = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            bad.append(f"document {i} is not a mapping")
            continue
        for field in ("apiVersion", "kind"):
            if not isinstance(d.get(field), str) or not d.get(field):
                bad.append(f"document {i} ({d.get('kind', '?')}) has no {field}")
        if not name_of(d):
            bad.append(f"document {i} ({d.get('kind', '?')}) has no metadata.name")
        key = (d.get("kind"), dig(d, "metadata", "namespace"), name_of(d))
        seen[key] = seen.get(key, 0) + 1
    dupes = [f"{k[0]}/{k[2]}" for k, n in seen.items() if n > 1]
    rep.check(not bad, f"{len(docs)} documents have apiVersion, kind and metadata.name", "; ".join(bad))
    rep.check(not dupes, "no duplicate kind/namespace/name", ", ".join(dupes))

    configmaps = {name_of(c): c for c in by_kind(docs, "ConfigMap")}
    deps = [d for d in by_kind(docs, "Deployment") if name_of(d) == DEPLOYMENT]

    rep.start(f"Kubernetes: Deployment {DEPLOYMENT}")
    if not rep.check(len(deps) == 1, f"exactly one Deployment named {DEPLOYMENT}", f"found {len(deps)}"):
        return
    dep = deps[0]
    pod = dig(dep, "spec", "template", "spec", default={})
    pod_labels = dig(dep, "spec", "template", "metadata", "labels", default={})
    rep.check(
        selector_matches(dig(dep, "spec", "selector"), pod_labels),
        "spec.selector matches the pod template labels",
    )
    containers = pod.get("containers") or []
    main = next((c for c in containers if c.get("name") == CONTAINER), None)
    if not rep.check(main is not None, f"container {CONTAINER} exists"):
        return
    cmdline = (main.get("command") or []) + (main.get("args") or [])
    rep.check(cmdline in (["run"], ["refund-worker", "run"]), "the container runs `run`", f"got {cmdline}")

    env, missing_cms = effective_env(main, configmaps)
    rep.check(not missing_cms, "every envFrom ConfigMap is in the rendered output", f"missing: {missing_cms}")

    # Probes and the address they reach.
    http_addr = env.get("HTTP_ADDR")
    addr_ok = isinstance(http_addr, str) and re.fullmatch(r"0\.0\.0\.0:\d+", http_addr or "")
    rep.check(bool(addr_ok), "HTTP_ADDR binds 0.0.0.0 (the code's default 127.0.0.1 is unreachable for the kubelet)", f"HTTP_ADDR={http_addr!r}")
    listen_port = to_int(http_addr.rsplit(":", 1)[1]) if addr_ok else 8080
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = dig(main, probe, "httpGet")
        if rep.check(isinstance(get, dict), f"{probe} is an httpGet probe"):
            rep.check(get.get("path") == path, f"{probe} path is {path}", f"got {get.get('path')!r}")
            port = port_number(get.get("port"), main)
            rep.check(port == listen_port, f"{probe} port is the HTTP_ADDR port {listen_port}", f"got {get.get('port')!r} -> {port}")
    startup = dig(main, "startupProbe", "httpGet", "path")
    if startup is not None:
        rep.check(startup == "/healthz", "startupProbe uses /healthz (readiness depends on the broker)", f"got {startup!r}")

    # Shutdown.
    grace = to_int(env.get("SHUTDOWN_GRACE_SECS") if isinstance(env.get("SHUTDOWN_GRACE_SECS"), str) else None, DEFAULT_SHUTDOWN_GRACE)
    tgps = to_int(pod.get("terminationGracePeriodSeconds"), 30)  # Kubernetes default 30
    rep.check(
        tgps > max(grace, DEFAULT_SHUTDOWN_GRACE) + HTTP_DRAIN,
        f"terminationGracePeriodSeconds ({tgps}) > SHUTDOWN_GRACE_SECS ({grace}, at least {DEFAULT_SHUTDOWN_GRACE}) + the HTTP drain ({HTTP_DRAIN} s)",
    )

    # Security context, per container (container settings override the pod's).
    pod_sc = pod.get("securityContext") or {}
    inits = pod.get("initContainers") or []
    for c in containers + inits:
        sc = c.get("securityContext") or {}
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        rep.check(non_root is True, f"{c.get('name')}: runAsNonRoot", f"effective value {non_root!r}")
        rep.check(uid is None or (isinstance(uid, int) and uid > 0), f"{c.get('name')}: runAsUser is not 0", f"got {uid!r}")
        rep.check(sc.get("readOnlyRootFilesystem") is True, f"{c.get('name')}: readOnlyRootFilesystem")
        rep.check(sc.get("allowPrivilegeEscalation") is False, f"{c.get('name')}: allowPrivilegeEscalation false")
        lim = dig(c, "resources", "limits", "memory")
        req = dig(c, "resources", "requests", "memory")
        rep.check(bool(lim and req), f"{c.get('name')}: memory request and limit set", f"requests={req!r} limits={lim!r}")

    # The migrate init container.
    migrate = [c for c in inits if (c.get("command") or []) + (c.get("args") or []) in (["migrate"], ["refund-worker", "migrate"])]
    if rep.check(len(migrate) == 1, "one initContainer runs `migrate`", f"initContainers: {[(c.get('name'), c.get('args')) for c in inits]}"):
        m = migrate[0]
        rep.check(m.get("image") == main.get("image"), "the migrate init container uses the worker's image", f"{m.get('image')} vs {main.get('image')}")
        menv, _ = effective_env(m, configmaps)
        rep.check("DATABASE_URL" in menv, "the migrate init container gets DATABASE_URL")
        stray = sorted(k for k in menv if k.startswith("PROVIDER_") and k.endswith("_BASE_URL") and f"{k[:-9]}_API_KEY" not in menv)
        rep.check(not stray, "the migrate init container has no provider BASE_URL without its API key (it would fail config validation)", ", ".join(stray))

    # Where the connection strings come from.
    for var in ("DATABASE_URL", "AMQP_URL"):
        v = env.get(var)
        rep.check(isinstance(v, tuple) and v[0] == "secret", f"{var} comes from a Secret", f"got {v!r}")

    # Provider credentials.
    bad = []
    for p in facts["providers"]:
        for s in PROVIDER_SUFFIXES_SECRET:
            var = f"PROVIDER_{p}_{s}"
            v = env.get(var)
            if not (isinstance(v, tuple) and v[0] == "secret" and v[1] == PROVIDER_SECRET and v[3]):
                bad.append(f"{var} ({v!r})")
    rep.check(
        not bad,
        f"all {len(facts['providers']) * 3} provider keys/secrets are optional secretKeyRefs to {PROVIDER_SECRET}",
        "; ".join(bad),
    )
    lease = to_int(env.get("CLAIM_LEASE_SECS") if isinstance(env.get("CLAIM_LEASE_SECS"), str) else None, DEFAULT_CLAIM_LEASE)
    enabled = [p for p in facts["providers"] if isinstance(env.get(f"PROVIDER_{p}_BASE_URL"), str) and env.get(f"PROVIDER_{p}_BASE_URL")]
    rep.note("providers enabled by a BASE_URL: " + (", ".join(enabled) or "none"))
    for p in enabled:
        base = env[f"PROVIDER_{p}_BASE_URL"]
        rep.check(bool(re.match(r"^https?://[^/\s]+", base)), f"PROVIDER_{p}_BASE_URL is an http(s) URL", base)
        rep.check(f"PROVIDER_{p}_API_KEY" in env, f"PROVIDER_{p}_API_KEY is provided with its BASE_URL (required at start)")
        t = env.get(f"PROVIDER_{p}_TIMEOUT_MS")
        timeout = to_int(t if isinstance(t, str) else None, DEFAULT_PROVIDER_TIMEOUT_MS)
        rep.check(
            timeout / 1000 + 5 <= lease,
            f"CLAIM_LEASE_SECS ({lease}) exceeds the {p} timeout ({timeout} ms) by at least 5 s (src/config.rs refuses to start otherwise)",
        )
    numeric = ("DATABASE_MAX_CONNECTIONS", "PREFETCH", "DISPATCH_BATCH", "DISPATCH_CONCURRENCY", "CLAIM_LEASE_SECS", "SHUTDOWN_GRACE_SECS", "IDLE_POLL_MS")
    bad_num = [f"{k}={env[k]!r}" for k in numeric if isinstance(env.get(k), str) and to_int(env[k]) is None]
    rep.check(not bad_num, "numeric settings are whole numbers", ", ".join(bad_num))
    if facts["env"] is not None:
        names = set(env)
        for c in inits:
            names |= set(effective_env(c, configmaps)[0])
        unknown = sorted(n for n in names if n not in facts["env"])
        rep.check(not unknown, "every environment variable set is one the code reads (src/config.rs, src/telemetry.rs)", f"unknown: {unknown}")

    # Replicas, disruption budget, Service.
    replicas = dig(dep, "spec", "replicas")
    scaled = by_kind(docs, "ScaledObject")
    pdbs = [p for p in by_kind(docs, "PodDisruptionBudget") if selector_matches(dig(p, "spec", "selector"), pod_labels)]

    rep.start("Kubernetes: Service and PodDisruptionBudget")
    svcs = [s for s in by_kind(docs, "Service") if selector_matches({"matchLabels": dig(s, "spec", "selector", default={})}, pod_labels)]
    if rep.check(len(svcs) >= 1, "a Service selects the worker pods"):
        ports = dig(svcs[0], "spec", "ports", default=[])
        targets = [port_number(p.get("targetPort", p.get("port")), main) for p in ports]
        rep.check(listen_port in targets, f"the Service targets port {listen_port}", f"targets {targets}")
    if rep.check(len(pdbs) == 1, "one PodDisruptionBudget selects the worker pods", f"found {len(pdbs)}"):
        # One at a time (maxUnavailable 1); with at least 2 replicas that never takes the last.
        rep.check(to_int(dig(pdbs[0], "spec", "maxUnavailable")) == 1 and dig(pdbs[0], "spec", "minAvailable") is None,
                  "PodDisruptionBudget allows one pod at a time (maxUnavailable 1)", f"got {dig(pdbs[0], 'spec')!r}")
    if not scaled:
        rep.check(replicas is not None and to_int(replicas, 0) >= 2, "without a ScaledObject, replicas >= 2 (or the budget blocks every drain)", f"replicas={replicas!r}")

    # Autoscaling.
    if scaled:
        rep.start("Kubernetes: KEDA ScaledObject")
        rep.check(replicas is None, "the Deployment leaves `replicas` to the autoscaler", f"replicas={replicas!r}")
        so = [s for s in scaled if dig(s, "spec", "scaleTargetRef", "name") == DEPLOYMENT]
        if rep.check(len(so) == 1 and len(scaled) == 1, f"the ScaledObject targets Deployment {DEPLOYMENT} by name",
                     f"targets: {[dig(s, 'spec', 'scaleTargetRef', 'name') for s in scaled]}"):
            s = so[0]
            kind = dig(s, "spec", "scaleTargetRef", "kind", default="Deployment")
            rep.check(kind == "Deployment", "scaleTargetRef kind is Deployment", f"got {kind}")
            mn = to_int(dig(s, "spec", "minReplicaCount"), 0)
            mx = to_int(dig(s, "spec", "maxReplicaCount"), 100)  # KEDA's default maximum
            rep.check(mn >= 2, f"minReplicaCount ({mn}) >= 2: never zero (polls, retries and the outbox need a pod), and the budget can evict one", "")
            rep.check(mx >= mn, f"maxReplicaCount ({mx}) >= minReplicaCount ({mn})")
            triggers = dig(s, "spec", "triggers", default=[])
            rabbit = [t for t in triggers if t.get("type") == "rabbitmq"]
            # One trigger per command queue: the fresh queue (bursts) and the backlog (what
            # the pods did not keep up with, moved there after COMMAND_FRESH_FOR).
            wanted = [facts["queue"], facts["backlog"]]
            names = [dig(t, "metadata", "queueName") for t in rabbit]
            for q in wanted:
                rep.check(names.count(q) == 1, f"one rabbitmq trigger on queue {q}", f"rabbitmq triggers' queueName: {names}")
            stray = [n for n in names if n not in wanted]
            rep.check(not stray, f"every rabbitmq trigger is on a command queue ({', '.join(wanted)})", f"also: {stray}")
            tas = {name_of(a): a for a in by_kind(docs, "TriggerAuthentication")}
            for t in rabbit:
                md = t.get("metadata") or {}
                q = md.get("queueName")
                rep.check(md.get("mode") == "QueueLength", f"trigger on {q}: mode is QueueLength", f"got {md.get('mode')!r}")
                try:
                    value_ok = float(md.get("value")) > 0
                except (TypeError, ValueError):
                    value_ok = False
                rep.check(value_ok, f"trigger on {q}: value is a positive number", f"got {md.get('value')!r}")
                rep.check(md.get("protocol", "auto") in ("amqp", "auto"), f"trigger on {q}: protocol amqp (the worker's user has no management tag)", f"got {md.get('protocol')!r}")
                auth = dig(t, "authenticationRef", "name")
                if rep.check(auth in tas, f"trigger on {q}: authenticationRef names a rendered TriggerAuthentication", f"got {auth!r}"):
                    params = [r.get("parameter") for r in dig(tas[auth], "spec", "secretTargetRef", default=[])]
                    rep.check("host" in params or "host" in md or "hostFromEnv" in md, f"trigger on {q}: gets its `host` (URL with credentials) from somewhere", f"secretTargetRef parameters {params}")
            auths = {dig(t, "authenticationRef", "name") for t in rabbit}
            metrics = {(dig(t, "metadata", "mode"), dig(t, "metadata", "protocol")) for t in rabbit}
            rep.check(len(auths) <= 1 and len(metrics) <= 1, "the rabbitmq triggers share one authentication and metric type", f"authenticationRefs {sorted(map(str, auths))}, (mode, protocol) {sorted(map(str, metrics))}")
            pool = to_int(env.get("DATABASE_MAX_CONNECTIONS") if isinstance(env.get("DATABASE_MAX_CONNECTIONS"), str) else None, DEFAULT_DB_MAX_CONNECTIONS)
            pg = by_kind(docs, "Cluster")
            maxconn = to_int(dig(pg[0], "spec", "postgresql", "parameters", "max_connections")) if pg else None
            if maxconn:
                surge = 1
                need = (mx + surge) * pool
                rep.check(need < maxconn, f"(maxReplicaCount {mx} + surge {surge}) x DATABASE_MAX_CONNECTIONS {pool} = {need} < PostgreSQL max_connections {maxconn}")

    # RabbitMQ.
    policies = by_kind(docs, "Policy")
    clusters = by_kind(docs, "RabbitmqCluster")
    if policies or clusters:
        rep.start("Kubernetes: RabbitMQ")
        cluster_names = {name_of(c) for c in clusters}
        for c in clusters:
            rep.check(to_int(dig(c, "spec", "replicas")) == 3, f"RabbitmqCluster {name_of(c)} has 3 replicas", f"got {dig(c, 'spec', 'replicas')!r}")
        vhosts = {dig(v, "spec", "name") for v in by_kind(docs, "Vhost")}
        compiled = []
        for p in policies:
            pattern = dig(p, "spec", "pattern", default="")
            try:
                compiled.append((p, re.compile(pattern)))
            except re.error as e:
                rep.check(False, f"Policy {name_of(p)} pattern compiles", str(e))
        # Each Policy object is its own RabbitMQ policy: the topology operator names it
        # spec.name in its vhost, so two objects sharing one would overwrite each other.
        keys = [(dig(p, "spec", "vhost", default="/"), dig(p, "spec", "name") or name_of(p)) for p in policies]
        rep.check(len(keys) == len(set(keys)), "every Policy has its own name in its vhost", f"vhost/name: {keys}")
        # The two command queues, each with the values the worker declares as arguments
        # (src/broker/topology.rs). A policy states them for people and covers a queue declared
        # without them; see policy.yaml for how policy and argument combine.
        common = {
            "dead-letter-exchange": facts["dlx"],
            "delivery-limit": facts["delivery_limit"],
            "dead-letter-strategy": facts["dead_letter_strategy"],
            "overflow": facts["overflow"],
        }
        expected = {
            facts["queue"]: {**common, "dead-letter-routing-key": facts["queue_dead_letters_to"], "message-ttl": facts["fresh_for_ms"]},
            facts["backlog"]: {**common, "dead-letter-routing-key": facts["backlog_dead_letters_to"]},
        }
        # Keys that must NOT be in a queue's policy: a TTL on the backlog would dead-letter
        # waiting commands into the DLQ.
        forbidden = {facts["backlog"]: ("message-ttl",)}
        queue_names = facts.get("queue_names") or []
        for queue, want in expected.items():
            matching = sorted(((p, rx) for p, rx in compiled if rx.search(queue)), key=lambda pr: -to_int(dig(pr[0], "spec", "priority"), 0))
            if not rep.check(len(matching) >= 1, f"a Policy matches queue {queue}"):
                continue
            p, rx = matching[0]
            top = [name_of(q) for q, _ in matching if to_int(dig(q, "spec", "priority"), 0) == to_int(dig(p, "spec", "priority"), 0)]
            rep.check(len(top) == 1, f"one Policy of the highest priority matches {queue} (RabbitMQ picks one of equals at random)", f"equal: {top}")
            label = f"Policy {name_of(p)} ({queue})"
            others = [n for n in queue_names if n != queue and rx.search(n)]
            rep.check(not others, f"{label} matches no other queue of the worker", f"pattern {rx.pattern!r} also matches {others}")
            d = dig(p, "spec", "definition", default={}) or {}
            for key, value in want.items():
                got = d.get(key)
                # A number must be a JSON number: RabbitMQ refuses "1000" (a string) as a TTL.
                same = (isinstance(got, int) and not isinstance(got, bool) and got == value) if isinstance(value, int) else got == value
                rep.check(same, f"{label}: {key} is {value}", f"got {got!r}")
            for key in forbidden.get(queue, ()):
                rep.check(key not in d, f"{label}: no {key}", f"got {d.get(key)!r}")
            apply_to = dig(p, "spec", "applyTo", default="all")
            rep.check(apply_to in ("queues", "quorum_queues", "all"), f"{label} applies to (quorum) queues", f"got {apply_to!r}")
            if vhosts:
                rep.check(dig(p, "spec", "vhost", default="/") in vhosts, f"{label}: its vhost is a rendered Vhost", f"got {dig(p, 'spec', 'vhost')!r}, vhosts {sorted(vhosts)}")
        # The worker declares every exchange and queue of its topology at start-up, binds,
        # publishes and consumes: its user needs configure, write and read on all of them.
        names = facts.get("topology_names", [])
        needed = [facts["queue"], facts["backlog"], facts["dlq"], facts["dlx"]]
        rep.check(len(names) >= 6 and set(needed) <= set(names), f"topology names read from src/broker/topology.rs ({len(names)}), the command queues among them", f"{names}, needed {needed}")
        for perm in by_kind(docs, "Permission"):
            for access in ("configure", "write", "read"):
                pattern = dig(perm, "spec", "permissions", access, default="")
                try:
                    missing = [n for n in names if not re.search(pattern, n)]
                except re.error as e:
                    missing = [f"pattern does not compile: {e}"]
                rep.check(not missing, f"Permission {name_of(perm)} grants {access} on every exchange and queue the worker declares", f"not matched: {missing}")
        refs = [(o.get("kind"), name_of(o), dig(o, "spec", "rabbitmqClusterReference", "name"))
                for o in docs if isinstance(o, dict) and dig(o, "spec", "rabbitmqClusterReference") is not None]
        dangling = [f"{k}/{n} -> {r}" for k, n, r in refs if r not in cluster_names]
        rep.check(not dangling, "every topology object references a rendered RabbitmqCluster", ", ".join(dangling))

    # PostgreSQL.
    pgs = by_kind(docs, "Cluster")
    if pgs:
        rep.start("Kubernetes: CloudNativePG")
        for c in pgs:
            rep.check(to_int(dig(c, "spec", "instances")) == 3, f"Cluster {name_of(c)} has 3 instances", f"got {dig(c, 'spec', 'instances')!r}")
            owner = dig(c, "spec", "bootstrap", "initdb", "owner")
            db_secret = env.get("DATABASE_URL")
            if owner and isinstance(db_secret, tuple):
                rep.check(db_secret[1] == f"{name_of(c)}-app" and db_secret[2] == "uri",
                          f"DATABASE_URL reads the Secret CloudNativePG writes ({name_of(c)}-app, key uri)", f"got {db_secret[1]}/{db_secret[2]}")


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------


def compose_tools() -> list[list[str]]:
    tools = []
    if shutil.which("docker-compose"):
        tools.append(["docker-compose"])
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            tools.append(["docker", "compose"])
    return tools


def duration_secs(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    total, matched = 0.0, False
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", str(value)):
        matched = True
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
    return total if matched else None


def env_dict(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def check_compose(facts: dict, use_tools: bool, rep: Report) -> None:
    path = ROOT / "docker-compose.yml"
    rep.start("docker-compose.yml")
    if not rep.check(path.is_file(), "docker-compose.yml exists"):
        return
    tools = compose_tools() if use_tools else []
    for tool in tools:
        proc = subprocess.run(tool + ["-f", str(path), "config", "-q"], capture_output=True, text=True, cwd=ROOT)
        version = subprocess.run(tool + ["version", "--short"], capture_output=True, text=True).stdout.strip()
        rep.check(proc.returncode == 0, f"`{' '.join(tool)} config -q` accepts it ({version or 'version unknown'})", (proc.stderr or proc.stdout).strip())
    if not tools:
        rep.note("compose tool skipped (--no-compose-tool): structural checks only" if not use_tools
                 else "no compose tool found (docker-compose or `docker compose`): structural checks only")

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        rep.check(False, "docker-compose.yml parses as YAML", str(e))
        return
    services = doc.get("services") or {}
    expected = {"postgres", "rabbitmq", "migrate", "worker", "sandbox"}
    rep.check(expected <= set(services), "services postgres, rabbitmq, migrate, worker, sandbox", f"missing {sorted(expected - set(services))}")
    for name, svc in services.items():
        rep.check(bool(svc.get("image") or svc.get("build")), f"{name}: has an image or a build")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for target, spec in deps.items():
            if not rep.check(target in services, f"{name}: depends_on {target} exists"):
                continue
            cond = (spec or {}).get("condition", "service_started")
            rep.check(cond in ("service_started", "service_healthy", "service_completed_successfully"), f"{name}: depends_on {target} condition {cond} is valid")
            if cond == "service_healthy":
                rep.check(bool(services[target].get("healthcheck")), f"{name}: waits for {target} healthy, and {target} has a healthcheck")
            if cond == "service_completed_successfully":
                rep.check(str(services[target].get("restart", "no")) == "no", f"{name}: waits for {target} to complete, and {target} is one-shot (restart \"no\")")
    if expected - set(services):
        return

    pg, rmq, mig, wk, sb = (services[n] for n in ("postgres", "rabbitmq", "migrate", "worker", "sandbox"))
    rep.check("pg_isready" in str(dig(pg, "healthcheck", "test")), "postgres: healthcheck uses pg_isready")
    rep.check("rabbitmq-diagnostics" in str(dig(rmq, "healthcheck", "test")) and "ping" in str(dig(rmq, "healthcheck", "test")), "rabbitmq: healthcheck is rabbitmq-diagnostics ping")
    rep.check(any("15672" in str(p) for p in rmq.get("ports") or []), "rabbitmq: the management port 15672 is published")
    mounts = [str(v) for v in rmq.get("volumes") or []]
    conf = [m for m in mounts if "deploy/rabbitmq/rabbitmq.conf" in m]
    if rep.check(bool(conf), "rabbitmq: deploy/rabbitmq/rabbitmq.conf is mounted"):
        target = conf[0].split(":")[1] if ":" in conf[0] else ""
        rep.check(target.startswith("/etc/rabbitmq/"), "rabbitmq: mounted under /etc/rabbitmq/", f"target {target!r}")
        text = (ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text(encoding="utf-8") if (ROOT / "deploy/rabbitmq/rabbitmq.conf").is_file() else ""
        rep.check(re.search(r"^\s*default_queue_type\s*=\s*quorum\s*$", text, re.M) is not None, "rabbitmq.conf sets default_queue_type = quorum")
    rep.check(mig.get("command") == ["migrate"], "migrate: command is [\"migrate\"]", f"got {mig.get('command')!r}")
    rep.check(str(mig.get("restart", "no")) == "no", "migrate: restart \"no\"")
    rep.check(wk.get("command") == ["run"], "worker: command is [\"run\"]", f"got {wk.get('command')!r}")
    wdeps = wk.get("depends_on") or {}
    rep.check(isinstance(wdeps, dict) and dig(wdeps, "migrate", "condition") == "service_completed_successfully", "worker: waits for migrate to complete successfully")
    rep.check(isinstance(wdeps, dict) and dig(wdeps, "rabbitmq", "condition") == "service_healthy", "worker: waits for rabbitmq to be healthy")
    rep.check(isinstance(mig.get("depends_on"), dict) and dig(mig, "depends_on", "postgres", "condition") == "service_healthy", "migrate: waits for postgres to be healthy")

    wenv = env_dict(wk)
    for var in ("DATABASE_URL", "AMQP_URL", "HTTP_ADDR", "PROVIDER_VA_SERVICES_BASE_URL", "PROVIDER_VA_SERVICES_API_KEY"):
        rep.check(bool(wenv.get(var)), f"worker: {var} is set")
    rep.check(bool(re.fullmatch(r"0\.0\.0\.0:\d+", wenv.get("HTTP_ADDR") or "")), "worker: HTTP_ADDR binds 0.0.0.0", f"got {wenv.get('HTTP_ADDR')!r}")
    rep.check("@postgres:" in (wenv.get("DATABASE_URL") or "") and "@postgres:" in (env_dict(mig).get("DATABASE_URL") or ""), "worker and migrate reach PostgreSQL by its service name")
    rep.check("@rabbitmq:" in (wenv.get("AMQP_URL") or ""), "worker reaches RabbitMQ by its service name")

    sb_cmd = [str(x) for x in sb.get("command") or []]
    rep.check(sb_cmd[:1] == ["sandbox"], "sandbox: command starts with `sandbox`", f"got {sb_cmd}")
    rep.check(dig(sb, "build", "target") == "tools", "sandbox: built from the Dockerfile's `tools` stage (the production image has no sandbox)", f"got {dig(sb, 'build', 'target')!r}")
    bind = sb_cmd[sb_cmd.index("--bind") + 1] if "--bind" in sb_cmd[:-1] else env_dict(sb).get("SANDBOX_BIND")
    rep.check(bind == "0.0.0.0", "sandbox: binds 0.0.0.0 (127.0.0.1 is unreachable from the worker's container)", f"got {bind!r}")
    sb_port = sb_cmd[sb_cmd.index("--port") + 1] if "--port" in sb_cmd[:-1] else (env_dict(sb).get("SANDBOX_PORT") or "8090")
    base = wenv.get("PROVIDER_VA_SERVICES_BASE_URL") or ""
    rep.check(re.fullmatch(rf"https?://sandbox:{re.escape(str(sb_port))}/?", base) is not None,
              f"worker: PROVIDER_VA_SERVICES_BASE_URL points at the sandbox service, port {sb_port}", f"got {base!r}")
    sb_key = env_dict(sb).get("SANDBOX_VA_API_KEY") or (sb_cmd[sb_cmd.index("--va-api-key") + 1] if "--va-api-key" in sb_cmd[:-1] else SANDBOX_DEFAULT_KEY)
    rep.check(wenv.get("PROVIDER_VA_SERVICES_API_KEY") == sb_key, "worker: its VA API key is the one the sandbox expects")
    grace = to_int(wenv.get("SHUTDOWN_GRACE_SECS"), DEFAULT_SHUTDOWN_GRACE)
    sgp = duration_secs(wk.get("stop_grace_period")) or 10.0  # compose's default
    rep.check(sgp > grace, f"worker: stop_grace_period ({sgp:g} s) > SHUTDOWN_GRACE_SECS ({grace} s)")
    if facts["env"] is not None:
        unknown = sorted({k for n in ("worker", "migrate", "sandbox") for k in env_dict(services[n]) if k not in facts["env"]})
        rep.check(not unknown, "worker/migrate/sandbox set only environment variables the code reads", f"unknown: {unknown}")


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def check_dockerfile(rep: Report) -> None:
    rep.start("Dockerfile and .dockerignore")
    path = ROOT / "Dockerfile"
    if not rep.check(path.is_file(), "Dockerfile exists"):
        return
    # Join continuation lines, drop comments.
    lines, buf = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#"):
            continue
        buf += raw.rstrip("\\").strip() + " " if raw.rstrip().endswith("\\") else raw.strip()
        if not raw.rstrip().endswith("\\"):
            if buf.strip():
                lines.append(buf.strip())
            buf = ""
    instr = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]
    froms = [a for i, a in instr if i == "FROM"]
    rep.check(len(froms) >= 2, "multi-stage build", f"FROM lines: {froms}")
    rep.check(bool(froms) and froms[0].startswith("rust:1-bookworm"), "builder is rust:1-bookworm", f"got {froms[:1]}")
    final = froms[-1].split()[0] if froms else ""
    rep.check(final.startswith(("gcr.io/distroless/cc-debian12", "debian:bookworm-slim")), "runtime is distroless cc-debian12 or debian:bookworm-slim", f"got {final}")
    runs = " ".join(a for i, a in instr if i == "RUN")
    rep.check("cargo build --release --locked" in runs, "builds with cargo build --release --locked")
    rep.check("type=cache" in runs, "uses BuildKit cache mounts")
    rep.check("--no-default-features" in runs, "the production binary is built without the `tools` feature (no sandbox, demo, bench or test key)")
    rep.check(any(i == "FROM" and re.search(r"\bAS\s+tools\b", a, re.I) for i, a in instr), "a `tools` stage for the sandbox, demo and bench")
    last_stage = instr[max(i for i, (k, _) in enumerate(instr) if k == "FROM"):]
    users = [a for i, a in last_stage if i == "USER"]
    rep.check(bool(users) and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1].strip()) is not None, "runtime USER is a numeric non-root UID (runAsNonRoot can verify it)", f"got {users}")
    rep.check(any(i == "EXPOSE" and "8080" in a.split() for i, a in last_stage), "EXPOSE 8080")
    rep.check(any(i == "ENV" and re.search(r"HTTP_ADDR=0\.0\.0\.0:8080", a) for i, a in last_stage), "ENV HTTP_ADDR=0.0.0.0:8080")
    rep.check(any(i == "ENTRYPOINT" and re.fullmatch(r'\[\s*"refund-worker"\s*\]', a.strip()) for i, a in last_stage), 'ENTRYPOINT ["refund-worker"]')
    rep.check(any(i == "CMD" and re.fullmatch(r'\[\s*"run"\s*\]', a.strip()) for i, a in last_stage), 'CMD ["run"]')
    has_hc = any(i == "HEALTHCHECK" and not a.strip().upper().startswith("NONE") for i, a in last_stage)
    if "distroless" in final:
        rep.check(not has_hc, "no HEALTHCHECK in a distroless image (no tool in it could run one)")
    ignore = ROOT / ".dockerignore"
    if rep.check(ignore.is_file(), ".dockerignore exists"):
        entries = {ln.strip().rstrip("/") for ln in ignore.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")}
        rep.check({"target", ".git"} <= entries, ".dockerignore excludes target/ and .git", f"entries {sorted(entries)}")
        needed = [p for p in ("src", "migrations", "Cargo.toml", "Cargo.lock") if p in entries]
        rep.check(not needed, ".dockerignore keeps what the build needs (src, migrations, Cargo.toml, Cargo.lock)", f"excluded: {needed}")
        # Every file the release build reads outside src/ (build.rs, include_str!/include_bytes!
        # outside test modules) must be copied by the Dockerfile and not ignored.
        patterns = [ln.strip() for ln in ignore.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]

        def ignored(rel: str) -> bool:
            out = False
            for pat in patterns:
                neg = pat.startswith("!")
                pat = pat.lstrip("!").rstrip("/")
                parts = rel.split("/")
                hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pat) for i in range(len(parts)))
                if hit:
                    out = not neg
            return out

        copies = " ".join(a for i, a in instr if i == "COPY" and "--from" not in a)
        reads = ["build.rs"] if (ROOT / "build.rs").is_file() else []
        for rs in sorted([*(ROOT / "src").rglob("*.rs"), *(ROOT / "crates").glob("*/src/**/*.rs")]):
            text = rs.read_text(encoding="utf-8")
            cut = text.find("#[cfg(test)]")
            for m in re.finditer(r'include_(?:str|bytes)!\("([^"]+)"\)', text if cut < 0 else text[:cut]):
                target = (rs.parent / m.group(1)).resolve().relative_to(ROOT.resolve()).as_posix()
                if not target.startswith("src/") and not re.match(r"crates/[^/]+/src/", target):
                    reads.append(target)
        missing = [r for r in reads if ignored(r) or not any(r == c or r.startswith(c.rstrip("/") + "/") or (c.endswith("/") and False) for c in copies.split())]
        rep.check(not missing, f"the Dockerfile copies every file the build reads outside src/ ({len(reads)})", f"missing or ignored: {missing}")


# --------------------------------------------------------------------------------------------
# Monitoring
# --------------------------------------------------------------------------------------------


def check_ingress(docs: list[dict], rep: Report) -> None:
    """Providers must reach POST /webhooks/{provider}, and nothing else of the listener."""
    ingresses = by_kind(docs, "Ingress")
    rep.check(bool(ingresses), "an Ingress publishes the provider webhook ingress", "none rendered: providers could not reach /webhooks/")
    services = {name_of(s): s for s in by_kind(docs, "Service")}
    for ing in ingresses:
        paths = [p for r in dig(ing, "spec", "rules", default=[]) or [] for p in dig(r, "http", "paths", default=[]) or []]
        rep.check(bool(paths) and all(p.get("path", "").startswith("/webhooks/") for p in paths),
                  f"Ingress {name_of(ing)} routes only /webhooks/ (the admin API, /metrics and /openapi.json stay internal)",
                  str([p.get("path") for p in paths]))
        for p in paths:
            svc = dig(p, "backend", "service", "name")
            port = dig(p, "backend", "service", "port", "name") or dig(p, "backend", "service", "port", "number")
            ports = [sp.get("name") for sp in dig(services.get(svc, {}), "spec", "ports", default=[]) or []] + \
                    [sp.get("port") for sp in dig(services.get(svc, {}), "spec", "ports", default=[]) or []]
            rep.check(svc == DEPLOYMENT and port in ports, f"Ingress {name_of(ing)} path {p.get('path')} reaches the worker Service's port", f"{svc}:{port}")
        rep.check(bool(dig(ing, "spec", "tls")), f"Ingress {name_of(ing)} terminates TLS", "no spec.tls")


def depth_selectors(expr: str) -> list[list[tuple[str, str, str]]]:
    """The label matchers of every refund_worker_queue_depth selector in a PromQL expression."""
    out = []
    for m in re.finditer(r"refund_worker_queue_depth\b\s*(?:\{([^}]*)\})?", expr):
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', m.group(1) or "")
        out.append([(label, op, re.sub(r"\\(.)", r"\1", value)) for label, op, value in matchers])
    return out


def selects_queue(matchers: list[tuple[str, str, str]], queue: str) -> bool:
    """Whether a selector with these matchers takes the series of `queue` (PromQL regexes are anchored)."""
    for label, op, value in matchers:
        if label != "queue":
            continue
        try:
            hit = re.fullmatch(value, queue) is not None if op in ("=~", "!~") else value == queue
        except re.error:
            return False
        if hit != (op in ("=", "=~")):
            return False
    return True


def check_monitoring(docs: list[dict], facts: dict, rep: Report) -> None:
    monitors, rules = by_kind(docs, "PodMonitor"), by_kind(docs, "PrometheusRule")
    if not monitors and not rules:
        rep.note("no monitoring component in this overlay")
        return
    deployments = [d for d in by_kind(docs, "Deployment") if name_of(d) == DEPLOYMENT]
    pod_labels = {}
    ports = set()
    for d in deployments:
        template = d.get("spec", {}).get("template", {})
        pod_labels = template.get("metadata", {}).get("labels", {}) or {}
        for c in template.get("spec", {}).get("containers", []) or []:
            ports |= {p.get("name") for p in c.get("ports", []) or []}
    for m in monitors:
        spec = m.get("spec", {})
        selector = spec.get("selector", {}).get("matchLabels", {}) or {}
        rep.check(bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items()),
                  f"PodMonitor {name_of(m)} selects the worker's pods", f"{selector} vs {pod_labels}")
        endpoints = spec.get("podMetricsEndpoints", []) or []
        rep.check(any(e.get("path") == "/metrics" and e.get("port") in ports for e in endpoints),
                  f"PodMonitor {name_of(m)} scrapes /metrics on a named container port", f"{endpoints} vs ports {sorted(p for p in ports if p)}")
    exported = set(re.findall(r'"(refund_worker_[a-z_]+)"', (ROOT / "src/metrics.rs").read_text(encoding="utf-8")))
    for r in rules:
        groups = r.get("spec", {}).get("groups", []) or []
        for rule in (x for g in groups for x in g.get("rules", []) or []):
            name = rule.get("alert", "?")
            rep.check(bool(rule.get("alert")) and bool(rule.get("expr")) and rule.get("labels", {}).get("severity") in ("critical", "warning", "info"),
                      f"alert {name} has a name, an expression and a severity", str(rule))
            used = set(re.findall(r"refund_worker_[a-z_]+", str(rule.get("expr", ""))))
            rep.check(bool(used) and used <= exported, f"alert {name} reads metrics the worker exports", f"unknown: {sorted(used - exported)}")
        # Commands waiting: the fresh queue only holds a command for COMMAND_FRESH_FOR, so an
        # alert on it alone would never see a backlog; both queues' depths must be watched.
        all_rules = [x for g in groups for x in g.get("rules", []) or []]
        for q in (facts["queue"], facts["backlog"]):
            watching = [x.get("alert") for x in all_rules if any(selects_queue(sel, q) for sel in depth_selectors(str(x.get("expr", ""))))]
            rep.check(bool(watching), f"an alert watches the depth of {q} (refund_worker_queue_depth)", "no rule's selector takes that queue")
        promtool = shutil.which("promtool")
        if not promtool:
            rep.note("promtool not installed: rule syntax and unit tests not run (apt-get install prometheus)")
            continue
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
            proc = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp, capture_output=True, text=True)
            rep.check(proc.returncode == 0, f"promtool check rules ({name_of(r)})", (proc.stdout + proc.stderr).strip())
            tests = ROOT / "deploy/components/monitoring/rules.test.yaml"
            if tests.is_file():
                shutil.copy(tests, Path(tmp) / "rules.test.yaml")
                proc = subprocess.run([promtool, "test", "rules", "rules.test.yaml"], cwd=tmp, capture_output=True, text=True)
                rep.check(proc.returncode == 0, f"promtool test rules ({tests.relative_to(ROOT)})", (proc.stdout + proc.stderr).strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--overlay", default=str(ROOT / "deploy/overlays/example"), help="kustomize overlay to render and check")
    ap.add_argument("--no-compose-tool", action="store_true", help="skip `config -q` even if a compose tool is installed")
    args = ap.parse_args()

    rep = Report()
    rep.start("what the code says")
    facts = code_facts(rep)
    rep.start(f"Kubernetes: render {args.overlay}")
    docs = render(Path(args.overlay), rep)
    if docs is not None:
        check_kubernetes(docs, facts, rep)
        rep.start("Webhook ingress")
        check_ingress(docs, rep)
        rep.start("Monitoring")
        check_monitoring(docs, facts, rep)
    check_compose(facts, not args.no_compose_tool, rep)
    check_dockerfile(rep)

    print()
    if rep.failures:
        print(f"{len(rep.failures)} check(s) FAILED ({rep.passed} passed):")
        for f in rep.failures:
            print(f"  - {f}")
        return 1
    print(f"all {rep.passed} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
