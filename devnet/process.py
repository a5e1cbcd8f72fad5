"""Child-process plumbing shared by the devnets that run a node binary (anvil, regtest)."""

from __future__ import annotations

import shutil
import subprocess
import threading


def with_parent_death_signal(argv: list[str]) -> list[str]:
    """Make the kernel SIGKILL the node if we die without running atexit (e.g. SIGKILL).

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so
    it is only armed from the main thread; worker-thread launches rely on the
    finalizer alone rather than risk the node vanishing mid-test.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return argv
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


def terminate(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)
