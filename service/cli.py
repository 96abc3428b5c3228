"""The `espalier` command: a thin dispatcher; each command group lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

# Each entry registers one command group: (module path, function name). Imported lazily so that
# `espalier models list` does not pay for loading llama.cpp or grpc.
_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("models", "espalier.service.engine.models_cli", "Fetch and list the default GGUF models"),
    ("bench", "espalier.service.bench_cli", "Benchmarks that print what they measured"),
    ("serve", "espalier.service.serve_cli", "Run the gRPC server"),
    ("router", "espalier.service.router_cli", "Train and evaluate the learned router"),
    ("ask", "espalier.clients.python.ask_cli", "Ask a running server and watch the answer being built"),
)


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    parser = argparse.ArgumentParser(prog="espalier", description="Espalier: skeleton-graph decoding service")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    modules: dict[str, str] = {}
    for name, module, help_text in _GROUPS:
        modules[name] = module
        sub.add_parser(name, help=help_text, add_help=False)
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    import importlib

    args = list(sys.argv[1:] if argv is None else argv)
    parser, modules = _build_parser()
    if not args or args[0] not in modules:
        parser.parse_args(args)  # prints usage / help and exits
        return 2
    module = importlib.import_module(modules[args[0]])
    run: Callable[[Sequence[str]], int] = module.run
    return run(args[1:])


if __name__ == "__main__":
    sys.exit(main())
