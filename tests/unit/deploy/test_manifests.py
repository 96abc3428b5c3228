"""Every file in deploy/ checked offline: YAML well-formed; the Kubernetes base and GPU overlay
complete and consistent (also as `kubectl kustomize` renders them, when kubectl is here); the
compose files consistent (and accepted by `docker compose config`, when compose is here); the
Dockerfiles following the image rules; and the settings each container ends up with, loaded by
the server's own settings loader, agreeing with the ports, probes and volumes around it."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from container_checks import (
    PROBE_MODULE,
    ROOT,
    arg_default,
    compose_problems,
    dockerfile_problems,
    dockerignore_patterns,
    dockerignored,
    exec_form,
    image,
    load_compose,
    parse_dockerfile,
    seconds,
)
from k8s_checks import Obj, env_value, load_yaml, pod_containers, problems, quantity, render, split_image
from settings_checks import ENV_TO_KEY, KNOWN_ENV, PENDING_ENV, settings_for, toml_keys

from espalier.service.engine.models import MODELS
from espalier.service.server import UNWIND_S
from espalier.service.settings import CONFIG_ENV, ServerSettings

DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
GPU = DEPLOY / "k8s" / "overlays" / "gpu"
DOCKER = DEPLOY / "docker"
COMPOSE = DEPLOY / "compose"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
COMPOSE_SETS = [("compose.yaml",), ("compose.yaml", "compose.cuda.yaml"), ("compose.remote.yaml",)]


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(BASE)


@pytest.fixture(scope="module")
def gpu() -> list[Obj]:
    return render(GPU)


def the(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def server_container(objects: list[Obj]) -> tuple[Obj, Obj]:
    """(pod spec, the espalier container) of the Deployment."""
    (found,) = [(s, c) for s, c in pod_containers(objects, init=False) if c["name"] == "espalier"]
    return found


def dockerfile_for(image_ref: str) -> Path:
    """Images are tagged after their Dockerfile: espalier:cpu is built from Dockerfile.cpu."""
    return DOCKER / f"Dockerfile.{split_image(image_ref)[1]}"


def container_env(container: Obj) -> dict[str, str]:
    """The container's ESPALIER_* environment as the process sees it: the image's ENV, then its own."""
    env = {k: v for k, v in image(dockerfile_for(container["image"])).env().items() if k.startswith("ESPALIER_")}
    for item in container.get("env") or []:
        value = env_value(item, container)
        if value is not None:
            env[item["name"]] = value
    return env


def pod_settings(objects: list[Obj], tmp_path: Path) -> ServerSettings:
    """The settings the espalier container would start with: image ENV < TOML from its ConfigMap < env."""
    pod, container = server_container(objects)
    env = container_env(container)
    config = Path(env[CONFIG_ENV])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config.parent]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    text = the(objects, "ConfigMap", volume["configMap"]["name"])["data"][config.name]
    return settings_for(env, text, tmp_path)


def mount_of(container: Obj, path: str) -> Obj:
    (found,) = [m for m in container.get("volumeMounts") or [] if m["mountPath"] == path]
    return found


# --- YAML ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_is_well_formed(path: Path) -> None:
    assert load_yaml(path), f"{path} holds no document"


# --- Kubernetes ---------------------------------------------------------------------------------


def test_base_is_complete_and_consistent(base: list[Obj]) -> None:
    assert problems(base) == []
    assert {o["kind"] for o in base} == {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim",
                                         "HorizontalPodAutoscaler", "PodDisruptionBudget"}


def test_gpu_overlay_is_complete_and_asks_for_a_gpu(gpu: list[Obj], tmp_path: Path) -> None:
    assert problems(gpu) == []
    pod, container = server_container(gpu)
    assert quantity(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert all(split_image(c["image"]) == ("espalier", "cuda") for _s, c in pod_containers(gpu))
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    settings = pod_settings(gpu, tmp_path)
    assert settings.large.n_gpu_layers == -1 and settings.small.n_gpu_layers == -1
    # More slots on a GPU, and n_ctx grown with them so a point's share does not shrink.
    base_settings = pod_settings(render(BASE), tmp_path)
    assert settings.large.slots > base_settings.large.slots
    assert settings.large.n_ctx // settings.large.slots >= base_settings.large.n_ctx // base_settings.large.slots


def test_overlay_patches_only_objects_of_the_base(base: list[Obj], gpu: list[Obj]) -> None:
    (spec,) = load_yaml(GPU / "kustomization.yaml")
    names = {(o["kind"], o["metadata"]["name"]) for o in base}
    for patch in spec["patches"]:
        assert (patch["target"]["kind"], patch["target"]["name"]) in names
    assert {(o["kind"], o["metadata"]["name"]) for o in gpu} == names  # patched, nothing added or lost


@pytest.mark.parametrize("folder", [BASE, GPU], ids=["base", "gpu"])
def test_kubectl_kustomize_renders_the_same_valid_objects(folder: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed; the offline renderer's result is checked without it")
    done = subprocess.run(["kubectl", "kustomize", str(folder)], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert problems(rendered) == []

    def summary(objects: list[Obj]) -> set[tuple[str, str, str]]:
        # kustomize suffixes generated ConfigMaps with a hash of their contents; the offline renderer does not.
        def name(o: Obj) -> str:
            name = o["metadata"]["name"]
            return re.sub(r"-[a-z0-9]{10}$", "", name) if o["kind"] == "ConfigMap" else name
        images = {c["image"] for _s, c in pod_containers(objects)}
        return {(o["kind"], name(o), ",".join(sorted(images)) if o["kind"] == "Deployment" else "")
                for o in objects}

    assert summary(rendered) == summary(render(folder))


def test_configmap_toml_parses_and_the_server_accepts_it(base: list[Obj], tmp_path: Path) -> None:
    (config,) = [o for o in base if o["kind"] == "ConfigMap"]
    for name, text in config["data"].items():
        assert name.endswith(".toml")
        tomllib.loads(text)
        settings_for({}, text, tmp_path)  # raises SettingsError for an unknown key or a bad value


def test_container_settings_agree_with_ports_probes_and_volumes(base: list[Obj], tmp_path: Path) -> None:
    settings = pod_settings(base, tmp_path)
    pod, container = server_container(base)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.host == "0.0.0.0" and settings.metrics_host == "0.0.0.0"
    assert ports == {"grpc": settings.port, "metrics": settings.metrics_port}
    annotations = the(base, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    models = mount_of(container, settings.models_dir)
    assert models["readOnly"] is True
    # Threads follow the CPU limit (os.cpu_count() in a pod is the node's core count).
    cpus = quantity(container["resources"]["limits"]["cpu"])
    assert settings.large.threads == settings.small.threads == cpus
    # The pod is killed only after the server's own shutdown could finish.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= pause + settings.grace_s + UNWIND_S


def test_init_container_fetches_into_the_claim_the_server_reads(base: list[Obj], tmp_path: Path) -> None:
    pod, server = server_container(base)
    (fetch,) = pod["initContainers"]
    command = (exec_form(image(dockerfile_for(fetch["image"])).last("ENTRYPOINT")) or []) + fetch["args"]
    assert command[:4] == ["espalier", "models", "fetch", "all"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    settings = pod_settings(base, tmp_path)
    fetch_dir = container_env(fetch)["ESPALIER_MODELS_DIR"]
    writes = volumes[mount_of(fetch, fetch_dir)["name"]]["persistentVolumeClaim"]["claimName"]
    reads = volumes[mount_of(server, settings.models_dir)["name"]]["persistentVolumeClaim"]["claimName"]
    assert writes == reads
    assert not mount_of(fetch, fetch_dir).get("readOnly")


def test_toml_sets_nothing_that_the_environment_would_override(base: list[Obj]) -> None:
    # Environment beats the file, so a key set in both is silently ignored in the file.
    text = the(base, "ConfigMap")["data"]["espalier.toml"]
    _pod, container = server_container(base)
    env_names = {e["name"] for e in container["env"]} | {k for f in DOCKERFILES for k in image(f).env()}
    shadowed = toml_keys(text) & {ENV_TO_KEY[n] for n in env_names if n in ENV_TO_KEY}
    assert not shadowed, f"set in the TOML but overridden by the environment: {sorted(shadowed)}"


def test_pod_runs_as_the_images_user(base: list[Obj], gpu: list[Obj]) -> None:
    for objects in (base, gpu):
        pod, container = server_container(objects)
        uid = (image(dockerfile_for(container["image"])).last("USER") or "").split(":")[0]
        assert pod["securityContext"]["runAsUser"] == int(uid)
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_every_espalier_variable_is_a_real_setting(base: list[Obj], gpu: list[Obj]) -> None:
    names = {k for f in DOCKERFILES for k in image(f).env() if k.startswith("ESPALIER_")}
    for objects in (base, gpu):
        names |= {e["name"] for _s, c in pod_containers(objects) for e in c.get("env") or []}
    for files in COMPOSE_SETS:
        for svc in load_compose(*(COMPOSE / f for f in files))["services"].values():
            names |= set(svc.get("environment") or {})
    unknown = {n for n in names if n.startswith("ESPALIER_")} - KNOWN_ENV - PENDING_ENV
    assert not unknown, f"not settings (a typo is ignored silently by the server): {sorted(unknown)}"


# --- compose ------------------------------------------------------------------------------------


def _compose(files: tuple[str, ...]) -> dict[str, Any]:
    return load_compose(*(COMPOSE / f for f in files))


@pytest.mark.parametrize("files", COMPOSE_SETS, ids="+".join)
def test_compose_is_consistent(files: tuple[str, ...]) -> None:
    data = _compose(files)
    assert compose_problems(data, COMPOSE) == []
    assert data["volumes"]


@pytest.mark.parametrize("files", COMPOSE_SETS, ids="+".join)
def test_compose_espalier_settings_agree_with_ports_and_volumes(files: tuple[str, ...], tmp_path: Path) -> None:
    svc = _compose(files)["services"]["espalier"]
    assert PROBE_MODULE in svc["healthcheck"]["test"]
    dockerfile = COMPOSE / svc["build"]["context"] / svc["build"]["dockerfile"]
    env = {k: v for k, v in image(dockerfile).env().items() if k.startswith("ESPALIER_")}
    env.update({k: str(v) for k, v in (svc.get("environment") or {}).items()})
    mounts = {dst: src for src, dst, *_ in (v.split(":") for v in svc["volumes"])}
    text = (COMPOSE / mounts[env[CONFIG_ENV]]).read_text(encoding="utf-8")
    settings = settings_for(env, text, tmp_path)
    published = {int(p.split(":")[-1]) for p in svc["ports"]}
    assert published == {settings.port, settings.metrics_port}
    assert all(p.startswith("127.0.0.1:") for p in svc["ports"])  # no TLS or token here: loopback only
    assert settings.models_dir in mounts and mounts[settings.models_dir] == "models"
    assert seconds(svc["stop_grace_period"]) >= settings.grace_s + UNWIND_S


def test_remote_compose_sends_the_large_role_to_every_replica() -> None:
    services = _compose(("compose.remote.yaml",))["services"]
    replicas = sorted(n for n, s in services.items() if "llama.cpp:server" in s.get("image", ""))
    assert len(replicas) == 2
    urls = services["espalier"]["environment"]["ESPALIER_REMOTE_LARGE_URLS"].split(",")
    for name in replicas:
        args = services[name]["command"]
        port = args[args.index("--port") + 1]
        assert f"http://{name}:{port}/v1" in urls
        assert int(args[args.index("--parallel") + 1]) > 1
        # The replicas load the file `espalier models fetch` writes.
        assert Path(args[args.index("--model") + 1]).name == MODELS["large"].filename


def _compose_cli() -> list[str] | None:
    for cli in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cli[0]) is None:
            continue
        try:
            if subprocess.run([*cli, "version"], check=False, capture_output=True, timeout=30).returncode == 0:
                return cli
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


@pytest.mark.parametrize("files", COMPOSE_SETS, ids="+".join)
def test_docker_compose_config_accepts(files: tuple[str, ...]) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    args = [a for f in files for a in ("-f", f)]
    done = subprocess.run([*cli, *args, "config", "-q"], check=False, cwd=COMPOSE, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# --- Dockerfiles and .dockerignore --------------------------------------------------------------


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_follows_the_image_rules(path: Path) -> None:
    assert dockerfile_problems(path, dockerignore_patterns(ROOT / ".dockerignore")) == []


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_llama_cpp_python_pin_matches_pyproject(path: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (pin,) = [d.split("==")[1] for d in project["dependencies"] if d.startswith("llama-cpp-python==")]
    _args, stages = parse_dockerfile(path.read_text(encoding="utf-8"))
    assert arg_default(stages[0], "LLAMA_CPP_PYTHON_VERSION") == pin


def test_cuda_image_builds_with_cuda_and_runs_on_the_matching_runtime() -> None:
    args, (build, final) = parse_dockerfile((DOCKER / "Dockerfile.cuda").read_text(encoding="utf-8"))
    assert build.base == "nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION}"
    assert final.base == "nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}"
    assert args["CUDA_VERSION"] and args["UBUNTU_VERSION"]
    assert "-DGGML_CUDA=on" in (arg_default(build, "CMAKE_ARGS") or "")
    assert any("CMAKE_ARGS=" in run and "llama-cpp-python==" in run for run in build.all("RUN"))
    env = final.env()
    assert env["ESPALIER_LARGE_N_GPU_LAYERS"] == env["ESPALIER_SMALL_N_GPU_LAYERS"] == "-1"


def test_dockerignore_keeps_local_state_out_and_the_sources_in() -> None:
    patterns = dockerignore_patterns(ROOT / ".dockerignore")
    for path in (".venv/bin/python", ".git/HEAD", "tests/unit/test_layering.py", "service/__pycache__/x.pyc"):
        assert dockerignored(path, patterns), path
    for path in ("pyproject.toml", "service/server.py", "protos/espalier/v1/espalier_pb2.py"):
        assert not dockerignored(path, patterns), path
