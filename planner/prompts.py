"""Every prompt the planner sends, in one place, and how each splits into a fixed and a variable part.

Prompts are built with the model's own chat template (Engine.chat_prompt). Latency on small
machines is dominated by prefill, so each prompt is laid out as [fixed instructions and examples]
[variable part], and the fixed part is kept identical across requests: the engine keeps it resident
(see `fixed_prefixes`) and forks it, prefilling only the variable tail. The question always comes
last. A split point always sits right after a newline, so that tokenizing the prefix alone gives
the same tokens as tokenizing the whole prompt (BPE joins a trailing space to the next word).

How the split is found: the variable part is marked with SPLIT inside the message content, the
messages are formatted, and the text before the mark is the prefix. The full prompt is formatted
again without the mark and must start with that prefix; if a template breaks this (it should not:
templates copy content verbatim), the prefix is empty and nothing is shared, which is slower, not
wrong.

Wording is our own, after the Skeleton-of-Thought and Skeleton Graph Decoding papers: an organizer
writes a short numbered skeleton (3 to 10 points of a few words, two worked examples of 5 and 6
points, assistant turn pre-filled with "1."); each point is then written by a separate sequence
that sees the question and the skeleton and is pre-filled with "i. <title>:" (after its parents'
points, for a dependent one). The answer's opening and closing sentences are two more such
sequences, pre-filled with "Opening:" and "Closing:", which the outline lists around the points.

The caller's conversation (espalier.planner.conversation) reaches every prompt that writes the answer: its
system text after the planner's instructions in the system turn (`with_standing`), its earlier turns
as chat turns before the question (direct answers, points, frame) or as a quoted transcript in the
question's turn (skeleton, router). So the fixed, resident part of each prompt ends at the question's
turn header: it is the same with or without earlier turns, and the variable part (the caller's
turns, the question) is prefilled once per answer and shared by its points.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from espalier.planner.conversation import NO_CONTEXT, Conversation
from espalier.planner.decode import resolve_role
from espalier.planner.engine import Engine, Message, Role
from espalier.planner.plan import CLOSING_TITLE, OPENING_TITLE, Node, Part, Plan, PointLength, Route, framed

SPLIT = "\u2060<espalier:split>\u2060"  # marks where the variable part starts; never sent to a model

# --- skeleton --------------------------------------------------------------------------------

_SKELETON_SYSTEM_COMMON = (
    "You are an organizer. You do not answer the question: you only write the skeleton of a good answer, "
    "a numbered list of 3 to 8 short points, one point per line, each point only 3 to 6 words, "
    "about the question exactly as it is asked, covering what a complete answer needs, no two points alike. "
    "Write nothing before or after the list."
)
SKELETON_SYSTEM_PARALLEL = _SKELETON_SYSTEM_COMMON
# Dependencies only where a point cannot be written without another's text: each one is a stage the
# dependent point waits for, and examples with many taught the model to chain points that need none.
SKELETON_SYSTEM_GRAPH = _SKELETON_SYSTEM_COMMON + (
    " After each point, in brackets, say whether it is easy or hard to write and, if it cannot be "
    "written without an earlier point's text, which one (needs: its number), as in the examples."
)
SKELETON_SYSTEM_DEPENDENCIES = _SKELETON_SYSTEM_COMMON + (
    " After a point that cannot be written without an earlier point's text, say which one in brackets "
    "(needs: its number), as in the examples."
)

# Two examples on unrelated topics, so that a small model learns the form rather than the content.
_EXAMPLES: tuple[tuple[str, str, str], ...] = (
    (
        "What are some practical ways to reduce household energy use?",
        (
            "1. Switch to LED lighting\n2. Seal drafts and insulate\n3. Use appliances efficiently\n"
            "4. Unplug idle electronics\n5. Lower heating and cooling\n6. Wash clothes in cold water\n"
            "7. Track the energy bill"
        ),
        (
            "1. Switch to LED lighting (easy)\n2. Seal drafts and insulate (easy)\n"
            "3. Use appliances efficiently (easy)\n4. Unplug idle electronics (easy)\n"
            "5. Lower heating and cooling (needs: 2; hard)\n6. Wash clothes in cold water (easy)\n"
            "7. Track the energy bill (easy)"
        ),
    ),
    # A "what if" question: the points are the imagined alternative's consequences, not the history
    # that really happened (skeleton answers to counterfactuals otherwise retold real history).
    (
        "What if the printing press had never been invented?",
        (
            "1. Books stay rare and costly\n2. Literacy stays a privilege\n3. A slower, local Reformation\n"
            "4. Science shared by letter only\n5. No newspapers or public opinion"
        ),
        (
            "1. Books stay rare and costly (easy)\n2. Literacy stays a privilege (needs: 1; easy)\n"
            "3. A slower, local Reformation (hard)\n4. Science shared by letter only (hard)\n"
            "5. No newspapers or public opinion (easy)"
        ),
    ),
)
# The caller's standing instructions, in a skeleton prompt: after the question, in the question's own turn,
# as in these examples. Told of them in the system message, the 1.5B and 0.5B models still wrote the
# skeleton in the examples' language (English) under "Always answer in French." in every probe; after
# examples like these, the 1.5B wrote French skeletons for 2 of 2 questions, the 0.5B for 2 of 3. One
# example, first, keeps English (an instruction about tone is not one about language; last, it
# made the 0.5B model keep English under any instruction). Shown only to a caller's
# request with standing instructions; they come after the plain examples, so a resident prefix that holds
# them serves plain requests too (the engine forks the longest common prefix).
_STANDING_EXAMPLES: tuple[tuple[str, str, str], ...] = (  # (instructions, question, graph skeleton)
    ("You write for a law firm's clients: formal, precise, no jokes.", "How do I start a small business?",
     ("1. Choose a legal structure (hard)\n2. Register the business name (needs: 1; easy)\n"
     "3. Obtain the required licences (hard)\n4. Open a business bank account (easy)")),
    ("Always answer in Spanish.", "How can I sleep better?",
     ("1. Mantener un horario fijo (easy)\n2. Evitar pantallas de noche (easy)\n3. Cuidar la cena (easy)\n"
     "4. Un dormitorio oscuro y fresco (easy)")),
    ("Antworte immer auf Deutsch.", "What makes a good team leader?",
     ("1. Klare Ziele setzen (easy)\n2. Zuhören und Feedback geben (hard)\n3. Verantwortung übernehmen (easy)\n"
     "4. Das Team fördern (needs: 2; hard)")),
    ("You are the help desk of a bicycle shop. Reply in Italian.", "Why does my chain keep slipping?",
     ("1. Catena consumata o allungata (easy)\n2. Pignoni e corone usurati (easy)\n3. Cambio non regolato (hard)\n"
     "4. Catena sporca o secca (easy)")),
)
STANDING_TAG = "\n\nStanding instructions: "
QUESTION_LEAD = "Question:\n"  # ends with a newline: the split point is a clean token boundary
SKELETON_PREFILL = "1."


def _without_annotations(annotated: str) -> str:
    """A graph example as a parallel one: "2. Title (needs: 1; easy)" -> "2. Title"."""
    return re.sub(r"\s*\([^)]*\)", "", annotated)


def _without_difficulty(annotated: str) -> str:
    """A graph example with only its dependencies: "(needs: 2; hard)" -> "(needs: 2)", "(easy)" -> ""."""
    out = re.sub(r"\s*\((?:easy|hard)\)", "", annotated)
    return re.sub(r";\s*(?:easy|hard)\)", ")", out)


def _skeleton_messages(route: Route, question: str, difficulty: bool = True,
                       context: Conversation = NO_CONTEXT) -> list[Message]:
    graph = route is Route.GRAPH
    system = SKELETON_SYSTEM_PARALLEL
    if graph:
        system = SKELETON_SYSTEM_GRAPH if difficulty else SKELETON_SYSTEM_DEPENDENCIES
    # The caller's standing instructions come with the question (see _STANDING_EXAMPLES), not here: in
    # the system message too, they made the 0.5B model's skeletons follow them less often, not more.
    messages = [Message("system", system)]
    examples = [("", q, plain, annotated) for q, plain, annotated in _EXAMPLES]
    if context.system:
        examples += [(standing, q, _without_annotations(annotated), annotated)
                     for standing, q, annotated in _STANDING_EXAMPLES]
    for standing, q, plain, annotated in examples:
        example = (annotated if difficulty else _without_difficulty(annotated)) if graph else plain
        tag = f"{STANDING_TAG}{standing}" if standing else ""
        messages += [Message("user", QUESTION_LEAD + q + tag), Message("assistant", example)]
    messages.append(Message("user", SPLIT + _in_context(question, context)))
    return messages


def skeleton_prompt(engine: Engine, role: Role, route: Route, question: str, *, difficulty: bool = True,
                    context: Conversation = NO_CONTEXT) -> str:
    """The whole skeleton prompt, assistant turn pre-filled with "1.".

    difficulty: a graph skeleton rates each point easy or hard; without it (when easy and hard points
    go to the same model, so the rating would change nothing) it names only dependencies, and the
    skeleton, decoded before any point can start, is a token or three a line shorter.
    """
    return render(engine, role, _skeleton_messages(route, clean_question(question), difficulty, context),
                  SKELETON_PREFILL).full


def skeleton_fixed_prefix(engine: Engine, role: Role, route: Route, *, difficulty: bool = True,
                          standing: bool = True) -> str:
    """The part of every skeleton prompt that does not depend on the question. With `standing` it holds
    the examples of standing instructions too, and starts with the fixed part of a prompt without them
    (which ends at the question's turn header), so one resident prefix serves both kinds of request."""
    context = Conversation(system="?") if standing else NO_CONTEXT
    return render(engine, role, _skeleton_messages(route, "?", difficulty, context), SKELETON_PREFILL).prefix


def skeleton_stop() -> tuple[str, ...]:
    # The list is one point per line; a blank line means the model moved on to prose.
    return ("\n\n",)


# --- router ----------------------------------------------------------------------------------

ROUTER_SYSTEM = (
    "You sort questions by the shape of their best answer. Reply with one letter only.\n"
    "A: a list of separate points that can each be written on their own (tips, ways, reasons, factors, "
    "differences, pros and cons, what-if scenarios).\n"
    "B: a list of points that build on each other, where later points need the earlier ones (a process, "
    "step-by-step instructions, an explanation that builds up).\n"
    "C: no list, one direct reply (math, code, a short fact, a yes or no, a story, a poem, a letter or "
    "email, role-play, small talk)."
)
_ROUTER_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("What are good ways to save money on groceries?", "A"),
    ("Write a short poem about the sea.", "C"),
    ("How does a bill become a law in the United States?", "B"),
    ("What is 15% of 240?", "C"),
    ("What are the pros and cons of electric cars?", "A"),
    ("How do I set up a home aquarium?", "B"),
    ("Who painted the Mona Lisa?", "C"),
)
ROUTER_LETTERS: dict[str, Route] = {"A": Route.PARALLEL, "B": Route.GRAPH, "C": Route.DIRECT}


