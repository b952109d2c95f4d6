"""The sandbox's child side, the "launcher": run as a script (``python -I -S -u -B`` on a private
precompiled copy), it isolates itself, forks the harness that runs the untrusted program and its tests,
reaps everything and exits. Standard library only, and nothing imported it does not need: it starts once
per sandboxed run.
``filters/sandbox/runner.py`` is the parent side (``run_sandboxed``).

Isolation levels (``SandboxResult.isolation``), strongest first; the launcher takes the best one it can:

- ``full`` (the verifier runs as root; our CI and dev machines): new network, mount, PID and IPC
  namespaces. The network namespace has only a downed loopback, so every connection fails at once.
  In the mount namespace every mount is remounted read-only and a size-limited tmpfs, owned by the
  sandbox uid, is the cwd, HOME and TMPDIR at ``/tmp``; a fresh ``/proc`` shows only the sandbox's
  own processes. The harness drops to a dedicated unprivileged uid/gid (one per concurrent run, see
  ``SandboxLimits.uid_base``; no supplementary groups, ``no_new_privs``), which is what makes
  RLIMIT_NPROC bite (root ignores it) and what stops the code from signalling the verifier. The
  harness is PID 1 of its namespace: when it ends, the kernel kills every process left inside.
- ``uid`` (root, but namespaces are unavailable): the uid drop, rlimits and the in-process guard
  below; files can still be written where the world may write (``/tmp``).
- ``userns`` (not root, unprivileged user namespaces allowed): the same namespaces inside a new
  user namespace with the caller's own uid and all capabilities dropped. The code keeps the
  caller's uid, so RLIMIT_NPROC is shared with the caller's processes.
- ``guard`` (not root, no namespaces): rlimits, a scrubbed environment, a temp dir as cwd and the
  in-process guard: an audit hook (``sys.addaudithook``, which user code cannot remove) refuses
  sockets and starting other programs. Same uid: the code could still write the user's files and
  signal the user's processes. Use it only for code you half trust.

In every level: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE, no core
dumps; a scrubbed environment (PATH, LANG, HOME, TMPDIR only); stdin is /dev/null; stdout and
stderr go to one pipe that the parent reads incrementally and stops at ``output_bytes``.

Only the harness's report counts. The parent sends a random nonce on stdin; the launcher reads it
before any user code exists and closes stdin, and the harness writes one report line carrying the
nonce and each test's outcome to a private pipe after the last test. Exit codes, exceptions and
printed text are no evidence: ``sys.exit(0)`` or ``os._exit(0)`` before the tests end, or printing
"all tests passed", leave no report and score 0. ``SystemExit`` raised inside a test fails that test.
Before the tests run, the builtins are restored from a snapshot taken before the program ran, and
each test runs in a copy of the program's namespace after it, so a program that redefines ``check``
or tampers with builtins does not change the tests. The harness keeps every callable it needs in
local variables taken before user code runs, and an audit hook blocks the usual ways to reach the
harness's frames (and so the nonce): ``sys._getframe`` (raises ValueError, which ``namedtuple``,
``typing`` and ``logging`` tolerate), ``tb_frame``/``gi_frame``/``cr_frame``/``f_back``,
``sys._current_frames``, ``sys.settrace``/``setprofile``, ``gc.get_objects``/``get_referrers``,
ctypes, ``/proc/*/mem`` and adding audit hooks. What remains possible (user code shares the
harness's process, so this is containment, not proof): results that fool the test's own
comparisons (an object whose ``__eq__`` is always true), patching stdlib modules the tests call,
threads that race the tests, and a CPython memory-safety bug used to read the nonce.
"""
from __future__ import annotations

import os
import sys

_REPORT = "REPORT"  # first field of the harness's report line
_READY = "ready"  # the harness finished its setup and is about to run user code
_LEVEL = "level"  # the launcher's first line: the isolation level it reached
_SETUP_ERROR = "setup-error"
_EXIT_SETUP_FAILED = 70

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND, _MS_MOVE = 32, 1024, 2048, 4096, 8192
_MS_REC, _MS_PRIVATE, _MS_RELATIME = 16384, 1 << 18, 1 << 21
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 1, 38, 36
# statvfs flag -> mount flag, for remounting read-only without clearing the flags a mount already has
_KEEP_FLAGS = ((2, _MS_NOSUID), (4, _MS_NODEV), (8, _MS_NOEXEC), (1024, _MS_NOATIME),
               (2048, _MS_NODIRATIME), (4096, _MS_RELATIME))

