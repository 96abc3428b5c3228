"""Offline checks of the Kubernetes manifests in deploy/k8s (no cluster, no schema download).

Owns two things. `render` builds a kustomization the way `kubectl kustomize` does for the subset of
kustomize that deploy/ uses (resources, configMapGenerator, images, JSON 6902 patches with a
target) and refuses anything else, so nothing in deploy/ escapes the checks by using a feature they
do not understand. `problems` checks a rendered set of objects: the fields each kind requires, and
the references between objects (selectors, named ports, probes, volumes, the autoscaler's target).
Each problem is one line naming the object, so a failing test shows everything that is wrong.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

API_VERSIONS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
}
GRPC_PORT_NAME = "grpc"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ACCESS_MODES = {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}
_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "images", "patches"}


class ManifestError(Exception):
    """A kustomization cannot be rendered: a missing file, a patch that does not apply, an unknown feature."""


def load_yaml(path: Path) -> list[Any]:
    """Every document of a YAML file (empty ones dropped); yaml.YAMLError when it is malformed."""
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def ref(obj: Obj) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


# --- rendering a kustomization ------------------------------------------------------------------


def render(folder: Path) -> list[Obj]:
    """The objects `kubectl kustomize folder` would print, less the hash suffix of generated names."""
    names = ("kustomization.yaml", "kustomization.yml", "Kustomization")
    files = [folder / n for n in names if (folder / n).is_file()]
    if len(files) != 1:
        raise ManifestError(f"{folder}: expected one kustomization file, found {len(files)}")
    (spec,) = load_yaml(files[0]) or [None]
    if not isinstance(spec, dict) or spec.get("kind") != "Kustomization":
        raise ManifestError(f"{files[0]}: not a Kustomization")
    unknown = set(spec) - _KUSTOMIZATION_KEYS
    if unknown:
        raise ManifestError(f"{files[0]}: {sorted(unknown)} not understood by the offline check; "
                            "extend it first")
    objects: list[Obj] = []
    for entry in spec.get("resources") or []:
        path = _inside(folder, entry, files[0])
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend(load_yaml(path))
        else:
            raise ManifestError(f"{files[0]}: resource {entry!r} does not exist")
    for gen in spec.get("configMapGenerator") or []:
        objects.append(_generated_config_map(folder, gen, files[0]))
    for patch in spec.get("patches") or []:
        _apply_patch(folder, patch, objects, files[0])
    for image in spec.get("images") or []:
        _set_image(objects, image)
    return objects


def _inside(folder: Path, entry: str, where: Path) -> Path:
    if not isinstance(entry, str) or "://" in entry:
        raise ManifestError(f"{where}: {entry!r} is not a local path")
    return (folder / entry).resolve()


def _generated_config_map(folder: Path, gen: Obj, where: Path) -> Obj:
    data: dict[str, str] = {}
    unknown = set(gen) - {"name", "files"}
    if unknown or not gen.get("name"):
        raise ManifestError(f"{where}: configMapGenerator entries need a name and files only "
                            f"(got {sorted(gen)})")
    for item in gen.get("files") or []:
        key, _, name = item.rpartition("=") if "=" in item else (Path(item).name, "", item)
        path = _inside(folder, name, where)
        if not path.is_file():
            raise ManifestError(f"{where}: configMapGenerator file {name!r} does not exist")
        data[key] = path.read_text(encoding="utf-8")
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}


def _apply_patch(folder: Path, patch: Obj, objects: list[Obj], where: Path) -> None:
    target = patch.get("target") or {}
    if not target.get("kind") or not target.get("name"):
        raise ManifestError(f"{where}: every patch needs a target with kind and name "
                            "(the check applies JSON 6902)")
    if "path" in patch:
        path = _inside(folder, patch["path"], where)
        if not path.is_file():
            raise ManifestError(f"{where}: patch file {patch['path']!r} does not exist")
        ops = yaml.safe_load(path.read_text(encoding="utf-8"))
    else:
        ops = yaml.safe_load(patch.get("patch") or "")
    if not isinstance(ops, list):
        raise ManifestError(f"{where}: patch for {target['kind']}/{target['name']} is not a JSON 6902 list")
    matches = [o for o in objects if _targets(target, o)]
    if not matches:
        raise ManifestError(f"{where}: patch targets {target['kind']}/{target['name']}, which is not defined")
    for obj in matches:
        try:
            json_patch(obj, ops)
        except ManifestError as exc:
            raise ManifestError(f"{where}: patch on {ref(obj)}: {exc}") from None


def _targets(target: Obj, obj: Obj) -> bool:
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    return (obj.get("kind") == target["kind"] and (obj.get("metadata") or {}).get("name") == target["name"]
            and target.get("group", group) == group and target.get("version", version) == version)


def json_patch(doc: Obj, ops: list[Obj]) -> None:
    """Apply JSON Patch (RFC 6902) operations add, remove, replace and test in place."""
    for op in ops:
        kind, path = op.get("op"), op.get("path")
        if (kind not in ("add", "remove", "replace", "test")
                or not isinstance(path, str) or not path.startswith("/")):
            raise ManifestError(f"unsupported or malformed operation {op!r}")
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]
        node: Any = doc
        for part in parents:
            node = _child(node, part, path)
        if kind == "add":
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else _index(node, last, path, insert=True), op["value"])
            elif isinstance(node, dict):
                node[last] = op["value"]
            else:
                raise ManifestError(f"add: {path}: parent is not an object or a list")
            continue
        current = _child(node, last, path)
        if kind == "test" and current != op.get("value"):
            raise ManifestError(f"test failed: {path} is {current!r}, expected {op.get('value')!r}")
        if kind == "replace":
            node[_index(node, last, path) if isinstance(node, list) else last] = op["value"]
        elif kind == "remove":
            del node[_index(node, last, path) if isinstance(node, list) else last]


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, dict) and part in node:
        return node[part]
    if isinstance(node, list):
        return node[_index(node, part, path)]
    raise ManifestError(f"{path}: no {part!r} there")


def _index(node: list[Any], part: str, path: str, *, insert: bool = False) -> int:
    if not part.isdigit() or int(part) > len(node) - (0 if insert else 1):
        raise ManifestError(f"{path}: no index {part!r} in a list of {len(node)}")
    return int(part)


def _set_image(objects: list[Obj], image: Obj) -> None:
    for _spec, container in pod_containers(objects):
        name, tag = split_image(container.get("image", ""))
        if name == image.get("name"):
            container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"


def split_image(image: str) -> tuple[str, str]:
    """("registry/name", "tag"); the tag is "" when there is none."""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, ""
    return name, tag


# --- checking rendered objects ------------------------------------------------------------------


def pod_containers(objects: Iterable[Obj], *, init: bool = True) -> Iterator[tuple[Obj, Obj]]:
    """(pod spec, container) for every container of every Deployment's pod template."""
    for obj in objects:
        if obj.get("kind") == "Deployment":
            spec = obj.get("spec", {}).get("template", {}).get("spec", {})
            for key in ("initContainers", "containers") if init else ("containers",):
                for container in spec.get(key) or []:
                    yield spec, container