def _router_messages(question: str, context: Conversation = NO_CONTEXT) -> list[Message]:
    # The caller's system text is left out: it shapes how the answer is written, not its shape.
    messages = [Message("system", ROUTER_SYSTEM)]
    for q, letter in _ROUTER_EXAMPLES:
        messages += [Message("user", QUESTION_LEAD + q), Message("assistant", letter)]
    messages.append(Message("user", SPLIT + _in_context(question, context, standing=False)))
    return messages


def router_prompt(engine: Engine, role: Role, question: str, context: Conversation = NO_CONTEXT) -> str:
    return render(engine, role, _router_messages(clean_question(question), context), "").full


def router_fixed_prefix(engine: Engine, role: Role) -> str:
    return render(engine, role, _router_messages("?"), "").prefix


# --- points and direct answers ---------------------------------------------------------------

ANSWER_SYSTEM = "You are a helpful assistant. Answer accurately and to the point."
# The caller's system text comes after the planner's own instructions, introduced as the user's standing
# instructions: the planner's fixed text stays a resident prefix, and the caller's, read last, is what
# the model follows where the two differ (the language, a persona, the house style). It stays in the
# system turn, where a model gives instructions their weight over the end user's text (house rules,
# safety rules), and the question's turn ends with it again (STANDING_TAG). Measured under "Always answer
# in French.", direct answers to 8 vicuna80 questions: the system turn alone gave French 4 times on the
# 0.5B model (8 on the 1.5B); with a short "(Follow my standing instructions.)" after the question 8 (8);
# but after two English turns of conversation the short reminder gave French for 0 of 2 follow-ups on the
# 1.5B model, the whole text after the question 2 of 2. So the whole text, prefilled twice: once per answer
# (the points share it), which is cheap beside a wrong-language answer.
STANDING_LEAD = "The user's standing instructions, which apply to everything you write:\n"
TRANSCRIPT_LEAD = "Our conversation so far:\n\n"


