"""The kernel-level ``deny`` fork rule: a seccomp filter (classic BPF, built here) that refuses process creation.

``forkguard run --fork-mode deny`` installs it before it execs the program. A
seccomp filter survives ``execve`` and is inherited by every child, so the rule
holds for the program and everything it runs, whatever the language and
whatever the interpreter's flags, and cannot be removed. The filter:

- ``fork``, and ``clone`` without ``CLONE_THREAD``, fail with ``ENOTSUP``;
- ``vfork``, and ``clone`` with both ``CLONE_VM`` and ``CLONE_VFORK`` (what
  ``posix_spawn``, ``subprocess`` and ``os.system`` use), pass unless
  ``deny_exec``: such a child shares the parent's memory, the parent is
  suspended until it execs or exits, and no copy of the parent's state runs;
- ``clone3`` fails with ``ENOSYS``: its flags sit in memory a filter cannot
  read, and libc then falls back to ``clone``, whose flags it can;
- threads (``clone`` with ``CLONE_THREAD``) and every other call pass.

It checks the architecture of each call, as a filter must: i386 calls made by
a 64-bit process (``int 0x80``) have their own numbers, and x32 calls (numbers
with bit 30 set) are refused outright. An unprivileged process may install a
filter only with ``no_new_privs`` set (setuid programs then gain nothing), so
``install`` always sets it.

Importing this module costs nothing: ctypes is loaded only to install the filter.
"""

from __future__ import annotations

import errno
import os
import struct

# include/uapi/linux/filter.h, bpf_common.h: classic BPF opcodes
BPF_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_ALU_AND_K = 0x04 | 0x50 | 0x00  # BPF_ALU | BPF_AND | BPF_K
BPF_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
BPF_JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
BPF_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

# include/uapi/linux/seccomp.h
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
DATA_NR, DATA_ARCH, DATA_ARG0_LOW = 0, 4, 16

# include/uapi/linux/prctl.h
PR_GET_SECCOMP = 21
PR_SET_NO_NEW_PRIVS = 38

# include/uapi/linux/audit.h
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
# arch/x86/include/uapi/asm/unistd.h
X32_SYSCALL_BIT = 0x40000000

# include/uapi/linux/sched.h
CLONE_VM = 0x00000100
CLONE_VFORK = 0x00004000
CLONE_THREAD = 0x00010000

# arch/x86/entry/syscalls/syscall_64.tbl and syscall_32.tbl
SYSCALLS = {
    AUDIT_ARCH_X86_64: {"clone": 56, "fork": 57, "vfork": 58, "clone3": 435, "close": 3},
    AUDIT_ARCH_I386: {"clone": 120, "fork": 2, "vfork": 190, "clone3": 435},
}
NR_SECCOMP_X86_64 = 317

# The filter answers close(PROBE_FD + level) with PROBE_ERRNO when it refuses at
# least that level (0: deny, 1: deny_exec), so a process asks the kernel, not
# its environment, whether the rule holds, in two system calls and without
# ctypes. Without the filter these calls fail with EBADF: descriptors are below
# 2**31. No kernel call returns errno 4000.
PROBE_FD = 0xF0C4F0C0
PROBE_ERRNO = 4000


class SeccompError(OSError):
    """The kernel cannot or will not take the filter; the message is one line saying why."""


