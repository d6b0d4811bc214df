"""The ``bpf()`` system call, from Python: maps, program loading (with the verifier's log), raw tracepoints.

Every number here is named once, with the header it comes from. File
descriptors are owned by this process: when it exits, crashes included, the
kernel detaches the programs and frees the maps.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import platform
import struct

# arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h
NR_BPF = {"x86_64": 321, "aarch64": 280}


class Cmd(enum.IntEnum):
    """include/uapi/linux/bpf.h: enum bpf_cmd."""

    BPF_MAP_CREATE = 0
    BPF_MAP_LOOKUP_ELEM = 1
    BPF_MAP_UPDATE_ELEM = 2
    BPF_MAP_DELETE_ELEM = 3
    BPF_MAP_GET_NEXT_KEY = 4
    BPF_PROG_LOAD = 5
    BPF_RAW_TRACEPOINT_OPEN = 17


class MapType(enum.IntEnum):
    """include/uapi/linux/bpf.h: enum bpf_map_type."""

    BPF_MAP_TYPE_HASH = 1
    BPF_MAP_TYPE_ARRAY = 2
    BPF_MAP_TYPE_PERCPU_HASH = 5
    BPF_MAP_TYPE_PERCPU_ARRAY = 6
    BPF_MAP_TYPE_LRU_HASH = 9
    BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
    BPF_MAP_TYPE_RINGBUF = 27


class ProgType(enum.IntEnum):
    """include/uapi/linux/bpf.h: enum bpf_prog_type."""

    BPF_PROG_TYPE_RAW_TRACEPOINT = 17


# include/uapi/linux/bpf.h: flags of BPF_MAP_UPDATE_ELEM
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
PERCPU_MAP_TYPES = (MapType.BPF_MAP_TYPE_PERCPU_HASH, MapType.BPF_MAP_TYPE_PERCPU_ARRAY,
                    MapType.BPF_MAP_TYPE_LRU_PERCPU_HASH)
ATTR_SIZE = 128  # larger than every union member used here; the kernel checks the tail is zero


class BPFError(OSError):
    """A ``bpf()`` call failed; for a program load, ``log`` holds the verifier's explanation."""

    def __init__(self, errno_: int, what: str, log: str = "") -> None:
        super().__init__(errno_, f"{what}: {os.strerror(errno_)}" + (f"\n{log.strip()}" if log else ""))
        self.log = log


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def bpf(cmd: Cmd, attr: ctypes.Array, what: str) -> int:  # type: ignore[type-arg]
    """Issue ``bpf(cmd, attr)``; BPFError naming ``what`` when it fails."""
    machine = platform.machine()
    if machine not in NR_BPF:
        raise BPFError(errno.ENOSYS, f"{what}: no bpf() syscall number known for {machine}")
    result = _libc.syscall(NR_BPF[machine], ctypes.c_int(cmd), attr, ctypes.c_uint(ATTR_SIZE))
    if result < 0:
        raise BPFError(ctypes.get_errno(), what)
    return result


def _attr(fmt: str, *values: object) -> ctypes.Array:  # type: ignore[type-arg]
    buf = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def _address(buf: ctypes.Array) -> int:  # type: ignore[type-arg]
    return ctypes.addressof(buf)


