"""The one exception family users see: each carries a one-line message."""


class LdpoolError(Exception):
    """A problem to report to the user in one line, without a traceback."""

    exit_code = 1


class ElfError(LdpoolError):
    """A file is not a usable ELF object (not ELF, truncated, wrong machine...)."""

    def __init__(self, path, problem):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class ResolveError(LdpoolError):
    """A needed library or symbol cannot be found."""

    exit_code = 127


class BrokerError(LdpoolError):
    """The broker is unreachable, refused a request, or died mid-request."""
