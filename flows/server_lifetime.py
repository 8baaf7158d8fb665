"""The flow's temporary Prefect server goes away with the flow's process, even a killed one.

Without PREFECT_API_URL a flow starts a temporary API server (`python -m uvicorn ...
prefect.server.api.server:create_app`) and stops it at exit; a SIGKILLed flow left it
running, re-parented to PID 1 (~225 MB). Prefect has no setting for this, so the server's
command is started through a small launcher that watches its parent and shuts the server
down (SIGTERM: uvicorn's own graceful stop) once the parent is gone. Only that exact command
is changed; every other subprocess is untouched. Installed by `import flows`.
"""

from __future__ import annotations

import subprocess

_SERVER_APP = "prefect.server.api.server:create_app"
_LAUNCHER = """
import os, runpy, signal, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)      # uvicorn stops gracefully
    time.sleep(10)
    os._exit(1)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[1:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


def _launcher_args(args):
    """Prefect's server command -> the same through the launcher; anything else unchanged."""
    if (
        isinstance(args, (list, tuple))
        and len(args) > 3
        and list(args[1:3]) == ["-m", "uvicorn"]
        and _SERVER_APP in args
    ):
        return [args[0], "-c", _LAUNCHER, *args[3:]]
    return args


class _Popen(subprocess.Popen):
    def __init__(self, args, *a, **kw):
        super().__init__(_launcher_args(args), *a, **kw)


def install() -> None:
    if not issubclass(subprocess.Popen, _Popen):
        subprocess.Popen = _Popen


install()
