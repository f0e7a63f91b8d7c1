"""`ldpool` command: parses arguments and dispatches to one module per
subcommand. It is the only place in loader/ that may reach host_broker/."""
import argparse
import importlib
import os
import sys

from loader.errors import LdpoolError

# subcommand -> (module, help); each module has add_arguments(p) and run(args)
COMMANDS = {
    "ldd": ("loader.ldd", "list the libraries a program or library needs, as ld.so --list does"),
    "run": ("loader.run", "run a program with its libraries mapped from the shared pool"),
    "broker": ("host_broker.service", "run the host broker that owns the library pool"),
    "pool": ("host_broker.report", "show what the pool holds and what it saves"),
    "bench": ("ldpool_benchmarks.suite", "run the benchmark suite against ld.so and KSM"),
    "demo": ("ldpool_benchmarks.demo", "run a few real programs from the pool and compare with ld.so"),
}


def _import(modname):
    try:
        return importlib.import_module(modname)
    except ImportError:
        # from a source checkout the benchmark package is plain `benchmarks`
        if modname.startswith("ldpool_benchmarks."):
            return importlib.import_module(modname.replace("ldpool_benchmarks.", "benchmarks.", 1))
        raise


def build_parser(chosen=None):
    """Every subcommand is listed, but only the chosen one's module is
    imported: `ldpool run` must not pay for asyncio or the benchmarks."""
    parser = argparse.ArgumentParser(prog="ldpool", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (modname, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(_module=modname)
        if name != chosen:
            continue
        try:
            _import(modname).add_arguments(p)
        except ImportError:
            p.set_defaults(_missing=True)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # the top-level parser has no options taking a value, so the first word
    # that is not an option names the subcommand
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"ldpool: '{args.command}' is not available in this build", file=sys.stderr)
        return 2
    try:
        return _import(args._module).run(args) or 0
    except LdpoolError as e:
        print(f"ldpool: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (| head): exit quietly as coreutils do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
