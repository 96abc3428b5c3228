"""`espalier bench ...`: benchmark commands. Each prints what it measured, as JSON when asked."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence


def _engine(args: argparse.Namespace) -> int:
    from service.engine.bench import BenchSettings, run_engine_bench

    settings = BenchSettings(model=args.model, tokens=32 if args.quick else args.tokens,
                             counts=tuple(args.sequences), threads=args.threads)
    result = asyncio.run(run_engine_bench(settings))
    if args.json:
        print(json.dumps(result))
    else:
        for row in result["results"]:  # type: ignore[union-attr]
            print(f"{row['sequences']:>2} sequences: engine {row['tokens_per_s']:7.1f} tok/s, "
                  f"raw {row['raw_tokens_per_s']:7.1f} tok/s")
        for key in ("speedup_4", "raw_speedup_4", "engine_vs_raw_4", "prefix_reuse"):
            print(f"{key}: {result.get(key)}")
    return 0


def run(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="espalier bench", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    eng = sub.add_parser("engine", help="engine throughput at 1..8 sequences vs a bare llama_decode loop")
    eng.add_argument("--model", default="small", help="small, large or a GGUF path (default: small)")
    eng.add_argument("--json", action="store_true", help="print one JSON object")
    eng.add_argument("--quick", action="store_true", help="32 tokens per sequence: under a minute on 2 cores")
    eng.add_argument("--tokens", type=int, default=128, help="tokens generated per sequence (default 128)")
    eng.add_argument("--sequences", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrency levels")
    eng.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    eng.set_defaults(func=_engine)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