def with_standing(own: str, context: Conversation) -> str:
    """A system message: the planner's own instructions, then the caller's system text, if any."""
    return f"{own}\n\n{STANDING_LEAD}{context.system}" if context.system else own


def _in_context(question: str, context: Conversation, *, standing: bool = True) -> str:
    """The question's turn of a task prompt (skeleton, router): the earlier turns quoted, then the question,
    then (standing: for a prompt that writes the answer) the caller's standing instructions."""
    tail = _reminder(context) if standing else ""
    if not context.history:
        return QUESTION_LEAD + question + tail
    return TRANSCRIPT_LEAD + context.transcript() + "Question (my latest message):\n" + question + tail


def _turns(system: str, context: Conversation) -> list[Message]:
    """The system message and the caller's earlier turns, as chat turns before the question's."""
    return [Message("system", with_standing(system, context)), *context.history]
OUTLINE_LEAD = "\n\nOutline of the answer:\n"


def outline(plan: Plan) -> str:
    """The skeleton as the point prompts show it: points numbered by position, titles only, with
    the opening and closing (when the plan has them) as unnumbered lines before and after."""
    return "".join(f"{_label(plan, n)}\n" for n in plan.nodes)


def _label(plan: Plan, node: Node) -> str:
    if node.part is Part.POINT:
        return f"{plan.position(node.id)}. {node.title.strip()}"
    return FRAME_LABELS[node.part]


