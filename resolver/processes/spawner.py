"""The spawner: a small process, forked before the supervisor's event loop, that forks each worker process."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import multiprocessing.connection
import os
import select
import signal
import socket
import sys
from collections.abc import Callable

from resolver.processes import heap, worker

log = logging.getLogger(__name__)

# Why a spawner. A worker started as a fresh interpreter imports the data plane again and holds
# about 19 MB of its own (mostly the unmarshalled code of asyncio, yaml and schooldns); forked
# from a process that has imported it, it shares those pages copy-on-write and holds about
# 12 MB. The supervisor cannot fork once its event loop and executor threads run (a child
# would inherit a running loop and locks held by threads that do not exist in it), so at start,
# still single-threaded, it forks this process, which does nothing but fork workers on request
# (restarts included) and reap them. The supervisor watches a worker through a pidfd, since the
# worker is not its child. A spawner that dies is replaced by a fresh interpreter running
# `main` (its workers then share less, and keep working).

REQUEST_MAX_BYTES = 4096  # one SpawnArgs as JSON
PROCESS_NAME = "schooldns-spawn"  # /proc/PID/comm, what ps -e, top and pgrep show (15 bytes at most)


def worker_process_name(index: int) -> str:
    return f"schooldns-w{index}"


@dataclasses.dataclass(eq=False)
class WorkerProcess:
    """A worker forked by the spawner; the supervisor holds a pidfd, which is readable once it has exited."""

    pid: int
    pidfd: int  # -1 once closed: then it counts as exited

    def alive(self) -> bool:
        return not self.wait(0)

    def wait(self, timeout_seconds: float) -> bool:
        """True once the process has exited; False if it still runs after `timeout_seconds`."""
        return self.pidfd < 0 or _exited(self.pidfd, timeout_seconds)

    def send_signal(self, signum: int) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):  # already reaped by the spawner
                signal.pidfd_send_signal(self.pidfd, signum)

    def close(self) -> None:
        """Release the pidfd (once: its number may be reused by the next open file)."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class Spawner:
    """The supervisor's end of the spawner process: one request (a SpawnArgs) per worker."""

    def __init__(self, channel: socket.socket, pid: int):
        self.channel = channel
        self.pid = pid  # the supervisor's child, reaped by close()

    @classmethod
    def fork(cls) -> Spawner:
        """Fork the spawner from this process; only while it has one thread and no event loop."""
        # Everything built so far stays shared: keep it out of the collector's generations, whose
        # collections would otherwise write to (and so copy) every page holding a tracked object.
        gc.freeze()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _exit_after(lambda: _serve_requests(theirs))
        theirs.close()
        return cls(ours, pid)

    @classmethod
    def start_fresh(cls) -> Spawner:
        """Start a spawner as a new interpreter (the replacement of one that died)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            theirs.set_inheritable(True)  # the only descriptor it inherits: Python opens all others non-inheritable
            pid = os.posix_spawn(
                sys.executable,
                [
                    sys.executable,
                    "-c",
                    "import sys; from resolver.processes import spawner; spawner.main(sys.argv[1:])",
                    str(theirs.fileno()),
                    str(logging.getLogger().level),
                ],
                os.environ,
            )
        return cls(ours, pid)

    def replacement(self) -> Spawner:
        """A spawner in place of this one, which is gone: this one reaped, a new one started."""
        self.close()
        return Spawner.start_fresh()

    def start_worker(self, args: worker.SpawnArgs) -> tuple[WorkerProcess, multiprocessing.connection.Connection]:
        """Have a worker forked; returns it and the supervisor's end of its connection.

        Raises OSError when the spawner is gone.
        """
        self.channel.send(json.dumps(dataclasses.asdict(args)).encode())
        reply, fds, _, _ = socket.recv_fds(self.channel, 64, 2)
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            raise ConnectionError(f"the spawner did not start worker {args.index}: {reply.decode(errors='replace')!r}")
        conn_fd, pidfd = fds
        return WorkerProcess(int(reply), pidfd), multiprocessing.connection.Connection(conn_fd)

    def close(self, timeout_seconds: float = 10.0) -> None:
        """Let the spawner exit (it waits for its workers first) and reap it; kill it after `timeout_seconds`."""
        self.channel.close()
        pidfd = os.pidfd_open(self.pid)
        try:
            if not _exited(pidfd, timeout_seconds):
                log.error("the spawner process did not exit within %.0fs; killing it", timeout_seconds)
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        finally:
            os.close(pidfd)
        os.waitpid(self.pid, 0)


def main(argv: list[str]) -> None:
    """A replacement spawner started as a new interpreter: `main([CHANNEL_FD, LOG_LEVEL])`."""
    logging.basicConfig(level=int(argv[1]), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    heap.tune()  # as `schooldns serve` did for the spawner forked from it, and so for every worker
    _exit_after(lambda: _serve_requests(socket.socket(fileno=int(argv[0]))))


def _exit_after(run: Callable[[], int | None]) -> None:
    """Run a forked or spawned process's work, then end the process (with the status it returns, or 0)
    without returning to the caller's code."""
    code = 1
    try:
        code = run() or 0
    except BaseException:
        log.exception("%s failed", _name())
    finally:
        logging.shutdown()
        os._exit(code)


def _serve_requests(channel: socket.socket) -> None:
    """The spawner's loop: fork a worker per request, reap workers as they exit, end with the supervisor."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the supervisor decides
    _set_name(PROCESS_NAME)
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, worker index)
    while True:
        waiting: list[int] = [channel.fileno(), *children]
        readable = select.select(waiting, [], [])[0]
        for pidfd in readable:
            if pidfd in children:
                pid, index = children.pop(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                log.log(logging.INFO if code == 0 else logging.ERROR, "worker %d (pid %d) %s", index, pid, how)
        if channel.fileno() in readable:
            request = channel.recv(REQUEST_MAX_BYTES)
            if not request:
                break  # the supervisor is gone or stopping
            fields = json.loads(request)
            lists = {name: tuple(fields[name]) for name in ("listen", "dot_listen", "doh_listen")}
            args = worker.SpawnArgs(**{**fields, **lists})
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                channel.close()
                ours.close()
                for pidfd in children:
                    os.close(pidfd)
                _exit_after(lambda: _run_worker(args, theirs))  # noqa: B023 (called at once, in the child)
            theirs.close()
            pidfd = os.pidfd_open(pid)
            socket.send_fds(channel, [str(pid).encode()], [ours.fileno(), pidfd])
            ours.close()
            children[pidfd] = (pid, args.index)
    for pid, _ in children.values():  # stopping, or stopping themselves without a supervisor
        os.waitpid(pid, 0)


def _run_worker(args: worker.SpawnArgs, conn: socket.socket) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _set_name(worker_process_name(args.index))
    return worker.spawned_main(args, conn.detach())


def _exited(pidfd: int, timeout_seconds: float) -> bool:
    """Wait up to `timeout_seconds` for a pidfd to turn readable: its process has exited."""
    poller = select.poll()  # not select(): the supervisor's descriptors may number above 1023
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout_seconds * 1000))


def _set_name(name: str) -> None:
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(name)


def _name() -> str:
    try:
        with open("/proc/self/comm") as comm:
            return comm.read().strip()
    except OSError:
        return "process"
