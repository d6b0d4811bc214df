"""The tracer's BPF programs, written with :mod:`asm`, and the layouts they share with user space.

Seed 004's design: one map of traced processes (TGIDs) gates everything.

- ``sys_enter``: a syscall of a traced process starts: remember (start time, number) in the
  thread's slot.
- ``sys_exit``: it ends: add count, error, time, max and a log2 latency bucket to the per-CPU
  aggregate of its number (and, with ``per_process``, to the process's own); every
  ``sample``-th one goes to a ring buffer as an event. Sampling never touches the aggregate.
- ``sched_process_fork``: runs in the parent before the child runs; with follow-forks, a traced
  parent enrols its child. A full map is counted (``COUNTER_ENROL_DROPPED``), never a crash.
- ``sched_process_exit``: the last thread of a traced process exits: the process leaves the map.
  (A thread's exit, or an exec by a non-leader thread, keeps the TGID and so the membership.)
"""

from __future__ import annotations

import struct

from .asm import (
    ADD,
    JEQ,
    JGE,
    JGT,
    JNE,
    JSGE,
    JSLT,
    LSH,
    MOD,
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    R7,
    R8,
    R9,
    R10,
    RSH,
    SUB,
    Asm,
    Helper,
)
from .kernel import BPF_ANY, BPF_NOEXIST

NR_SLOTS = 512  # syscall numbers 0..510; anything else (including -1) counts in slot 511
HIST_BUCKETS = 32  # log2(ns): the last bucket takes everything from 2^31 ns (~2.1 s) up
# struct stats { u64 count, errors, total_ns, max_ns, hist[32]; }
STATS = struct.Struct(f"<4Q{HIST_BUCKETS}Q")
# struct proc_stats { u64 count, errors, total_ns; }, keyed by struct { u32 tgid, nr; }
PROC_STATS = struct.Struct("<3Q")
PROC_KEY = struct.Struct("<II")
# struct event { u64 ts_ns; u32 tid, tgid; u64 nr; s64 ret; u64 latency_ns; }
EVENT = struct.Struct("<QIIQqQ")
# struct life { u32 kind, pid, ppid; s32 code; u64 ts_ns; char comm[16]; }: the process tree's events
LIFE = struct.Struct("<IIIiQ16s")
LIFE_FORK, LIFE_EXEC, LIFE_EXIT = 1, 2, 3
LIFE_AT = -160  # where programs build it on their stack
# an exec's record is a struct life followed by the new program's argv (NUL-separated, cut at ARGV_BYTES)
ARGV_BYTES = 256
EXEC_AT = -(LIFE.size + ARGV_BYTES + 32)  # below the scratch slots at -4..-24
# counters (a plain array, atomically updated)
COUNTER_ENROLLED, COUNTER_ENROL_DROPPED, COUNTER_PROC_DROPPED, COUNTER_EVENTS_LOST, COUNTER_EXITED = range(5)
COUNTER_UNTIMED = 5  # threads with no in-flight slot (map full): their syscalls were not counted
N_COUNTERS = 8
E2BIG, EEXIST = 7, 17  # include/uapi/asm-generic/errno-base.h


def _counter_add(a: Asm, counters_fd: int, index: int, scratch_off: int) -> None:
    """counters[index] += 1 (clobbers R0-R5)."""
    a.store_imm(4, R10, scratch_off, index)
    a.ld_map_fd(R1, counters_fd).mov_reg(R2, R10).alu_imm(ADD, R2, scratch_off)
    a.call(Helper.map_lookup_elem)
    label = f"counter_done_{index}_{scratch_off}_{len(a._insns)}"
    a.jmp_imm(JEQ, R0, 0, label).mov_imm(R1, 1).atomic_add(8, R0, 0, R1).label(label)