def possible_cpus() -> int:
    """How many CPUs a per-CPU map holds values for (/sys/devices/system/cpu/possible)."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


class Map:
    """A BPF map owned by this process."""

    def __init__(self, map_type: MapType, key_size: int, value_size: int, max_entries: int, name: str) -> None:
        self.map_type, self.key_size, self.value_size, self.max_entries = map_type, key_size, value_size, max_entries
        self.name = name
        # union bpf_attr, BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, map_flags,
        # inner_map_fd, numa_node, map_name[16]
        attr = _attr("<IIIIIII16s", map_type, key_size, value_size, max_entries, 0, 0, 0, name.encode()[:15])
        self.fd = bpf(Cmd.BPF_MAP_CREATE, attr, f"creating BPF map {name!r}")
        self.cpus = possible_cpus() if map_type in PERCPU_MAP_TYPES else 1
        self._stride = (value_size + 7) // 8 * 8 if self.cpus > 1 or map_type in PERCPU_MAP_TYPES else value_size

    def lookup(self, key: bytes) -> list[bytes] | None:
        """The value of ``key`` (one per CPU for per-CPU maps), or None when absent."""
        value = ctypes.create_string_buffer(self._stride * self.cpus)
        keybuf = ctypes.create_string_buffer(key, len(key))
        attr = _attr("<IIQQQ", self.fd, 0, _address(keybuf), _address(value), 0)
        try:
            bpf(Cmd.BPF_MAP_LOOKUP_ELEM, attr, f"reading map {self.name!r}")
        except BPFError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        raw = value.raw
        return [raw[i * self._stride:i * self._stride + self.value_size] for i in range(self.cpus)]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Set ``key`` to ``value`` (the same value on every CPU for per-CPU maps)."""
        keybuf = ctypes.create_string_buffer(key, len(key))
        valbuf = ctypes.create_string_buffer(value.ljust(self._stride, b"\0") * self.cpus)
        attr = _attr("<IIQQQ", self.fd, 0, _address(keybuf), _address(valbuf), flags)
        bpf(Cmd.BPF_MAP_UPDATE_ELEM, attr, f"writing map {self.name!r}")

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; False when it was absent."""
        keybuf = ctypes.create_string_buffer(key, len(key))
        try:
            bpf(Cmd.BPF_MAP_DELETE_ELEM, _attr("<IIQ", self.fd, 0, _address(keybuf)), f"deleting from {self.name!r}")
        except BPFError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def all_keys(self) -> list[bytes]:
        """Every key (hash maps), read with BPF_MAP_GET_NEXT_KEY."""
        keys: list[bytes] = []
        current = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        first = True
        while True:
            attr = _attr("<IIQQ", self.fd, 0, 0 if first else _address(current), _address(nxt))
            try:
                bpf(Cmd.BPF_MAP_GET_NEXT_KEY, attr, f"listing map {self.name!r}")
            except BPFError as exc:
                if exc.errno == errno.ENOENT:
                    return keys
                raise
            keys.append(nxt.raw)
            ctypes.memmove(current, nxt, self.key_size)
            first = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def load_program(prog_type: ProgType, instructions: bytes, name: str, license: str = "GPL") -> int:
    """Load a program; BPFError carrying the verifier log when the kernel refuses it."""
    insns = ctypes.create_string_buffer(instructions, len(instructions))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(1 << 20)
    # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf,
    # kern_version, prog_flags, prog_name[16]
    attr = _attr("<IIQQIIQII16s", prog_type, len(instructions) // 8, _address(insns), _address(lic), 0, 0, 0, 0, 0,
                 name.encode()[:15])
    try:
        return bpf(Cmd.BPF_PROG_LOAD, attr, f"loading BPF program {name!r}")
    except BPFError as first:
        # Load again with the log on, to say why (the first try keeps the common path cheap).
        attr = _attr("<IIQQIIQII16s", prog_type, len(instructions) // 8, _address(insns), _address(lic), 1,
                     len(log), _address(log), 0, 0, name.encode()[:15])
        try:
            return bpf(Cmd.BPF_PROG_LOAD, attr, f"loading BPF program {name!r}")
        except BPFError as second:
            raise BPFError(second.errno, f"loading BPF program {name!r}", log.value.decode(errors="replace")) \
                from first


def attach_raw_tracepoint(name: str, prog_fd: int) -> int:
    """Attach ``prog_fd`` to raw tracepoint ``name``; closing the returned fd detaches it."""
    tp = ctypes.create_string_buffer(name.encode())
    return bpf(Cmd.BPF_RAW_TRACEPOINT_OPEN, _attr("<QI", _address(tp), prog_fd), f"attaching to tracepoint {name}")


class RingBuffer:
    """Reader of a BPF_MAP_TYPE_RINGBUF map through mmap: records come out in the order they were committed.

    The consumer page (ours to write) is at offset 0; the producer page and then
    the data area, mapped twice in a row so that a record never wraps, follow.
    """

    BUSY, DISCARD, HEADER = 1 << 31, 1 << 30, 8

    def __init__(self, ring: Map) -> None:
        import mmap

        page = mmap.PAGESIZE
        self.size = ring.max_entries
        self._consumer = mmap.mmap(ring.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(ring.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._page = page

    def drain(self) -> list[bytes]:
        """Every committed record not read yet (discarded ones skipped); a record still being written ends it."""
        u64, u32 = struct.Struct("<Q"), struct.Struct("<I")
        consumer = u64.unpack_from(self._consumer, 0)[0]
        producer = u64.unpack_from(self._producer, 0)[0]
        records = []
        mask = self.size - 1
        while consumer < producer:
            at = self._page + (consumer & mask)
            length = u32.unpack_from(self._producer, at)[0]
            if length & self.BUSY:
                break
            size = length & ~(self.BUSY | self.DISCARD)
            if not length & self.DISCARD:
                records.append(bytes(self._producer[at + self.HEADER:at + self.HEADER + size]))
            consumer += (size + self.HEADER + 7) & ~7
        u64.pack_into(self._consumer, 0, consumer)
        return records

    def close(self) -> None:
        self._consumer.close()
        self._producer.close()
