"""`espalier ask "question"`: ask a running server and watch the answer being built.

Owns the command's flags and its two outputs: the live terminal view (default) and JSON lines of
the raw events (`--json`, for scripts).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format

from clients.python.client import MODES, EspalierClient, TlsOptions, settings
from clients.python.live_view import LiveView


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="espalier ask", description="Ask an Espalier server a question and "
                                "watch every point fill in as it is decoded.")
    p.add_argument("question", help="the question (use quotes)")
    p.add_argument("--mode", choices=tuple(MODES), default="auto",
                   help="auto (router decides), direct, sot (parallel points) or sgd (point graph)")
    p.add_argument("--target", default=os.environ.get("ESPALIER_TARGET", "localhost:50051"),
                   help="server address host:port (env ESPALIER_TARGET; default localhost:50051)")
    p.add_argument("--json", action="store_true", help="print each event as one JSON line")
    p.add_argument("--token", default=os.environ.get("ESPALIER_TOKEN"), help="shared token (env ESPALIER_TOKEN)")
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) to verify the server: enables TLS")
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mutual TLS")
    p.add_argument("--tls-key", type=Path, help="client key (PEM) for mutual TLS")
    p.add_argument("--point-tokens", type=int, help="token budget per point (server default if unset)")
    p.add_argument("--answer-tokens", type=int, help="token budget of a direct answer (server default if unset)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 0: greedy)")
    p.add_argument("--timeout", type=float, default=600.0, help="deadline in seconds (default 600)")
    p.add_argument("--wait", type=float, default=0.0,
                   help="wait up to this many seconds for the server to report SERVING first")
    return p


async def _ask(args: argparse.Namespace) -> int:
    tls = TlsOptions(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    generation = settings(point_max_tokens=args.point_tokens, answer_max_tokens=args.answer_tokens,
                          temperature=args.temperature)
    async with EspalierClient(args.target, token=args.token, tls=tls, timeout_s=args.timeout) as client:
        if args.wait:
            await client.wait_serving(args.wait)
        if args.json:
            async for event in client.ask(args.question, mode=args.mode, generation=generation):
                print(json_format.MessageToJson(event, indent=None), flush=True)
            return 0
        view = LiveView(sys.stdout)
        try:
            async for event in client.ask(args.question, mode=args.mode, generation=generation):
                view.update(event)
        finally:
            view.finish()
    return 0


def run(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_ask(args))
    except grpc.aio.AioRpcError as err:
        print(f"espalier ask: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
