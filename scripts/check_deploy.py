#!/usr/bin/env python3
"""The checks of scripts/check-deploy.sh that need Python (run by it, inside its venv).

Each check prints one line `ok   <what>` or `FAIL <what>: <why>`; the exit status is the number
of failures (0: all passed). Checks that only parse are marked as such in their names; nothing
here contacts a network, a cluster or Azure.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.33.0"

failures = 0


def report(what: str, problems: list[str]) -> None:
    global failures
    if problems:
        failures += 1
        print(f"FAIL {what}:")
        for p in problems:
            print(f"       - {p}")
    else:
        print(f"ok   {what}")


def load_yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# ---- YAML ------------------------------------------------------------------------------------


def check_yaml_parses() -> None:
    problems = []
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    for f in files:
        try:
            load_yaml_docs(f)
        except yaml.YAMLError as e:
            problems.append(f"{f.relative_to(ROOT)}: {e}")
    report(f"YAML parses ({len(files)} files)", problems)


# ---- Kubernetes --------------------------------------------------------------------------------


def kustomize_resources() -> list[dict]:
    """The base's resources as kustomize would emit them (namespace set, ConfigMap generated).

    Only what deploy/kubernetes/kustomization.yaml uses: resources, namespace, configMapGenerator.
    """
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for r in k["resources"]:
        for d in load_yaml_docs(K8S / r):
            if d.get("kind") != "Namespace":
                d.setdefault("metadata", {})["namespace"] = k["namespace"]
            docs.append(d)
    for g in k.get("configMapGenerator", []):
        data = {Path(f).name: (K8S / f).read_text() for f in g["files"]}
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": g["name"], "namespace": k["namespace"]},
                "data": data,
            }
        )
    return docs


def check_kustomizations() -> None:
    problems = []
    for kfile in [K8S / "kustomization.yaml", K8S / "workload-identity" / "kustomization.yaml"]:
        k = yaml.safe_load(kfile.read_text())
        for r in k.get("resources", []):
            if not (kfile.parent / r).exists():
                problems.append(f"{kfile.relative_to(ROOT)}: resource {r} does not exist")
        for g in k.get("configMapGenerator", []):
            for f in g.get("files", []):
                if not (kfile.parent / f).exists():
                    problems.append(f"{kfile.relative_to(ROOT)}: generator file {f} does not exist")
        for p in k.get("patches", []):
            try:
                yaml.safe_load(p["patch"])
            except yaml.YAMLError as e:
                problems.append(f"{kfile.relative_to(ROOT)}: patch does not parse: {e}")
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    for f in sorted(K8S.glob("*.yaml")):
        if f.name not in listed | {"kustomization.yaml", "secret.example.yaml"}:
            problems.append(f"{f.relative_to(ROOT)} is not listed in kustomization.yaml")
    if "secret.example.yaml" in listed:
        problems.append("secret.example.yaml holds placeholders and must not be applied")
    report("kustomization.yaml files reference what exists", problems)


def check_k8s_schemas() -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    problems = []
    docs = kustomize_resources() + load_yaml_docs(K8S / "secret.example.yaml")
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except ValidationError as e:
            problems.append(f"{name}: {e.message} at {'.'.join(str(p) for p in e.path)}")
        except Exception as e:  # noqa: BLE001 - a schema missing for a kind is a failure too
            problems.append(f"{name}: {type(e).__name__}: {e}")
    report(f"Kubernetes {K8S_VERSION} schemas, strict ({len(docs)} objects)", problems)


def check_k8s_policy() -> None:
    """What the deployment must keep: replicas, probes, hardening, grace period."""
    problems = []
    objs = {(d["kind"], d["metadata"]["name"]): d for d in kustomize_resources()}
    dep = objs[("Deployment", "twokey")]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    if spec.get("replicas", 1) < 2:
        problems.append("Deployment: fewer than 2 replicas")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("pod: automountServiceAccountToken must be false")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or csc.get("runAsNonRoot") is not True:
        problems.append("runAsNonRoot must be true (pod and container)")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("pod seccompProfile must be RuntimeDefault")
    if csc.get("readOnlyRootFilesystem") is not True:
        problems.append("container readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        problems.append("container allowPrivilegeEscalation must be false")
    if csc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("container must drop ALL capabilities")
    probes = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in probes.items():
        got = c.get(probe, {}).get("httpGet", {}).get("path")
        if got != path:
            problems.append(f"{probe} must GET {path} (has {got})")
    if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits"):
        problems.append("container needs resource requests and limits")
    # twokey has no shutdown timeout of its own: 30 s assumed for draining, plus the preStop sleep.
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = int(pre_stop[-1]) if pre_stop[:1] == ["/bin/sleep"] else 0
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= 30 + pre_stop_s:
        problems.append(f"terminationGracePeriodSeconds {grace} must exceed 30 s + preStop {pre_stop_s} s")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if env.get("TWOKEY_SERVER_BIND", "").split(":")[0] not in ("0.0.0.0", "[::]"):
        problems.append("TWOKEY_SERVER_BIND must listen on all addresses in a pod")
    pdb = objs[("PodDisruptionBudget", "twokey")]
    if pdb["spec"].get("minAvailable") != 1:
        problems.append("PodDisruptionBudget minAvailable must be 1")
    np = objs[("NetworkPolicy", "twokey")]
    if sorted(np["spec"].get("policyTypes", [])) != ["Egress", "Ingress"]:
        problems.append("NetworkPolicy must restrict Ingress and Egress")
    ingress_ports = [p.get("port") for r in np["spec"].get("ingress", []) for p in r.get("ports", [])]
    if ingress_ports != ["http"]:
        problems.append(f"NetworkPolicy ingress must allow the http port only (has {ingress_ports})")
    egress_ports = sorted({p.get("port") for r in np["spec"].get("egress", []) for p in r.get("ports", [])})
    if egress_ports != [53, 443, 465, 587, 5432]:
        problems.append(f"NetworkPolicy egress ports are {egress_ports}")
    sa = objs[("ServiceAccount", "twokey")]
    if sa.get("automountServiceAccountToken") is not False:
        problems.append("ServiceAccount: automountServiceAccountToken must be false")
    for (kind, name), o in objs.items():
        sel = o.get("spec", {}).get("selector", {})
        sel = sel.get("matchLabels", sel) if isinstance(sel, dict) else {}
        if kind in ("Service", "PodDisruptionBudget", "Deployment") and sel != {"app.kubernetes.io/name": "twokey"}:
            problems.append(f"{kind}/{name}: selector {sel} does not select the twokey pods")
    cm_names = {n for (k, n) in objs if k == "ConfigMap"}
    for v in pod.get("volumes", []):
        if "configMap" in v and v["configMap"]["name"] not in cm_names:
            problems.append(f"volume {v['name']}: no ConfigMap {v['configMap']['name']}")
    report("Kubernetes: 2 replicas, probes, hardening, grace period, PDB, NetworkPolicy", problems)


# ---- compose -----------------------------------------------------------------------------------


def check_compose() -> None:
    problems = []
    path = DEPLOY / "compose.yaml"
    c = yaml.safe_load(path.read_text())
    services = c.get("services", {})
    for want in ("twokey", "postgres", "mailpit"):
        if want not in services:
            problems.append(f"no service {want}")
    declared = set(c.get("secrets", {}))
    for name, s in services.items():
        for sec in s.get("secrets", []):
            sec = sec if isinstance(sec, str) else sec["source"]
            if sec not in declared:
                problems.append(f"service {name}: secret {sec} is not declared")
        for v in s.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith("./") and not (DEPLOY / src).exists():
                problems.append(f"service {name}: {src} does not exist")
    for name, sec in c.get("secrets", {}).items():
        if not sec.get("file", "").startswith("./compose/secrets/"):
            problems.append(f"secret {name} must live in compose/secrets/ (git-ignored)")
    made = (DEPLOY / "compose" / "make-secrets.sh").read_text()
    for name, sec in c.get("secrets", {}).items():
        if f"secrets/{name}" not in made:
            problems.append(f"compose/make-secrets.sh does not make {name}")
    tk = services.get("twokey", {})
    ctx = (DEPLOY / tk.get("build", {}).get("context", ".")).resolve()
    if not (ctx / tk.get("build", {}).get("dockerfile", "")).exists():
        problems.append("twokey build: the Dockerfile is not where context + dockerfile say")
    if tk.get("read_only") is not True or tk.get("cap_drop") != ["ALL"]:
        problems.append("twokey must run read_only with cap_drop ALL")
    for port in [p for s in services.values() for p in s.get("ports", [])]:
        if not str(port).startswith("127.0.0.1:"):
            problems.append(f"published port {port} must bind 127.0.0.1 only")
    report("compose: services, secrets, files, local-only ports", problems)


# ---- env names ---------------------------------------------------------------------------------


def documented_env_names() -> set[str]:
    text = (DEPLOY / "config.example.toml").read_text()
    return set(re.findall(r"env: (TWOKEY_[A-Z_]+)", text))


def check_env_names() -> None:
    """Every TWOKEY_<SECTION>_<KEY> a deploy file sets is a key config.example.toml documents."""
    known = documented_env_names() | {"TWOKEY_CONFIG", "TWOKEY_LOG_FORMAT"}
    problems = []
    files = [
        DEPLOY / "compose.yaml",
        K8S / "deployment.yaml",
        K8S / "workload-identity" / "kustomization.yaml",
        DEPLOY / "azure" / "main.bicep",
        DEPLOY / "twokey.service",
    ]
    seen = 0
    for f in files:
        for name in re.findall(r"\b(TWOKEY_[A-Z_]+)\b", f.read_text()):
            seen += 1
            if name not in known:
                problems.append(f"{f.relative_to(ROOT)}: {name} is not a documented setting")
    report(f"TWOKEY_… variables in deploy files are documented settings ({seen} uses)", problems)


def check_example_covers_config() -> None:
    """config.example.toml names every field of src/config.rs's Raw* structs."""
    src = (ROOT / "src" / "config.rs").read_text()
    problems = []
    example = (DEPLOY / "config.example.toml").read_text()
    for struct, body in re.findall(r"pub struct (Raw\w+) \{(.*?)\n\}", src, re.S):
        if struct == "RawConfig":
            continue
        for field in re.findall(r"^\s*pub (\w+):", body, re.M):
            if not re.search(rf"(^|[\s#{{,]){field}\s*=|\b{field}\b", example, re.M):
                problems.append(f"{struct}.{field} is not in config.example.toml")
    report("config.example.toml mentions every key of src/config.rs", problems)


