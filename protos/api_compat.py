"""The v1 compatibility check: the current proto against a checked-in descriptor snapshot.

Owns compiling espalier.proto to a FileDescriptorProto (grpc_tools.protoc), the snapshot file
(a JSON dump of that descriptor, so a refresh reads as a diff in review), and `breaking_changes`,
which lists every change that could break a client built against the snapshot: a removed or
renumbered field, a field's name, type, label, presence or oneof changed, a removed message, enum,
enum value, service or RPC, an RPC's types or streaming changed, a reserved number or name reused
or un-reserved, a file option (package paths of generated code) changed. Additions are not listed.

    python protos/api_compat.py check      # exit 1 and list the breaks, if any
    python protos/api_compat.py snapshot   # refresh the snapshot (`make api-snapshot`): deliberate only

Stand-alone on purpose (protobuf and grpcio-tools only), so neither the service nor the clients
depend on it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from google.protobuf import descriptor_pb2, json_format
from google.protobuf.descriptor_pb2 import DescriptorProto as Message
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as Field
from google.protobuf.descriptor_pb2 import FileDescriptorProto as FDP

PROTOS = Path(__file__).resolve().parent
PROTO = "espalier/v1/espalier.proto"
SNAPSHOT = PROTOS / "espalier/v1/descriptor_snapshot.json"



def compile_proto(proto: str = PROTO, include: Path = PROTOS) -> FDP:
    """The FileDescriptorProto of `proto`, without source info: comments may change freely."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", f"--descriptor_set_out={out}", proto]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    (found,) = [f for f in files if f.name == proto]
    return found


def dump(fdp: FDP) -> str:
    return json_format.MessageToJson(fdp, preserving_proto_field_name=True, sort_keys=True, indent=1) + "\n"


def load(path: Path | None = None) -> FDP:
    return json_format.Parse((path or SNAPSHOT).read_text(), FDP())


# --- the comparison -----------------------------------------------------------------------------


def breaking_changes(old: FDP, new: FDP) -> list[str]:
    """Every incompatible difference from `old` (the snapshot) to `new`, as one sentence each."""
    breaks: list[str] = []
    if old.package != new.package:
        breaks.append(f"package changed from {old.package} to {new.package}")
    breaks += _option_changes(old.options, new.options, "file option")
    breaks += _message_changes(_messages(old.message_type, _prefix(old)), _messages(new.message_type, _prefix(new)))
    breaks += _enum_changes(_enums(old, _prefix(old)), _enums(new, _prefix(new)))
    breaks += _service_changes(old, new)
    return breaks


def _prefix(fdp: FDP) -> str:
    return f".{fdp.package}" if fdp.package else ""


def _messages(messages: list[Message], prefix: str) -> dict[str, Message]:
    """Every message, nested ones included, by full name (as field type_names spell it)."""
    found: dict[str, Message] = {}
    for msg in messages:
        name = f"{prefix}.{msg.name}"
        found[name] = msg
        found.update(_messages(list(msg.nested_type), name))
    return found


def _enums(fdp: FDP, prefix: str) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    found = {f"{prefix}.{e.name}": e for e in fdp.enum_type}
    for name, msg in _messages(list(fdp.message_type), prefix).items():
        found.update({f"{name}.{e.name}": e for e in msg.enum_type})
    return found


def _option_changes(old: object, new: object, what: str) -> Iterator[str]:
    # Only options set in the snapshot: adding one (say csharp_namespace) breaks nobody.
    for desc, value in old.ListFields():  # type: ignore[attr-defined]
        now = getattr(new, desc.name) if new.HasField(desc.name) else None  # type: ignore[attr-defined]
        if now != value:
            yield f"{what} {desc.name} changed from {value!r} to {now!r}"


def _message_changes(old: dict[str, Message], new: dict[str, Message]) -> Iterator[str]:
    for name, msg in old.items():
        if name not in new:
            yield f"message {name} removed"
            continue
        yield from _field_changes(name, msg, new[name])
        yield from _reserved_changes(name, msg, new[name])


class _Numbered(Protocol):
    name: str
    number: int


