"""Cheap peer processes: one parent that has imported everything and loaded the data forks them.

A fresh ``python -m node`` interpreter spends seconds and about 140 MB of private memory importing
torch before it does anything; the launcher's peers all need the same modules and, on a shared
source, the same data. So the launcher process itself is the *zygote*: :class:`Zygote` imports
the peer's modules and loads each distinct data source once, then :meth:`Zygote.spawn` forks a
child per peer. The child shares the parent's pages copy-on-write (the interpreter, torch, the
data tensors), runs exactly what ``python -m node`` runs (``node.peer.cli.main``, with the
preloaded data handed to it) and leaves with ``os._exit`` so that nothing of the parent (atexit
handlers, buffered output) runs twice.

Each peer is still its own OS process, with its own port, event loop, state folder, checkpoint
and log; the launcher sends it SIGKILL or SIGTERM and restarts it exactly as a ``Popen`` child
(a restarted peer is forked again from the same, untouched parent). A child asks the kernel for
SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a launcher that is itself killed leaves
no peer behind; Ctrl-C reaches every child through the terminal's process group, as before.

Why fork from the launcher and not ``multiprocessing``'s forkserver: a forkserver's children are
not the launcher's children (it could not wait for them or see their exit codes without a
protocol of its own), and its pickled arguments are one more thing to trust. Why not threads or
one event loop: isolation (a peer that crashes, is SIGKILLed or runs out of memory must not take
the others with it) is the point of real processes.

Fork safety: the parent runs no torch computation and starts no thread before forking (torch is
limited to one thread in the parent, so no OpenMP pool exists to be copied half-locked); the
child resets the signal handlers the launcher installed, points Python's stdio at its own files
and removes logging handlers it inherited. ``gc.freeze()`` before each fork keeps the child's
garbage collector off the inherited objects, whose pages would otherwise be copied as the
collector touches them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from node.config import PeerConfig

PR_SET_PDEATHSIG = 1  # linux/prctl.h
CHILD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}  # reset in the child


def fork_available() -> bool:
    """Whether peers can be forked here: Linux (``PR_SET_PDEATHSIG`` and a torch that is known to
    survive fork when unused in the parent); elsewhere the launcher starts interpreters."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def exit_code(exc: SystemExit) -> int:
    """The status an interpreter would exit with for ``exc``: its code, 0 for None, else 1
    after printing the message (``sys.exit("reason")``)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def name_process(argv: Sequence[str], parent: int) -> None:
    """Show a forked peer in ps, top and /proc/PID/cmdline as what it runs (``python -m node
    ARGV``, marked as forked) instead of its parent's command line, with the setproctitle
    package (rewriting argv's memory in place is what it is made for; hand-written ctypes would
    have to find that memory itself)."""
    try:
        from setproctitle import setproctitle
    except ImportError:  # optional outside Linux, where peers are not forked
        return
    setproctitle(f"{sys.executable} -m node {' '.join(argv)} [forked by {parent}]")


class ForkedProcess:
    """A forked child with the part of ``subprocess.Popen``'s interface the launcher uses
    (``pid``, ``returncode``, ``poll``, ``wait``, ``terminate``, ``kill``). Waits use a pidfd
    (Linux >= 5.3) so they end the moment the child does, else a 20 ms poll."""

    def __init__(self, pid: int, owner: Zygote):
        self.pid = pid
        self.returncode: int | None = None
        self._owner = owner
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
            owner.hold_pidfd(self._pidfd)
        except (AttributeError, OSError):
            self._pidfd = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: nothing more to learn
                pid, status = self.pid, 255 << 8
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self._release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit code; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"peer process {self.pid}", timeout or 0.0)
            if self._pidfd is not None:  # poll: select cannot take descriptors >= 1024
                waiter = select.poll()
                waiter.register(self._pidfd, select.POLLIN)
                waiter.poll(None if left is None else max(1, int(left * 1000)))
            else:
                time.sleep(0.02 if left is None else min(0.02, left))
        assert self.returncode is not None  # poll() saw the end
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _release(self) -> None:
        if self._pidfd is not None:
            self._owner.release_pidfd(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class Zygote:
    """The launcher's parent role. Build it once with the peers' configs (it imports the peer's
    modules and loads each distinct data source once); :meth:`spawn` forks a peer."""

    def __init__(self, configs: Sequence[PeerConfig]):
        # the peer's modules, imported once here and shared by every child
        from node.peer import cli, membership, protocol, wiring  # noqa: F401

        try:
            import setproctitle  # noqa: F401 - imported once here, used by every child
        except ImportError:
            pass
        torch.set_num_threads(1)  # no OpenMP pool in the parent (the children set their own)
        self._pidfds: set[int] = set()
        self._gate: tuple[int, int] | None = None  # (read, write) ends while held
        self._data: dict[str, Any] = {}
        for config in configs:
            key = wiring.data_key(config)
            if key not in self._data:
                self._data[key] = wiring.load_peer_data(config)

    def hold_pidfd(self, fd: int) -> None:
        """A child's pidfd, which the children forked later must close (it is not theirs)."""
        self._pidfds.add(fd)

    def release_pidfd(self, fd: int) -> None:
        """The pidfd ``fd`` is about to be closed (its child was reaped)."""
        self._pidfds.discard(fd)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Peers spawned inside the block wait, forked but idle, until it ends; then all
        start at once. Forking is cheap (about 7 ms) but each started peer takes CPU from the
        parent, so without the gate the k-th fork waits behind k busy children: 64 peers
        started over 10 s, long enough for the first to finish training before the last
        listened. The gate is a pipe whose write end only the parent holds: closing it is the
        signal (an EOF every child sees), and a parent that dies closes it too."""
        self._gate = os.pipe()
        try:
            yield
        finally:
            read, write = self._gate
            self._gate = None
            os.close(write)
            os.close(read)

    def data_for(self, config: PeerConfig) -> Any:
        """The preloaded data set of ``config``'s [data] source (None: the peer loads its own)."""
        from node.peer.wiring import data_key

        return self._data.get(data_key(config))

    def spawn(self, argv: Sequence[str], *, stderr_path: Path) -> ForkedProcess:
        """Fork a peer that runs ``python -m node ARGV`` with its stderr appended to
        ``stderr_path`` and stdout discarded."""
        stderr_fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would write the parent's buffered text again
        parent = os.getpid()
        # signals stay blocked across the fork: a Ctrl-C or the launcher's SIGTERM arriving
        # in the child before it has reset the launcher's handlers would run the launcher's
        # code (its except and finally blocks) in the child (found in review)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_SIGNALS)
        gc.freeze()
        try:
            pid = os.fork()
            if pid == 0:  # the child: never returns, whatever happens
                try:
                    self._run_child(list(argv), stderr_fd, parent, blocked)
                finally:
                    os._exit(1)
        finally:
            if os.getpid() == parent:
                gc.unfreeze()
                os.close(stderr_fd)
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return ForkedProcess(pid, self)

    def _run_child(self, argv: list[str], stderr_fd: int, parent: int,
                   mask: set[int]) -> None:
        code = 1
        try:
            self._become_peer(stderr_fd, parent)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # handlers reset: signals again
            name_process(argv, parent)
            from node.peer.cli import main

            code = main(argv, data_for=self.data_for)
        except SystemExit as exc:  # argparse's errors (2) and explicit exits
            code = exit_code(exc)
        except BaseException:  # noqa: BLE001 - whatever it was, say it and leave
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _become_peer(self, stderr_fd: int, parent: int) -> None:
        """Detach the child from what it inherited: the parent's death, signal handlers, stdio,
        logging handlers and the parent's pidfds."""
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)
        for sig in CHILD_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for fd in list(self._pidfds):
            os.close(fd)
        self._pidfds.clear()
        if self._gate is not None:  # wait for the parent to release every peer at once
            read, write = self._gate
            os.close(write)
            while os.read(read, 1):
                pass
            os.close(read)
            self._gate = None
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(stderr_fd, 2)
        os.close(devnull)
        os.close(stderr_fd)
        # the parent's sys.std* may be wrappers of its own (a test runner's capture)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        os.umask(0o077)