# ---- Bicep -------------------------------------------------------------------------------------


def check_bicep() -> None:
    import tree_sitter
    import tree_sitter_bicep

    problems = []
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))
    main = DEPLOY / "azure" / "main.bicep"
    source = main.read_bytes()
    tree = parser.parse(source)

    def walk(n):
        if n.type == "ERROR" or n.is_missing:
            kind = f"missing {n.type}" if n.is_missing else "syntax error"
            problems.append(f"main.bicep:{n.start_point[0] + 1}:{n.start_point[1] + 1}: {kind}")
        for ch in n.children:
            walk(ch)

    walk(tree.root_node)
    # Parameters: the .bicepparam file (a syntax the grammar does not know) may only set declared
    # ones, and must set every one without a default.
    text = source.decode()
    declared = {}
    for m in re.finditer(r"^param (\w+) (\w+)( = .*)?$", text, re.M):
        declared[m.group(1)] = m.group(3) is not None
    params = (DEPLOY / "azure" / "main.bicepparam").read_text()
    if not re.search(r"^using 'main\.bicep'$", params, re.M):
        problems.append("main.bicepparam must start from `using 'main.bicep'`")
    given = set(re.findall(r"^param (\w+) = ", params, re.M))
    for p in sorted(given - set(declared)):
        problems.append(f"main.bicepparam sets {p}, which main.bicep does not declare")
    for p in sorted(n for n, has_default in declared.items() if not has_default and n not in given):
        problems.append(f"main.bicepparam does not set {p}, which has no default")
    for m in re.finditer(r"loadTextContent\('([^']+)'\)", params):
        if not (DEPLOY / "azure" / m.group(1)).exists():
            problems.append(f"main.bicepparam loads {m.group(1)}, which does not exist")
    # Resource types only at API versions we checked against the REST API specifications.
    allowed = {
        "Microsoft.OperationalInsights/workspaces": "2023-09-01",
        "Microsoft.ManagedIdentity/userAssignedIdentities": "2023-01-31",
        "Microsoft.Network/virtualNetworks": "2024-05-01",
        "Microsoft.Network/virtualNetworks/subnets": "2024-05-01",
        "Microsoft.Network/privateDnsZones": "2020-06-01",
        "Microsoft.Network/privateDnsZones/virtualNetworkLinks": "2020-06-01",
        "Microsoft.DBforPostgreSQL/flexibleServers": "2024-08-01",
        "Microsoft.DBforPostgreSQL/flexibleServers/databases": "2024-08-01",
        "Microsoft.KeyVault/vaults": "2023-07-01",
        "Microsoft.KeyVault/vaults/secrets": "2023-07-01",
        "Microsoft.Authorization/roleAssignments": "2022-04-01",
        "Microsoft.App/managedEnvironments": "2024-03-01",
        "Microsoft.App/containerApps": "2024-03-01",
    }
    for rtype, version in re.findall(r"^resource \w+ '([^@']+)@([^']+)'", text, re.M):
        if allowed.get(rtype) != version:
            problems.append(f"{rtype}@{version} is not a checked resource type/API version")
    if re.search(r"minReplicas int = ([01])\b", text):
        problems.append("minReplicas must default to at least 2")
    for path in ("/healthz", "/readyz"):
        if f"path: '{path}'" not in text:
            problems.append(f"no probe on {path}")
    report("Bicep: tree-sitter parse, parameters, API versions, probes (not compiled)", problems)


