"""The deploy/ checks can fail: each test breaks one thing in a copy of the real manifests (or a
small file made for it) and expects the checker to name the problem. Without these, a checker that
accepts everything would pass test_manifests.py just as well."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from container_checks import ROOT, compose_problems, dockerfile_problems, dockerignore_patterns, load_compose
from k8s_checks import ManifestError, Obj, copied, json_patch, load_yaml, problems, render
from settings_checks import settings_for

from espalier.service.settings import SettingsError

BASE = ROOT / "deploy" / "k8s" / "base"
GPU = ROOT / "deploy" / "k8s" / "overlays" / "gpu"
COMPOSE = ROOT / "deploy" / "compose"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile.cpu"


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(BASE)


def of(objects: list[Obj], kind: str) -> Obj:
    return next(o for o in objects if o["kind"] == kind)


def server(objects: list[Obj]) -> Obj:
    return of(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _set(d: dict, key: str, value: object) -> None:
    d[key] = value


BREAKAGES: list[tuple[str, Callable[[list[Obj]], None], str]] = [
    ("selector does not match the template",
     lambda o: of(o, "Deployment")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "x"}),
     "matchLabels"),
    ("liveness probe on another port", lambda o: server(o)["livenessProbe"]["grpc"].update(port=8080), "livenessProbe"),
    ("readiness probe over HTTP",
     lambda o: _set(server(o), "readinessProbe", {"httpGet": {"port": 50051, "path": "/"}}), "readinessProbe"),
    ("no liveness probe", lambda o: server(o).pop("livenessProbe"), "no livenessProbe"),
    ("no grpc port", lambda o: server(o)["ports"][0].update(name="rpc"), "'grpc'"),
    ("service targets a missing port name", lambda o: of(o, "Service")["spec"]["ports"][0].update(targetPort="grpcs"),
     "targets port name"),
    ("service selects nothing", lambda o: of(o, "Service")["spec"]["selector"].update(tier="x"), "selects no"),
    ("HPA scales another deployment", lambda o: of(o, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(
        name="other"), "scaleTargetRef"),
    ("HPA min above max", lambda o: of(o, "HorizontalPodAutoscaler")["spec"].update(minReplicas=9), "minReplicas"),
    ("HPA on CPU without CPU requests", lambda o: server(o)["resources"]["requests"].pop("cpu"), "requests none"),
    ("PDB selects nothing", lambda o: of(o, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update(
        {"app.kubernetes.io/component": "x"}), "selects no"),
    ("PDB with both bounds", lambda o: of(o, "PodDisruptionBudget")["spec"].update(minAvailable=1), "exactly one"),
    ("PVC missing", lambda o: o.remove(of(o, "PersistentVolumeClaim")), "claim"),
    ("ConfigMap missing", lambda o: o.remove(of(o, "ConfigMap")), "ConfigMap"),
    ("mount of an undefined volume", lambda o: server(o)["volumeMounts"][0].update(name="nope"), "does not define"),
    ("root allowed", lambda o: of(o, "Deployment")["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"),
     "runAsNonRoot"),
    ("privilege escalation", lambda o: server(o)["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilege"),
    ("no memory limit", lambda o: server(o)["resources"]["limits"].pop("memory"), "limits.memory"),
    ("request above limit", lambda o: server(o)["resources"]["requests"].update(memory="64Gi"), "above its limit"),
    ("no apiVersion", lambda o: of(o, "PersistentVolumeClaim").pop("apiVersion"), "apiVersion"),
    ("old HPA API", lambda o: of(o, "HorizontalPodAutoscaler").update(apiVersion="autoscaling/v1"), "apiVersion"),
    ("no name", lambda o: of(o, "Service")["metadata"].pop("name"), "metadata.name"),
    ("bad name", lambda o: of(o, "Service")["metadata"].update(name="Espalier_Svc"), "DNS label"),
    ("kind nobody checks", lambda o: o.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                                               "metadata": {"name": "x"}}), "not checked"),
    ("defined twice", lambda o: o.append(copied([of(o, "Service")])[0]), "defined twice"),
]


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _n, m, e in BREAKAGES], ids=[n for n, *_ in BREAKAGES])
def test_a_broken_object_set_is_rejected(base: list[Obj], mutate: Callable[[list[Obj]], None], expected: str) -> None:
    broken = copied(base)
    mutate(broken)
    found = problems(broken)
    assert any(expected in line for line in found), found


def test_malformed_yaml_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: Service\nmetadata: {name: x\n")
    with pytest.raises(yaml.YAMLError):
        load_yaml(path)


def _copy_tree(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(BASE, tmp_path / "base")
    shutil.copytree(GPU, tmp_path / "overlays" / "gpu")
    return tmp_path / "base", tmp_path / "overlays" / "gpu"


def _edit(path: Path, change: Callable[[dict], None]) -> None:
    (doc,) = load_yaml(path)
    change(doc)
    path.write_text(yaml.safe_dump(doc))


@pytest.mark.parametrize(("which", "change", "expected"), [
    ("base", lambda k: k["resources"].append("ingress.yaml"), "does not exist"),
    ("base", lambda k: k["configMapGenerator"][0].update(files=["missing.toml"]), "does not exist"),
    ("base", lambda k: k.update(commonLabels={"a": "b"}), "not understood"),
    ("gpu", lambda k: k["patches"][0]["target"].update(name="espalier-old"), "not defined"),
    ("gpu", lambda k: k["patches"][1]["target"].update(kind="StatefulSet"), "not defined"),
    ("gpu", lambda k: k["patches"].append({"path": "gone.yaml", "target": {"kind": "Deployment",
                                                                            "name": "espalier"}}),
     "does not exist"),
], ids=["missing resource", "missing generator file", "unchecked feature",
        "overlay patches an unknown name", "overlay patches an unknown kind", "missing patch file"])
def test_a_kustomization_naming_what_is_not_there_is_rejected(tmp_path: Path, which: str,
                                                              change: Callable[[dict], None],
                                                              expected: str) -> None:
    folder = _copy_tree(tmp_path)[0 if which == "base" else 1]
    _edit(folder / "kustomization.yaml", change)
    with pytest.raises(ManifestError, match=expected):
        render(folder)


def test_an_overlay_patch_whose_path_or_guard_fails_is_rejected(tmp_path: Path) -> None:
    _base, gpu = _copy_tree(tmp_path)
    patch = gpu / "deployment-gpu.yaml"
    ops = yaml.safe_load(patch.read_text())
    patch.write_text(yaml.safe_dump([{**ops[0], "value": "sidecar"}, *ops[1:]]))
    with pytest.raises(ManifestError, match="test failed"):
        render(gpu)
    patch.write_text(yaml.safe_dump([{"op": "replace", "path": "/spec/template/spec/startupProbe", "value": {}}]))
    with pytest.raises(ManifestError, match="startupProbe"):
        render(gpu)


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "c/d": 0}
    json_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 3}, {"op": "add", "path": "/a/b/0", "value": 0},
                     {"op": "replace", "path": "/c~1d", "value": 5}, {"op": "remove", "path": "/a/b/1"},
                     {"op": "test", "path": "/a/b", "value": [0, 2, 3]}])
    assert doc == {"a": {"b": [0, 2, 3]}, "c/d": 5}
    for bad in ({"op": "replace", "path": "/x", "value": 1}, {"op": "remove", "path": "/a/b/9"},
                {"op": "move", "path": "/a", "from": "/c~1d"}, {"op": "add", "path": "/a/b/7", "value": 1}):
        with pytest.raises(ManifestError):
            json_patch(doc, [bad])


def test_a_toml_the_server_would_refuse_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="unknown setting"):
        settings_for({}, "[large]\nslot = 4\n", tmp_path)
    with pytest.raises(SettingsError, match="large.slots"):
        settings_for({}, "[large]\nslots = 0\n", tmp_path)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c["services"]["espalier"]["volumes"].append("cache:/cache"), "not declared"),
    (lambda c: c["services"]["espalier"]["volumes"].append("./no-such-file.toml:/x"), "does not exist"),
    (lambda c: c["services"]["espalier"].pop("healthcheck"), "no healthcheck"),
    (lambda c: c["services"]["espalier"]["depends_on"].update(cache={"condition": "service_healthy"}), "unknown"),
    (lambda c: c["services"]["espalier"]["depends_on"].update(models={"condition": "service_healthy"}),
     "no healthcheck"),
    (lambda c: c["services"]["models"]["build"].update(dockerfile="deploy/docker/Dockerfile.gpu"), "not found"),
    (lambda c: c.update(services={}), "no services"),
], ids=["undeclared volume", "missing bind mount", "ports without healthcheck", "unknown dependency",
        "healthy dependency without healthcheck", "missing Dockerfile", "no services"])
def test_a_broken_compose_file_is_rejected(change: Callable[[dict], None], expected: str) -> None:
    data = load_compose(COMPOSE / "compose.yaml")
    change(data)
    assert any(expected in line for line in compose_problems(data, COMPOSE))


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("USER 10001:10001", "USER root", "non-root"),
    ("USER 10001:10001", "USER 0", "non-root"),
    ('    CMD ["python", "-m", "espalier.clients.python.healthcheck"]', "    CMD curl -f http://localhost/", "HEALTHCHECK"),
    ('CMD ["serve"]', 'CMD ["models", "list"]', "espalier serve"),
    ("ESPALIER_PORT=50051", "ESPALIER_PORT=50052", "not EXPOSEd"),
    ('VOLUME ["/models"]', "", "not a VOLUME"),
    ("COPY --from=build /opt/espalier /opt/espalier", "", "copies nothing"),
    ("COPY planner ./planner", "COPY planer ./planner", "no such file"),
], ids=["root user", "uid 0", "shell healthcheck", "other command", "port not exposed", "no volume",
        "single stage content", "missing source"])
def test_a_broken_dockerfile_is_rejected(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    path = tmp_path / "Dockerfile.cpu"
    path.write_text(text.replace(old, new))
    assert any(expected in line for line in dockerfile_problems(path)), dockerfile_problems(path)


def test_a_dockerignore_that_drops_a_copied_folder_is_reported() -> None:
    patterns = [*dockerignore_patterns(ROOT / ".dockerignore"), "service"]
    assert any("excluded by .dockerignore" in line for line in dockerfile_problems(DOCKERFILE, patterns))