N = TypeVar("N", bound=_Numbered)


def _counterpart(where: str, old: N, new: Sequence[N]) -> tuple[N | None, list[str]]:
    """The item of `new` with `old`'s number (a field, an enum value) and the breaks found so far:
    renamed, or, without one, renumbered (its name has another number) or removed."""
    now = next((item for item in new if item.number == old.number), None)
    if now is not None:
        return now, [f"{where} renamed to {now.name}"] if now.name != old.name else []
    moved = next((item for item in new if item.name == old.name), None)
    return None, [f"{where} renumbered to {moved.number}" if moved else f"{where} removed"]


def _field_changes(owner: str, old: Message, new: Message) -> Iterator[str]:
    for field in old.field:
        where = f"field {owner}.{field.name} ({field.number})"
        now, breaks = _counterpart(where, field, new.field)
        yield from breaks
        if now is None:
            continue
        if (now.type, now.type_name) != (field.type, field.type_name):
            yield f"{where} type changed from {_type(field)} to {_type(now)}"
        if now.label != field.label:
            yield f"{where} label changed from {_label(field)} to {_label(now)}"
        if now.proto3_optional != field.proto3_optional:
            yield f"{where} presence changed (proto3 optional {field.proto3_optional} -> {now.proto3_optional})"
        if _oneof(old, field) != _oneof(new, now):
            yield f"{where} moved from oneof {_oneof(old, field)!r} to {_oneof(new, now)!r}"


def _type(field: Field) -> str:
    return field.type_name or Field.Type.Name(field.type).removeprefix("TYPE_").lower()


def _label(field: Field) -> str:
    return Field.Label.Name(field.label).removeprefix("LABEL_").lower()


def _oneof(msg: Message, field: Field) -> str | None:
    # A proto3 optional field sits in a synthetic oneof; its presence is compared separately.
    if not field.HasField("oneof_index") or field.proto3_optional:
        return None
    return msg.oneof_decl[field.oneof_index].name


def _reserved_changes(owner: str, old: Message, new: Message) -> Iterator[str]:
    """Reserved numbers and names stay reserved, and no new field takes one."""
    def numbers(msg: Message) -> set[int]:
        return {n for r in msg.reserved_range for n in range(r.start, r.end)}  # end is exclusive

    for number in sorted(numbers(old) - numbers(new)):
        yield f"message {owner}: reserved number {number} no longer reserved"
    for name in sorted(set(old.reserved_name) - set(new.reserved_name)):
        yield f"message {owner}: reserved name {name!r} no longer reserved"
    for field in new.field:
        if field.number in numbers(old) or field.name in old.reserved_name:
            yield f"field {owner}.{field.name} ({field.number}) reuses a reserved number or name"


def _enum_changes(old: dict[str, descriptor_pb2.EnumDescriptorProto],
                  new: dict[str, descriptor_pb2.EnumDescriptorProto]) -> Iterator[str]:
    for name, enum in old.items():
        if name not in new:
            yield f"enum {name} removed"
            continue
        for value in enum.value:
            yield from _counterpart(f"enum value {name}.{value.name} ({value.number})", value, new[name].value)[1]


def _service_changes(old: FDP, new: FDP) -> Iterator[str]:
    services = {s.name: s for s in new.service}
    for service in old.service:
        if service.name not in services:
            yield f"service {service.name} removed"
            continue
        methods = {m.name: m for m in services[service.name].method}
        for method in service.method:
            where = f"rpc {service.name}.{method.name}"
            now = methods.get(method.name)
            if now is None:
                yield f"{where} removed"
                continue
            for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
                if getattr(now, attr) != getattr(method, attr):
                    yield f"{where} {attr} changed from {getattr(method, attr)} to {getattr(now, attr)}"


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if argv == ["snapshot"]:
        SNAPSHOT.write_text(dump(compile_proto()))
        print(f"wrote {SNAPSHOT}")
        return 0
    if argv == ["check"]:
        breaks = breaking_changes(load(), compile_proto())
        print("\n".join(breaks) if breaks else "no breaking changes against the snapshot")
        return 1 if breaks else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
