"""A readable BPF instruction builder: one method per instruction, labels for jumps.

    a = Asm()
    a.call(Helper.ktime_get_ns)
    a.jeq_imm(R0, 0, "out")
    ...
    a.label("out").mov_imm(R0, 0).exit()
    program = a.assemble()

Encodings from include/uapi/linux/bpf.h and bpf_common.h.
"""

from __future__ import annotations

import enum
import struct

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)  # R10: read-only frame pointer

# bpf_common.h: instruction classes, sizes, modes, ALU/JMP operations, sources
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
IMM, MEM, ATOMIC = 0x00, 0x60, 0xC0
K, X = 0x00, 0x08
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, MOV, ARSH = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0)
JA, JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE, CALL, EXIT, JLT, JLE, JSLT, JSLE = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0)
BPF_PSEUDO_MAP_FD = 1
SIZES = {1: B, 2: H, 4: W, 8: DW}


class Helper(enum.IntEnum):
    """include/uapi/linux/bpf.h: the helper functions used here (___BPF_FUNC_MAPPER order)."""

    map_lookup_elem = 1
    map_update_elem = 2
    map_delete_elem = 3
    ktime_get_ns = 5
    get_smp_processor_id = 8
    get_current_pid_tgid = 14
    get_current_comm = 16
    probe_read_user = 112
    probe_read_kernel = 113
    ringbuf_output = 130


class Asm:
    """Collects instructions; jump targets are labels resolved by :meth:`assemble`."""

    def __init__(self) -> None:
        self._insns: list[list] = []  # [opcode, dst, src, off or label, imm]
        self._labels: dict[str, int] = {}

    def _emit(self, opcode: int, dst: int = 0, src: int = 0, off: int | str = 0, imm: int = 0) -> Asm:
        self._insns.append([opcode, dst, src, off, imm])
        return self

    def label(self, name: str) -> Asm:
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._insns)
        return self

    # ALU (64-bit)
    def mov_imm(self, dst: int, imm: int) -> Asm:
        return self._emit(ALU64 | MOV | K, dst, imm=imm)

    def mov_reg(self, dst: int, src: int) -> Asm:
        return self._emit(ALU64 | MOV | X, dst, src)

    def alu_imm(self, op: int, dst: int, imm: int) -> Asm:
        return self._emit(ALU64 | op | K, dst, imm=imm)

    def alu_reg(self, op: int, dst: int, src: int) -> Asm:
        return self._emit(ALU64 | op | X, dst, src)

    def ld_imm64(self, dst: int, value: int) -> Asm:
        self._emit(LD | DW | IMM, dst, imm=value & 0xFFFFFFFF)
        return self._emit(0, imm=(value >> 32) & 0xFFFFFFFF)

    def ld_map_fd(self, dst: int, fd: int) -> Asm:
        """Load a map's address (the kernel turns the fd into a pointer)."""
        self._emit(LD | DW | IMM, dst, BPF_PSEUDO_MAP_FD, imm=fd)
        return self._emit(0)

    # memory
    def load(self, size: int, dst: int, src: int, off: int) -> Asm:
        return self._emit(LDX | SIZES[size] | MEM, dst, src, off)

    def store_reg(self, size: int, dst: int, off: int, src: int) -> Asm:
        return self._emit(STX | SIZES[size] | MEM, dst, src, off)

    def store_imm(self, size: int, dst: int, off: int, imm: int) -> Asm:
        return self._emit(ST | SIZES[size] | MEM, dst, off=off, imm=imm)

    def atomic_add(self, size: int, dst: int, off: int, src: int) -> Asm:
        """*(dst + off) += src, atomically."""
        return self._emit(STX | SIZES[size] | ATOMIC, dst, src, off, imm=ADD)

    # jumps
    def jmp_imm(self, op: int, dst: int, imm: int, target: str) -> Asm:
        return self._emit(JMP | op | K, dst, off=target, imm=imm)

    def jmp_reg(self, op: int, dst: int, src: int, target: str) -> Asm:
        return self._emit(JMP | op | X, dst, src, off=target)

    def ja(self, target: str) -> Asm:
        return self._emit(JMP | JA, off=target)

    def call(self, helper: Helper) -> Asm:
        return self._emit(JMP | CALL, imm=helper)

    def exit(self) -> Asm:
        return self._emit(JMP | EXIT)

    def assemble(self) -> bytes:
        """The program as the kernel reads it: 8 bytes per instruction, jumps resolved."""
        out = bytearray()
        for index, (opcode, dst, src, off, imm) in enumerate(self._insns):
            if isinstance(off, str):
                if off not in self._labels:
                    raise ValueError(f"jump to undefined label {off!r}")
                off = self._labels[off] - index - 1
            out += struct.pack("<BBhi", opcode, (src << 4) | dst, off, _s32(imm))
        return bytes(out)


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
