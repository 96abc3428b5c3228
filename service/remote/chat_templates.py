"""Chat formatting for remote roles: messages to prompt text, by a named template.

The planner pre-fills the assistant's turn (a skeleton starts "1.", a point starts with its heading),
which the chat endpoint of an OpenAI-compatible server cannot express; so remote roles use
/v1/completions with prompt text the planner formats through Engine.chat_prompt, and that text must
match the model's own template. A server's Jinja template is not fetched: only llama-server exposes
it, and rendering Jinja here would mean a new dependency. The templates are instead named per role
(`chat_template`): `chatml` for Qwen2.5 (the default models) and other ChatML models, `llama3` for
Llama 3.x instruct models. Servers add a model's BOS token themselves when tokenizing, so no
template writes one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from espalier.planner.engine import Message


def chatml(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    text = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def llama3(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    # Llama 3's own template strips each message's content.
    text = "".join(f"<|start_header_id|>{m.role}<|end_header_id|>\n\n{m.content.strip()}<|eot_id|>"
                   for m in messages)
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


TEMPLATES: dict[str, Callable[[Sequence[Message], bool], str]] = {"chatml": chatml, "llama3": llama3}
