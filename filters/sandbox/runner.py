"""Runs untrusted Python (model-generated code) against its tests in an isolated, resource-limited child.

``run_sandboxed(program, tests)`` starts a fresh ``python -I -S -u -B`` interpreter on a private
precompiled copy of ``filters/sandbox/launcher.py`` (the "launcher"), hands it the program, the tests and
a random nonce on stdin, and returns a ``SandboxResult``. The launcher sets up isolation, forks the "harness"
process that runs the program and then each test (a test passes when its code runs to its end without
raising), reaps everything, and exits. The parent enforces the wall-time limit, caps the captured
output, and always kills the launcher's process group at the end (as root, also every process of the
sandbox uid, unless the PID namespace already guarantees that none is left).

The isolation the launcher reaches, what every level enforces and why only the harness's report counts
are described in ``filters/sandbox/launcher.py``, the child side.
"""
from __future__ import annotations

import fcntl
import hashlib
import marshal
import os
import pwd
import py_compile
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

from . import launcher as sandbox_launcher
from .launcher import _LEVEL, _READY, _REPORT, _kill_quietly, processes_of_uids

REASONS = ("passed", "failed", "error", "timeout", "memory_limit", "output_limit", "sandbox_error")
_RESULT_CAP = 1 << 20  # bytes of report channel read at most; a genuine report is far smaller
_CHUNK = 1 << 16
_KILL_GRACE_S = 2.0  # how long the launcher gets to kill and reap its tree after "stop now"


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run."""

    time_s: float = 10.0  # wall clock for the whole run (interpreter start included); CPU limit = ceil of it
    memory_mb: int = 1024  # address space (RLIMIT_AS) of each process
    output_bytes: int = 1 << 20  # stdout+stderr captured at most; more ends the run as output_limit
    disk_mb: int = 64  # size of the private /tmp and the largest file any process may write
    processes: int = 32  # processes and threads of the sandbox uid (RLIMIT_NPROC)
    open_files: int = 64  # file descriptors per process (RLIMIT_NOFILE)
    uid_base: int = 63400  # as root: sandbox uids are uid_base .. uid_base + uid_count - 1 (one per live run)
    uid_count: int = 64  # at most this many runs at once; uids that have a passwd entry are skipped


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did: the harness's per-test outcomes and how the run ended."""

    status: str  # one of REASONS
    tests_passed: tuple[bool, ...]  # per test; all False unless the harness reported
    test_errors: tuple[str | None, ...]  # per test, the exception that failed it ("-" when not run)
    load_error: str | None  # the exception the program raised before any test ran
    output: bytes  # captured stdout+stderr, at most output_bytes
    isolation: str  # "full", "uid", "userns", "guard"; "" when the launcher did not start
    reported: bool  # the harness ran to its end and its report carried the nonce
    exit_code: int | None  # the launcher's exit code (128+N when the harness died of signal N)
    duration_s: float
    uid: int | None = None  # the sandbox uid (as root)
    detail: str = ""  # why the run failed, when it was not the tests

    @property
    def passed(self) -> int:
        """How many tests passed."""
        return sum(self.tests_passed)

    @property
    def fraction(self) -> float:
        """Passed tests over all tests (0.0 for no tests)."""
        return self.passed / len(self.tests_passed) if self.tests_passed else 0.0


def run_sandboxed(
    program: str,
    tests: list[str] | tuple[str, ...] = (),
    *,
    limits: SandboxLimits = SandboxLimits(),
    python: str | None = None,
    socket_guard: bool = False,
) -> SandboxResult:
    """Run ``program`` then each of ``tests`` (Python source) in a fresh sandboxed interpreter.

    A test passes when its code runs to its end without raising, in a copy of the program's namespace.
    ``python`` is the interpreter to start (default: this one); ``socket_guard`` adds the in-process
    network and subprocess guard, which the ``uid`` and ``guard`` levels always have.
    """
    started = time.monotonic()
    slot = _UidSlot.claim(limits) if os.geteuid() == 0 else None
    workdir = tempfile.mkdtemp(prefix="rest-sandbox-")
    result = None
    try:
        if slot is not None:
            os.chown(workdir, slot.uid, slot.uid)
        run = _Run(program, list(tests), limits, python or sys.executable, workdir, slot, socket_guard)
        result = run.execute(started)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if slot is not None:
            # With a PID namespace whose init the launcher reaped itself, every process of the run is gone.
            slot.release(clean=result is not None and result.isolation == "full" and run.launcher_ended)


