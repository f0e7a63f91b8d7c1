"""Shared fixtures: where the shared/ material is, and how to call ldpool."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_dir():
    env = os.environ.get("LDPOOL_SHARED")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (cand / "conformance" / "run.sh").exists():
            return cand
    return None


@pytest.fixture(scope="session")
def shared():
    d = shared_dir()
    if d is None:
        pytest.fail("shared/ (conformance suite) not found beside the checkout; set LDPOOL_SHARED")
    return d


@pytest.fixture(scope="session")
def ldpool_bin():
    """Path of the `ldpool` command under test (installed or tools/dev-build)."""
    exe = shutil.which("ldpool")
    if exe is None:
        pytest.fail("`ldpool` is not on PATH: install the package or run tools/dev-build")
    return exe


def run_ldpool(*args, env=None, input=None, timeout=120, cwd=None):
    return subprocess.run(["ldpool", *args], capture_output=True, text=True, env=env,
                          input=input, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="session", autouse=True)
def _no_pool_left_behind():
    """The launcher tests share one embedded broker (launcher_helpers.SOCKDIR)
    and some tests kill brokers; a killed broker's pool stays on purpose (a
    restarted broker re-attaches to it).  At the end of the run, stop the
    shared broker and remove its pool: a test run leaves nothing in /dev/shm."""
    yield
    from broker_helpers import stop_and_unlink
    from launcher_helpers import SOCKDIR
    stop_and_unlink(os.path.join(SOCKDIR, "broker.sock"))
