"""`ldpool pool [--json]`: what the broker's pool holds (images, sizes,
placements, references per client, bytes shared) and an estimate of the
memory it saves against ld.so. Asks the running broker (STATS); never
starts one."""
import json
import sys

from loader import client as C
from loader.errors import BrokerError


def add_arguments(p):
    p.add_argument("--socket", help="broker socket (default: $LDPOOL_SOCKET or the per-user socket)")
    p.add_argument("--json", action="store_true", help="print the broker's STATS JSON")


def _mib(n):
    return f"{n / (1 << 20):.1f} MiB"


def run(args):
    try:
        conn = C.connect(args.socket, start_embedded=False, name="ldpool-pool")
    except BrokerError as e:
        raise BrokerError(f"{e} (is a broker running? `ldpool broker` starts one)") from None
    with conn:
        st = conn.stats()
    if args.json:
        json.dump(st, sys.stdout, indent=1)
        print()
        return 0
    render(st)
    return 0


def render(st, out=None):
    from rich.console import Console
    from rich.table import Table
    f = out or sys.stdout
    con = Console(file=f, width=None if f.isatty() else 200)
    t = st["totals"]
    con.print(f"pool {st['pool']}: {_mib(st['pool_used'])} used of {_mib(st['pool_size'])} "
              f"({_mib(t['pool_resident'])} resident), epoch {st['epoch']}, window {st['window']} "
              f"+ slide {st['slide']}, linger {st['linger']:g}s"
              + (", re-attached after a restart" if st.get("recovered") else ""))
    tab = Table(box=None, header_style="bold")
    for col in ("image", "base", "pool size", "refs", "clients", "state", "relro/process"):
        tab.add_column(col, justify="left" if col in ("image", "state") else "right")
    for im in sorted(st["images"], key=lambda i: i["map_start"]):
        state = im["state"]
        if state == "lingering" and im["linger_left"] is not None:
            state += f" {im['linger_left']:.0f}s"
        tab.add_row(im["path"], im["base"], f"{im['pool_size'] >> 10} KiB", str(im["refs"]),
                    str(im["clients"]), state, f"{im['relro_bytes'] >> 10} KiB")
    con.print(tab)
    s = st.get("stubs")
    if s:
        con.print(f"glibc stubs at {s['start']} (shared), slot table at {s['slots_addr']} (per process): "
                  f"{s['registered']} of {s['capacity']} functions registered")
    if t.get("hidden_images"):
        con.print(f"(+{t['hidden_images']} images used only by other users)")
    if st["clients"]:
        ct = Table(box=None, header_style="bold")
        for col in ("client", "kind", "pid", "uid", "name", "leases", "refs"):
            ct.add_column(col)
        for c in st["clients"]:
            ct.add_row(str(c["id"]), c["kind"], str(c["pid"]), str(c["uid"]), c["name"],
                       str(c["leases"]), str(c["refs"]))
        con.print(ct)
    con.print(f"{t['images']} images, {t['leases']} leases, {t['clients']} clients, "
              f"{t['refs']} references; bytes shared: {_mib(t['pool_bytes'])}; "
              f"ld.so would relocate {_mib(t['private_bytes_ldso_estimate'])} privately, "
              f"saved ~{_mib(t['saved_bytes_estimate'])} (estimate: RELRO pages x (users - 1))")
