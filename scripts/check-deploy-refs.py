"""What the schema checkers cannot see in deploy/: that the files agree with each other
and with the code. Called by scripts/check-deploy (with its virtualenv's Python, which
has PyYAML); prints one line per problem and exits 1 when there is any.

- Kubernetes (deploy/k8s, loaded through kustomization.yaml): selectors match the pod
  labels, Service and probe ports name container ports, every ConfigMap, Secret, key and
  volume referred to exists, the HPA's target exists and requests CPU.
- crossway.toml (the ConfigMap's, and the config/default.toml the image ships) uses only
  keys `Settings` in src/config.rs accepts: it denies unknown fields, so a typo there is
  a pod that never starts.
- The Dockerfile's COPY sources exist and are in the build context that
  deploy/Dockerfile.dockerignore leaves; the compose file builds that Dockerfile.
"""

import fnmatch
import os
import re
import sys
import tomllib

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def load_yaml_all(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def load_kustomization():
    """The objects kustomization.yaml lists, with generated ConfigMaps (unhashed names)."""
    kust = load_yaml_all(os.path.join(K8S, "kustomization.yaml"))[0]
    objects = []
    for res in kust.get("resources", []):
        if not os.path.isfile(os.path.join(K8S, res)):
            problem("deploy/k8s/kustomization.yaml", f"resource {res}: no such file")
            continue
        for doc in load_yaml_all(os.path.join(K8S, res)):
            objects.append((res, doc))
    for gen in kust.get("configMapGenerator", []):
        data = {}
        for entry in gen.get("files", []):
            key, _, path = entry.partition("=")
            path = path or key
            if not os.path.isfile(os.path.join(K8S, path)):
                problem("deploy/k8s/kustomization.yaml", f"configMapGenerator file {path}: no such file")
                continue
            with open(os.path.join(K8S, path)) as f:
                data[os.path.basename(key)] = f.read()
        cm = {"kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        objects.append(("kustomization.yaml", cm))
    return objects


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_kubernetes(objects):
    by_kind = {}
    for source, obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = (source, obj)
    configmaps = {n: o.get("data", {}) for n, (_, o) in by_kind.get("ConfigMap", {}).items()}
    secrets = {
        n: {**o.get("data", {}), **o.get("stringData", {})}
        for n, (_, o) in by_kind.get("Secret", {}).items()
    }
    deployments = by_kind.get("Deployment", {})
    pods = {}  # deployment name -> (labels, containers)

    for name, (src, d) in deployments.items():
        where = f"{src} Deployment/{name}"
        template = d["spec"]["template"]
        labels = template["metadata"].get("labels", {})
        if not matches(d["spec"]["selector"].get("matchLabels", {}), labels):
            problem(where, "spec.selector does not match the pod template's labels")
        spec = template["spec"]
        containers = spec["containers"]
        pods[name] = (labels, containers)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                problem(where, f"volume {v['name']}: no ConfigMap {v['configMap']['name']}")
            if "secret" in v:
                secret = v["secret"]["secretName"]
                if secret not in secrets:
                    problem(where, f"volume {v['name']}: no Secret {secret}")
                for item in v["secret"].get("items", []):
                    if item["key"] not in secrets.get(secret, {}):
                        problem(where, f"volume {v['name']}: Secret {secret} has no key {item['key']}")
        for c in containers:
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports and port not in ports.values():
                    problem(where, f"{c['name']} {probe}: no container port {port}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["key"] not in secrets.get(ref["name"], {}):
                    problem(where, f"env {e['name']}: no key {ref['key']} in Secret {ref['name']}")
            for m in c.get("volumeMounts", []):
                v = volumes.get(m["name"])
                if v is None:
                    problem(where, f"{c['name']} mounts undeclared volume {m['name']}")
                elif "subPath" in m and "configMap" in v:
                    cm, key = v["configMap"]["name"], m["subPath"]
                    text = configmaps.get(cm, {}).get(key)
                    if text is None:
                        problem(where, f"mount {m['mountPath']}: no {key} in ConfigMap {cm}")
                    elif key.endswith(".toml"):
                        check_settings_toml(f"ConfigMap {cm}/{key}", text)

    for kind in ("Service", "PodDisruptionBudget"):
        for name, (src, obj) in by_kind.get(kind, {}).items():
            where = f"{src} {kind}/{name}"
            selector = obj["spec"].get("selector", {})
            selector = selector.get("matchLabels", selector)
            targets = [d for d, (labels, _) in pods.items() if matches(selector, labels)]
            if not targets:
                problem(where, "its selector matches no Deployment's pods")
                continue
            if kind == "Service":
                for p in obj["spec"]["ports"]:
                    target = p.get("targetPort", p["port"])
                    for d in targets:
                        cports = [cp for c in pods[d][1] for cp in c.get("ports", [])]
                        if not any(target in (cp.get("name"), cp["containerPort"]) for cp in cports):
                            problem(where, f"targetPort {target} is no container port of Deployment/{d}")

    for name, (src, hpa) in by_kind.get("HorizontalPodAutoscaler", {}).items():
        where = f"{src} HorizontalPodAutoscaler/{name}"
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] != "Deployment" or ref["name"] not in pods:
            problem(where, f"scaleTargetRef {ref['kind']}/{ref['name']} is not in the kustomization")
            continue
        uses_cpu = any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", []))
        for c in pods[ref["name"]][1]:
            if uses_cpu and "cpu" not in c.get("resources", {}).get("requests", {}):
                problem(where, f"scales on CPU but container {c['name']} requests no CPU")


def struct_fields(source, struct):
    """Field names (after serde renames) of `pub struct NAME { ... }` in config.rs."""
    m = re.search(r"pub struct " + struct + r" \{(.*?)\n\}", source, re.S)
    if not m:
        problem("src/config.rs", f"no `pub struct {struct}` to check crossway.toml against")
        return set()
    fields, rename = set(), None
    for line in m.group(1).splitlines():
        line = line.strip()
        r = re.search(r'rename = "([^"]+)"', line)
        if line.startswith("#[serde") and r:
            rename = r.group(1)
        f = re.match(r"pub (\w+):", line)
        if f:
            fields.add(rename or f.group(1))
            rename = None
    return fields


def check_settings_toml(where, text):
    with open(os.path.join(ROOT, "src", "config.rs")) as f:
        source = f.read()
    try:
        settings = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(where, f"not TOML: {e}")
        return
    top = struct_fields(source, "Settings")
    org = struct_fields(source, "OrganizationConfig")
    ident = struct_fields(source, "IdentifierConfig")
    for key in settings.keys() - top:
        problem(where, f"unknown key {key!r} (Settings has: {', '.join(sorted(top))})")
    for o in settings.get("organization", []):
        for key in o.keys() - org:
            problem(where, f"organization {o.get('id')}: unknown key {key!r}")
        for i in o.get("identifier", []):
            for key in i.keys() - ident:
                problem(where, f"organization {o.get('id')} identifier: unknown key {key!r}")


def check_build_context():
    dockerfile = os.path.join(ROOT, "deploy", "Dockerfile")
    with open(dockerfile) as f:
        text = f.read().replace("\\\n", " ")
    with open(dockerfile + ".dockerignore") as f:
        patterns = [p.strip() for p in f if p.strip() and not p.startswith("#")]

    def included(rel):
        keep = True
        for p in patterns:
            negate = p.startswith("!")
            pat = p.lstrip("!").strip("/")
            parts = rel.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatchcase(x, pat) for x in prefixes):
                keep = negate
        return keep

    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        if any(w.startswith("--from") for w in words):
            continue
        for src in [w for w in words[1:-1] if not w.startswith("--")]:
            path = os.path.join(ROOT, src)
            if not os.path.exists(path):
                problem("deploy/Dockerfile", f"COPY {src}: no such file in the repository")
                continue
            files = [path] if os.path.isfile(path) else [
                os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
            ]
            for file in files:
                rel = os.path.relpath(file, ROOT)
                if not included(rel):
                    problem("deploy/Dockerfile.dockerignore", f"excludes {rel}, which COPY {src} needs")
                    break

    compose_path = os.path.join(ROOT, "deploy", "docker-compose.yml")
    compose = load_yaml_all(compose_path)[0]
    for name, service in compose.get("services", {}).items():
        build = service.get("build")
        if not build:
            continue
        context = os.path.normpath(os.path.join(ROOT, "deploy", build.get("context", ".")))
        file = os.path.join(context, build.get("dockerfile", "Dockerfile"))
        if os.path.normpath(file) != dockerfile:
            problem("deploy/docker-compose.yml", f"service {name} builds {file}, not deploy/Dockerfile")
        if context != ROOT:
            problem("deploy/docker-compose.yml", f"service {name}: the build context must be the repository root")


def main():
    check_kubernetes(load_kustomization())
    with open(os.path.join(ROOT, "config", "default.toml")) as f:
        check_settings_toml("config/default.toml (the image's crossway.toml)", f.read())
    check_build_context()
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
