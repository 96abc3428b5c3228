"""`python -m espalier.clients.python.healthcheck`: the health probe the container images run.

Owns one question and its exit status: does the server answer the standard `grpc.health.v1` Check
with SERVING? Exit 0 only then; 1 for NOT_SERVING (models loading, draining), an unknown service,
an unreachable port or a timeout. One line on stdout says which, so `docker inspect` shows why a
container is unhealthy.

It lives with the clients, not the server, because it is a client: it reuses EspalierClient's
channel set-up (TLS, mutual TLS) and imports nothing of the service, so it starts fast enough to
run every few seconds. The default target follows ESPALIER_PORT, the variable the server in the
same container reads, so a probe and its server cannot disagree about the port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from espalier.clients.python.client import SERVICE_NAME, EspalierClient, TlsOptions

DEFAULT_PORT = "50051"
EXIT_SERVING = 0
EXIT_UNHEALTHY = 1  # Docker reads 1 as unhealthy; 2 is reserved there, so no failure uses it


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    port = environ.get("ESPALIER_PORT", "").strip() or DEFAULT_PORT
    p = argparse.ArgumentParser(prog="python -m espalier.clients.python.healthcheck",
                                description="Exit 0 when the Espalier server reports SERVING, else 1.")
    p.add_argument("--target", default=f"localhost:{port}",
                   help="host:port of the server (default localhost:$ESPALIER_PORT, else localhost:50051)")
    p.add_argument("--service", default=SERVICE_NAME,
                   help=f"health service name to check (default {SERVICE_NAME}; '' = the whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) that signed the server's: enables TLS")
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM), when the server wants mutual TLS")
    p.add_argument("--tls-key", type=Path, help="client key (PEM) of --tls-cert")
    p.add_argument("--tls-server-name", help="name to expect in the server certificate instead of the host")
    return p


def tls_options(args: argparse.Namespace) -> TlsOptions | None:
    """TLS settings from the flags; None (plaintext) unless --tls-ca is given."""
    if args.tls_ca is None:
        return None
    return TlsOptions(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


async def probe(target: str, *, service: str = SERVICE_NAME, tls: TlsOptions | None = None,
                timeout_s: float = 3.0) -> str:
    """The serving status name (SERVING, NOT_SERVING, ...) or, when the call fails, the gRPC code
    name (UNAVAILABLE, DEADLINE_EXCEEDED, NOT_FOUND for an unknown service, ...)."""
    async with EspalierClient(target, tls=tls, timeout_s=timeout_s) as client:
        try:
            return await client.health(timeout_s, service=service)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser(os.environ if environ is None else environ).parse_args(argv)
    try:
        status = asyncio.run(probe(args.target, service=args.service, tls=tls_options(args),
                                   timeout_s=args.timeout))
    except OSError as exc:  # an unreadable PEM file: unhealthy, and say why
        status = f"cannot read TLS files: {exc}"
    print(f"{args.target} {args.service or '(server)'}: {status}")
    return EXIT_SERVING if status == "SERVING" else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
