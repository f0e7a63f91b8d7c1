"""Fixtures for the pytest-benchmark files (run them explicitly, e.g.
`pytest benchmarks/bench_startup.py --benchmark-enable`): one private,
warm broker per session and whether ldpool-exec really runs programs from
its pool.  ldpool's cases skip, saying why, when it does not."""
import pytest

from . import runners


class LdpoolSide:
    def __init__(self):
        self.broker = runners.Broker()
        self.broker_ok = self.broker.start()
        self.broker_reason = self.broker.error or ""
        self.ok, self.reason = (runners.probe(self.broker) if self.broker_ok
                                else (False, self.broker_reason))

    def require(self):
        if not self.ok:
            pytest.skip(f"ldpool not available: {self.reason}")

    def require_broker(self):
        if not self.broker_ok:
            pytest.skip(f"broker not available: {self.broker_reason}")


@pytest.fixture(scope="session")
def ldpool_side():
    side = LdpoolSide()
    yield side
    side.broker.close()


def program(argv):
    resolved = runners.resolve(argv)
    if resolved is None:
        pytest.skip(f"{argv[0]} is not installed")
    return resolved