def sys_enter(pids_fd: int, inflight_fd: int, counters_fd: int) -> bytes:
    """raw_syscalls:sys_enter(regs, id).

    The thread's in-flight slot is written in place; only a thread's first
    traced syscall inserts it (a hash insert costs far more than a store).
    """
    a = Asm()
    a.mov_reg(R6, R1)  # ctx: struct bpf_raw_tracepoint_args { u64 args[]; }
    a.call(Helper.get_current_pid_tgid).mov_reg(R7, R0)
    a.alu_imm(RSH, R0, 32).store_reg(4, R10, -4, R0)  # tgid
    a.ld_map_fd(R1, pids_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -4).call(Helper.map_lookup_elem)
    a.jmp_imm(JEQ, R0, 0, "out")
    a.call(Helper.ktime_get_ns).mov_reg(R8, R0)
    a.load(8, R9, R6, 8)  # the syscall number
    a.store_reg(4, R10, -28, R7)  # key: tid (low half of pid_tgid)
    a.ld_map_fd(R1, inflight_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -28).call(Helper.map_lookup_elem)
    a.jmp_imm(JEQ, R0, 0, "insert")
    a.store_reg(8, R0, 8, R9).store_reg(8, R0, 0, R8).ja("out")
    a.label("insert")
    a.store_reg(8, R10, -24, R8).store_reg(8, R10, -16, R9)  # value: { start_ns, nr }
    a.ld_map_fd(R1, inflight_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -28)
    a.mov_reg(R3, R10).alu_imm(ADD, R3, -24).mov_imm(R4, BPF_ANY).call(Helper.map_update_elem)
    a.jmp_imm(JEQ, R0, 0, "out")
    _counter_add(a, counters_fd, COUNTER_UNTIMED, -32)  # no room for this thread: its syscalls go uncounted
    a.label("out").mov_imm(R0, 0).exit()
    return a.assemble()


def sys_exit(inflight_fd: int, stats_fd: int, counters_fd: int, proc_fd: int | None,
             events_fd: int | None, sample: int, sample_ctr_fd: int | None) -> bytes:
    """raw_syscalls:sys_exit(regs, ret)."""
    a = Asm()
    a.mov_reg(R6, R1)
    a.call(Helper.get_current_pid_tgid).mov_reg(R7, R0)
    a.store_reg(4, R10, -4, R7)  # tid
    a.ld_map_fd(R1, inflight_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -4).call(Helper.map_lookup_elem)
    a.jmp_imm(JEQ, R0, 0, "out")
    a.load(8, R8, R0, 0).load(8, R9, R0, 8)  # start_ns, nr
    # 0 marks the slot consumed: a return without its entry (a new thread's first return from
    # clone, a syscall under way at attach) is not counted against an older start.
    a.jmp_imm(JEQ, R8, 0, "out").store_imm(8, R0, 0, 0)
    a.call(Helper.ktime_get_ns).alu_reg(SUB, R0, R8).mov_reg(R8, R0)  # R8 = latency
    # error flag at fp-16: the return value is in [-4095, -1]
    a.store_imm(8, R10, -16, 0)
    a.load(8, R1, R6, 8)
    a.jmp_imm(JSGE, R1, 0, "no_error").jmp_imm(JSLT, R1, -4095, "no_error")
    a.store_imm(8, R10, -16, 1)
    a.label("no_error")
    a.jmp_imm(JGT, R9, NR_SLOTS - 2, "clamp").ja("slot_ok")
    a.label("clamp").mov_imm(R9, NR_SLOTS - 1)
    a.label("slot_ok")

    if events_fd is not None and sample > 0:
        _emit_sampled_event(a, events_fd, sample_ctr_fd, counters_fd, sample)  # type: ignore[arg-type]

    # the aggregate, per CPU
    a.store_reg(4, R10, -8, R9)
    a.ld_map_fd(R1, stats_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -8).call(Helper.map_lookup_elem)
    a.jmp_imm(JEQ, R0, 0, "per_process")
    # Plain adds, not atomic ones: the value is this CPU's, and this program does not
    # nest with itself on a CPU.
    a.load(8, R1, R0, 0).alu_imm(ADD, R1, 1).store_reg(8, R0, 0, R1)
    a.load(8, R1, R0, 8).load(8, R2, R10, -16).alu_reg(ADD, R1, R2).store_reg(8, R0, 8, R1)
    a.load(8, R1, R0, 16).alu_reg(ADD, R1, R8).store_reg(8, R0, 16, R1)
    a.load(8, R1, R0, 24).jmp_reg(JGE, R1, R8, "max_ok").store_reg(8, R0, 24, R8)
    a.label("max_ok")
    # log2 bucket of the latency, unrolled: R2 = floor(log2(R8)), at most 31
    a.mov_reg(R1, R8).mov_imm(R2, 0)
    for shift in (32, 16, 8, 4, 2, 1):
        skip = f"log2_{shift}"
        a.mov_reg(R3, R1).alu_imm(RSH, R3, shift).jmp_imm(JEQ, R3, 0, skip)
        a.mov_reg(R1, R3).alu_imm(ADD, R2, shift).label(skip)
    a.jmp_imm(JGT, R2, HIST_BUCKETS - 1, "bucket_clamp").ja("bucket_ok")
    a.label("bucket_clamp").mov_imm(R2, HIST_BUCKETS - 1)
    a.label("bucket_ok")
    a.alu_imm(LSH, R2, 3).alu_reg(ADD, R2, R0).load(8, R1, R2, 32).alu_imm(ADD, R1, 1).store_reg(8, R2, 32, R1)

    a.label("per_process")
    if proc_fd is not None:
        _per_process(a, proc_fd, counters_fd)
    a.label("out").mov_imm(R0, 0).exit()
    return a.assemble()


