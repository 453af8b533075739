"""Checks that one proto is another's compatible superset, field for field:
every message, field, enum value and RPC of the BASE is present in OURS with
the same name, number, type, label, type name and oneof; OURS only adds, and
never reuses a number. Reads descriptor sets (protoc --descriptor_set_out),
so both may define the same package. Prints JSON {problems, added}.
Usage: proto_compat.py OURS.pb BASE.pb"""
import json
import sys

from google.protobuf import descriptor_pb2


def load(path):
    fds = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        fds.ParseFromString(f.read())
    (fd,) = fds.file
    return fd


ours, base = load(sys.argv[1]), load(sys.argv[2])
problems, added = [], []


def sig(msg, f):
    oneof = msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
    return (f.number, f.type, f.label, f.type_name, oneof, f.proto3_optional)


def compare_enum(be, oe, path):
    if oe is None:
        problems.append(f"{path}: enum missing")
        return
    ov = {v.name: v.number for v in oe.value}
    for v in be.value:
        if ov.get(v.name) != v.number:
            problems.append(f"{path}.{v.name}: base {v.number} vs ours {ov.get(v.name)}")


def compare_message(bm, om, path):
    of = {f.name: f for f in om.field}
    bf = {f.name: f for f in bm.field}
    for f in bm.field:
        g = of.get(f.name)
        if g is None:
            problems.append(f"{path}.{f.name}: missing")
        elif sig(bm, f) != sig(om, g):
            problems.append(f"{path}.{f.name}: base {sig(bm, f)} vs ours {sig(om, g)}")
    numbers = {f.number for f in bm.field}
    for g in om.field:
        if g.name not in bf:
            if g.number in numbers:
                problems.append(f"{path}.{g.name}: reuses field number {g.number}")
            added.append(f"{path}.{g.name} = {g.number}")
    oe = {e.name: e for e in om.enum_type}
    for e in bm.enum_type:
        compare_enum(e, oe.get(e.name), f"{path}.{e.name}")
    on = {n.name: n for n in om.nested_type}
    for n in bm.nested_type:
        if n.name not in on:
            problems.append(f"{path}.{n.name}: nested message missing")
        else:
            compare_message(n, on[n.name], f"{path}.{n.name}")


if ours.package != base.package:
    problems.append(f"package {ours.package!r} != {base.package!r}")
om = {m.name: m for m in ours.message_type}
for m in base.message_type:
    if m.name not in om:
        problems.append(f"{m.name}: message missing")
    else:
        compare_message(m, om[m.name], m.name)
oe = {e.name: e for e in ours.enum_type}
for e in base.enum_type:
    compare_enum(e, oe.get(e.name), e.name)
osvc = {s.name: s for s in ours.service}
for s in base.service:
    o = {m.name: m for m in osvc[s.name].method} if s.name in osvc else {}
    for m in s.method:
        k = lambda x: (x.input_type, x.output_type, x.client_streaming, x.server_streaming)  # noqa: E731
        if m.name not in o or k(o[m.name]) != k(m):
            problems.append(f"{s.name}.{m.name}: base {k(m)} vs ours {k(o[m.name]) if m.name in o else None}")
print(json.dumps({"problems": problems, "added": added}))
