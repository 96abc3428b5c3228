"""`espalier router train / eval`: fit the learned router on labelled questions and measure any router.

train: features of every question from the chosen role's model, regularisation and threshold chosen
by 5-fold cross-validation, weights written with the model's name and sha256.
eval: the router as `auto` runs it (near-certain rules, then the classifier where its weights fit the
loaded model, else the rules) on a labelled set, beside the rules alone; with --json one object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from espalier.planner.engine import Pooling, Role
from espalier.planner.plan import Route
from espalier.planner.settings import DEFAULT_SETTINGS
from espalier.service.bench.questions import label_rows


def _progress(label: str):
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= 2.0:  # a line every 2 s at most (logs, CI)
            last[0] = now
            print(f"[{label}] {done}/{total} questions", file=sys.stderr, flush=True)
    return show


async def _engine(args: argparse.Namespace, roles: Sequence[Role]):
    """An engine with these roles loaded; --model names the first role's model, the others are their defaults."""
    from espalier.service.engine.config import ContextConfig, EngineConfig
    from espalier.service.engine.llama_engine import LlamaEngine

    contexts = {}
    for i, role in enumerate(dict.fromkeys(roles)):
        model = (args.model if i == 0 else "") or role.value  # "small" / "large": the default model of that role
        print(f"[router] loading the {role.value} model ({model})", file=sys.stderr, flush=True)
        contexts[role.value] = ContextConfig(model=model, slots=1, n_ctx=2048, threads=args.threads,
                                             n_gpu_layers=args.gpu_layers)
    return await LlamaEngine.load(EngineConfig(**contexts))


def _also(text: str) -> tuple[Role, Pooling, float]:
    """`large:0.5` or `large:0.5:mean`: another model state to append to the feature."""
    role, _, rest = text.partition(":")
    depth, _, pooling = rest.partition(":")
    try:
        parsed = Role(role), Pooling(pooling or "last"), float(depth)
    except ValueError:
        parsed = None
    if parsed is None or not 0.0 < parsed[2] <= 1.0:
        raise argparse.ArgumentTypeError(f"--also wants ROLE:DEPTH[:POOLING] with DEPTH in (0, 1] (like large:0.5), "
                                         f"got {text!r}")
    return parsed


async def _train(args: argparse.Namespace) -> int:
    from espalier.service.router_training import Recipe, train

    recipe = Recipe(role=Role(args.role), pooling=Pooling(args.pooling), depth=args.depth, also=tuple(args.also))
    engine = await _engine(args, [part.role for part in recipe.parts()])
    try:
        weights = await train(engine, args.labels, recipe, _progress("features"), _cache(args))
    finally:
        await engine.aclose()
    Path(args.out).write_text(weights.to_json(), encoding="utf-8")
    cv = weights.trained["cross_validated"]
    print(f"wrote {args.out}: {weights.model.name}, {weights.trained['n']} questions, c {weights.trained['c']}, "
          f"threshold {weights.threshold}")
    print(f"5-fold cross-validated: accuracy {cv['accuracy']}, balanced accuracy {cv['balanced_accuracy']}, "  # type: ignore[index]
          f"precision {cv['precision']}, recall {cv['recall']}")  # type: ignore[index]
    return 0


def _cache(args: argparse.Namespace) -> Path | None:
    from espalier.service.engine.models import default_cache_dir

    return None if args.no_cache else default_cache_dir() / "router-features"


async def _cross_validate(args: argparse.Namespace) -> dict[str, object]:
    """Nested 5-fold cross-validation of the router as it runs, with the weights' recipe."""
    import numpy as np

    from espalier.planner.router import NEAR_CERTAIN, rules_route
    from espalier.planner.router_model import RouterWeights
    from espalier.service.router_training import Recipe, features, nested_cross_validation

    w = RouterWeights.load(args.weights or None)
    recipe = Recipe(role=w.role, pooling=w.pooling, depth=w.depth, instruction=w.instruction,
                    max_question_chars=w.max_question_chars, also=tuple((a.role, a.pooling, a.depth) for a in w.also))
    rows = label_rows(args.labels)
    engine = await _engine(args, [part.role for part in recipe.parts()])
    try:
        x = await features(engine, recipe, [q for _, q in rows], _progress("features"), _cache(args))
    finally:
        await engine.aclose()
    ruled = []
    for _, question in rows:
        rule = rules_route(question)
        ruled.append(rule.route is not Route.DIRECT if rule is not None and rule.detail in NEAR_CERTAIN else None)
    y = np.asarray([label for label, _ in rows], dtype=np.float64)
    return {**nested_cross_validation(x, y, ruled, recipe), "labels": str(args.labels),
            "method": "nested 5-fold cross-validation (fold = row index mod 5): each fold routed by near-certain "
                      "rules, then a classifier trained, regularisation and threshold chosen, on the other folds",
            "rule_override_rate": round(sum(r is not None for r in ruled) / len(ruled), 4) if ruled else 0.0}