# Audit events that reach the harness's frames, memory or the interpreter's object graph.
_BLOCKED_EVENTS = frozenset({
    "sys._current_frames", "sys.settrace", "sys.setprofile", "sys.addaudithook",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
})
_FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
_BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes"})
_NETWORK_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "subprocess.Popen",
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "pty.spawn",
})


def _launcher_main() -> None:
    """Entry of the sandbox child: isolate, fork the harness, reap every descendant, exit with its status."""
    import marshal

    payload = marshal.loads(_read_all(0))
    _reopen_devnull(0)
    _prctl(_PR_SET_PDEATHSIG, 15)  # SIGTERM when the verifier dies: clean up instead of lingering
    if os.getppid() != payload["parent_pid"]:
        os._exit(_EXIT_SETUP_FAILED)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphans of the code come to us, so we can kill and reap them
    outer_mount_ns = os.readlink("/proc/self/ns/mnt")
    level = _enter_namespaces(payload)
    os.write(payload["result_fd"], f"{_LEVEL} {level}\n".encode())
    pid = os.fork()
    if pid == 0:
        try:
            _harness_process(payload, level, outer_mount_ns)
        finally:
            os._exit(_EXIT_SETUP_FAILED)  # the harness never returns; this fork must never supervise
    os._exit(_supervise(pid, payload["limits"]["time_s"]))


