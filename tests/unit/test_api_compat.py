"""Within v1 only additive changes (protos/README.md): the proto against its descriptor snapshot,
and proof that the checker catches each kind of break while letting additions through."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as Field
from google.protobuf.descriptor_pb2 import FileDescriptorProto as FDP

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("api_compat", ROOT / "protos/api_compat.py")
assert _spec and _spec.loader
compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compat)

P = ".espalier.v1"


@pytest.fixture(scope="module")
def current() -> FDP:
    return compat.compile_proto()


def test_the_proto_has_no_breaking_change_against_the_snapshot(current: FDP) -> None:
    breaks = compat.breaking_changes(compat.load(), current)
    assert not breaks, "v1 allows only additive changes:\n" + "\n".join(breaks)


# --- the checker on edited descriptors ----------------------------------------------------------


def message(fdp: FDP, name: str) -> descriptor_pb2.DescriptorProto:
    (found,) = [m for m in fdp.message_type if m.name == name]
    return found


def field(fdp: FDP, msg: str, name: str) -> Field:
    (found,) = [f for f in message(fdp, msg).field if f.name == name]
    return found


def enum(fdp: FDP, name: str) -> descriptor_pb2.EnumDescriptorProto:
    (found,) = [e for e in fdp.enum_type if e.name == name]
    return found


def enum_value(fdp: FDP, name: str, value: str) -> descriptor_pb2.EnumValueDescriptorProto:
    (found,) = [v for v in enum(fdp, name).value if v.name == value]
    return found


def rpc(fdp: FDP, name: str) -> descriptor_pb2.MethodDescriptorProto:
    (found,) = [m for m in fdp.service[0].method if m.name == name]
    return found


def remove(items: Any, predicate: Callable[[Any], bool]) -> None:
    (index,) = [i for i, item in enumerate(items) if predicate(item)]
    del items[index]


def set_attr(obj: object, **values: object) -> None:
    for key, value in values.items():
        setattr(obj, key, value)


def unset_oneof(f: Field) -> None:
    f.ClearField("oneof_index")


def presence_off(f: Field) -> None:
    f.proto3_optional = False
    f.ClearField("oneof_index")


# kind -> (an edit of the current descriptor, the one break it must report)
BREAKS: dict[str, tuple[Callable[[FDP], None], str]] = {
    "field removed": (lambda d: remove(message(d, "PlanRequest").field, lambda f: f.name == "question"),
                      f"field {P}.PlanRequest.question (1) removed"),
    "field renumbered": (lambda d: set_attr(field(d, "Node", "title"), number=9),
                         f"field {P}.Node.title (2) renumbered to 9"),
    "field renamed": (lambda d: set_attr(field(d, "Node", "title"), name="name"),
                      f"field {P}.Node.title (2) renamed to name"),
    "scalar type changed": (lambda d: set_attr(field(d, "Node", "id"), type=Field.TYPE_UINT64),
                            f"field {P}.Node.id (1) type changed from uint32 to uint64"),
    "message type changed": (lambda d: set_attr(field(d, "PlanResponse", "graph"), type_name=f"{P}.Node"),
                             f"field {P}.PlanResponse.graph (1) type changed from {P}.Graph to {P}.Node"),
    "label changed": (lambda d: set_attr(field(d, "Node", "depends_on"), label=Field.LABEL_OPTIONAL),
                      f"field {P}.Node.depends_on (3) label changed from repeated to optional"),
    "presence changed": (lambda d: presence_off(field(d, "GenerationSettings", "temperature")),
                         (f"field {P}.GenerationSettings.temperature (1) presence changed "
                          "(proto3 optional True -> False)")),
    "moved out of a oneof": (lambda d: unset_oneof(field(d, "AnswerEvent", "plan_ready")),
                             f"field {P}.AnswerEvent.plan_ready (1) moved from oneof 'event' to None"),
    "message removed": (lambda d: remove(d.message_type, lambda m: m.name == "StreamEnd"),
                        f"message {P}.StreamEnd removed"),
    "enum removed": (lambda d: remove(d.enum_type, lambda e: e.name == "FinishReason"),
                     f"enum {P}.FinishReason removed"),
    "enum value removed": (lambda d: remove(enum(d, "Route").value, lambda v: v.name == "ROUTE_GRAPH"),
                           f"enum value {P}.Route.ROUTE_GRAPH (3) removed"),
    "enum value renumbered": (lambda d: set_attr(enum_value(d, "Mode", "MODE_SGD"), number=7),
                              f"enum value {P}.Mode.MODE_SGD (4) renumbered to 7"),
    "enum value renamed": (lambda d: set_attr(enum_value(d, "Mode", "MODE_SGD"), name="MODE_GRAPH"),
                           f"enum value {P}.Mode.MODE_SGD (4) renamed to MODE_GRAPH"),
    "rpc removed": (lambda d: remove(d.service[0].method, lambda m: m.name == "Stream"),
                    "rpc EspalierService.Stream removed"),
    "rpc input type changed": (lambda d: set_attr(rpc(d, "Plan"), input_type=f"{P}.ExpandRequest"),
                               (f"rpc EspalierService.Plan input_type changed from {P}.PlanRequest to "
                                f"{P}.ExpandRequest")),
    "rpc output type changed": (lambda d: set_attr(rpc(d, "Expand"), output_type=f"{P}.StreamResponse"),
                                (f"rpc EspalierService.Expand output_type changed from {P}.ExpandResponse "
                                 f"to {P}.StreamResponse")),
    "rpc no longer streams": (lambda d: set_attr(rpc(d, "Expand"), server_streaming=False),
                              "rpc EspalierService.Expand server_streaming changed from True to False"),
    "rpc starts client streaming": (lambda d: set_attr(rpc(d, "Plan"), client_streaming=True),
                                    "rpc EspalierService.Plan client_streaming changed from False to True"),
    "service removed": (lambda d: d.ClearField("service"), "service EspalierService removed"),
    "file option changed": (lambda d: set_attr(d.options, java_package="com.example.v1"),
                            "file option java_package changed from 'dev.espalier.v1' to 'com.example.v1'"),
}


@pytest.mark.parametrize("kind", BREAKS)
def test_each_kind_of_break_is_caught(current: FDP, kind: str) -> None:
    edit, expected = BREAKS[kind]
    edited = FDP()
    edited.CopyFrom(current)
    edit(edited)
    assert compat.breaking_changes(current, edited) == [expected]


def test_a_renamed_oneof_or_package_breaks_everything_under_it(current: FDP) -> None:
    renamed, repackaged = FDP(), FDP()
    renamed.CopyFrom(current)
    repackaged.CopyFrom(current)
    message(renamed, "StreamRequest").oneof_decl[0].name = "kind"
    repackaged.package = "espalier.v2"
    members = [f.name for f in message(current, "StreamRequest").field]
    assert compat.breaking_changes(current, renamed) == [
        f"field {P}.StreamRequest.{name} ({i}) moved from oneof 'message' to 'kind'"
        for i, name in enumerate(members, start=1)]
    moved = compat.breaking_changes(current, repackaged)
    assert moved[0] == "package changed from espalier.v1 to espalier.v2"
    assert f"message {P}.PlanRequest removed" in moved


def test_reserved_numbers_and_names_stay_reserved(current: FDP) -> None:
    old = FDP()
    old.CopyFrom(current)
    node = message(old, "Node")
    node.reserved_range.add(start=9, end=11)  # 9 and 10
    node.reserved_name.append("weight")
    unreserved, reused = FDP(), FDP()
    unreserved.CopyFrom(old)
    del message(unreserved, "Node").reserved_range[:]
    del message(unreserved, "Node").reserved_name[:]
    assert compat.breaking_changes(old, unreserved) == [
        f"message {P}.Node: reserved number 9 no longer reserved",
        f"message {P}.Node: reserved number 10 no longer reserved",
        f"message {P}.Node: reserved name 'weight' no longer reserved"]
    reused.CopyFrom(old)
    message(reused, "Node").field.add(name="weight", number=12, type=Field.TYPE_UINT32, label=Field.LABEL_OPTIONAL)
    message(reused, "Node").field.add(name="rank", number=10, type=Field.TYPE_UINT32, label=Field.LABEL_OPTIONAL)
    assert compat.breaking_changes(old, reused) == [
        f"field {P}.Node.weight (12) reuses a reserved number or name",
        f"field {P}.Node.rank (10) reuses a reserved number or name"]


def test_additions_pass(current: FDP) -> None:
    grown = FDP()
    grown.CopyFrom(current)
    message(grown, "Node").field.add(name="weight", number=6, type=Field.TYPE_FLOAT, label=Field.LABEL_OPTIONAL)
    event = message(grown, "AnswerEvent")
    event.field.add(name="heartbeat", number=8, type=Field.TYPE_BOOL, label=Field.LABEL_OPTIONAL, oneof_index=0)
    message(grown, "Node").reserved_range.add(start=20, end=21)
    message(grown, "Node").nested_type.add(name="Extra")
    grown.message_type.add(name="Feedback")
    enum(grown, "Mode").value.add(name="MODE_LIVE", number=5)
    grown.enum_type.add(name="Tone").value.add(name="TONE_UNSPECIFIED", number=0)
    grown.service[0].method.add(name="Judge", input_type=f"{P}.Feedback", output_type=f"{P}.Feedback")
    grown.service.add(name="AdminService")
    grown.options.csharp_namespace = "Espalier.V1"
    assert compat.breaking_changes(current, grown) == []


# --- through protoc, as a person edits the proto ------------------------------------------------


def compile_edited(tmp_path: Path, old: str, new: str) -> FDP:
    text = (ROOT / "protos" / compat.PROTO).read_text()
    assert old in text
    edited = tmp_path / compat.PROTO
    edited.parent.mkdir(parents=True)
    edited.write_text(text.replace(old, new, 1))
    return compat.compile_proto(include=tmp_path)


def test_a_renamed_field_in_the_proto_text_fails(tmp_path: Path, current: FDP) -> None:
    edited = compile_edited(tmp_path, "  string title = 2;\n", "  string name = 2;\n")
    assert compat.breaking_changes(current, edited) == [f"field {P}.Node.title (2) renamed to name"]


def test_a_new_field_in_the_proto_text_passes(tmp_path: Path, current: FDP) -> None:
    edited = compile_edited(tmp_path, "  uint32 max_tokens = 7;\n}",
                            "  uint32 max_tokens = 7;\n  // A note.\n  string note = 8;\n}")
    assert compat.breaking_changes(current, edited) == []


def test_the_command_line_writes_and_checks_a_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    snapshot = tmp_path / "snapshot.json"
    monkeypatch.setattr(compat, "SNAPSHOT", snapshot)
    assert compat.main(["snapshot"]) == 0 and compat.load(snapshot) == compat.compile_proto()
    assert compat.main(["check"]) == 0
    stale = compat.load(snapshot)
    enum(stale, "Mode").value.add(name="MODE_GONE", number=9)  # as if the proto had dropped a value
    snapshot.write_text(compat.dump(stale))
    assert compat.main(["check"]) == 1
    assert f"enum value {P}.Mode.MODE_GONE (9) removed" in capsys.readouterr().out
    assert compat.main(["bogus"]) == 2
