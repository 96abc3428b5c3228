"""Building and running the gRPC server.

Owns the server's assembly (`build`: the Espalier servicer, the standard health
service, server reflection, the shared-token interceptor, TLS credentials, message size limits,
the metrics catalogue wired to the engine and admission) and the process lifecycle (`serve`):
listen first with health NOT_SERVING, load the models (`load_engines`: the roles with remote URLs
go to espalier.service.remote, the rest to the embedded engine), register the planner's resident prefixes,
flip to SERVING; on SIGTERM/SIGINT the fixed shutdown order (habit 8): health NOT_SERVING, refuse
new work, `server.stop(grace)`, engine drain and close. Nothing here is global (habit 1): tests
build servers on port 0 around whatever engine they like.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # the aio health servicer (health.aio in the package)
from grpc_reflection.v1alpha import reflection

from espalier.planner import pipeline
from espalier.planner.engine import Engine, EngineError
from espalier.planner.settings import PlannerSettings
from espalier.service import errors, wire_decoding
from espalier.service.metrics import ServiceMetrics, start_metrics_server
from espalier.service.mixed_engine import MixedEngine
from espalier.service.remote.remote_engine import RemoteEngine
from espalier.service.servicer import EspalierServicer
from espalier.service.settings import ServerSettings
from espalier.v1 import espalier_pb2 as pb

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EspalierService"].full_name
HEALTH_EXEMPT = "/grpc.health.v1.Health/"  # probes carry no token, and health reveals nothing
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVING = health_pb2.HealthCheckResponse.SERVING

UNWIND_S = 5.0  # how long cancelled calls get to close their engine sequences before the engine closes
EngineLoader = Callable[[ServerSettings], Coroutine[Any, Any, Engine]]


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` (UNAUTHENTICATED), health checks excepted."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_EXEMPT):
            return handler
        for key, value in details.invocation_metadata or ():
            # constant time, so the token cannot be guessed byte by byte from response times
            if key == "authorization" and isinstance(value, str) and hmac.compare_digest(value.encode(),
                                                                                         self._expected):
                return handler
        return _denying(handler)


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with UNAUTHENTICATED."""

    async def deny(request: object, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, AsyncIterable):  # a client-streaming call: let its writes land first
            await errors.drain_requests(request)
        await errors.abort(context, errors.Unauthenticated(
            "this server needs metadata 'authorization: Bearer <token>' (missing or wrong)"))

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    return grpc.stream_stream_rpc_method_handler(deny, **kw)


def _credentials(settings: ServerSettings) -> grpc.ServerCredentials:
    key = Path(settings.tls_key).read_bytes()
    chain = Path(settings.tls_cert).read_bytes()
    ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=ca is not None)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass
class Server:
    """A built (not yet started) server and the parts its lifecycle needs."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    servicer: EspalierServicer
    metrics: ServiceMetrics

    async def set_serving(self, serving: bool) -> None:
        status = _SERVING if serving else _NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        self.metrics.serving.set(1 if serving else 0)


async def build(settings: ServerSettings, engine: Engine | None = None,
                metrics: ServiceMetrics | None = None) -> Server:
    """Assemble a server bound to settings.host:port (0 = any). Health starts NOT_SERVING."""
    settings = settings.validate()
    metrics = metrics or ServiceMetrics()
    size = settings.max_message_bytes
    options = [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ]
    interceptors = [TokenAuth(settings.auth_token)] if settings.auth_token else []
    # grpc's own limit sits above ours (ours answers with a retry hint): headroom for health,
    # reflection and the calls we refuse.
    ceiling = settings.max_in_flight + settings.max_waiting + settings.max_streams + 64
    server = grpc.aio.server(interceptors=interceptors, options=options, maximum_concurrent_rpcs=ceiling)

    servicer = EspalierServicer(settings, metrics, engine)
    # as espalier_pb2_grpc.add_EspalierServiceServicer_to_server does, with requests that fail to decode turned into
    # INVALID_ARGUMENT naming the field instead of UNKNOWN / INTERNAL (service/wire_decoding.py)
    wire_decoding.add_servicer(servicer, server, pb.DESCRIPTOR.services_by_name["EspalierService"])
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)

    metrics.track_engine(lambda: _engine_samples(servicer.engine))
    for adm in (servicer.admission, servicer.streams):
        metrics.track_admission(adm.name, lambda a=adm: _admission_sample(a))  # type: ignore[misc]

    address = _address(settings.host, settings.port)
    try:
        port = server.add_secure_port(address, _credentials(settings)) if settings.tls else \
            server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc raises when it cannot bind
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    parts = Server(server, port, health, servicer, metrics)
    await parts.set_serving(False)
    return parts


def _log_listening(settings: ServerSettings, port: int, metrics_port: int | None) -> None:
    log.info("listening on %s (%s), metrics %s; loading models (health NOT_SERVING)",
             _address(settings.host, port), "TLS" if settings.tls else "plaintext",
             f"on {_address(settings.metrics_host, metrics_port)}/metrics" if metrics_port else "off")
    if not settings.tls and not settings.auth_token and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without TLS or a token: anyone who can reach it can use it", settings.host)


async def _drop_loading(loader: asyncio.Task[Engine]) -> None:
    """Stop a model load the server will not use: cancel it, or free the engine it loaded just as we stopped."""
    if not loader.done():
        loader.cancel()
        await asyncio.wait({loader})  # unlike `await loader`, never mistakes its cancel for ours
    if not loader.cancelled() and loader.exception() is None:
        await loader.result().aclose(0)


def _engine_samples(engine: Engine | None) -> Iterable[tuple[str, dict[str, float]]]:
    if engine is None:
        return []
    return [(r.role.value, {"slots_busy": r.slots_busy, "slots_total": r.slots_total, "queue_depth": r.queue_depth,
                            "tokens_per_s": r.tokens_per_s, "reused_tokens": r.reused_tokens,
                            "generated_tokens": r.generated_tokens, "spec_k": r.spec_k,
                            "spec_drafted": r.spec_drafted, "spec_accepted": r.spec_accepted,
                            "verify_cost": dict(r.verify_cost)})
            for r in engine.stats().roles]


def _admission_sample(admission: Any) -> tuple[int, int, int]:
    s = admission.stats()
    return s.in_flight, s.waiting, s.rejected


async def warm_up(engine: Engine, planner: PlannerSettings) -> int:
    """Prefill the planner's question-independent prompt prefixes once (if the engine keeps any)."""
    add = getattr(engine, "add_resident_prefix", None)
    if add is None:
        return 0
    tokens = 0
    for role, text in pipeline.resident_prefixes(engine, planner):
        try:
            tokens += int(await add(role, text))
        except EngineError as exc:  # a missing prefix only costs speed; serve anyway
            log.warning("resident prefix for %s not kept: %s", role.value, exc)
    return tokens