def heading(position: int, title: str) -> str:
    """How a point starts in its pre-fill and in forwarded parents: its number and title."""
    return _with_colon(f"{position}. {title.strip()}")


def _with_colon(label: str) -> str:
    return label + title_colon(label)


def title_colon(title: str) -> str:
    """The colon after a title, unless the title ends with its own punctuation ("Review: what worked?")."""
    return "" if title.rstrip()[-1:] in ".:?!" else ":"


def prefill(plan: Plan, node: Node) -> str:
    """How a node's part of the answer starts in its prompt: "3. Title:", "Opening:" or "Closing:"."""
    return _with_colon(_label(plan, node))


# The outline names the frame by what it is, whatever title a caller gave it, so the pre-fill
# always matches a line of the outline.
FRAME_LABELS: dict[Part, str] = {Part.OPENING: OPENING_TITLE, Part.CLOSING: CLOSING_TITLE}


# Said in the system message, the fixed part of every point prompt: the engine keeps it resident, so a
# plan prefills only its question and outline (on a CPU, prefill of per-point text was a third of the
# expansion time, and of a per-plan instruction another second).
_POINT_LEAD = ("You will see a question and the outline of an answer to it. Your reply starts with one part "
               "of that outline, already headed: write only that part. ")
POINT_INSTRUCTIONS: dict[PointLength, str] = {
    PointLength.BRIEF: _POINT_LEAD + "Write it in one or two short sentences on one line, then stop.",
    # Read by a careful judge, one-line points lost to direct answers: a title with no text when the
    # title was a question, "Bubble sort: O(n^2)" where code was asked for. So a detailed point may
    # take several lines, and is told to answer its own title and to carry the code or steps asked for.
    PointLength.DETAILED: _POINT_LEAD + (
        "A numbered point: two short sentences, the first explaining the point itself and the second giving "
        "a specific example or detail. If its title is a question, answer it; "
        "where the question asks for code, steps or examples, give them in this point (a code block or a "
        "short bulleted list). Keep to the question as it is asked: its premise (for a \"what if\" question, "
        "the imagined alternative, not what really happened) and its instructions. The other parts are "
        "written separately: keep to this point's own title."
    ),
}
# Said with either length; a plan with no opening never asks for one. The closing is named only in the
# prompts of a plan that has one: told of a closing, points ran on into "Closing" paragraphs.
FRAME_INSTRUCTION = " The opening: one sentence that introduces the answer."
CLOSING_INSTRUCTION = " The closing: one sentence that sums up the points written above it."
FRAME_MAX_TOKENS = 80  # one sentence; a budget the frame never needs unless it runs on
# What the closing is shown of each point: enough to sum up without claiming what the points do not
# say, short enough that prefilling it after the points adds little wait.
CLOSING_FORWARD_CHARS = 400


def _forwarded(parents: Sequence[tuple[int, Node, str]], max_chars: int) -> str:
    """Parents' finished points, written as the start of the assistant's own answer (SGD's forwarding).

    The point then continues an answer that already holds what it builds on, which needs no
    extra instruction and reads naturally to a small model.
    """
    lines = []
    for position, node, text in parents:
        text = " ".join(text.split())
        if len(text) > max_chars:
            text = text[:max_chars].rsplit(" ", 1)[0] + " ..."
        lines.append(f"{heading(position, node.title)} {text}\n")
    return "".join(lines)


