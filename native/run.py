"""`make run`: the whole stack in the foreground, logs interleaved; Ctrl-C stops all of it."""

from __future__ import annotations

import shlex
import sys

from honcho import manager as honcho

from native.stack import StackConfig, processes
from service.config import ServerSettings


def main() -> int:
    """Start every process of the native stack and wait until one stops or we are told to."""
    cfg = StackConfig.from_env()
    procs = processes(cfg)
    # Give gunicorn its graceful shutdown before honcho falls back to SIGKILL.
    honcho.KILL_WAIT = ServerSettings.from_env(cfg.app_env()).graceful_timeout + 5
    runner = honcho.Manager()
    for proc in procs:
        runner.add_process(proc.name, "exec " + shlex.join(proc.argv), env=proc.env)
    print(
        f"Serving https://localhost:{cfg.edge_port}/messages "
        f"(state in {cfg.state_dir}); Ctrl-C stops everything.",
        flush=True,
    )
    runner.loop()
    return runner.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
