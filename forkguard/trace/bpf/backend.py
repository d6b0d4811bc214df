"""The eBPF backend: maps and programs in the kernel, read back as plain numbers.

Attach order matters: the exit and fork programs first (membership is right
from the start), ``sys_exit`` before ``sys_enter`` (every syscall that starts
being timed also ends being counted). Everything is an fd of this process.
"""

from __future__ import annotations

import errno
import os
import struct
import time

from ..._procfs import cmdline as read_cmdline
from ..tree import new_process
from . import programs
from .btf import BTFError, vmlinux
from .kernel import (
    BPFError,
    Map,
    MapType,
    ProgType,
    RingBuffer,
    attach_raw_tracepoint,
    load_program,
)

U32, U64 = struct.Struct("<I"), struct.Struct("<Q")
INFLIGHT_THREADS = 65536
PROC_STATS_ENTRIES = 16384
RINGBUF_BYTES = 1 << 20
LIFE_RING_BYTES = 1 << 18


class BPFBackend:
    """Counts the syscalls of one process, and with ``follow_forks`` of all it forks after attach."""

    name = "bpf"

    def __init__(self, pid: int, follow_forks: bool, max_pids: int, sample: int, per_process: bool,
                 tree: bool = False) -> None:
        self.pid, self.follow_forks, self.max_pids = pid, follow_forks, max_pids
        self.sample, self.per_process, self.tree = sample, per_process, tree
        self.processes: dict[int, dict[str, object]] = {}  # tgid -> the tree view's record
        self._rings: list[RingBuffer] = []
        self._event_ring: RingBuffer | None = None
        self._life_ring: RingBuffer | None = None
        self._maps: list[Map] = []
        self._fds: list[int] = []

    def attach(self) -> None:
        try:
            self._attach()
        except BaseException:
            self.close()
            raise

    def _attach(self) -> None:
        btf = vmlinux()
        tgid = btf.member_offset("task_struct", "tgid")
        signal = btf.member_offset("task_struct", "signal")
        live = btf.member_offset("signal_struct", "live")
        comm = btf.member_offset("task_struct", "comm")
        exit_code = btf.member_offset("task_struct", "exit_code")
        self.pids = self._map(MapType.BPF_MAP_TYPE_HASH, 4, 4, self.max_pids, "fg_pids")
        self.inflight = self._map(MapType.BPF_MAP_TYPE_HASH, 4, 16, INFLIGHT_THREADS, "fg_inflight")
        self.stats = self._map(MapType.BPF_MAP_TYPE_PERCPU_ARRAY, 4, programs.STATS.size, programs.NR_SLOTS,
                               "fg_stats")
        self.counters = self._map(MapType.BPF_MAP_TYPE_ARRAY, 4, 8, programs.N_COUNTERS, "fg_counters")
        self.proc = self._map(MapType.BPF_MAP_TYPE_PERCPU_HASH, programs.PROC_KEY.size, programs.PROC_STATS.size,
                              PROC_STATS_ENTRIES, "fg_proc") if self.per_process else None
        self.comms = self._map(MapType.BPF_MAP_TYPE_HASH, 4, 16, self.max_pids, "fg_comms") \
            if self.per_process else None
        self.events = self._map(MapType.BPF_MAP_TYPE_RINGBUF, 0, 0, RINGBUF_BYTES, "fg_events") \
            if self.sample else None
        sample_ctr = self._map(MapType.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1, "fg_sample") if self.sample else None
        self.life = self._map(MapType.BPF_MAP_TYPE_RINGBUF, 0, 0, LIFE_RING_BYTES, "fg_life") if self.tree else None
        if self.events is not None:
            self._event_ring = RingBuffer(self.events)
            self._rings.append(self._event_ring)
        if self.life is not None:
            self._life_ring = RingBuffer(self.life)
            self._rings.append(self._life_ring)
            self.processes[self.pid] = new_process(self.pid, None, time.monotonic_ns())
        self.pids.update(U32.pack(self.pid), U32.pack(1))
        life = self.life.fd if self.life else None

        load = self._load
        self._attach_prog("sched_process_exit", load("fg_exit", programs.sched_process_exit(
            self.pids.fd, self.inflight.fd, self.counters.fd, tgid, signal, live,
            self.comms.fd if self.comms else None, comm, life, exit_code)))
        if self.follow_forks:
            self._attach_prog("sched_process_fork", load("fg_fork", programs.sched_process_fork(
                self.pids.fd, self.counters.fd, tgid, life)))
        if life is not None:
            self._attach_prog("sched_process_exec", load("fg_exec", programs.sched_process_exec(
                self.pids.fd, life, btf.member_offset("task_struct", "mm"),
                btf.member_offset("mm_struct", "arg_start"), btf.member_offset("mm_struct", "arg_end"))))
        self._attach_prog("sys_exit", load("fg_sys_exit", programs.sys_exit(
            self.inflight.fd, self.stats.fd, self.counters.fd, self.proc.fd if self.proc else None,
            self.events.fd if self.events else None, self.sample, sample_ctr.fd if sample_ctr else None)))
        self._attach_prog("sys_enter", load("fg_sys_enter", programs.sys_enter(
            self.pids.fd, self.inflight.fd, self.counters.fd)))

    def _map(self, map_type: MapType, key: int, value: int, entries: int, name: str) -> Map:
        new = Map(map_type, key, value, entries, name)
        self._maps.append(new)
        return new

    def _load(self, name: str, code: bytes) -> int:
        fd = load_program(ProgType.BPF_PROG_TYPE_RAW_TRACEPOINT, code, name)
        self._fds.append(fd)
        return fd

    def _attach_prog(self, tracepoint: str, prog_fd: int) -> None:
        self._fds.append(attach_raw_tracepoint(tracepoint, prog_fd))

    def read(self) -> dict[str, object]:
        """The kernel's numbers now: per-syscall aggregates, per-process ones, counters."""
        syscalls = {}
        for nr in range(programs.NR_SLOTS):
            values = self.stats.lookup(U32.pack(nr))
            if not values:
                continue
            fields = [sum(col) for col in zip(*(programs.STATS.unpack(v) for v in values), strict=True)]
            fields[3] = max(programs.STATS.unpack(v)[3] for v in values)  # max is a max, not a sum
            if fields[0]:
                syscalls[nr] = fields
        counters = [U64.unpack(v[0])[0] if v else 0
                    for v in (self.counters.lookup(U32.pack(i)) for i in range(programs.N_COUNTERS))]
        per_process: dict[int, dict[int, list[int]]] = {}
        if self.proc is not None:
            for key in self.proc.all_keys():
                tgid, nr = programs.PROC_KEY.unpack(key)
                values = self.proc.lookup(key) or []
                totals = [sum(col) for col in zip(*(programs.PROC_STATS.unpack(v) for v in values), strict=True)]
                per_process.setdefault(tgid, {})[nr] = totals
        comms = {}
        if self.comms is not None:
            for key in self.comms.all_keys():
                value = self.comms.lookup(key)
                if value:
                    comms[U32.unpack(key)[0]] = value[0].split(b"\0", 1)[0].decode(errors="replace")
        return {"syscalls": syscalls, "counters": counters, "per_process": per_process, "comms": comms}

    def poll(self) -> list[tuple[int, int, int, int, int, int]]:
        """Drain the ring buffers: apply process-tree events, return sampled syscall events
        (ts_ns, tid, tgid, nr, ret, latency_ns)."""
        if self._life_ring is not None:
            for record in self._life_ring.drain():
                kind, pid, ppid, code, ts, comm = programs.LIFE.unpack_from(record)
                argv = record[programs.LIFE.size:]
                name = comm.split(b"\0", 1)[0].decode(errors="replace")
                if kind == programs.LIFE_FORK:
                    proc = self.processes[pid] = new_process(pid, ppid, ts, name)
                    parent = self.processes.get(ppid)
                    if not proc["cmdline"] and parent is not None:  # gone already: it ran its parent's program
                        proc["cmdline"] = parent["cmdline"]
                    continue
                proc = self.processes.setdefault(pid, new_process(pid, None, ts, name))
                proc["comm"] = name
                if kind == programs.LIFE_EXEC:
                    cmdline = b" ".join(argv.rstrip(b"\0").split(b"\0")).decode(errors="replace") or name
                    if len(argv) == programs.ARGV_BYTES and argv[-1]:  # cut: /proc has it whole if still there
                        cmdline = read_cmdline(pid) or cmdline
                    proc["cmdline"] = cmdline
                    proc["execs"].append({"ns": ts, "cmdline": cmdline})  # type: ignore[union-attr]
                elif kind == programs.LIFE_EXIT:
                    proc["exit_ns"] = ts
                    proc["exit_code"] = code >> 8 & 0xFF if code & 0x7F == 0 else -(code & 0x7F)
        if self._event_ring is None:
            return []
        return [programs.EVENT.unpack(record) for record in self._event_ring.drain()]

    def close(self) -> None:
        """Detach everything (attachments first, then programs, then maps)."""
        for ring in self._rings:
            ring.close()
        self._rings.clear()
        for fd in reversed(self._fds):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        for bpf_map in self._maps:
            bpf_map.close()
        self._maps.clear()


def explain(exc: Exception, ptrace_hint: bool = True) -> str:
    """One line that says what stopped the BPF backend and what to do."""
    if isinstance(exc, BTFError):
        return f"{exc}; the BPF backend needs kernel BTF (CONFIG_DEBUG_INFO_BTF)"
    if isinstance(exc, BPFError) and exc.errno in (errno.EPERM, errno.EACCES):
        return ("loading BPF programs is not permitted: run as root (or with CAP_BPF and CAP_PERFMON)"
                + ("; or use the ptrace backend (--backend ptrace)" if ptrace_hint else ""))
    if isinstance(exc, BPFError) and exc.errno == errno.ENOSYS:
        return "this kernel has no bpf() system call (CONFIG_BPF_SYSCALL)"
    return str(exc).splitlines()[0]
