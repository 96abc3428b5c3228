"""`espalier ask "question"`: ask a running server and watch the answer being built.

Owns the command's flags and its two outputs: the live terminal view (default) and JSON lines of
the raw events (`--json`, for scripts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format

from espalier.clients.python.client import MODES, EspalierClient, TlsOptions, Turn, settings
from espalier.clients.python.live_view import LiveView


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="espalier ask", description="Ask an Espalier server a question and "
                                "watch every point fill in as it is decoded.")
    p.add_argument("question", nargs="?", default="",
                   help="the question (use quotes); may be left out when --messages ends with it")
    p.add_argument("--system", default="",
                   help="standing instructions for the whole answer (a persona, the language, house style)")
    p.add_argument("--messages", type=Path, metavar="FILE",
                   help="the conversation so far as JSON, '-' for stdin: [{\"role\": \"system\" | \"user\" | "
                        "\"assistant\", \"content\": \"...\"}, ...]; the question is the last user message, or "
                        "the question argument when given")
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


class UsageError(Exception):
    """A flag or file the command cannot use (printed, exit code 2)."""


def conversation(question: str, system: str, messages_file: Path | None) -> tuple[str, str, list[Turn]]:
    """(question, system, earlier turns) from the arguments: --messages' turns, the question argument
    (or else the file's last message, which must then be the user's), --system before any in the file."""
    turns: list[Turn] = []
    if messages_file is not None:
        try:
            text = sys.stdin.read() if str(messages_file) == "-" else messages_file.read_text(encoding="utf-8")
            data = json.loads(text)
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"--messages: cannot read {messages_file}: {exc}") from None
        if not isinstance(data, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in data):
            raise UsageError('--messages: expected a JSON array of {"role": ..., "content": ...} objects')
        turns = [(m["role"], m["content"]) for m in data]
    if not question:
        if not turns or turns[-1][0] != "user":
            raise UsageError("give the question, or a --messages file whose last message is the user's question")
        question = turns.pop()[1]
    return question, system, turns


async def _ask(args: argparse.Namespace) -> int:
    tls = TlsOptions(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    generation = settings(point_max_tokens=args.point_tokens, answer_max_tokens=args.answer_tokens,
                          temperature=args.temperature)
    question, system, history = conversation(args.question, args.system, args.messages)
    async with EspalierClient(args.target, token=args.token, tls=tls, timeout_s=args.timeout) as client:
        if args.wait:
            await client.wait_serving(args.wait)
        events = client.ask(question, mode=args.mode, generation=generation, system=system, history=history)
        if args.json:
            async for event in events:
                print(json_format.MessageToJson(event, indent=None), flush=True)
            return 0
        view = LiveView(sys.stdout)
        try:
            async for event in events:
                view.update(event)
        finally:
            view.finish()
    return 0


def run(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_ask(args))
    except UsageError as err:
        print(f"espalier ask: {err}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as err:
        print(f"espalier ask: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
