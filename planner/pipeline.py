"""The planner's front door: route, plan, expand.

Owns the request flow over an Engine: `make_plan` (route the question unless the mode forces a
route, ask for a skeleton, parse it; a skeleton that cannot be parsed becomes a direct plan, never
an error), `expand` (run a plan, possibly edited by the caller, through the DAG runner) and
`answer` (both, as one event stream). The gRPC Plan / Expand / Answer calls map onto these.
`resident_prefixes` lists the prompt prefixes the engine should keep resident for this planner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from espalier.planner import prompts, router, runner
from espalier.planner.conversation import NO_CONTEXT, Conversation
from espalier.planner.decode import cancel_and_wait, collect, resolve_role
from espalier.planner.engine import Engine, FinishReason, GenerateRequest, InvalidRequest, Priority, Role
from espalier.planner.events import Event, Meter, NodePlanned
from espalier.planner.plan import Mode, Node, Plan, PlanInvalid, Route, framed
from espalier.planner.settings import DEFAULT_SETTINGS, PlannerSettings
from espalier.planner.skeleton_parser import OutlineReader, parse_skeleton


def _check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise InvalidRequest("the question must not be empty", field="question")
    return question.strip()


def _check_mode(mode: Mode | str) -> Mode:
    try:
        return Mode(mode)
    except ValueError:
        raise InvalidRequest(f"unknown mode {mode!r} (one of {', '.join(Mode)})", field="mode") from None


async def make_plan(
    engine: Engine,
    question: str,
    mode: Mode | str = Mode.AUTO,
    settings: PlannerSettings = DEFAULT_SETTINGS,
    *,
    meter: Meter | None = None,
    request_id: str = "",
    on_planned: Callable[[NodePlanned], None] | None = None,
    context: Conversation = NO_CONTEXT,
) -> Plan:
    """Decide the route and, unless direct, write and parse a skeleton.

    Raises InvalidRequest for an empty question or unknown mode, and lets engine errors propagate;
    an unusable skeleton yields a direct plan whose `reason` says so. on_planned: called with each
    point as soon as its line of the skeleton is complete (the outline as it is written). context:
    the caller's system text and earlier turns (fitted to planner.history_max_chars; the reason says
    how many turns were left out).
    """
    question = _check_question(question)
    mode = _check_mode(mode)
    settings.validate()
    context = context.fitted(settings.history_max_chars)
    meter = meter or Meter()
    forced = mode.forced_route
    if forced is None:
        decision = await router.route(engine, question, settings, meter, context)
        route, reason = decision.route, f"route {decision.route} ({decision.reason})"
    else:
        route, reason = forced, f"route {forced} (forced by mode {mode})"
    reason = context.noted(reason)
    meter.mark_routed()
    if route is Route.DIRECT:
        return Plan.direct(reason)
    skeleton, truncated, outline = await _write_skeleton(engine, question, route, settings, meter, request_id,
                                                         on_planned, context)
    return _plan_from_skeleton(skeleton, truncated, outline, question, route, settings, reason)


async def _write_skeleton(engine: Engine, question: str, route: Route, settings: PlannerSettings, meter: Meter,
                          request_id: str, on_planned: Callable[[NodePlanned], None] | None,
                          context: Conversation) -> tuple[str, bool, OutlineReader]:
    """The skeleton as the model wrote it (with its pre-fill), whether its budget cut it, and the outline
    read while it was written (each point reported to on_planned as soon as its line is complete)."""
    role = resolve_role(settings.skeleton_role, engine.roles())
    request = GenerateRequest(
        prompt=prompts.skeleton_prompt(engine, role, route, question, difficulty=settings.rates_difficulty,
                                       context=context),
        role=role,
        sampling=dataclasses.replace(
            settings.sampling, max_tokens=settings.skeleton_max_tokens, stop=prompts.skeleton_stop(),
            word_repeat_penalty=settings.skeleton_word_penalty,
        ),
        request_id=f"{request_id}/skeleton" if request_id else "",
        speculation=settings.speculation,
        priority=Priority.FIRST,  # every point waits for it
    )
    outline = OutlineReader(graph=route is Route.GRAPH, max_nodes=settings.max_nodes, min_nodes=settings.min_nodes,
                            max_depth=settings.max_depth)
    outline.feed(prompts.SKELETON_PREFILL)

    def read(text: str) -> None:
        for node in outline.feed(text):
            if on_planned is not None:
                on_planned(NodePlanned(budgeted(node, question, settings), node.id, meter.elapsed()))

    out = await collect(engine, request, meter, on_text=read)
    if out.finish is not FinishReason.LENGTH:
        read("\n")  # the skeleton ended (a stop or the end token): its last line is complete
    return prompts.SKELETON_PREFILL + out.text, out.finish is FinishReason.LENGTH, outline


def _plan_from_skeleton(skeleton: str, truncated: bool, outline: OutlineReader, question: str, route: Route,
                        settings: PlannerSettings, reason: str) -> Plan:
    """The plan a written skeleton gives: its points with their budgets and the frame, or a direct plan
    whose reason says why when the skeleton cannot be used."""
    nodes = _parse(skeleton, route, settings, truncated=truncated)
    if nodes is None:
        return Plan.direct(f"{reason}; skeleton unusable, answering directly")
    counted = f"{reason}; {len(nodes)} points"  # the points alone, before the frame joins them
    if outline.skipped:
        counted += f"; {len(outline.skipped)} skeleton line(s) skipped ({outline.skipped[0][1]}: " \
                   f"{outline.skipped[0][0].strip()[:60]!r})"
    nodes = tuple(budgeted(n, question, settings) for n in nodes)
    if settings.frame:
        nodes = framed(nodes, closing=settings.closing)
    try:
        plan = Plan.validated(nodes, route, max_nodes=settings.max_nodes, reason=counted, skeleton=skeleton)
        return plan.with_max_depth(settings.max_depth) if route is Route.GRAPH else plan
    except PlanInvalid as exc:  # the parser repairs graphs, so this is a parser bug; still answer
        return Plan.direct(f"{reason}; skeleton rejected ({exc}), answering directly")


# A point carries code when the question asks for code or the point's own title names it; it then
# gets the long budget (a working function is several times longer than a definition).
_CODE_ASK = re.compile(
    r"\b(?:code|coding|snippets?|programs?|implement(?:s|ed|ing|ation)?|scripts?|pseudo-?code|"
    r"c\+\+|python|java(?:script)?|sql|bash|rust|golang)\b", re.IGNORECASE)
_CODE_QUESTION = re.compile(r"\b(?:code|snippets?|implement\w*|write (?:a|an|the) (?:program|function|script)|"
                            r"pseudo-?code|example program)\b", re.IGNORECASE)


def budgeted(node: Node, question: str, settings: PlannerSettings) -> Node:
    """The point with its own token budget when it carries code (see _CODE_ASK); others keep 0."""
    if node.max_tokens or not (_CODE_QUESTION.search(question) or _CODE_ASK.search(node.title)):
        return node
    return dataclasses.replace(node, max_tokens=settings.long_point_max_tokens)


def _parse(
    skeleton: str, route: Route, settings: PlannerSettings, *, truncated: bool
) -> tuple[Node, ...] | None:
    graph = route is Route.GRAPH
    if truncated and not skeleton.endswith("\n") and "\n" in skeleton:
        # the budget ran out mid-line: the last point is probably cut; drop it if enough remain
        whole = parse_skeleton(
            skeleton.rsplit("\n", 1)[0],
            max_nodes=settings.max_nodes,
            min_nodes=settings.min_nodes,
            graph=graph,
        )
        if whole is not None:
            return whole
    return parse_skeleton(skeleton, max_nodes=settings.max_nodes, min_nodes=settings.min_nodes, graph=graph)


def expand(
    engine: Engine,
    question: str,
    plan: Plan,
    settings: PlannerSettings = DEFAULT_SETTINGS,
    *,
    meter: Meter | None = None,
    request_id: str = "",
    context: Conversation = NO_CONTEXT,
) -> AsyncGenerator[Event, None]:
    """Run a plan (from make_plan, or edited by the caller): PlanReady, node events, AnswerDone.

    The question and plan are checked now (InvalidRequest / PlanInvalid raised by this call, before
    any event); close the iterator (contextlib.aclosing) to cancel the expansion. context: as in
    make_plan; PlanReady's reason says how many earlier turns were left out.
    """
    question, plan = _checked(question, plan, settings)
    context = context.fitted(settings.history_max_chars)
    plan = dataclasses.replace(plan, reason=context.noted(plan.reason))
    return runner.run(engine, question, plan, settings, meter=meter, request_id=request_id, context=context)


async def answer(
    engine: Engine,
    question: str,
    mode: Mode | str = Mode.AUTO,
    settings: PlannerSettings = DEFAULT_SETTINGS,
    *,
    request_id: str = "",
    context: Conversation = NO_CONTEXT,
) -> AsyncGenerator[Event, None]:
    """Route, plan and expand in one stream: NodePlanned as each point of the skeleton is written, then
    what expand yields. Timings in AnswerDone cover all of it. context: as in make_plan."""
    meter = Meter()
    context = context.fitted(settings.history_max_chars)
    # As runner.run relays its nodes: events into a queue, the planning task's end marked in it.
    queue: asyncio.Queue[object] = asyncio.Queue()
    budget, why = runner.early_budget(engine, settings)
    early = runner.EarlyStarts(engine, question, settings, meter, queue.put_nowait, budget, request_id, context)

    def planned(event: NodePlanned) -> None:
        queue.put_nowait(event)
        early.planned(event.node)

    planning = asyncio.create_task(make_plan(engine, question, mode, settings, meter=meter,
                                             request_id=request_id, on_planned=planned, context=context))
    planning.add_done_callback(lambda _: queue.put_nowait(_PLANNED))
    try:
        while (item := await queue.get()) is not _PLANNED:
            yield item  # type: ignore[misc]
        while not queue.empty():  # early points' events that came after the plan
            yield queue.get_nowait()  # type: ignore[misc]
        plan = planning.result()
        if plan.route is not Route.DIRECT:
            started = len(early.started)
            plan = dataclasses.replace(plan, reason=f"{plan.reason}; {started} point(s) started while the skeleton "
                                                     f"was written (at most {budget}: {why})")
        question, plan = _checked(question, plan, settings)
        async with aclosing(runner.run(engine, question, plan, settings, meter=meter, request_id=request_id,
                                       early=early, context=context)) as events:
            async for event in events:
                yield event
    finally:
        await cancel_and_wait(planning)  # a consumer that left early frees the skeleton's sequence
        await early.aclose()  # and any point started while the skeleton was written


_PLANNED = object()  # in answer()'s queue: the planning task has ended


def _checked(question: str, plan: Plan, settings: PlannerSettings) -> tuple[str, Plan]:
    """The question and plan as a run takes them: checked by the same rules whether the plan was made
    here or sent by a caller (InvalidRequest / PlanInvalid naming the field)."""
    question = _check_question(question)
    settings.validate()
    return question, Plan.validated(plan.nodes, plan.route, max_nodes=settings.max_nodes, reason=plan.reason,
                                    skeleton=plan.skeleton)


def resident_prefixes(
    engine: Engine, settings: PlannerSettings = DEFAULT_SETTINGS
) -> tuple[tuple[Role, str], ...]:
    """(role, text) prompt prefixes that do not depend on the question: keep them resident in the engine."""
    return prompts.fixed_prefixes(engine, skeleton_role=settings.skeleton_role, router_role=settings.router_role,
                                  point_length=settings.point_length, difficulty=settings.rates_difficulty,
                                  closing=settings.frame and settings.closing)