def problems(objects: list[Obj]) -> list[str]:
    """Everything wrong with a rendered set of objects; [] when it is complete and consistent."""
    found: list[str] = []
    names: set[tuple[str, str]] = set()
    for obj in objects:
        if not isinstance(obj, dict):
            found.append(f"not an object: {obj!r:.60}")
            continue
        found += _common(obj)
        key = (obj.get("kind", ""), (obj.get("metadata") or {}).get("name", ""))
        if key in names:
            found.append(f"{ref(obj)}: defined twice")
        names.add(key)
        check = _KIND_CHECKS.get(obj.get("kind", ""))
        if check is None:
            found.append(f"{ref(obj)}: kind {obj.get('kind')!r} is not checked offline; add a check for it")
        else:
            found += [f"{ref(obj)}: {p}" for p in check(obj, objects)]
    return found


def _common(obj: Obj) -> list[str]:
    out = []
    for field in ("apiVersion", "kind", "metadata"):
        if not obj.get(field):
            out.append(f"{ref(obj)}: no {field}")
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 63:
        out.append(f"{ref(obj)}: metadata.name {name!r} is not a DNS label")
    expected = API_VERSIONS.get(obj.get("kind", ""))
    if expected and obj.get("apiVersion") != expected:
        out.append(f"{ref(obj)}: apiVersion {obj.get('apiVersion')!r}, expected {expected}")
    return out


def _matches(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    return bool(selector) and all((labels or {}).get(k) == v for k, v in (selector or {}).items())


def _deployments(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o.get("kind") == "Deployment"]


def _template_labels(deployment: Obj) -> dict[str, str]:
    return deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}


