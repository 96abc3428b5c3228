from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_AUTO: _ClassVar[Mode]
    MODE_DIRECT: _ClassVar[Mode]
    MODE_SOT: _ClassVar[Mode]
    MODE_SGD: _ClassVar[Mode]
    MODE_LIVE: _ClassVar[Mode]

class Route(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_UNSPECIFIED: _ClassVar[Route]
    ROUTE_DIRECT: _ClassVar[Route]
    ROUTE_PARALLEL: _ClassVar[Route]
    ROUTE_GRAPH: _ClassVar[Route]

class Difficulty(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIFFICULTY_UNSPECIFIED: _ClassVar[Difficulty]
    DIFFICULTY_EASY: _ClassVar[Difficulty]
    DIFFICULTY_HARD: _ClassVar[Difficulty]

class NodePart(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_PART_UNSPECIFIED: _ClassVar[NodePart]
    NODE_PART_POINT: _ClassVar[NodePart]
    NODE_PART_OPENING: _ClassVar[NodePart]
    NODE_PART_CLOSING: _ClassVar[NodePart]

class ModelRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_ROLE_UNSPECIFIED: _ClassVar[ModelRole]
    MODEL_ROLE_LARGE: _ClassVar[ModelRole]
    MODEL_ROLE_SMALL: _ClassVar[ModelRole]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
    FINISH_REASON_ERROR: _ClassVar[FinishReason]

class Speculation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPECULATION_UNSPECIFIED: _ClassVar[Speculation]
    SPECULATION_AUTO: _ClassVar[Speculation]
    SPECULATION_ON: _ClassVar[Speculation]
    SPECULATION_OFF: _ClassVar[Speculation]
MODE_UNSPECIFIED: Mode
MODE_AUTO: Mode
MODE_DIRECT: Mode
MODE_SOT: Mode
MODE_SGD: Mode
MODE_LIVE: Mode
ROUTE_UNSPECIFIED: Route
ROUTE_DIRECT: Route
ROUTE_PARALLEL: Route
ROUTE_GRAPH: Route
DIFFICULTY_UNSPECIFIED: Difficulty
DIFFICULTY_EASY: Difficulty
DIFFICULTY_HARD: Difficulty
NODE_PART_UNSPECIFIED: NodePart
NODE_PART_POINT: NodePart
NODE_PART_OPENING: NodePart
NODE_PART_CLOSING: NodePart
MODEL_ROLE_UNSPECIFIED: ModelRole
MODEL_ROLE_LARGE: ModelRole
MODEL_ROLE_SMALL: ModelRole
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CANCELLED: FinishReason
FINISH_REASON_ERROR: FinishReason
SPECULATION_UNSPECIFIED: Speculation
SPECULATION_AUTO: Speculation
SPECULATION_ON: Speculation
SPECULATION_OFF: Speculation

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class GenerationSettings(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "seed", "point_max_tokens", "answer_max_tokens", "max_points", "speculation")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    POINT_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    SPECULATION_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    seed: int
    point_max_tokens: int
    answer_max_tokens: int
    max_points: int
    speculation: Speculation
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., point_max_tokens: _Optional[int] = ..., answer_max_tokens: _Optional[int] = ..., max_points: _Optional[int] = ..., speculation: _Optional[_Union[Speculation, str]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("id", "title", "depends_on", "difficulty", "model_role", "part", "max_tokens")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    MODEL_ROLE_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    id: int
    title: str
    depends_on: _containers.RepeatedScalarFieldContainer[int]
    difficulty: Difficulty
    model_role: ModelRole
    part: NodePart
    max_tokens: int
    def __init__(self, id: _Optional[int] = ..., title: _Optional[str] = ..., depends_on: _Optional[_Iterable[int]] = ..., difficulty: _Optional[_Union[Difficulty, str]] = ..., model_role: _Optional[_Union[ModelRole, str]] = ..., part: _Optional[_Union[NodePart, str]] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class Graph(_message.Message):
    __slots__ = ("nodes", "route")
    NODES_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    route: Route
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., route: _Optional[_Union[Route, str]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("route_s", "plan_s", "first_token_s", "total_s")
    ROUTE_S_FIELD_NUMBER: _ClassVar[int]
    PLAN_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    route_s: float
    plan_s: float
    first_token_s: float
    total_s: float
    def __init__(self, route_s: _Optional[float] = ..., plan_s: _Optional[float] = ..., first_token_s: _Optional[float] = ..., total_s: _Optional[float] = ...) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ("question", "messages", "mode", "settings")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    question: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    mode: Mode
    settings: GenerationSettings
    def __init__(self, question: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., mode: _Optional[_Union[Mode, str]] = ..., settings: _Optional[_Union[GenerationSettings, _Mapping]] = ...) -> None: ...

class PlanResponse(_message.Message):
    __slots__ = ("graph", "reason", "skeleton", "timings")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SKELETON_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    graph: Graph
    reason: str
    skeleton: str
    timings: Timings
    def __init__(self, graph: _Optional[_Union[Graph, _Mapping]] = ..., reason: _Optional[str] = ..., skeleton: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class ExpandRequest(_message.Message):
    __slots__ = ("question", "messages", "graph", "settings")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    question: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    graph: Graph
    settings: GenerationSettings
    def __init__(self, question: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., graph: _Optional[_Union[Graph, _Mapping]] = ..., settings: _Optional[_Union[GenerationSettings, _Mapping]] = ...) -> None: ...

class ExpandResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: AnswerEvent
    def __init__(self, event: _Optional[_Union[AnswerEvent, _Mapping]] = ...) -> None: ...

class AnswerRequest(_message.Message):
    __slots__ = ("question", "messages", "mode", "settings")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    question: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    mode: Mode
    settings: GenerationSettings
    def __init__(self, question: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., mode: _Optional[_Union[Mode, str]] = ..., settings: _Optional[_Union[GenerationSettings, _Mapping]] = ...) -> None: ...

class AnswerResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: AnswerEvent
    def __init__(self, event: _Optional[_Union[AnswerEvent, _Mapping]] = ...) -> None: ...

class StreamOpen(_message.Message):
    __slots__ = ("mode", "settings", "system", "history")
    MODE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    mode: Mode
    settings: GenerationSettings
    system: str
    history: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, mode: _Optional[_Union[Mode, str]] = ..., settings: _Optional[_Union[GenerationSettings, _Mapping]] = ..., system: _Optional[str] = ..., history: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class PromptPiece(_message.Message):
    __slots__ = ("text", "revise", "revise_from")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REVISE_FIELD_NUMBER: _ClassVar[int]
    REVISE_FROM_FIELD_NUMBER: _ClassVar[int]
    text: str
    revise: bool
    revise_from: int
    def __init__(self, text: _Optional[str] = ..., revise: _Optional[bool] = ..., revise_from: _Optional[int] = ...) -> None: ...

class StreamEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("open", "piece", "end")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    open: StreamOpen
    piece: PromptPiece
    end: StreamEnd
    def __init__(self, open: _Optional[_Union[StreamOpen, _Mapping]] = ..., piece: _Optional[_Union[PromptPiece, _Mapping]] = ..., end: _Optional[_Union[StreamEnd, _Mapping]] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: AnswerEvent
    def __init__(self, event: _Optional[_Union[AnswerEvent, _Mapping]] = ...) -> None: ...

class NodePlanned(_message.Message):
    __slots__ = ("node", "position", "elapsed_s")
    NODE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    node: Node
    position: int
    elapsed_s: float
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., position: _Optional[int] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class PlanReady(_message.Message):
    __slots__ = ("graph", "reason", "elapsed_s")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    graph: Graph
    reason: str
    elapsed_s: float
    def __init__(self, graph: _Optional[_Union[Graph, _Mapping]] = ..., reason: _Optional[str] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class NodeStarted(_message.Message):
    __slots__ = ("node_id", "model_role", "parents")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ROLE_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    model_role: ModelRole
    parents: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_id: _Optional[int] = ..., model_role: _Optional[_Union[ModelRole, str]] = ..., parents: _Optional[_Iterable[int]] = ...) -> None: ...

class NodeDelta(_message.Message):
    __slots__ = ("node_id", "text", "tokens")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    text: str
    tokens: int
    def __init__(self, node_id: _Optional[int] = ..., text: _Optional[str] = ..., tokens: _Optional[int] = ...) -> None: ...

class NodeFinished(_message.Message):
    __slots__ = ("node_id", "text", "tokens", "finish_reason", "elapsed_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    text: str
    tokens: int
    finish_reason: FinishReason
    elapsed_s: float
    def __init__(self, node_id: _Optional[int] = ..., text: _Optional[str] = ..., tokens: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class NodeFailed(_message.Message):
    __slots__ = ("node_id", "reason", "error", "partial_text")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_TEXT_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    reason: str
    error: str
    partial_text: str
    def __init__(self, node_id: _Optional[int] = ..., reason: _Optional[str] = ..., error: _Optional[str] = ..., partial_text: _Optional[str] = ...) -> None: ...

class RoleUsage(_message.Message):
    __slots__ = ("model_role", "calls", "prompt_tokens", "reused_tokens", "completion_tokens")
    MODEL_ROLE_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model_role: ModelRole
    calls: int
    prompt_tokens: int
    reused_tokens: int
    completion_tokens: int
    def __init__(self, model_role: _Optional[_Union[ModelRole, str]] = ..., calls: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., reused_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class AnswerDone(_message.Message):
    __slots__ = ("text", "route", "usage", "timings", "failed_node_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    FAILED_NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    route: Route
    usage: _containers.RepeatedCompositeFieldContainer[RoleUsage]
    timings: Timings
    failed_node_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, text: _Optional[str] = ..., route: _Optional[_Union[Route, str]] = ..., usage: _Optional[_Iterable[_Union[RoleUsage, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., failed_node_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class PromptProgress(_message.Message):
    __slots__ = ("chars_received", "tokens_prefilled", "sentences", "note")
    CHARS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PREFILLED_FIELD_NUMBER: _ClassVar[int]
    SENTENCES_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    chars_received: int
    tokens_prefilled: int
    sentences: int
    note: str
    def __init__(self, chars_received: _Optional[int] = ..., tokens_prefilled: _Optional[int] = ..., sentences: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class AnswerEvent(_message.Message):
    __slots__ = ("plan_ready", "node_started", "node_delta", "node_finished", "node_failed", "answer_done", "prompt_progress", "node_planned")
    PLAN_READY_FIELD_NUMBER: _ClassVar[int]
    NODE_STARTED_FIELD_NUMBER: _ClassVar[int]
    NODE_DELTA_FIELD_NUMBER: _ClassVar[int]
    NODE_FINISHED_FIELD_NUMBER: _ClassVar[int]
    NODE_FAILED_FIELD_NUMBER: _ClassVar[int]
    ANSWER_DONE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    NODE_PLANNED_FIELD_NUMBER: _ClassVar[int]
    plan_ready: PlanReady
    node_started: NodeStarted
    node_delta: NodeDelta
    node_finished: NodeFinished
    node_failed: NodeFailed
    answer_done: AnswerDone
    prompt_progress: PromptProgress
    node_planned: NodePlanned
    def __init__(self, plan_ready: _Optional[_Union[PlanReady, _Mapping]] = ..., node_started: _Optional[_Union[NodeStarted, _Mapping]] = ..., node_delta: _Optional[_Union[NodeDelta, _Mapping]] = ..., node_finished: _Optional[_Union[NodeFinished, _Mapping]] = ..., node_failed: _Optional[_Union[NodeFailed, _Mapping]] = ..., answer_done: _Optional[_Union[AnswerDone, _Mapping]] = ..., prompt_progress: _Optional[_Union[PromptProgress, _Mapping]] = ..., node_planned: _Optional[_Union[NodePlanned, _Mapping]] = ...) -> None: ...
