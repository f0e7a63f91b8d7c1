"""ldpool's loader: the ELF model, ld.so's resolution rules, plans, and
`loader.open(name)`, which maps a library from pool images into this
process and returns a ctypes.CDLL-like handle."""


def open(name, source=None):  # noqa: A001  (mirrors ctypes.CDLL / dlopen)
    """Map library `name` and its dependencies into this process from pool
    images (the broker's when one answers, else a private pool; source=
    "broker" or "local" to choose); returns a handle whose attributes are
    its functions."""
    from loader.inprocess import open as _open
    return _open(name, source)