def _per_process(a: Asm, proc_fd: int, counters_fd: int) -> None:
    """proc_stats[{tgid, nr}] += {1, error, latency}; a full map is counted."""
    a.mov_reg(R1, R7).alu_imm(RSH, R1, 32).store_reg(4, R10, -40, R1).store_reg(4, R10, -36, R9)
    a.ld_map_fd(R1, proc_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -40).call(Helper.map_lookup_elem)
    a.jmp_imm(JEQ, R0, 0, "proc_new")
    a.mov_imm(R1, 1).atomic_add(8, R0, 0, R1)
    a.load(8, R1, R10, -16).atomic_add(8, R0, 8, R1)
    a.atomic_add(8, R0, 16, R8).ja("out")
    a.label("proc_new")
    a.store_imm(8, R10, -64, 1).load(8, R1, R10, -16).store_reg(8, R10, -56, R1).store_reg(8, R10, -48, R8)
    a.ld_map_fd(R1, proc_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -40)
    a.mov_reg(R3, R10).alu_imm(ADD, R3, -64).mov_imm(R4, BPF_NOEXIST).call(Helper.map_update_elem)
    a.jmp_imm(JEQ, R0, 0, "out")
    a.jmp_imm(JNE, R0, -E2BIG, "out")  # -EEXIST: another CPU made it meanwhile; lost one sample only
    _counter_add(a, counters_fd, COUNTER_PROC_DROPPED, -68)


def _emit_sampled_event(a: Asm, events_fd: int, sample_ctr_fd: int, counters_fd: int, sample: int) -> None:
    """Every ``sample``-th syscall exit (per CPU) goes to the ring buffer as an event."""
    a.store_imm(4, R10, -8, 0)
    a.ld_map_fd(R1, sample_ctr_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -8).call(Helper.map_lookup_elem)
    a.jmp_imm(JEQ, R0, 0, "no_event")
    a.load(8, R1, R0, 0).alu_imm(ADD, R1, 1).store_reg(8, R0, 0, R1)
    a.alu_imm(MOD, R1, sample).jmp_imm(JNE, R1, 0, "no_event")
    # struct event on the stack at fp-112
    a.call(Helper.ktime_get_ns).store_reg(8, R10, -112, R0)
    a.store_reg(4, R10, -104, R7).mov_reg(R1, R7).alu_imm(RSH, R1, 32).store_reg(4, R10, -100, R1)
    a.store_reg(8, R10, -96, R9).load(8, R1, R6, 8).store_reg(8, R10, -88, R1).store_reg(8, R10, -80, R8)
    a.ld_map_fd(R1, events_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -112).mov_imm(R3, EVENT.size).mov_imm(R4, 0)
    a.call(Helper.ringbuf_output).jmp_imm(JEQ, R0, 0, "no_event")
    _counter_add(a, counters_fd, COUNTER_EVENTS_LOST, -116)
    a.label("no_event")


def _emit_life(a: Asm, life_fd: int, kind: int, pid_at: int, ppid_reg: int | None) -> None:
    """Send a struct life (pid read from the stack at ``pid_at``) to the ring buffer; comm and code are
    filled before by the caller at LIFE_AT+24 / LIFE_AT+12 when needed. Clobbers R0-R5."""
    a.store_imm(4, R10, LIFE_AT, kind)
    a.load(4, R1, R10, pid_at).store_reg(4, R10, LIFE_AT + 4, R1)
    if ppid_reg is None:
        a.store_imm(4, R10, LIFE_AT + 8, 0)
    else:
        a.store_reg(4, R10, LIFE_AT + 8, ppid_reg)
    a.call(Helper.ktime_get_ns).store_reg(8, R10, LIFE_AT + 16, R0)
    a.ld_map_fd(R1, life_fd).mov_reg(R2, R10).alu_imm(ADD, R2, LIFE_AT).mov_imm(R3, LIFE.size).mov_imm(R4, 0)
    a.call(Helper.ringbuf_output)