def _read_all(fd: int) -> bytes:
    """Everything readable from ``fd`` until end of file."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _reopen_devnull(fd: int) -> None:
    """Point ``fd`` at /dev/null (so the nonce's channel is gone before user code starts)."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, fd)
    os.close(null)


def _libc():
    """The C library, for the system calls ``os`` lacks in Python 3.11 (unshare, mount, prctl)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    """prctl(2); raises OSError on failure."""
    if _libc().prctl(option, value, 0, 0, 0) != 0:
        raise _errno_error("prctl")


def _errno_error(what: str) -> OSError:
    """OSError for the last failed libc call."""
    import ctypes

    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _enter_namespaces(payload: dict) -> str:
    """Unshare the network, PID and IPC namespaces this user may create; returns the isolation level.

    The mount namespace is the harness's own (``_private_filesystem``), so this launcher keeps the
    host's view of /proc and of the Python installation while it supervises.
    """
    libc = _libc()
    if os.geteuid() == 0:
        return "full" if libc.unshare(_CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC) == 0 else "uid"
    uid, gid = os.getuid(), os.getgid()
    flags = _CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC
    if payload["allow_userns"] and libc.unshare(flags) == 0:
        _write_file("/proc/self/setgroups", "deny")
        _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
        _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
        return "userns"
    return "guard"


def _write_file(path: str, text: str) -> None:
    """Write ``text`` to an existing (proc) file."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _supervise(pid: int, time_s: float) -> int:
    """Wait for the harness (killing it after a backstop timeout), kill and reap the rest; its exit code."""
    import signal

    def kill_harness(signum, frame):
        _kill_quietly(pid)

    signal.signal(signal.SIGTERM, kill_harness)  # the parent's "stop now"
    signal.signal(signal.SIGALRM, kill_harness)  # our own backstop if the parent stalls
    signal.setitimer(signal.ITIMER_REAL, time_s + 5.0)
    _, status = os.waitpid(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    _kill_and_reap_children()
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _kill_quietly(pid: int) -> None:
    """SIGKILL ``pid`` unless it is already gone."""
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _kill_and_reap_children(budget_s: float = 3.0) -> None:
    """SIGKILL and reap our children until none is left (orphans keep arriving: we are their subreaper)."""
    import time

    me = os.getpid()
    stop = time.monotonic() + budget_s
    while time.monotonic() < stop:
        try:
            with open(f"/proc/{me}/task/{me}/children") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            children = []
        for child in children:
            _kill_quietly(child)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        time.sleep(0.005)


# ================================================================ the harness process (child side)


def _harness_process(payload: dict, level: str, outer_mount_ns: str) -> None:
    """Set up the harness process (filesystem, limits, privileges), then run the program and tests."""
    fd = payload["result_fd"]
    try:
        if level in ("full", "userns"):
            if _libc().unshare(_CLONE_NEWNS) != 0:
                raise _errno_error("unshare(CLONE_NEWNS)")
            if os.readlink("/proc/self/ns/mnt") == outer_mount_ns:  # never remount the host's filesystems
                raise OSError("not in a private mount namespace")
            _private_filesystem(payload, level)
        else:
            os.chdir(payload["workdir"])
        os.environ["HOME"] = os.environ["TMPDIR"] = os.getcwd()
        _set_limits(payload["limits"], level)
        _drop_privileges(payload, level)
        if not os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK):
            raise PermissionError(f"the sandbox uid cannot read the Python installation {sys.base_prefix}")
        # After the uid change (which clears it): if the launcher dies, so do we and our PID namespace.
        _prctl(_PR_SET_PDEATHSIG, 9)
        for name in [m for m in sys.modules if m.split(".")[0] in _BLOCKED_IMPORTS]:
            del sys.modules[name]  # so that importing ctypes again raises the (blocked) import event
    except BaseException as err:  # noqa: BLE001 - any setup failure must end the run, reported
        os.write(fd, f"{_SETUP_ERROR} {type(err).__name__}: {err}\n".encode())
        os._exit(_EXIT_SETUP_FAILED)
    os.write(fd, f"{_READY}\n".encode())
    _run_harness(payload.pop("nonce"), payload.pop("program"), payload.pop("tests"), fd,
                 payload["socket_guard"] or level in ("uid", "guard"))


def _private_filesystem(payload: dict, level: str) -> None:
    """Read-only view of every mount, a private tmpfs at /tmp as cwd, and a /proc of our PID namespace."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount may propagate to the host
    _remount_all_readonly()
    owner = f",uid={payload['uid']},gid={payload['gid']}" if level == "full" else ""
    size = f"size={payload['limits']['disk_mb']}m,mode=0700{owner}"
    _mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, size)
    if level == "full":
        _reveal(sys.base_prefix)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    os.chdir("/tmp")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2); raises OSError on failure."""
    import ctypes

    def arg(text: str | None):
        return None if text is None else os.fsencode(text)

    if _libc().mount(arg(source), arg(target), arg(fstype), ctypes.c_ulong(flags), arg(data)) != 0:
        raise _errno_error(f"mount {target}")


def _remount_all_readonly() -> None:
    """Remount every mount read-only (best effort: a mount that refuses stays as it was)."""
    with open("/proc/self/mounts") as f:
        targets = [_unescape_mount_path(line.split()[1]) for line in f]
    for target in dict.fromkeys(targets):
        try:
            kept = os.statvfs(target).f_flag
            flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY
            flags |= sum(ms for st, ms in _KEEP_FLAGS if kept & st)
            _mount(None, target, None, flags)
        except OSError:
            pass


def _unescape_mount_path(field: str) -> str:
    """A path from /proc/self/mounts, where space, tab, newline and backslash are octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _reveal(path: str) -> None:
    """Make ``path`` (the Python installation) reachable by the sandbox uid when an ancestor is not.

    Python often lives under /root (mode 0700). The ancestor that blocks the uid is covered with an
    empty root-owned tmpfs, and ``path`` alone is bind-mounted back into it (read-only), which also
    keeps everything else in that ancestor (a home directory's credentials) out of reach.
    """
    path = os.path.realpath(path)
    blocker = next((a for a in _ancestors(path) if not os.stat(a).st_mode & 0o001), None)
    if blocker is None:
        return
    stage = "/tmp/.python"
    os.mkdir(stage, 0o700)
    _mount(path, stage, None, _MS_BIND | _MS_REC)
    _mount("tmpfs", blocker, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    os.makedirs(path, 0o755, exist_ok=True)
    _mount(stage, path, None, _MS_MOVE)
    os.rmdir(stage)


def _ancestors(path: str) -> list[str]:
    """``path`` and its ancestor directories, from the root down (root itself excluded)."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _set_limits(limits: dict, level: str) -> None:
    """Resource limits for the harness and every process it starts."""
    import math
    import resource

    cpu = math.ceil(limits["time_s"])
    processes = limits["processes"]
    if level in ("userns", "guard"):  # the count is per uid, and the caller's own processes share it
        processes += _count_processes_of(os.getuid())
    for res, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, limits["memory_mb"] << 20, limits["memory_mb"] << 20),
        (resource.RLIMIT_FSIZE, limits["disk_mb"] << 20, limits["disk_mb"] << 20),
        (resource.RLIMIT_NPROC, processes, processes),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        if os.geteuid() != 0:  # only root may raise a hard limit
            current = resource.getrlimit(res)[1]
            if current != resource.RLIM_INFINITY:
                soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(res, (soft, hard))


def _count_processes_of(uid: int) -> int:
    """How many processes (and threads) of ``uid`` exist now; best effort."""
    return len(processes_of_uids({uid}))


def processes_of_uids(uids: set[int]) -> list[int]:
    """PIDs (threads included) whose real, effective or saved uid is in ``uids``, zombies included."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if uids & {int(u) for u in line.split()[1:4]}:
                            found.append(int(name))
                        break
        except OSError:
            continue
    return found


def _drop_privileges(payload: dict, level: str) -> None:
    """No new privileges; as root switch to the sandbox uid, in a user namespace drop all capabilities."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if level in ("full", "uid"):
        uid, gid = payload["uid"], payload["gid"]
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    elif level == "userns":
        _drop_capabilities()
    if 0 in os.getresuid() or 0 in os.getresgid():
        raise PermissionError("refusing to run untrusted code as root")


def _drop_capabilities() -> None:
    """Clear the effective, permitted and inheritable capability sets (capset(2), version 3)."""
    import ctypes

    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    if _libc().capset(header, data) != 0:
        raise _errno_error("capset")


def _run_harness(nonce: str, program: str, tests: list, result_fd: int, block_network: bool) -> None:
    """Run the program, then every test, and write the report; never returns.

    User code runs in this process, so after it starts nothing here may look anything up where user
    code can reach it: every callable and type used afterwards is a local taken now.
    """
    import builtins

    write, exit_, compile_, exec_, type_, str_, dict_ = os.write, os._exit, compile, exec, type, str, dict
    enumerate_ = enumerate
    base_exception, memory_error = BaseException, MemoryError
    replace, join, encode = str.replace, str.join, str.encode
    builtin_names = builtins.__dict__
    snapshot = dict(builtin_names)
    clear, update = builtin_names.clear, builtin_names.update

    def describe(err) -> str:
        try:
            name = type_(err).__name__
            text = str_(err)
            name = name if type_(name) is str_ else "?"
            text = text if type_(text) is str_ else ""
            line = replace(replace(replace(f"{name}: {text}"[:300], "\t", " "), "\n", " "), "\r", " ")
            return line
        except base_exception:  # noqa: BLE001 - a hostile __str__ must not end the report
            return "?"

    def run(source: str, namespace: dict, filename: str) -> str | None:
        try:
            exec_(compile_(source, filename, "exec"), namespace)
            return None
        except memory_error:
            return "MemoryError"
        except base_exception as err:  # noqa: BLE001 - SystemExit and friends fail the test, no more
            return describe(err)

    # A real module (not __main__, as in HumanEval's own harness): dataclasses and pickle look it up.
    module = type_(sys)("__candidate__")
    sys.modules["__candidate__"] = module
    namespace = module.__dict__
    namespace["__builtins__"] = builtins
    sys.addaudithook(_audit_hook(block_network))
    load_error = run(program, namespace, "<candidate>")
    outcomes = []
    for index, test in enumerate_(tests):
        clear()
        update(snapshot)
        if load_error is not None:
            outcomes.append("-")
            continue
        test_namespace = dict_(namespace)
        test_namespace["__builtins__"] = dict_(snapshot)
        error = run(test, test_namespace, f"<test {index}>")
        outcomes.append("+" if error is None else "-" + error)
    clear()
    update(snapshot)
    fields = [_REPORT, nonce, "+" if load_error is None else "-" + load_error] + outcomes
    write(result_fd, encode("\n" + join("\t", fields) + "\n"))
    exit_(0)


def _audit_hook(block_network: bool):
    """An audit hook that refuses introspection of the harness (and, if asked, network and programs)."""
    blocked, frame_attributes, imports = _BLOCKED_EVENTS, _FRAME_ATTRIBUTES, _BLOCKED_IMPORTS
    network = _NETWORK_EVENTS if block_network else frozenset()
    value_error, runtime_error, attribute_error, import_error, permission_error = (
        ValueError, RuntimeError, AttributeError, ImportError, PermissionError)
    str_, type_ = str, type

    def hook(event: str, args: tuple) -> None:
        if event == "sys._getframe":
            raise value_error("call stack is not deep enough")  # what a shallow stack would say
        if event == "object.__getattr__" and args[1] in frame_attributes:
            raise attribute_error(f"{args[1]} is not available in the sandbox")
        if event in blocked or event.startswith("ctypes."):
            raise runtime_error(f"{event} is not available in the sandbox")
        if event == "import" and args[0] in imports:
            raise import_error(f"{args[0]} is not available in the sandbox")
        if event == "open" and type_(args[0]) is str_ and args[0].startswith("/proc/") and "mem" in args[0]:
            raise permission_error("process memory is not readable in the sandbox")
        if event in network:
            raise permission_error(f"{event}: network and subprocesses are disabled in the sandbox")

    return hook


if __name__ == "__main__":
    _launcher_main()