async def _evaluate(args: argparse.Namespace) -> dict[str, object]:
    from espalier.planner.router_model import RouterWeights
    from espalier.service.router_training import evaluate

    roles = [Role.SMALL]  # the rules alone need no model, but an engine needs one
    if args.weights != "none":  # every model the weights read (the packaged default's: the small model)
        roles = [source.role for source in RouterWeights.load(args.weights or None).sources()]
    engine = await _engine(args, roles)
    try:
        return await evaluate(engine, args.labels, DEFAULT_SETTINGS.replace(router_weights=args.weights),
                              _progress("router"))
    finally:
        await engine.aclose()


def _print_eval(result: dict[str, object]) -> None:
    print(f"{result['labels']}: {result['n']} questions" + (f", {result['method']}" if "method" in result else ""))
    print(f"  accuracy {result['accuracy']}  balanced accuracy {result['balanced_accuracy']}  "
          f"precision {result['precision']}  recall {result['recall']}")
    print(f"  confusion: tp {result['tp']}  fn {result['fn']}  fp {result['fp']}  tn {result['tn']}")
    if "decided_by" not in result:
        print(f"  near-certain rules decide {result['rule_override_rate']:.1%} of questions")
        return
    print(f"  decided by: {result['decided_by']}  (near-certain rules override the classifier on "
          f"{result['rule_override_rate']:.1%} of questions)")
    rules = result["rules_alone"]
    print(f"  the rules alone: accuracy {rules['accuracy']}  balanced accuracy {rules['balanced_accuracy']}  "  # type: ignore[index]
          f"precision {rules['precision']}  recall {rules['recall']}")  # type: ignore[index]
    print(f"  routing time: median {result['route_seconds_median']} s, p90 {result['route_seconds_p90']} s")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-cache", action="store_true",
                   help="compute the question features again (kept in the model cache's router-features/)")
    p.add_argument("--model", default="", help="GGUF file or default model name (default: the role's default)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--gpu-layers", type=int, default=0, help="layers offloaded to the GPU (-1 = all)")


def run(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="espalier router", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="fit the learned router on a labelled `label;request` CSV")
    tr.add_argument("--labels", required=True, help="`label;request` CSV (1 = suits a skeleton)")
    tr.add_argument("--out", required=True, help="where to write the weights (JSON)")
    tr.add_argument("--role", default="small", choices=[r.value for r in Role],
                    help="whose model computes the feature (default small: fast)")
    tr.add_argument("--pooling", default="last", choices=[p.value for p in Pooling],
                    help="the state after the instruction (last) or the mean over the prompt")
    tr.add_argument("--depth", type=float, default=0.75,
                    help="where in the model the state is read: 1.0 the final layer, 0.75 (default) three quarters down")
    tr.add_argument("--also", type=_also, action="append", default=[], metavar="ROLE:DEPTH[:POOLING]",
                    help="another model's state of the same prompt, appended to the feature (e.g. large:0.5); "
                         "routing then needs that model loaded too")
    _add_model_args(tr)
    ev = sub.add_parser("eval", help="accuracy, precision, recall and balanced accuracy on labelled questions")
    ev.add_argument("--labels", required=True, help="`label;request` CSV (1 = suits a skeleton)")
    ev.add_argument("--weights", default="", help="weights file; empty = the packaged default; none = rules only")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--cross-validate", action="store_true",
                    help="nested 5-fold cross-validation on the labels (train on four folds, route the fifth) "
                         "with the weights' recipe, instead of routing with the weights themselves")
    _add_model_args(ev)
    args = parser.parse_args(list(argv))
    if args.cmd == "train":
        return asyncio.run(_train(args))
    result = asyncio.run(_cross_validate(args) if args.cross_validate else _evaluate(args))
    if args.json:
        print(json.dumps(result))
    else:
        _print_eval(result)
    return 0