def _current_comm_into_life(a: Asm) -> None:
    a.mov_reg(R1, R10).alu_imm(ADD, R1, LIFE_AT + 24).mov_imm(R2, 16).call(Helper.get_current_comm)


def sched_process_exec(pids_fd: int, life_fd: int, mm_offset: int, arg_start_offset: int,
                       arg_end_offset: int) -> bytes:
    """sched:sched_process_exec(task, old_pid, bprm): a traced process ran a new program. The record carries
    its argv, read from the new image's stack (mm->arg_start..arg_end) before the process can exit."""
    a = Asm()
    a.load(8, R6, R1, 0)  # task
    a.call(Helper.get_current_pid_tgid).alu_imm(RSH, R0, 32).store_reg(4, R10, -4, R0)
    a.ld_map_fd(R1, pids_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -4).call(Helper.map_lookup_elem)
    a.jmp_imm(JEQ, R0, 0, "out")
    a.store_imm(4, R10, EXEC_AT, LIFE_EXEC)
    a.load(4, R1, R10, -4).store_reg(4, R10, EXEC_AT + 4, R1)
    a.store_imm(4, R10, EXEC_AT + 8, 0).store_imm(4, R10, EXEC_AT + 12, 0)
    a.call(Helper.ktime_get_ns).store_reg(8, R10, EXEC_AT + 16, R0)
    a.mov_reg(R1, R10).alu_imm(ADD, R1, EXEC_AT + 24).mov_imm(R2, 16).call(Helper.get_current_comm)
    for off in range(0, ARGV_BYTES, 8):  # argv starts empty (a failed read leaves zeros, not stack garbage)
        a.store_imm(8, R10, EXEC_AT + LIFE.size + off, 0)
    # R7 = task->mm, then arg_start at -16 and arg_end at -24
    a.mov_reg(R3, R6).alu_imm(ADD, R3, mm_offset)
    a.mov_reg(R1, R10).alu_imm(ADD, R1, -16).mov_imm(R2, 8).call(Helper.probe_read_kernel)
    a.jmp_imm(JNE, R0, 0, "send")
    a.load(8, R7, R10, -16)
    a.mov_reg(R3, R7).alu_imm(ADD, R3, arg_start_offset)
    a.mov_reg(R1, R10).alu_imm(ADD, R1, -16).mov_imm(R2, 8).call(Helper.probe_read_kernel)
    a.jmp_imm(JNE, R0, 0, "send")
    a.mov_reg(R3, R7).alu_imm(ADD, R3, arg_end_offset)
    a.mov_reg(R1, R10).alu_imm(ADD, R1, -24).mov_imm(R2, 8).call(Helper.probe_read_kernel)
    a.jmp_imm(JNE, R0, 0, "send")
    a.load(8, R2, R10, -24).load(8, R3, R10, -16).alu_reg(SUB, R2, R3)  # R2 = argv bytes
    a.jmp_imm(JGT, R2, ARGV_BYTES, "clamp").ja("sized")
    a.label("clamp").mov_imm(R2, ARGV_BYTES)
    a.label("sized")
    a.mov_reg(R1, R10).alu_imm(ADD, R1, EXEC_AT + LIFE.size).call(Helper.probe_read_user)
    a.label("send")
    a.ld_map_fd(R1, life_fd).mov_reg(R2, R10).alu_imm(ADD, R2, EXEC_AT).mov_imm(R3, LIFE.size + ARGV_BYTES)
    a.mov_imm(R4, 0).call(Helper.ringbuf_output)
    a.label("out").mov_imm(R0, 0).exit()
    return a.assemble()