def _names(objects: list[Obj], kind: str) -> set[str]:
    return {(o.get("metadata") or {}).get("name", "") for o in objects if o.get("kind") == kind}


def _deployment(obj: Obj, objects: list[Obj]) -> list[str]:
    out: list[str] = []
    spec = obj.get("spec") or {}
    if not _matches(spec.get("selector", {}).get("matchLabels"), _template_labels(obj)):
        out.append("spec.selector.matchLabels is empty or does not match the pod template's labels")
    pod = spec.get("template", {}).get("spec") or {}
    containers = pod.get("containers") or []
    if not containers:
        out.append("no containers")
    everyone = [*(pod.get("initContainers") or []), *containers]
    if len({c.get("name") for c in everyone}) != len(everyone):
        out.append("container names are not unique")
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    non_root = (pod.get("securityContext") or {}).get("runAsNonRoot") is True
    for c in everyone:
        where = f"container {c.get('name')!r}"
        if not c.get("name") or not c.get("image"):
            out.append(f"{where}: needs a name and an image")
        out += [f"{where}: {p}" for p in _resources(c)]
        sc = c.get("securityContext") or {}
        if not (non_root or sc.get("runAsNonRoot") is True):
            out.append(f"{where}: runAsNonRoot is not set (pod or container)")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation must be false")
        for mount in c.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                out.append(f"{where}: mounts volume {mount.get('name')!r}, which the pod does not define")
        for env in c.get("env") or []:
            field_ref = (env.get("valueFrom") or {}).get("resourceFieldRef")
            if field_ref and field_ref.get("containerName") not in {x.get("name") for x in everyone}:
                out.append(f"{where}: env {env.get('name')} reads resources of an unknown container")
    for c in containers:
        out += [f"container {c.get('name')!r}: {p}" for p in _ports_and_probes(c)]
    for name, volume in volumes.items():
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None and claim not in _names(objects, "PersistentVolumeClaim"):
            out.append(f"volume {name!r}: claim {claim!r} is not defined")
        config = (volume.get("configMap") or {}).get("name")
        if config is not None and config not in _names(objects, "ConfigMap"):
            out.append(f"volume {name!r}: ConfigMap {config!r} is not defined")
    return out


def _resources(container: Obj) -> list[str]:
    res = container.get("resources") or {}
    out = []
    for kind in ("requests", "limits"):
        for name in ("cpu", "memory"):
            if name not in (res.get(kind) or {}):
                out.append(f"resources.{kind}.{name} is not set")
    for name, request in (res.get("requests") or {}).items():
        limit = (res.get("limits") or {}).get(name)
        if limit is not None and quantity(request) > quantity(limit):
            out.append(f"resources: {name} request {request} is above its limit {limit}")
    return out


def _ports_and_probes(container: Obj) -> list[str]:
    out = []
    ports = container.get("ports") or []
    named = [p.get("name") for p in ports if p.get("name")]
    if len(set(named)) != len(named):
        out.append("port names are not unique")
    for p in ports:
        number = p.get("containerPort")
        if not isinstance(number, int) or not 0 < number < 65536:
            out.append(f"port {p.get('name')!r}: containerPort {number!r} is not a port number")
        if p.get("name") and (len(p["name"]) > 15 or not _DNS_LABEL.match(p["name"])):
            out.append(f"port name {p['name']!r} is not a valid port name (15 characters at most)")
    grpc_port = next((p.get("containerPort") for p in ports if p.get("name") == GRPC_PORT_NAME), None)
    if grpc_port is None:
        out.append(f"no container port named {GRPC_PORT_NAME!r}")
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(kind)
        if probe is None:
            if kind != "startupProbe":
                out.append(f"no {kind}")
            continue
        grpc = probe.get("grpc")
        if grpc is None:
            out.append(f"{kind} does not use the gRPC health service (grpc:)")
        elif grpc.get("port") != grpc_port:
            out.append(f"{kind} checks port {grpc.get('port')!r}, not the gRPC port {grpc_port!r}")
    return out


