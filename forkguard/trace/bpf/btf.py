"""Read kernel struct layouts from BTF (/sys/kernel/btf/vmlinux), instead of hard-coding offsets.

Only what the tracer needs: the byte offset of a struct member (``task_struct.tgid``)
and the parameter count of a tracepoint's prototype. Format: Documentation/bpf/btf.rst,
include/uapi/linux/btf.h.
"""

from __future__ import annotations

import struct
from functools import lru_cache

VMLINUX = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F

# include/uapi/linux/btf.h: BTF_KIND_*, and the bytes that follow each kind's 12-byte header
KIND_STRUCT, KIND_UNION, KIND_TYPEDEF, KIND_PTR, KIND_FUNC_PROTO = 4, 5, 8, 2, 13
_EXTRA = {1: lambda vlen: 4, 3: lambda vlen: 12, 4: lambda vlen: 12 * vlen, 5: lambda vlen: 12 * vlen,
          6: lambda vlen: 8 * vlen, 13: lambda vlen: 8 * vlen, 14: lambda vlen: 4, 15: lambda vlen: 12 * vlen,
          17: lambda vlen: 4, 19: lambda vlen: 12 * vlen}


class BTFError(LookupError):
    """The kernel's BTF lacks what the tracer needs (or cannot be read)."""


class BTF:
    """The type table of one BTF blob, indexed by name for structs and typedefs."""

    def __init__(self, data: bytes) -> None:
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("<HBBIIIII", data)
        if magic != BTF_MAGIC:
            raise BTFError("not BTF data (bad magic)")
        self._data = data
        self._strings = hdr_len + str_off
        # (kind, name_off, vlen, size_or_type, offset of the kind's extra data); type 0 is void
        self._types: list[tuple[int, int, int, int, int]] = [(0, 0, 0, 0, 0)]
        self._by_name: dict[tuple[int, str], int] = {}
        at, end = hdr_len + type_off, hdr_len + type_off + type_len
        while at < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, at)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            self._types.append((kind, name_off, vlen, size_or_type, at + 12))
            if kind in (KIND_STRUCT, KIND_UNION, KIND_TYPEDEF) and name_off:
                self._by_name.setdefault((kind, self._string(name_off)), len(self._types) - 1)
            at += 12 + _EXTRA.get(kind, lambda vlen: 0)(vlen)

    def _string(self, offset: int) -> str:
        end = self._data.index(b"\0", self._strings + offset)
        return self._data[self._strings + offset:end].decode()

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``struct_name.member`` (looking into anonymous inner structs and unions)."""
        type_id = self._by_name.get((KIND_STRUCT, struct_name))
        if type_id is None:
            raise BTFError(f"struct {struct_name} is not in the kernel's BTF")
        found = self._find_member(type_id, member)
        if found is None:
            raise BTFError(f"struct {struct_name} has no member {member!r} in this kernel")
        return found // 8

    def _find_member(self, type_id: int, member: str) -> int | None:
        _kind, _name, vlen, _size, at = self._types[type_id]
        kind_flag = struct.unpack_from("<I", self._data, at - 8)[0] >> 31
        for i in range(vlen):
            name_off, member_type, offset = struct.unpack_from("<III", self._data, at + 12 * i)
            bits = offset & 0xFFFFFF if kind_flag else offset
            if name_off and self._string(name_off) == member:
                return bits
            if not name_off and self._types[member_type][0] in (KIND_STRUCT, KIND_UNION):
                inner = self._find_member(member_type, member)
                if inner is not None:
                    return bits + inner
        return None

    def tracepoint_arity(self, tracepoint: str) -> int:
        """How many arguments a raw tracepoint passes (its btf_trace_<name> prototype, minus the context)."""
        type_id = self._by_name.get((KIND_TYPEDEF, f"btf_trace_{tracepoint}"))
        if type_id is None:
            raise BTFError(f"tracepoint {tracepoint} is not in the kernel's BTF")
        target = self._types[type_id][3]
        while self._types[target][0] == KIND_PTR:
            target = self._types[target][3]
        if self._types[target][0] != KIND_FUNC_PROTO:
            raise BTFError(f"btf_trace_{tracepoint} is not a function prototype")
        return self._types[target][2] - 1  # the first parameter is the tracepoint's private data


@lru_cache(maxsize=1)
def vmlinux() -> BTF:
    """The running kernel's BTF (parsed once per process)."""
    try:
        with open(VMLINUX, "rb") as f:
            return BTF(f.read())
    except OSError as exc:
        raise BTFError(f"cannot read {VMLINUX} ({exc.strerror}): this kernel was built without BTF") from None