async def load_llama_engine(settings: ServerSettings) -> Engine:
    from espalier.service.engine.llama_engine import LlamaEngine  # imported late: llama.cpp is heavy

    return await LlamaEngine.load(settings.engine_config())


async def load_engines(settings: ServerSettings, load_local: EngineLoader = load_llama_engine) -> Engine:
    """Roles with remote URLs over HTTP, the others embedded (loaded by `load_local`); one engine either way."""
    remote_roles = settings.remote_roles()
    if not remote_roles:
        return await load_local(settings)
    remote = RemoteEngine(remote_roles)
    for url, state in (await remote.probe()).items():
        (log.info if state == "ok" else log.warning)("remote server %s: %s", url, state)
    if not settings.engine_config().roles():
        return remote
    try:
        local = await load_local(settings)
    except BaseException:
        await remote.aclose(0)
        raise
    return MixedEngine([remote, local])


async def shutdown(parts: Server, engine: Engine | None, grace_s: float) -> None:
    """The fixed order: health NOT_SERVING, refuse new work, stop the server within grace, drain the engine."""
    started = time.monotonic()
    await parts.health.enter_graceful_shutdown()
    parts.metrics.serving.set(0)
    parts.servicer.drain()
    await parts.server.stop(grace_s)  # in-flight calls finish or, after grace_s, are cancelled
    if not await parts.servicer.wait_idle(UNWIND_S):  # cancelled calls close their engine sequences
        log.warning("some calls did not unwind within %.0fs of their cancellation", UNWIND_S)
    if engine is not None:
        await engine.aclose(max(0.0, grace_s - (time.monotonic() - started)))


async def serve(settings: ServerSettings, *, load_engine: EngineLoader | None = None,
                stop: asyncio.Event | None = None, install_signals: bool = True,
                on_listening: Callable[[int, int | None], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); returns the process exit code.

    load_engine: how the models are loaded (default: `load_engines`, from the settings); tests inject
    one they can hold. on_listening(port, metrics_port) is called once the port is open.
    """
    settings = settings.validate()
    stop = stop or asyncio.Event()
    parts = await build(settings)
    metrics_server: asyncio.Server | None = None
    metrics_port: int | None = None
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    engine: Engine | None = None
    loader: asyncio.Task[Engine] | None = None
    code = 0
    try:
        if settings.metrics_port >= 0:
            metrics_server, metrics_port = await start_metrics_server(
                parts.metrics.registry, settings.metrics_host, settings.metrics_port)
        await parts.server.start()
        if install_signals:
            installed = _install_signals(loop, stop)
        _log_listening(settings, parts.port, metrics_port)
        if on_listening is not None:
            on_listening(parts.port, metrics_port)

        loader = asyncio.create_task((load_engine or load_engines)(settings), name="espalier-load")
        stopped = asyncio.create_task(stop.wait(), name="espalier-stop")
        await asyncio.wait({loader, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if stop.is_set() and not loader.done():
            log.info("stop requested while loading the models")
        else:
            try:
                engine = loader.result()
            except Exception as exc:  # noqa: BLE001 - reported once, clearly, as the exit status
                log.error("could not load the models: %s", exc)
                return 1
            prefilled = await warm_up(engine, settings.planner) if settings.resident_prefixes else 0
            parts.servicer.attach(engine)
            await parts.set_serving(True)
            log.info("serving (%s loaded, %d resident prefix tokens)",
                     ", ".join(sorted(r.value for r in engine.roles())), prefilled)
            await stop.wait()
            log.info("stopping: draining for up to %.1fs", settings.grace_s)
    finally:
        if loader is not None and engine is None:
            await _drop_loading(loader)
        await shutdown(parts, engine, settings.grace_s)
        if metrics_server is not None:
            metrics_server.close()
            await metrics_server.wait_closed()
        for sig in installed:
            loop.remove_signal_handler(sig)
        log.info("stopped")
    return code


def _install_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> list[signal.Signals]:
    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: already shutting down (grace period running)", sig.name)
        else:
            log.info("%s received", sig.name)
            stop.set()

    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here (Windows)
            log.debug("cannot install a handler for %s", sig.name)
    return installed