# ---- Dockerfile --------------------------------------------------------------------------------


def check_docker_context() -> None:
    """The image build gets what it reads: Cargo's declared targets, templates, migrations."""
    problems = []
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    if "*" not in ignore:
        problems.append("Dockerfile.dockerignore must start from `*` (send only what is listed)")
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    builder = dockerfile.split("\nFROM ", 2)[1]
    copied = set()
    for m in re.finditer(r"^COPY (?!--from)(.+?) \S+$", builder, re.M):
        for src in m.group(1).split():
            name = re.sub(r"\[(\w)\]", r"\1", src)  # askama.tom[l] -> askama.toml
            copied.add(name)
            if name not in allowed:
                problems.append(f"COPY {src}: not in Dockerfile.dockerignore's allow list")
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    stub_stage = builder.split("COPY src ./src")[0]
    for kind, folder in (("bench", "benches"), ("test", "tests"), ("example", "examples")):
        for target in manifest.get(kind, []):
            path = target.get("path", f"{folder}/{target['name']}.rs")
            if path not in stub_stage:
                problems.append(f"[[{kind}]] {target['name']}: the dependency stage does not stub {path}")
            if path.split("/")[0] not in copied:
                problems.append(f"[[{kind}]] {target['name']}: {path.split('/')[0]}/ is not copied for the real build")
    src = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.rs"))
    needs = set()
    for m in re.finditer(r'include_(?:str|bytes)!\("((?:\.\./)+)([^"]+)"\)', src):
        needs.add(m.group(2).split("/")[0])
    for m in re.finditer(r'sqlx::migrate!\("\./([^"/]+)', src):
        needs.add(m.group(1))
    askama = tomllib.loads((ROOT / "askama.toml").read_text()) if (ROOT / "askama.toml").exists() else {}
    for d in askama.get("general", {}).get("dirs", ["templates"]):
        needs.add(d.split("/")[0])
    if (ROOT / "build.rs").exists():
        needs.add("build.rs")
    # include_str! in #[cfg(test)] code (e.g. the deploy configs) is not built into the image.
    needs.discard("deploy")
    for n in sorted(needs):
        if n not in copied:
            problems.append(f"the build reads {n}, which the builder stage does not COPY")
    report("Dockerfile build context holds what the build reads", problems)


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class _QuietServer(http.server.HTTPServer):
    def handle_error(self, request, client_address):
        pass  # the check hangs up after the status line; that is expected