def _private_dir() -> str:
    """This user's directory for uid locks and the compiled launcher; only we may write it (root runs what is in it)."""
    path = os.path.join(tempfile.gettempdir(), f"rest-em-sandbox-{os.geteuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if info.st_uid != os.geteuid() or info.st_mode & 0o022 or not os.path.isdir(path) or os.path.islink(path):
        raise PermissionError(f"{path} is not a private directory of ours; refusing to trust what is in it")
    return path


_launcher_lock = threading.Lock()
_launchers: dict[str, str] = {}


def _launcher(python: str) -> str:
    """The file the child executes: the launcher module, precompiled once (compiling it costs ~30 ms of every run)."""
    source = os.path.abspath(sandbox_launcher.__file__)
    if not source.endswith(".py") or os.path.realpath(python) != os.path.realpath(sys.executable):
        return source  # another interpreter may not read our bytecode
    with _launcher_lock:
        if source not in _launchers:
            with open(source, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()[:16]
            target = os.path.join(_private_dir(), f"launcher-{digest}.{sys.implementation.cache_tag}.pyc")
            if not os.path.exists(target):
                partial = f"{target}.{os.getpid()}.partial"
                py_compile.compile(source, cfile=partial, doraise=True)
                os.replace(partial, target)  # atomic: another process may be writing the same file
            _launchers[source] = target
        return _launchers[source]


class _UidSlot:
    """An unprivileged uid (= gid) reserved for one run, across threads and processes, by a file lock."""

    _free_uid_cache: dict[int, bool] = {}

    def __init__(self, uid: int, lock_fd: int):
        self.uid, self._lock_fd = uid, lock_fd

    @classmethod
    def claim(cls, limits: SandboxLimits) -> _UidSlot:
        """The first uid of the range that has no account and no other run holding it."""
        lock_dir = _private_dir()
        for uid in range(limits.uid_base, limits.uid_base + limits.uid_count):
            if not cls._is_unused_account(uid):
                continue
            fd = os.open(os.path.join(lock_dir, f"uid-{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            slot = cls(uid, fd)
            if os.pread(fd, 4, 0) == b"busy":  # its last run did not end cleanly (a crashed verifier)
                slot.kill_processes()
            os.pwrite(fd, b"busy", 0)
            return slot
        raise RuntimeError(f"all {limits.uid_count} sandbox uids from {limits.uid_base} are busy")

    @classmethod
    def _is_unused_account(cls, uid: int) -> bool:
        if uid not in cls._free_uid_cache:
            try:
                pwd.getpwuid(uid)
                cls._free_uid_cache[uid] = False
            except KeyError:
                cls._free_uid_cache[uid] = True
        return cls._free_uid_cache[uid]

    def kill_processes(self, budget_s: float = 3.0) -> None:
        """SIGKILL every process of this uid until none is left alive."""
        stop = time.monotonic() + budget_s
        while time.monotonic() < stop:
            alive = [pid for pid in processes_of_uids({self.uid}) if not _is_zombie(pid)]
            if not alive:
                return
            for pid in alive:
                _kill_quietly(pid)
            time.sleep(0.005)

    def release(self, clean: bool) -> None:
        """Free the uid; unless the run ended ``clean`` (nothing of it can be left), first kill what is left."""
        if not clean:
            self.kill_processes()
        os.ftruncate(self._lock_fd, 0)
        os.close(self._lock_fd)


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and only waits to be reaped (or is already gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


@dataclass
class _Run:
    """One launcher process and the parent's view of it."""

    program: str
    tests: list[str]
    limits: SandboxLimits
    python: str
    workdir: str
    slot: _UidSlot | None
    socket_guard: bool
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))
    output: bytearray = field(default_factory=bytearray)
    channel: bytearray = field(default_factory=bytearray)
    ended_by: str = ""  # "timeout", "output_limit" or "error" when the parent stopped the run
    launcher_ended: bool = False  # the launcher exited on its own or on SIGTERM, having reaped its tree

    def execute(self, started: float) -> SandboxResult:
        """Start the launcher, collect its output and report until it ends or a limit is hit."""
        out_r, out_w = os.pipe()
        res_r, res_w = os.pipe()
        try:
            proc = self._start(out_w, res_w)
        except OSError as err:
            for fd in (out_r, out_w, res_r, res_w):
                os.close(fd)
            return self._result(None, started, detail=f"cannot start {self.python}: {err}")
        os.close(out_w)
        os.close(res_w)
        try:
            self._send_payload(proc, res_w)
            self._collect(out_r, res_r, started + self.limits.time_s)
            self._stop(proc, started + self.limits.time_s)
        finally:
            os.close(out_r)
            os.close(res_r)
            _end_process_group(proc)  # not reaped yet (alive or a zombie), so its group id is not reused
            proc.wait()
        return self._result(proc.returncode, started)

    def _start(self, out_w: int, res_w: int) -> subprocess.Popen:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.workdir, "TMPDIR": self.workdir}
        return subprocess.Popen(
            [self.python, "-I", "-S", "-u", "-B", _launcher(self.python)],
            stdin=subprocess.PIPE, stdout=out_w, stderr=out_w, pass_fds=(res_w,),
            cwd=self.workdir, env=env, start_new_session=True,
        )

    def _send_payload(self, proc: subprocess.Popen, res_w: int) -> None:
        uid = self.slot.uid if self.slot else None
        payload = {
            "nonce": self.nonce, "program": self.program, "tests": self.tests, "result_fd": res_w,
            "limits": asdict(self.limits), "uid": uid, "gid": uid, "workdir": self.workdir,
            "parent_pid": os.getpid(), "socket_guard": self.socket_guard, "allow_userns": True,
        }
        try:
            proc.stdin.write(marshal.dumps(payload))  # the launcher reads it all before anything else
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the launcher died at start; its exit code and output tell why

    def _collect(self, out_r: int, res_r: int, deadline: float) -> None:
        """Read output and the report channel until both close, the deadline passes or a cap is hit."""
        with selectors.DefaultSelector() as selector:
            selector.register(out_r, selectors.EVENT_READ, (self.output, self.limits.output_bytes, "output_limit"))
            selector.register(res_r, selectors.EVENT_READ, (self.channel, _RESULT_CAP, "error"))
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.ended_by = "timeout"
                    return
                for key, _ in selector.select(remaining):
                    buffer, cap, reason = key.data
                    chunk = os.read(key.fd, _CHUNK)
                    if not chunk:
                        selector.unregister(key.fd)
                    elif len(buffer) + len(chunk) > cap:
                        buffer += chunk[: cap - len(buffer)]
                        self.ended_by = reason
                        return
                    else:
                        buffer += chunk

    def _stop(self, proc: subprocess.Popen, deadline: float) -> None:
        """Wait (without reaping) for the launcher to exit; past the deadline or a cap, make it stop."""
        if not self.ended_by:
            self.launcher_ended = _wait_unreaped(proc.pid, deadline)
            if not self.launcher_ended:
                self.ended_by = "timeout"  # the code closed its pipes but kept running
        if self.ended_by:
            os.kill(proc.pid, signal.SIGTERM)  # the launcher kills its whole tree and reaps it
            self.launcher_ended = _wait_unreaped(proc.pid, time.monotonic() + _KILL_GRACE_S)

    def _result(self, exit_code: int | None, started: float, detail: str = "") -> SandboxResult:
        lines = bytes(self.channel).decode("utf-8", "replace").split("\n")
        isolation = lines[0].split(" ", 1)[1] if lines[0].startswith(_LEVEL + " ") else ""
        ready = len(lines) > 1 and lines[1] == _READY
        report = _find_report(lines[2:], self.nonce, len(self.tests)) if ready else None
        if not ready and not detail:
            detail = lines[1] if len(lines) > 1 and lines[1] else f"launcher exited with {exit_code} before the harness ran"
        passed, errors, load_error = report if report else ((False,) * len(self.tests), ("-",) * len(self.tests), None)
        status = self._status(ready, report, exit_code, errors, load_error)
        return SandboxResult(
            status=status, tests_passed=passed, test_errors=errors, load_error=load_error,
            output=bytes(self.output), isolation=isolation, reported=report is not None, exit_code=exit_code,
            duration_s=time.monotonic() - started, uid=self.slot.uid if self.slot else None,
            detail=detail or self._detail(status, exit_code, report is not None),
        )

    def _status(self, ready: bool, report, exit_code: int | None, errors, load_error: str | None) -> str:
        if report is not None:
            failures = [e for e in (load_error, *errors) if e]
            if any(e.startswith("MemoryError") for e in failures):
                return "memory_limit"
            if load_error is not None:
                return "error"
            return "passed" if all(report[0]) else "failed"
        if self.ended_by:
            return self.ended_by
        if not ready:
            return "sandbox_error"
        if exit_code == 128 + signal.SIGXCPU:
            return "timeout"
        if b"MemoryError" in self.output:
            return "memory_limit"
        return "error"

    def _detail(self, status: str, exit_code: int | None, reported: bool) -> str:
        if reported:
            return ""
        if status == "timeout":
            return f"stopped after {self.limits.time_s:g} s"
        if status == "output_limit":
            return f"printed more than {self.limits.output_bytes} bytes"
        if exit_code is not None:
            return f"no report from the harness; launcher exit code {exit_code}"
        return ""


def _find_report(lines: list[str], nonce: str, n_tests: int):
    """(passed, errors, load_error) from the first report line with our nonce, else None."""
    prefix = f"{_REPORT}\t{nonce}\t"
    for line in lines:
        if not line.startswith(prefix):
            continue
        fields = line[len(prefix):].split("\t")
        if len(fields) != 1 + n_tests:
            return None  # a garbled report is no report
        load_error = None if fields[0] == "+" else fields[0][1:] or "?"
        passed = tuple(f == "+" for f in fields[1:])
        errors = tuple(None if f == "+" else f[1:] or "-" for f in fields[1:])
        return passed, errors, load_error
    return None


def _wait_unreaped(pid: int, until: float) -> bool:
    """Whether child ``pid`` exits by monotonic time ``until``; leaves it unreaped (a zombie)."""
    pause = 0.0005
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _end_process_group(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's whole process group (it leads it: start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