def point_system(length: PointLength, closing: bool = False) -> str:
    """The system message of every point prompt: the planner's instructions, question-independent."""
    return f"{ANSWER_SYSTEM}\n\n{POINT_INSTRUCTIONS[length]}{FRAME_INSTRUCTION}{CLOSING_INSTRUCTION if closing else ''}"


def _point_messages(question: str, plan: Plan, length: PointLength = PointLength.DETAILED, *,
                    split: bool = False, context: Conversation = NO_CONTEXT) -> list[Message]:
    # split: mark where the fixed, question-independent part (the resident prefix) ends
    closing = any(n.part is Part.CLOSING for n in plan.nodes)
    messages = _turns(point_system(length, closing), context)
    # the outline ends with a line break: one more leaves a blank line before the instructions
    content = QUESTION_LEAD + question + OUTLINE_LEAD + outline(plan) + _reminder(context)[1:]
    return _split_first_turn(messages + [Message("user", content)], split)


def _reminder(context: Conversation) -> str:
    """The end of the question's turn in a prompt that writes the answer: the standing instructions again."""
    return f"{STANDING_TAG}{context.system}" if context.system else ""


def _split_first_turn(messages: list[Message], split: bool) -> list[Message]:
    """SPLIT at the start of the first turn after the system message: the resident prefix ends at that
    turn's header, so it is the same whether the caller sent earlier turns or not."""
    if not split:
        return messages
    first = messages[1]
    return [messages[0], Message(first.role, SPLIT + first.content), *messages[2:]]


@dataclass(frozen=True, slots=True)
class Rendered:
    prefix: str  # text before the split ("" when the template does not allow a shared prefix)
    full: str  # the whole prompt

    @property
    def tail(self) -> str:
        return self.full[len(self.prefix) :]


def point_prompt(
    engine: Engine,
    role: Role,
    question: str,
    plan: Plan,
    node_id: int,
    parents: Sequence[tuple[int, Node, str]] = (),
    forward_max_chars: int = 1500,
    length: PointLength = PointLength.DETAILED,
    context: Conversation = NO_CONTEXT,
) -> Rendered:
    """The prompt of one point: prefix = instructions + the caller's turns + question + outline, up to
    the assistant's turn (the same for every point of the plan); tail = the parents' points (information
    forwarding) and the pre-filled heading of this point, as the start of the assistant's answer."""
    question = clean_question(question)
    node = plan.node(node_id)
    shared = engine.chat_prompt(role, _point_messages(question, plan, length, context=context),
                                add_generation_prompt=True)
    tail = _forwarded(parents, forward_max_chars) + prefill(plan, node)
    # the seam must be a clean token boundary (see the module docstring)
    return Rendered(shared if shared.endswith("\n") else "", shared + tail)


def point_shared_prefix(engine: Engine, role: Role, question: str, plan: Plan,
                        length: PointLength = PointLength.DETAILED, context: Conversation = NO_CONTEXT) -> str:
    """The prefix every point prompt of this plan starts with (the caller's turns, question, outline)."""
    return point_prompt(engine, role, question, plan, plan.nodes[0].id, length=length, context=context).prefix


# A detailed point ends where the model starts writing another part of the outline: a line that opens
# with a digit (the next heading, or the list written again from "2.", as the small model does), the
# next number run on after a sentence, or a closing. Sub-lists inside a point use "-" bullets (the
# instruction says so) or are indented, so a digit at the start of a line is the next heading.
_LINE_DIGITS = tuple(f"\n{d}" for d in "123456789")
_CLOSERS = ("\nClosing", "\n**Closing", "\nOpening", "\nIn conclusion", "\nConclusion", "\n**Conclusion")


def point_stop(plan: Plan | None = None, node_id: int = 0,
               length: PointLength = PointLength.DETAILED) -> tuple[str, ...]:
    """Where a node's text ends: a brief point, the opening and the closing are one line; a detailed
    point may hold several lines (a code block, a short list) and ends at the next part (above)."""
    if length is PointLength.BRIEF or plan is None or plan.node(node_id).part is not Part.POINT:
        return ("\n",)
    return (*_LINE_DIGITS, f" {plan.position(node_id) + 1}. ", *_CLOSERS)


