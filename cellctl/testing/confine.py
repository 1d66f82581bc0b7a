"""Start a command the way a hardened systemd unit starts it, without systemd as PID 1:
as the unit's user and groups, with its umask and working directory, with no new
privileges and no capabilities, W^X memory (MemoryDenyWriteExecute=, which systemd 254+
implements with the same prctl), and file-system writes allowed only beneath given
directories (what ProtectSystem=strict leaves writable, enforced here with Landlock).

The tests of the installed service and of MemoryDenyWriteExecute run `cellctl` through
it; the daemon never imports it. Run as root:

    python -m cellctl.testing.confine --uid N --gid N [--groups N,N] [--umask 0077]
        [--chdir DIR] [--no-new-privileges] [--no-capabilities] [--mdwe | --mdwe-seccomp]
        [--writable DIR]... -- COMMAND [ARG]...

The environment is passed on unchanged (the caller builds the unit's). A confinement
the kernel cannot apply is an error (exit 125), never silently left out.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1

# Landlock (linux/landlock.h); the syscall numbers are the same on every architecture
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
# every right that changes the file system (ABI 1), + REFER (ABI 2), + TRUNCATE (ABI 3);
# reading and executing stay allowed everywhere, as under ProtectSystem=strict
WRITE_ACCESS_ABI1 = (
    (1 << 1)  # WRITE_FILE
    | (1 << 4)  # REMOVE_DIR
    | (1 << 5)  # REMOVE_FILE
    | (1 << 6)  # MAKE_CHAR
    | (1 << 7)  # MAKE_DIR
    | (1 << 8)  # MAKE_REG
    | (1 << 9)  # MAKE_SOCK
    | (1 << 10)  # MAKE_FIFO
    | (1 << 11)  # MAKE_BLOCK
    | (1 << 12)  # MAKE_SYM
)
ACCESS_REFER = 1 << 13
ACCESS_TRUNCATE = 1 << 14
# MemoryDenyWriteExecute= as systemd before 254 (Debian 12 has 252) implements it: a
# seccomp filter refusing with EPERM an mmap that is writable and executable, an
# mprotect/pkey_mprotect that makes anything executable, and shmat with SHM_EXEC
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
SHM_EXEC = 0o100000
# machine -> (AUDIT_ARCH_*, mmap, mprotect, pkey_mprotect, shmat)
SYSCALLS = {
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}
EXIT_CONFINE_FAILED = 125  # as env(1) and systemd's exec helpers use for "could not run it"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


class ConfineError(OSError):
    pass


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise ConfineError(errno, f"{what}: {os.strerror(errno)}")
    return result


def _prctl(option: int, arg2: int = 0) -> int:
    return int(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
    )


def mdwe_supported() -> bool:
    """Whether the kernel has PR_SET_MDWE (Linux 6.3+), the prctl systemd uses for
    MemoryDenyWriteExecute= where it can."""
    return _prctl(PR_GET_MDWE) >= 0


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is missing or disabled."""
    version = _libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION
    )
    return max(int(version), 0)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def restrict_writes(writable: Sequence[Path]) -> None:
    """Allow file-system changes only beneath `writable` from now on, for this process
    and everything it starts (needs no_new_privs or CAP_SYS_ADMIN)."""
    abi = landlock_abi()
    if abi < 1:
        raise ConfineError(0, "Landlock is not available in this kernel")
    access = WRITE_ACCESS_ABI1 | (ACCESS_REFER if abi >= 2 else 0) | (ACCESS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(access)
    ruleset = _check(
        _libc.syscall(
            SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0
        ),
        "landlock_create_ruleset",
    )
    try:
        for directory in writable:
            fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(access, fd)
                _check(
                    _libc.syscall(
                        SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0
                    ),
                    f"landlock_add_rule {directory}",
                )
            finally:
                os.close(fd)
        _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _bpf(program: list[tuple[str, int, str, str]]) -> list[_SockFilter]:
    """Assemble (op, k, jump-if-true label, jump-if-false label) lines; a line whose op
    ends with ':' is a label. Ops: ld (32-bit word at offset k), and, jeq, jset, ret."""
    codes = {"ld": 0x20, "and": 0x54, "jeq": 0x15, "jset": 0x45, "ret": 0x06}
    labels: dict[str, int] = {}
    lines: list[tuple[str, int, str, str]] = []
    for line in program:
        if line[0].endswith(":"):
            labels[line[0][:-1]] = len(lines)
        else:
            lines.append(line)
    out = []
    for i, (op, k, jt, jf) in enumerate(lines):
        t = labels[jt] - i - 1 if jt else 0
        f = labels[jf] - i - 1 if jf else 0
        out.append(_SockFilter(codes[op], t, f, k))
    return out


def deny_write_execute_seccomp() -> None:
    """systemd's seccomp flavour of MemoryDenyWriteExecute= (before systemd 254, or on
    kernels without PR_SET_MDWE), for this process and what it execs."""
    arch = SYSCALLS.get(platform.machine())
    if arch is None:
        raise ConfineError(0, f"no seccomp syscall table for {platform.machine()}")
    audit_arch, nr_mmap, nr_mprotect, nr_pkey_mprotect, nr_shmat = arch
    wx = mmap.PROT_WRITE | mmap.PROT_EXEC
    arg2 = 16 + 2 * 8  # seccomp_data.args[2], its low 32 bits (little-endian machines above)
    program = [
        ("ld", 4, "", ""),  # seccomp_data.arch
        ("jeq", audit_arch, "native", "allow"),
        ("native:", 0, "", ""),
        ("ld", 0, "", ""),  # seccomp_data.nr
        ("jeq", nr_mmap, "mmap", ""),
        ("jeq", nr_mprotect, "mprotect", ""),
        ("jeq", nr_pkey_mprotect, "mprotect", ""),
        ("jeq", nr_shmat, "shmat", "allow"),
        ("mmap:", 0, "", ""),
        ("ld", arg2, "", ""),
        ("and", wx, "", ""),
        ("jeq", wx, "deny", "allow"),
        ("mprotect:", 0, "", ""),
        ("ld", arg2, "", ""),
        ("jset", mmap.PROT_EXEC, "deny", "allow"),
        ("shmat:", 0, "", ""),
        ("ld", arg2, "", ""),
        ("jset", SHM_EXEC, "deny", "allow"),
        ("allow:", 0, "", ""),
        ("ret", SECCOMP_RET_ALLOW, "", ""),
        ("deny:", 0, "", ""),
        ("ret", SECCOMP_RET_ERRNO | EPERM, "", ""),
    ]
    filters = _bpf(program)
    array = (_SockFilter * len(filters))(*filters)
    prog = _SockFprog(len(filters), ctypes.cast(array, ctypes.POINTER(_SockFilter)))
    result = _libc.prctl(
        ctypes.c_int(PR_SET_SECCOMP),
        ctypes.c_ulong(SECCOMP_MODE_FILTER),
        ctypes.byref(prog),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    _check(int(result), "PR_SET_SECCOMP")


def drop_capability_bounding_set() -> None:
    """CapabilityBoundingSet= (empty): no capability can ever be regained."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        _check(_prctl(PR_CAPBSET_DROP, cap), f"PR_CAPBSET_DROP {cap}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cellctl.testing.confine", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    p.add_argument("--groups", default="", help="supplementary group ids, comma separated")
    p.add_argument("--umask", type=lambda s: int(s, 8))
    p.add_argument("--chdir", type=Path)
    p.add_argument("--no-new-privileges", action="store_true")
    p.add_argument("--no-capabilities", action="store_true")
    p.add_argument("--mdwe", action="store_true", help="W^X with prctl(PR_SET_MDWE), as systemd 254+")
    p.add_argument(
        "--mdwe-seccomp", action="store_true", help="W^X with a seccomp filter, as systemd before 254"
    )
    p.add_argument("--writable", type=Path, action="append", default=[])
    p.add_argument("command", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("confine: no command given", file=sys.stderr)
        return 2
    try:
        if args.mdwe_seccomp:  # needs CAP_SYS_ADMIN or no_new_privs: while still root
            deny_write_execute_seccomp()
        if args.no_capabilities:
            drop_capability_bounding_set()  # needs CAP_SETPCAP: before the user changes
        if args.gid is not None or args.groups:
            os.setgroups([int(g) for g in args.groups.split(",") if g])
        if args.gid is not None:
            os.setgid(args.gid)
        if args.uid is not None:
            os.setuid(args.uid)  # from root: the permitted and effective capabilities go too
        if args.umask is not None:
            os.umask(args.umask)
        if args.chdir is not None:
            os.chdir(args.chdir)
        if args.no_new_privileges or args.writable:
            _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "PR_SET_NO_NEW_PRIVS")
        if args.writable:
            restrict_writes(args.writable)
        if args.mdwe:
            _check(_prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), "PR_SET_MDWE")
    except OSError as e:
        print(f"confine: {e}", file=sys.stderr)
        return EXIT_CONFINE_FAILED
    try:
        os.execvp(command[0], command)
    except OSError as e:
        print(f"confine: cannot run {command[0]} as uid {os.getuid()}: {e.strerror}", file=sys.stderr)
        return EXIT_CONFINE_FAILED
    return EXIT_CONFINE_FAILED  # not reached: execvp replaces this process


if __name__ == "__main__":
    sys.exit(main())