def sched_process_fork(pids_fd: int, counters_fd: int, tgid_offset: int, life_fd: int | None = None) -> bytes:
    """sched:sched_process_fork(parent, child), in the parent's context."""
    a = Asm()
    a.mov_reg(R6, R1)
    a.call(Helper.get_current_pid_tgid).alu_imm(RSH, R0, 32).store_reg(4, R10, -4, R0).mov_reg(R7, R0)
    a.ld_map_fd(R1, pids_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -4).call(Helper.map_lookup_elem)
    a.jmp_imm(JEQ, R0, 0, "out")
    a.load(8, R3, R6, 8).alu_imm(ADD, R3, tgid_offset)  # &child->tgid
    a.mov_reg(R1, R10).alu_imm(ADD, R1, -8).mov_imm(R2, 4).call(Helper.probe_read_kernel)
    a.jmp_imm(JNE, R0, 0, "out")
    a.load(4, R1, R10, -8).jmp_reg(JEQ, R1, R7, "out")  # a new thread: its process is traced already
    a.store_imm(4, R10, -12, 1)
    a.ld_map_fd(R1, pids_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -8)
    a.mov_reg(R3, R10).alu_imm(ADD, R3, -12).mov_imm(R4, BPF_NOEXIST).call(Helper.map_update_elem)
    a.jmp_imm(JEQ, R0, 0, "enrolled")
    a.jmp_imm(JEQ, R0, -EEXIST, "out")
    _counter_add(a, counters_fd, COUNTER_ENROL_DROPPED, -16)
    a.ja("out")
    a.label("enrolled")
    _counter_add(a, counters_fd, COUNTER_ENROLLED, -16)
    if life_fd is not None:
        a.store_imm(4, R10, LIFE_AT + 12, 0)
        _current_comm_into_life(a)  # the child starts with its parent's name
        _emit_life(a, life_fd, LIFE_FORK, -8, R7)
    a.label("out").mov_imm(R0, 0).exit()
    return a.assemble()


def sched_process_exit(pids_fd: int, inflight_fd: int, counters_fd: int, tgid_offset: int, signal_offset: int,
                       live_offset: int, comms_fd: int | None = None, comm_offset: int = 0,
                       life_fd: int | None = None, exit_code_offset: int = 0) -> bytes:
    """sched:sched_process_exit(task, ...): free the thread's in-flight slot; remove the process once its
    last thread is gone. It runs in the exiting task's context."""
    a = Asm()
    a.load(8, R6, R1, 0)  # task
    a.call(Helper.get_current_pid_tgid).store_reg(4, R10, -24, R0)
    a.ld_map_fd(R1, inflight_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -24).call(Helper.map_delete_elem)
    a.mov_reg(R3, R6).alu_imm(ADD, R3, signal_offset)
    a.mov_reg(R1, R10).alu_imm(ADD, R1, -8).mov_imm(R2, 8).call(Helper.probe_read_kernel)
    a.jmp_imm(JNE, R0, 0, "out")
    a.load(8, R3, R10, -8).alu_imm(ADD, R3, live_offset)  # &task->signal->live
    a.mov_reg(R1, R10).alu_imm(ADD, R1, -12).mov_imm(R2, 4).call(Helper.probe_read_kernel)
    a.jmp_imm(JNE, R0, 0, "out")
    a.load(4, R1, R10, -12).jmp_imm(JNE, R1, 0, "out")  # other threads of the process live on
    a.mov_reg(R3, R6).alu_imm(ADD, R3, tgid_offset)
    a.mov_reg(R1, R10).alu_imm(ADD, R1, -16).mov_imm(R2, 4).call(Helper.probe_read_kernel)
    a.jmp_imm(JNE, R0, 0, "out")
    if comms_fd is not None:  # keep the name of a traced process that is leaving, for the per-process table
        a.ld_map_fd(R1, pids_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -16).call(Helper.map_lookup_elem)
        a.jmp_imm(JEQ, R0, 0, "out")
        a.mov_reg(R3, R6).alu_imm(ADD, R3, comm_offset)
        a.mov_reg(R1, R10).alu_imm(ADD, R1, -48).mov_imm(R2, 16).call(Helper.probe_read_kernel)
        a.ld_map_fd(R1, comms_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -16)
        a.mov_reg(R3, R10).alu_imm(ADD, R3, -48).mov_imm(R4, BPF_ANY).call(Helper.map_update_elem)
    a.ld_map_fd(R1, pids_fd).mov_reg(R2, R10).alu_imm(ADD, R2, -16).call(Helper.map_delete_elem)
    a.jmp_imm(JNE, R0, 0, "out")
    _counter_add(a, counters_fd, COUNTER_EXITED, -20)
    if life_fd is not None:  # task->exit_code is a wait status: (code << 8) or the killing signal
        a.mov_reg(R3, R6).alu_imm(ADD, R3, exit_code_offset)
        a.mov_reg(R1, R10).alu_imm(ADD, R1, LIFE_AT + 12).mov_imm(R2, 4).call(Helper.probe_read_kernel)
        a.mov_reg(R3, R6).alu_imm(ADD, R3, comm_offset)
        a.mov_reg(R1, R10).alu_imm(ADD, R1, LIFE_AT + 24).mov_imm(R2, 16).call(Helper.probe_read_kernel)
        _emit_life(a, life_fd, LIFE_EXIT, -16, None)
    a.label("out").mov_imm(R0, 0).exit()
    return a.assemble()