def check_healthcheck() -> None:
    """The image's HEALTHCHECK command, run with bash against a local server: 200 passes, 503 and
    a closed port fail."""
    problems = []
    m = re.search(r"^HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.M)
    if not m:
        report("Docker HEALTHCHECK probes /healthz", ["no HEALTHCHECK CMD [...] in deploy/Dockerfile"])
        return
    argv = json.loads(m.group(1))

    def run(port: int) -> int:
        env = {"PATH": "/usr/bin:/bin", "TWOKEY_SERVER_BIND": f"0.0.0.0:{port}"}
        return subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode

    for status, want_ok in ((200, True), (503, False)):
        handler = type("H", (_Handler,), {"status": status})
        server = _QuietServer(("127.0.0.1", 0), handler)
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        try:
            rc = run(server.server_address[1])
        finally:
            server.shutdown()
            server.server_close()
        if (rc == 0) != want_ok:
            problems.append(f"/healthz answering {status}: the check exited {rc}")
    # A port nobody listens on (bound, then closed).
    s = _QuietServer(("127.0.0.1", 0), _Handler)
    port = s.server_address[1]
    s.server_close()
    if run(port) == 0:
        problems.append("nothing listening: the check passed")
    report("Docker HEALTHCHECK: 200 passes, 503 and a closed port fail", problems)


def main() -> int:
    check_yaml_parses()
    check_kustomizations()
    check_k8s_schemas()
    check_k8s_policy()
    check_compose()
    check_env_names()
    check_example_covers_config()
    check_bicep()
    check_docker_context()
    check_healthcheck()
    return failures


if __name__ == "__main__":
    sys.exit(main())