def _service(obj: Obj, objects: list[Obj]) -> list[str]:
    spec = obj.get("spec") or {}
    selector = spec.get("selector")
    backends = [d for d in _deployments(objects) if _matches(selector, _template_labels(d))]
    if not backends:
        return ["spec.selector is empty or selects no Deployment's pods"]
    out = []
    container_ports = [p for _s, c in pod_containers(backends, init=False) for p in c.get("ports") or []]
    if not spec.get("ports"):
        out.append("no ports")
    for port in spec.get("ports") or []:
        target = port.get("targetPort", port.get("port"))
        if isinstance(target, str) and target not in {p.get("name") for p in container_ports}:
            out.append(f"port {port.get('name')!r} targets port name {target!r}, "
                       "which no selected container has")
        elif isinstance(target, int) and target not in {p.get("containerPort") for p in container_ports}:
            out.append(f"port {port.get('name')!r} targets port {target}, which no selected container has")
    return out


def _hpa(obj: Obj, objects: list[Obj]) -> list[str]:
    spec = obj.get("spec") or {}
    target = spec.get("scaleTargetRef") or {}
    out = []
    matched = [d for d in _deployments(objects) if (d.get("metadata") or {}).get("name") == target.get("name")]
    if target.get("kind") != "Deployment" or target.get("apiVersion") != "apps/v1" or not matched:
        out.append(f"scaleTargetRef {target.get('kind')}/{target.get('name')} is not a Deployment defined here")
    low, high = spec.get("minReplicas", 1), spec.get("maxReplicas")
    if not isinstance(high, int) or not isinstance(low, int) or not 1 <= low <= high:
        out.append(f"replicas must satisfy 1 <= minReplicas <= maxReplicas (got {low}, {high})")
    if not spec.get("metrics"):
        out.append("no metrics")
    for metric in spec.get("metrics") or []:
        resource = (metric.get("resource") or {}).get("name")
        target_type = ((metric.get("resource") or {}).get("target") or {}).get("type")
        if metric.get("type") == "Resource" and target_type == "Utilization":
            # Utilisation is measured against requests: a container without one makes the HPA fail.
            for deployment in matched:
                for _s, c in pod_containers([deployment], init=False):
                    if resource not in ((c.get("resources") or {}).get("requests") or {}):
                        out.append(f"scales on {resource} utilisation but container "
                                   f"{c.get('name')!r} requests none")
    return out


def _pdb(obj: Obj, objects: list[Obj]) -> list[str]:
    spec = obj.get("spec") or {}
    out = []
    if ("minAvailable" in spec) == ("maxUnavailable" in spec):
        out.append("set exactly one of minAvailable and maxUnavailable")
    selector = (spec.get("selector") or {}).get("matchLabels")
    if not any(_matches(selector, _template_labels(d)) for d in _deployments(objects)):
        out.append("spec.selector.matchLabels selects no Deployment's pods")
    return out


def _pvc(obj: Obj, _objects: list[Obj]) -> list[str]:
    spec = obj.get("spec") or {}
    out = []
    modes = spec.get("accessModes") or []
    if not modes or not set(modes) <= _ACCESS_MODES:
        out.append(f"accessModes {modes!r} are not valid")
    if "storage" not in ((spec.get("resources") or {}).get("requests") or {}):
        out.append("resources.requests.storage is not set")
    return out


def _config_map(obj: Obj, _objects: list[Obj]) -> list[str]:
    return [] if obj.get("data") or obj.get("binaryData") else ["no data"]


_KIND_CHECKS = {
    "Deployment": _deployment,
    "Service": _service,
    "HorizontalPodAutoscaler": _hpa,
    "PodDisruptionBudget": _pdb,
    "PersistentVolumeClaim": _pvc,
    "ConfigMap": _config_map,
}

_SUFFIX = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: object) -> float:
    """A Kubernetes quantity ("500m", "4", "3Gi") as a number."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def env_value(env: Obj, container: Obj) -> str | None:
    """What the kubelet puts in an env var: its value, or a resource of this container (divisor 1,
    rounded up as the kubelet does); None for values from Secrets and other sources."""
    if "value" in env:
        return str(env["value"])
    field_ref = (env.get("valueFrom") or {}).get("resourceFieldRef")
    if field_ref:
        kind, _, name = field_ref["resource"].partition(".")
        amount = quantity(container["resources"][kind][name]) / quantity(field_ref.get("divisor", "1"))
        return str(math.ceil(amount))
    return None


def copied(objects: list[Obj]) -> list[Obj]:
    """A deep copy, for tests that break one thing."""
    return copy.deepcopy(objects)
