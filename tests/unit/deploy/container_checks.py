"""Offline checks of the container images' Dockerfiles, the compose files and .dockerignore.

Owns a small Dockerfile reader (stages, instructions, the final image's ENV), the rules an Espalier
image must follow (multi-stage, non-root numeric USER, a HEALTHCHECK through the gRPC health
probe, `espalier serve` as the command, the gRPC port exposed and the models folder a volume), the
rules a compose file must follow (declared volumes, existing build files and bind mounts,
healthchecks where something waits for health or a port is published), and Docker's .dockerignore
matching. Problems are returned as lines, as in k8s_checks.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
PROBE_MODULE = "espalier.clients.python.healthcheck"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for cmd, args in self.instructions if cmd == instruction]

    def last(self, instruction: str) -> str | None:
        found = self.all(instruction)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            words = shlex.split(args)
            if words and "=" not in words[0]:  # the old `ENV KEY value` form
                out[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                out[key] = value
        return out


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Continuation lines are joined and comments dropped, as Docker does."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        cmd, _, args = line.partition(" ")
        cmd, args = cmd.upper(), args.strip()
        if cmd == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            if cmd == "ARG":
                key, _, value = args.partition("=")
                global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append((cmd, args))
    return global_args, stages


def arg_default(stage: Stage, name: str) -> str | None:
    for args in stage.all("ARG"):
        key, _, value = args.partition("=")
        if key == name:
            return value.strip('"')
    return None


def exec_form(args: str | None) -> list[str] | None:
    try:
        value = json.loads(args or "")
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def dockerfile_problems(path: Path, ignore: list[str] | None = None) -> list[str]:
    """Everything wrong with an Espalier image's Dockerfile; [] when it follows the rules."""
    _args, stages = parse_dockerfile(path.read_text(encoding="utf-8"))
    if len(stages) < 2:
        return [f"{path.name}: not multi-stage (build tools would ship in the image)"]
    final, earlier = stages[-1], {s.name for s in stages[:-1] if s.name}
    out = []
    sources = {m.group(1) for a in final.all("COPY") if (m := re.match(r"--from=(\S+)", a))}
    if not sources & earlier:
        out.append(f"{path.name}: the final stage copies nothing from a build stage")
    user = (final.last("USER") or "").split(":")[0]
    if not user.isdigit() or int(user) == 0:
        out.append(f"{path.name}: the final USER must be a non-root numeric uid (got {user or 'none'!r})")
    check = re.search(r"(?:^|\s)CMD\s+(.*)$", final.last("HEALTHCHECK") or "")
    probe = exec_form(check.group(1)) if check else None
    if probe is None or PROBE_MODULE not in probe:
        out.append(f"{path.name}: HEALTHCHECK must run `python -m {PROBE_MODULE}` in exec form")
    command = (exec_form(final.last("ENTRYPOINT")) or []) + (exec_form(final.last("CMD")) or [])
    if command[:2] != ["espalier", "serve"]:
        out.append(f"{path.name}: ENTRYPOINT + CMD run {command!r}, not `espalier serve`")
    env = final.env()
    exposed = {w.split("/")[0] for a in final.all("EXPOSE") for w in a.split()}
    if env.get("ESPALIER_PORT") not in exposed:
        out.append(f"{path.name}: ESPALIER_PORT={env.get('ESPALIER_PORT')} is not EXPOSEd ({sorted(exposed)})")
    volumes = {v for a in final.all("VOLUME") for v in (exec_form(a) or a.split())}
    if env.get("ESPALIER_MODELS_DIR") not in volumes:
        out.append(f"{path.name}: ESPALIER_MODELS_DIR={env.get('ESPALIER_MODELS_DIR')} is not a VOLUME")
    for stage in stages:
        for args in stage.all("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if args.startswith("--from"):
                continue
            for source in words[:-1]:
                if not (ROOT / source).exists():
                    out.append(f"{path.name}: COPY {source}: no such file in the repository")
                elif ignore is not None and dockerignored(source, ignore):
                    out.append(f"{path.name}: COPY {source}: excluded by .dockerignore")
    return out


# --- .dockerignore ------------------------------------------------------------------------------


def dockerignore_patterns(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pattern(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or a folder above it decides; `!` re-includes."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern(raw.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


# --- compose ------------------------------------------------------------------------------------


def load_compose(*paths: Path) -> dict[str, Any]:
    """The files merged the way `docker compose -f a -f b` merges the parts used here (mappings
    merged key by key, everything else replaced)."""
    merged: dict[str, Any] = {}
    for path in paths:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"{path}: not a mapping")
        _merge(merged, data)
    return merged


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def compose_problems(data: dict[str, Any], folder: Path) -> list[str]:
    """Everything wrong with a (merged) compose document whose files live in `folder`."""
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        return ["no services"]
    declared = set((data.get("volumes") or {}).keys())
    out = []
    for name, svc in services.items():
        where = f"service {name!r}"
        if not svc.get("image") and not svc.get("build"):
            out.append(f"{where}: neither image nor build")
        build = svc.get("build")
        if isinstance(build, dict):
            context = folder / build.get("context", ".")
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                out.append(f"{where}: build file {build.get('dockerfile')!r} not found "
                           f"in {build.get('context')!r}")
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                if not (folder / source).exists():
                    out.append(f"{where}: bind mount {source!r} does not exist")
            elif source not in declared:
                out.append(f"{where}: volume {source!r} is not declared under top-level volumes")
        for other, cond in _depends_on(svc).items():
            if other not in services:
                out.append(f"{where}: depends on unknown service {other!r}")
            elif cond == "service_healthy" and not _healthcheck(services[other]):
                out.append(f"{where}: waits for {other!r} to be healthy, which has no healthcheck")
        if svc.get("ports") and not _healthcheck(svc):
            out.append(f"{where}: publishes ports but has no healthcheck")
        check = svc.get("healthcheck")
        if check is not None and (not _healthcheck(svc) or not str(check.get("interval", "")).endswith("s")):
            out.append(f"{where}: healthcheck needs a test (CMD ... or CMD-SHELL ...) and an interval")
    return out


def _depends_on(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}


def _healthcheck(svc: dict[str, Any]) -> bool:
    check = svc.get("healthcheck") or {}
    test = check.get("test")
    return (not check.get("disable") and isinstance(test, list) and len(test) > 1
            and test[0] in ("CMD", "CMD-SHELL"))


def seconds(duration: str) -> float:
    """A compose duration ("30s", "2m", "1m30s") in seconds."""
    parts = re.findall(r"([0-9.]+)(ms|s|m|h)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def image(dockerfile: Path) -> Stage:
    """The final stage of a Dockerfile: the image that runs."""
    return parse_dockerfile(dockerfile.read_text(encoding="utf-8"))[1][-1]