def direct_prompt(engine: Engine, role: Role, question: str, context: Conversation = NO_CONTEXT) -> Rendered:
    messages = _turns(ANSWER_SYSTEM, context) + [Message("user", clean_question(question) + _reminder(context))]
    return render(engine, role, _split_first_turn(messages, True), "")


def direct_prompt_head(engine: Engine, role: Role, partial: str, context: Conversation = NO_CONTEXT) -> str:
    """The direct prompt's text up to the end of `partial`, the part of a question typed so far.

    Prefilled while the rest is typed; the full prompt, once the question is complete, starts with
    it (the question is the last thing in the prompt), so the answer forks from its KV.
    """
    full = direct_prompt(engine, role, partial.lstrip() + _CUT, context).full
    return full[:full.index(_CUT)]


def skeleton_prompt_head(engine: Engine, role: Role, route: Route, partial: str, *, difficulty: bool = True,
                         context: Conversation = NO_CONTEXT) -> str:
    """The skeleton prompt up to the end of a partly typed question (see direct_prompt_head)."""
    full = skeleton_prompt(engine, role, route, partial.lstrip() + _CUT, difficulty=difficulty, context=context)
    return full[:full.index(_CUT)]


# --- live mode (a question noted on while it is typed) ------------------------------------------

# The question stays contiguous in every live prompt (notes come after it), so a small model reads
# it as it would read it whole, and every prompt forks from the sentence-wise prefilled question.
LIVE_NOTE_ASK = (
    "\n\n(I am still typing; more follows. Do not answer yet. In one short sentence, note what you "
    "understand so far or what the answer will need, or reply WAIT.)"
)


def live_note_prompt(engine: Engine, role: Role, typed: str, context: Conversation = NO_CONTEXT) -> str:
    """Ask for a note on the question typed so far (forks from the prefilled question)."""
    return direct_prompt(engine, role, typed + LIVE_NOTE_ASK, context).full


def live_answer_prompt(engine: Engine, role: Role, question: str, notes: Sequence[str],
                       context: Conversation = NO_CONTEXT) -> str:
    """The direct prompt with the notes written while the question arrived after it."""
    if notes:
        listed = "\n".join(f"- {n}" for n in notes)
        question = f"{question.strip()}\n\n(Notes you wrote while I was typing:\n{listed})"
    return direct_prompt(engine, role, question, context).full


_CUT = "\u241eespalier-cut\u241e"  # a marker no question contains: where the typed text ends


# --- shared machinery --------------------------------------------------------------------------


def clean_question(question: str) -> str:
    return question.replace(SPLIT, "").strip()


def render(engine: Engine, role: Role, messages: Sequence[Message], prefill: str) -> Rendered:
    """Format messages holding SPLIT once; return the text before it and the full prompt without it."""
    marked = engine.chat_prompt(role, messages, add_generation_prompt=True)
    clean = [Message(m.role, m.content.replace(SPLIT, "")) for m in messages]
    full = engine.chat_prompt(role, clean, add_generation_prompt=True) + prefill
    cut = marked.find(SPLIT)
    prefix = marked[:cut] if cut >= 0 else ""
    if not full.startswith(prefix) or len(prefix) >= len(full):
        prefix = ""
    return Rendered(prefix, full)


def fixed_prefixes(engine: Engine, *, skeleton_role: Role, router_role: Role,
                   point_length: PointLength = PointLength.DETAILED,
                   difficulty: bool = True, closing: bool = False) -> tuple[tuple[Role, str], ...]:
    """Question-independent prompt prefixes worth keeping resident in the engine, per role.

    The engine should prefill these once at start-up and fork them for any prompt that starts with
    one (compared as tokens). Roles are resolved against the loaded ones. Sorted, without repeats.
    """
    loaded = engine.roles()
    out: set[tuple[Role, str]] = set()
    sk = resolve_role(skeleton_role, loaded)
    for route in (Route.PARALLEL, Route.GRAPH):
        out.add((sk, skeleton_fixed_prefix(engine, sk, route, difficulty=difficulty)))
    rr = resolve_role(router_role, loaded)
    out.add((rr, router_fixed_prefix(engine, rr)))
    dummy = Plan(framed((Node(1, "a"), Node(2, "b")), closing=closing), Route.PARALLEL)
    for role in loaded:
        out.add((role, render(engine, role, _point_messages("?", dummy, point_length, split=True), "").prefix))
        out.add((role, direct_prompt(engine, role, "?").prefix))
    return tuple(sorted((r, t) for r, t in out if t))
