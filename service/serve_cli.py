"""`espalier serve`: the command-line face of espalier.service.server.

Owns turning argv + environment + config file into ServerSettings (via espalier.service.settings, which also
writes `--help`), the process's logging (text or JSON lines, every record tagged with the request id
of the call it belongs to) and running `serve` on uvloop. Exit status: 0 after a clean shutdown,
1 when the models could not be loaded, 2 for bad settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from espalier.service.settings import SettingsError, build_parser, from_flags, to_toml


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (the call being served, or '-') to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        from espalier.service.servicer import REQUEST_ID

        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, request_id, message (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, fmt: str, stream: object = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def run(argv: Sequence[str]) -> int:
    args = vars(build_parser().parse_args(list(argv)))  # --help and malformed flags exit here (status 2)
    try:
        settings = from_flags(args, os.environ)
    except SettingsError as exc:
        print(f"espalier serve: error: {exc}", file=sys.stderr)
        return 2
    if args.get("print_settings"):
        sys.stdout.write(to_toml(settings))
        return 0
    configure_logging(settings.log_level, settings.log_format)

    from espalier.service.server import serve  # grpc and the planner load only when actually serving

    try:
        import uvloop
    except ImportError:  # Windows: no uvloop; the standard loop works, a little slower
        return asyncio.run(serve(settings))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