def program(deny_exec: bool) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions, for x86_64 (and i386 calls made on it)."""
    deny = SECCOMP_RET_ERRNO | errno.ENOTSUP
    vfork = deny if deny_exec else SECCOMP_RET_ALLOW
    # Jumps name labels; _assemble turns them into the relative offsets BPF wants.
    code: list[tuple[object, ...]] = [
        (BPF_LD_W_ABS, None, None, DATA_ARCH),
        (BPF_JEQ_K, "x86_64", None, AUDIT_ARCH_X86_64),
        (BPF_JEQ_K, "i386", "kill", AUDIT_ARCH_I386),
    ]
    for arch, label in ((AUDIT_ARCH_X86_64, "x86_64"), (AUDIT_ARCH_I386, "i386")):
        nr = SYSCALLS[arch]
        code.append(("label", label))
        code.append((BPF_LD_W_ABS, None, None, DATA_NR))
        if arch == AUDIT_ARCH_X86_64:
            code.append((BPF_JGE_K, "enosys", None, X32_SYSCALL_BIT))  # the x32 ABI: refused whole
        code += [
            (BPF_JEQ_K, "clone", None, nr["clone"]),
            (BPF_JEQ_K, "deny", None, nr["fork"]),
            (BPF_JEQ_K, "vfork", None, nr["vfork"]),
            (BPF_JEQ_K, "enosys", None, nr["clone3"]),
        ]
        if arch == AUDIT_ARCH_X86_64:
            code.append((BPF_JEQ_K, "probe", "allow", nr["close"]))
        else:
            code.append((BPF_RET_K, None, None, SECCOMP_RET_ALLOW))
    # clone's flags are its first argument on both ABIs; the kernel reads only their low 32 bits.
    code += [
        ("label", "clone"),
        (BPF_LD_W_ABS, None, None, DATA_ARG0_LOW),
        (BPF_JSET_K, "allow", None, CLONE_THREAD),  # a thread (or EINVAL): no new process
    ]
    if not deny_exec:
        code += [
            (BPF_ALU_AND_K, None, None, CLONE_VM | CLONE_VFORK),
            (BPF_JEQ_K, "allow", "deny", CLONE_VM | CLONE_VFORK),
        ]
    code += [
        ("label", "deny"), (BPF_RET_K, None, None, deny),
        ("label", "vfork"), (BPF_RET_K, None, None, vfork),
        ("label", "probe"),
        (BPF_LD_W_ABS, None, None, DATA_ARG0_LOW),
        (BPF_JEQ_K, "probed", None, PROBE_FD),
        (BPF_JEQ_K, "probed" if deny_exec else "allow", "allow", PROBE_FD + 1),
        ("label", "probed"), (BPF_RET_K, None, None, SECCOMP_RET_ERRNO | PROBE_ERRNO),
        ("label", "allow"), (BPF_RET_K, None, None, SECCOMP_RET_ALLOW),
        ("label", "enosys"), (BPF_RET_K, None, None, SECCOMP_RET_ERRNO | errno.ENOSYS),
        ("label", "kill"), (BPF_RET_K, None, None, SECCOMP_RET_KILL_PROCESS),
    ]
    return _assemble(code)


def _assemble(code: list[tuple[object, ...]]) -> list[tuple[int, int, int, int]]:
    """Resolve label names to forward offsets (classic BPF jumps only forward, by at most 255)."""
    labels, position = {}, 0
    for item in code:
        if item[0] == "label":
            labels[item[1]] = position
        else:
            position += 1
    out: list[tuple[int, int, int, int]] = []
    for item in code:
        if item[0] == "label":
            continue
        op, jt, jf, k = item
        here = len(out) + 1
        offsets = [0 if target is None else labels[target] - here for target in (jt, jf)]
        if not all(0 <= offset <= 255 for offset in offsets):
            raise ValueError(f"seccomp filter: jump out of range at instruction {here - 1}")
        out.append((op, offsets[0], offsets[1], k))  # type: ignore[arg-type]
    return out


def unavailable() -> str | None:
    """Why this machine cannot take the filter, or None when it can."""
    machine = os.uname().machine
    if machine != "x86_64":
        return f"the kernel rule is built for x86_64 system calls, and this machine is {machine}"
    libc = _libc()
    import ctypes

    if libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return f"this kernel has no seccomp (prctl: {os.strerror(ctypes.get_errno())})"
    action = ctypes.c_uint32(SECCOMP_RET_ERRNO)
    if libc.syscall(NR_SECCOMP_X86_64, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action)) != 0:
        return f"seccomp filters are unavailable here (seccomp(): {os.strerror(ctypes.get_errno())})"
    return None


def install(deny_exec: bool) -> None:
    """Set no_new_privs and install the filter on this thread (exec next: the program inherits it)."""
    load(program(deny_exec))


def load(instructions: list[tuple[int, int, int, int]]) -> None:
    """Install ``instructions`` as a seccomp filter; SeccompError with one line when the kernel refuses."""
    import ctypes

    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise SeccompError(code, f"cannot set no_new_privs, which a seccomp filter needs: {os.strerror(code)}")
    raw = b"".join(struct.pack("=HBBI", *instruction) for instruction in instructions)
    buffer = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):  # include/uapi/linux/filter.h
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(instructions), ctypes.cast(buffer, ctypes.c_void_p))
    if libc.syscall(NR_SECCOMP_X86_64, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prog)) != 0:
        code = ctypes.get_errno()
        raise SeccompError(code, f"the kernel refused the seccomp filter: {os.strerror(code)}")


def active_rule() -> dict[str, bool] | None:
    """``{"deny_exec": bool}`` when forkguard's kernel rule holds in this process, else None: asked of the kernel
    with two close() calls (posix.close passes a C int, so PROBE_FD - 2**32 carries the same 32 bits; posix's,
    not os's, which gevent replaces with one that checks the descriptor first)."""
    import posix

    answers = []
    for level in (0, 1):
        try:
            posix.close(PROBE_FD + level - 2**32)
        except OSError as exc:
            answers.append(exc.errno == PROBE_ERRNO)
        else:
            answers.append(False)
    return {"deny_exec": answers[1]} if answers[0] else None


def _libc():  # type: ignore[no-untyped-def]
    import ctypes

    return ctypes.CDLL(None, use_errno=True)
