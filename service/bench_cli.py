"""`espalier bench ...`: benchmark commands. Each prints what it measured, as JSON when asked."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from espalier.planner.settings import DEFAULT_SETTINGS


def _engine(args: argparse.Namespace) -> int:
    from espalier.service.engine.bench import BenchSettings, run_engine_bench

    settings = BenchSettings(model=args.model, tokens=32 if args.quick else args.tokens,
                             counts=tuple(args.sequences), threads=args.threads,
                             rounds=1 if args.quick else args.rounds, gpu_layers=args.gpu_layers)
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


def _spec(args: argparse.Namespace) -> int:
    from espalier.service.engine.bench_spec import SpecBenchSettings, run_spec_bench

    settings = SpecBenchSettings(target=args.target, draft=args.draft, source=args.source, tokens=args.tokens,
                                 rounds=args.rounds, threads=args.threads, gpu_layers=args.gpu_layers,
                                 counts=tuple(args.sequences), draft_max=args.draft_max,
                                 verify_rows=args.verify_rows)
    result = asyncio.run(run_spec_bench(settings))
    if args.json:
        print(json.dumps(result))
        return 0
    for row in result["results"]:  # type: ignore[union-attr]
        print(f"{row['sequences']} seq {row['mode']:>4}: plain {row['tokens_per_s_plain']:6.2f} tok/s, "
              f"spec {row['tokens_per_s_spec']:6.2f} tok/s ({row['speedup']:.2f}x), "
              f"acceptance {row['acceptance_rate']}, k {row['chosen_k']}, identical {row['identical_greedy']}"
              f" (plain repeatable {row['plain_repeatable']})")
        if row["first_difference"]:
            d = row["first_difference"]
            print(f"    first difference: round {d['round']}, sequence {d['sequence']}, after {d['common']!r}: "
                  f"plain {d['expected']!r}, {row['mode']} {d['got']!r}")
    print(f"verify cost (k tokens vs 1): {result['verify_cost']}")
    exact = result["exact_rows"]
    print(f"verify rows: {result['verify_rows'] or 'no limit'}"
          + (f" (measured: a batch of {exact} token(s) gives the logits of one-at-a-time decoding)" if exact >= 0 else ""))
    return 0


def _stream(args: argparse.Namespace) -> int:
    from pathlib import Path

    from espalier.service.bench.stream_bench import StreamBenchOptions, run_stream_bench, summary_lines

    opts = StreamBenchOptions(set_path=Path(args.set) if args.set else None, limit=args.limit, pace_cpm=args.pace,
                              ways=tuple(w.strip() for w in args.ways.split(",") if w.strip()),
                              answer_tokens=args.answer_tokens, note_tokens=args.note_tokens,
                              live_answer_role=args.live_answer_role, large=args.large, small=args.small,
                              threads=args.threads, gpu_layers=args.gpu_layers, skip_idle=not args.real_time)
    try:
        result = asyncio.run(run_stream_bench(opts))
    except ValueError as exc:
        print(f"espalier bench stream: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    for line in summary_lines(result, opts.ways):
        print(line)
    return 0


def _read_result(path: str) -> dict[str, object]:
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(result, dict) or "questions" not in result or "settings" not in result:
        raise ValueError(f"{path} is not a result of `espalier bench answers --json`")
    return result


def _blind(args: argparse.Namespace) -> int:
    from espalier.service.bench.calibration import write_blind

    try:
        modes = [m for m in args.modes.split(",") if m.strip()] if args.modes else None
        for path in write_blind(_read_result(args.result), args.out, modes, args.limit):
            print(path)
    except (ValueError, KeyError) as exc:
        print(f"espalier bench blind: {exc}", file=sys.stderr)
        return 2
    return 0


def _agree(args: argparse.Namespace) -> int:
    from espalier.service.bench.calibration import agreement, agreement_lines, read_verdicts, strong_outcomes

    try:
        result = _read_result(args.result)
        key = json.loads(Path(args.key).read_text(encoding="utf-8"))
        strong = strong_outcomes(key, read_verdicts(*args.mode_first), read_verdicts(*args.direct_first))
        report = agreement(result, strong)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"espalier bench agree: {exc}", file=sys.stderr)
        return 2
    for line in agreement_lines(report):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


def _answers(args: argparse.Namespace) -> int:
    from espalier.service.bench.answers import AnswersOptions, run_answers
    from espalier.service.bench.report import summary_lines

    if args.embedded and args.target:
        print("espalier bench answers: --embedded and --target exclude each other", file=sys.stderr)
        return 2
    opts = AnswersOptions(
        set_path=args.set or "", modes=tuple(m for m in args.modes.split(",") if m.strip()), limit=args.limit,
        target=args.target, token=args.token, labels=args.labels, json_path=args.json, report_path=args.report,
        plot_path=args.plot, point_tokens=args.point_tokens, answer_tokens=args.answer_tokens,
        skeleton_tokens=args.skeleton_tokens, skeleton_role=args.skeleton_role, small_only=args.small_only,
        threads=args.threads, large=args.large, small=args.small, n_ctx=args.ctx, slots=args.slots,
        gpu_layers=args.gpu_layers, judge=args.judge, judge_url=args.judge_url, judge_model=args.judge_model,
        judge_key_env=args.judge_key_env, judge_max_chars=args.judge_max_chars,
        judge_tie_margin=args.judge_tie_margin, judge_logprobs=args.judge_logprobs, judge_mode=args.judge_mode,
        checklists_path=args.checklists, only_suitable=args.only_suitable,
        rejudge_path=args.rejudge)
    if not args.set and not args.rejudge:
        print("espalier bench answers: --set is required (or --rejudge a saved result)", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run_answers(opts))
    except ValueError as exc:  # bad flags or an unreadable question set: say what, no traceback
        print(f"espalier bench answers: {exc}", file=sys.stderr)
        return 2
    for line in summary_lines(result):
        print(line)
    for flag, path in (("json", args.json), ("report", args.report)):
        if path:
            print(f"{flag}: {path}")
    plot = result.get("plot")
    if plot:
        print(f"plot: {plot['path']}" if plot.get("written") else f"plot skipped: {plot.get('reason')}")
    return 0


def _hardware_args(p: argparse.ArgumentParser) -> None:
    """How the models run on this box: the same two flags for every benchmark that loads models."""
    p.add_argument("--threads", type=int, default=0, help="CPU threads per model (default: all cores)")
    p.add_argument("--gpu-layers", type=int, default=0, help="layers offloaded on a GPU build (-1 = all)")


def _load(args: argparse.Namespace) -> int:
    from espalier.service.bench.load import DEFAULT_MIX, LoadOptions, ok, run_load, write_json

    only = [name for name in (args.only or "").split(",") if name]
    if any(name not in DEFAULT_MIX for name in only):
        print(f"espalier bench load: --only takes names from {', '.join(DEFAULT_MIX)}", file=sys.stderr)
        return 2
    mix = {name: DEFAULT_MIX[name] for name in only} if only else dict(DEFAULT_MIX)
    for item in filter(None, (args.mix or "").split(",")):
        name, _, weight = item.partition("=")
        if name not in DEFAULT_MIX or not weight.isdigit():
            print(f"espalier bench load: --mix takes NAME=WEIGHT from {', '.join(DEFAULT_MIX)} (got {item!r})",
                  file=sys.stderr)
            return 2
        mix[name] = int(weight)
    options = LoadOptions(target=args.target or "", clients=args.clients, duration_s=args.duration_s,
                          token=args.token, seed=args.seed, mix={k: v for k, v in mix.items() if v > 0},
                          point_tokens=args.point_tokens, answer_tokens=args.answer_tokens,
                          metrics_url=args.metrics_url or "")

    async def main() -> dict[str, object]:
        if args.target:
            return await run_load(options)
        from espalier.service.bench.load_server import embedded_server

        async with embedded_server(args.server_args) as (port, metrics_port):
            return await run_load(dataclasses.replace(
                options, target=f"127.0.0.1:{port}", metrics_url=f"http://127.0.0.1:{metrics_port}/metrics"))

    summary = asyncio.run(main())
    if args.json:
        write_json(summary, args.json)
    lat = summary["latency_s"]
    print(f"{summary['clients']} clients for {summary['duration_s']} s: {summary['calls']} calls, "
          f"{summary['answers_per_minute_total']} answers/min; failures {summary['failures']}, lost or mixed "
          f"{summary['lost_or_mixed']}, idle at end {summary['idle_at_end']}, still answers {summary['still_answers']}")
    print(f"answers per minute: {summary['answers_per_minute']}")
    for key in ("first_event", "first_token", "total"):
        print(f"{key.replace('_', ' ')}: p50 {lat[key]['p50']} s, p90 {lat[key]['p90']} s, "  # type: ignore[index]
              f"p99 {lat[key]['p99']} s")  # type: ignore[index]
    print(f"outcomes: {summary['outcomes']}; busy retries {summary['busy_retries']} "
          f"(retry-after mean {summary['retry_after_ms_mean']} ms)")
    for problem in summary["problems"]:  # type: ignore[attr-defined]
        print(f"  problem: {problem}")
    return 0 if ok(summary) else 1


def _engine_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`espalier bench engine`."""
    eng = sub.add_parser("engine", help="engine throughput at 1..8 sequences vs a bare llama_decode loop")
    eng.add_argument("--model", default="small", help="small, large or a GGUF path (default: small)")
    eng.add_argument("--json", action="store_true", help="print one JSON object")
    eng.add_argument("--quick", action="store_true", help="32 tokens per sequence: under a minute on 2 cores")
    eng.add_argument("--tokens", type=int, default=128, help="tokens generated per sequence (default 128)")
    eng.add_argument("--sequences", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrency levels")
    _hardware_args(eng)
    eng.add_argument("--rounds", type=int, default=3,
                     help="alternating engine/raw rounds; figures are medians (default 3; --quick: 1)")
    eng.set_defaults(func=_engine)


def _spec_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`espalier bench spec`."""
    spec = sub.add_parser("spec", help="speculative decoding vs plain decoding at 1 and 4 sequences",
                          description="Load the target with its draft, measure plain decoding against "
                                      "speculation on auto and forced on, alternating over rounds.")
    spec.add_argument("--json", action="store_true", help="print one JSON object")
    spec.add_argument("--target", default="large", help="target model: large (default), small or a GGUF path")
    spec.add_argument("--draft", default="small", help="draft model: small (default), large or a GGUF path")
    spec.add_argument("--source", choices=("model", "lookup", "both"), default="model",
                      help="drafts from the draft model (default), prompt lookup, or both")
    spec.add_argument("--tokens", type=int, default=64, help="tokens generated per sequence (default 64)")
    spec.add_argument("--rounds", type=int, default=2, help="alternating rounds; figures are medians (default 2)")
    spec.add_argument("--sequences", type=int, nargs="+", default=[1, 4], help="concurrency levels (default 1 4)")
    _hardware_args(spec)
    spec.add_argument("--draft-max", type=int, default=8, help="most drafts per sequence per step (default 8)")
    spec.add_argument("--verify-rows", type=int, default=-1,
                      help="most tokens per verify call: -1 = measure at start-up as the server does (default), "
                           "0 = no limit, n = at most n")
    spec.set_defaults(func=_spec)


def _stream_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`espalier bench stream`."""
    st = sub.add_parser("stream", help="streamed prompts (sentence-wise prefill, live notes) vs prompts sent whole",
                        description="Type multiple-choice prompts word by word at a set pace and compare the "
                                    "latency after the last word, and the accuracy, with sending them whole.")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.add_argument("--set", default=None, help="JSONL of {id, prompt, answer} (default: the packaged set)")
    st.add_argument("--limit", type=int, default=8, help="only the first N prompts (default 8; 0 = all)")
    st.add_argument("--pace", type=float, default=240.0,
                    help="typing pace in characters per minute (default 240, LiveMind's setting)")
    st.add_argument("--real-time", action="store_true",
                    help="type in real time throughout (default: skip the time in which the streamed work is idle)")
    st.add_argument("--ways", default="whole,plain,live", help="from whole,plain,live (whole is the baseline)")
    st.add_argument("--answer-tokens", type=int, default=8,
                    help="token budget of each answer (default 8: the prompts ask for the letter alone)")
    st.add_argument("--note-tokens", type=int, default=40, help="token budget of each live note (default 40)")
    st.add_argument("--live-answer-role", choices=("large", "small"), default="large",
                    help="who writes the live answer: large (default), or small (large notes, small answers)")
    st.add_argument("--large", default="large", help="large model: 'large' (default) or a GGUF path")
    st.add_argument("--small", default="small", help="small model: 'small' (default) or a GGUF path")
    _hardware_args(st)
    st.set_defaults(func=_stream)


def _judge_args(ans: argparse.ArgumentParser) -> None:
    """How `bench answers` judges (the judge, its mode, tie band and checklists) and which questions (--only-suitable)."""
    ans.add_argument("--judge", choices=("embedded", "none"), default="embedded",
                     help="embedded: the large model (small with --small-only) judges, by logprob margin; "
                          "none: no judging")
    ans.add_argument("--judge-url", default=None,
                     help="OpenAI-compatible server that judges instead (root, /v1 or /v1/chat/completions)")
    ans.add_argument("--judge-model", default=None, help="model name to send to --judge-url")
    ans.add_argument("--judge-key-env", default=None, metavar="VAR",
                     help="environment variable holding the API key for --judge-url (sent as a bearer token)")
    ans.add_argument("--judge-max-chars", type=int, default=4000,
                     help="each answer is cut to this many characters in the judge prompt (default 4000)")
    ans.add_argument("--rejudge", metavar="SAVED.json", default=None,
                     help="judge the answers of a saved --json result again (another judge, or answers run with "
                          "--judge none) instead of answering; speeds are kept as measured")
    ans.add_argument("--judge-tie-margin", type=float, default=None, metavar="BAND",
                     help="the tie band. Pairs judged by logprob margin: the mode's preference p = (m1 - m2) / 2, "
                          "where m = logP(A) - logP(B) of the judge's first token with the mode's answer first "
                          "(m1) and second (m2), so a bias towards one position cancels; |p| up to this many nats "
                          "is a tie (default 0.5). Single grades: grade points (default 0.5). Checklists: score "
                          "points of 100 (default 5)")
    ans.add_argument("--judge-mode", choices=("pairwise", "single", "checklist"), default="pairwise",
                     help="pairwise: each mode's answer against direct's, in both orders (FastChat pairwise); "
                          "single: each answer graded 1-9 alone and the grades compared (FastChat single); "
                          "checklist: each answer graded on its question's yes/no checklist (--checklists), "
                          "item by item, by the judge's probability of yes (RocketEval), and the scores "
                          "compared. The last two are for judges too weak to compare two long answers, such as "
                          "the 1.5B default")
    ans.add_argument("--checklists", default=None, metavar="FILE.jsonl",
                     help="with --judge-mode checklist: JSONL of {request, checklist: [yes/no items]}, e.g. "
                          "../shared/data/vicuna80_checklists.jsonl; a question without one is reported unjudged")
    ans.add_argument("--only-suitable", action="store_true",
                     help="only the questions labelled 1 (suit a skeleton), by the set's own label column "
                          "(e.g. --set ../shared/data/vicuna80_router.csv) or by --labels; --limit applies after")
    ans.add_argument("--judge-logprobs", action="store_true",
                     help="ask --judge-url for top-20 token logprobs as well and judge by logprob margin "
                          "(the endpoint must support logprobs; the embedded judge always does this)")


def _answers_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`espalier bench answers`."""
    ans = sub.add_parser("answers", help="each answer mode over a question set: speed-up, judged quality, router",
                         description="Run a question set through each mode (interleaved per question), judge "
                                     "every mode against direct in both orders, score the router, and write "
                                     "JSON, a markdown report and a plot.")
    ans.add_argument("--set", default=None, help="questions: CSV with a `request` column, or JSONL (required "
                     "unless --rejudge)")
    ans.add_argument("--modes", default="direct,sot,sgd,auto",
                     help="comma-separated, from direct,sot,sgd,auto; direct is the baseline (default: all four). "
                          "A variant MODE:SETTING=VALUE[:...] runs a skeleton mode with planner settings changed, to "
                          "compare settings in one run (embedded only): sgd:small is the skeleton written by the "
                          "small model, sgd:easy_role=large:point_max_tokens=96 two changes")
    ans.add_argument("--limit", type=int, default=None, help="only the first N questions")
    where = ans.add_mutually_exclusive_group()
    where.add_argument("--embedded", action="store_true", help="load the models in-process (the default)")
    where.add_argument("--target", default=None, metavar="HOST:PORT", help="ask a running server instead")
    ans.add_argument("--token", default=None, help="shared token of the server (with --target)")
    ans.add_argument("--labels", default=None, help="router labels, `label;request` CSV (1 = suits a skeleton)")
    ans.add_argument("--json", default=None, metavar="OUT", help="write the full result as JSON here")
    ans.add_argument("--report", default=None, metavar="OUT.md", help="write the markdown report here")
    ans.add_argument("--plot", default=None, metavar="OUT.png",
                     help="write the plot here (needs matplotlib: pip install 'espalier[bench]')")
    ans.add_argument("--point-tokens", type=int, default=DEFAULT_SETTINGS.point_max_tokens,
                     help=f"token budget of each point (default {DEFAULT_SETTINGS.point_max_tokens})")
    ans.add_argument("--answer-tokens", type=int, default=512, help="token budget of a direct answer (default 512)")
    ans.add_argument("--skeleton-tokens", type=int, default=160, help="token budget of a skeleton (default 160)")
    ans.add_argument("--skeleton-role", choices=("large", "small"), default="large",
                     help="model that writes skeletons (default large)")
    ans.add_argument("--small-only", action="store_true",
                     help="load only the small model and run everything on it (quick smoke runs)")
    _hardware_args(ans)
    ans.add_argument("--large", default="large", help="large model: 'large' (default) or a GGUF path")
    ans.add_argument("--small", default="small", help="small model: 'small' (default) or a GGUF path")
    ans.add_argument("--ctx", type=int, default=8192, help="KV cells per model context (default 8192)")
    ans.add_argument("--slots", type=int, default=16, help="sequences decoded together per model (default 16)")
    _judge_args(ans)
    ans.set_defaults(func=_answers)


def _blind_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`espalier bench blind`."""
    bl = sub.add_parser("blind", help="write a saved answers result's pairs for a strong judge, blind, both orders",
                        description="Each mode's answer against direct's, per question, shuffled under neutral "
                                    "numbers: per mode MODE.mode-first.md (the mode's answer is A) and "
                                    "MODE.direct-first.md (it is B), and key.json. Give each file to its own "
                                    'judge; each writes one JSON line per pair, {"pair": N, "verdict": "A" | "B" | '
                                    '"tie"}.')
    bl.add_argument("--result", required=True, metavar="SAVED.json", help="a `bench answers --json` result")
    bl.add_argument("--out", required=True, metavar="DIR", help="folder for the two pair files and the key")
    bl.add_argument("--modes", default=None, help="modes to compare with direct (default: all of the result's)")
    bl.add_argument("--limit", type=int, default=None, help="only the first N questions")
    bl.set_defaults(func=_blind)


def _agree_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`espalier bench agree`."""
    ag = sub.add_parser("agree", help="agreement (share, Cohen's kappa) of a result's judge with a strong judge",
                        description="Combine a strong judge's verdicts in both orders (the same outcome twice "
                                    "stands, a win or loss beside a tie stands, a win and a loss is a tie) and "
                                    "compare them with the outcomes saved in the result, pair by pair.")
    ag.add_argument("--result", required=True, metavar="SAVED.json", help="the judged `bench answers --json` result")
    ag.add_argument("--key", required=True, metavar="key.json", help="the key `bench blind` wrote")
    ag.add_argument("--mode-first", required=True, nargs="+", metavar="VERDICTS.jsonl",
                    help="verdicts on the *.mode-first.md files")
    ag.add_argument("--direct-first", required=True, nargs="+", metavar="VERDICTS.jsonl",
                    help="verdicts on the *.direct-first.md files")
    ag.add_argument("--json", default=None, metavar="OUT", help="also write the agreement as JSON here")
    ag.set_defaults(func=_agree)


def _load_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`espalier bench load`."""
    ld = sub.add_parser("load", help="many concurrent clients for a set time: every stream checked, faults mixed in",
                        description="Concurrent clients against a running server (--target) or one started here "
                                    "(--server-args), with answers in each mode, cancels, deadlines, streamed "
                                    "prompts, slow readers and bad input; exits 1 on any failure.")
    ld.add_argument("--target", help="HOST:PORT of a running server (default: start one here)")
    ld.add_argument("--server-args", default="--small-only",
                    help="flags of `espalier serve` for the server started here (default: --small-only)")
    ld.add_argument("--metrics-url", help="the server's /metrics URL, for the idle check (with --target)")
    ld.add_argument("--token", help="shared token of the server")
    ld.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ld.add_argument("--duration-s", type=float, default=60.0, help="how long clients start new calls (default 60)")
    ld.add_argument("--seed", type=int, default=1, help="seed of the scenario choices")
    ld.add_argument("--mix", help="scenario weights to change, NAME=WEIGHT,... (0 drops one)")
    ld.add_argument("--only", help="run only these scenarios, NAME,... (for example answer:sgd: one kind of traffic)")
    ld.add_argument("--point-tokens", type=int, default=48, help="token budget per point (default 48)")
    ld.add_argument("--answer-tokens", type=int, default=96, help="token budget of a direct answer (default 96)")
    ld.add_argument("--json", help="write the summary here")
    ld.set_defaults(func=_load)


def run(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="espalier bench", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    _engine_parser(sub)
    _spec_parser(sub)
    _stream_parser(sub)
    _answers_parser(sub)
    _blind_parser(sub)
    _agree_parser(sub)
    _load_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
