"""ldpool-exec maps every segment with MAP_FIXED_NOREPLACE (no separate
reservation): a plan whose range is already taken in the process, wholly or
only in its last page, must fail with one line and exit 127, never map over
what is there.  The launcher runs without address randomisation (setarch -R)
so its own mappings are where a first run saw them; a plan (--plan debug
mode) is then moved onto them."""
import shutil
import subprocess
import sys

import pytest

from launcher_helpers import env  # noqa: F401  (a fixture)
from loader import planformat as pf

# object fields that hold runtime addresses (0: none)
ADDR_FIELDS = ("l_addr map_start map_end l_ld phdr entry init fini preinit_array init_array fini_array "
               "tls_image relro_start relro_end eh_frame_hdr").split()

MAPS_C = r"""
#include <stdio.h>
int main(void)
{
    char line[512];
    FILE *f = fopen("/proc/self/maps", "r");
    while (f && fgets(line, sizeof line, f)) fputs(line, stdout);
    return 0;
}
"""


def _moved(data, delta):
    """The plan with its one object (and its segments and fixups) delta bytes away."""
    p = pf.unpack(data)
    assert p.hdr["nobj"] == 1, p.hdr
    b = bytearray(data)
    o = dict(p.objects[0])
    for k in ADDR_FIELDS:
        if o[k]:
            o[k] += delta
    pf.OBJ.pack_into(b, p.hdr["off_obj"], *(o[k] for k in pf.OBJ_FIELDS))
    for i, s in enumerate(p.segments):
        pf.SEG.pack_into(b, p.hdr["off_seg"] + i * pf.SEG.size, s[0] + delta, *s[1:])
    for i, (addr, typ, sym, addend, aux) in enumerate(p.fixups):
        if typ == pf.FIX_IRELATIVE:
            addend += delta
        pf.FIX.pack_into(b, p.hdr["off_fix"] + i * pf.FIX.size, addr + delta, typ, sym, addend, aux)
    return bytes(b)


def _maps(text):
    out = []
    for line in text.splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        out.append((lo, hi, line))
    return out


def test_taken_ranges_are_refused_not_overwritten(env, tmp_path):
    if shutil.which("setarch") is None or subprocess.run(["setarch", "-R", "true"]).returncode != 0:
        pytest.skip("setarch -R (no address randomisation) is not available")
    (tmp_path / "maps.c").write_text(MAPS_C)
    subprocess.run(["gcc", "-O2", "-o", "maps", "maps.c"], check=True, cwd=tmp_path)
    plan, pool = tmp_path / "maps.plan", tmp_path / "maps.pool"
    subprocess.run([sys.executable, "-P", "-m", "loader.plan", str(tmp_path / "maps"), "-o", str(plan),
                    "--pool-file", str(pool), "--pool-size", "0x1000000"], check=True, env=env, cwd=tmp_path)
    good = plan.read_bytes()

    def launch(data):
        f = tmp_path / "try.plan"
        f.write_bytes(data)
        return subprocess.run(["setarch", "-R", "ldpool-exec", "--plan", str(f), "--pool", str(pool),
                               str(tmp_path / "maps")], capture_output=True, text=True, env=env, timeout=60)

    first = launch(good)
    assert first.returncode == 0, first.stderr
    maps = _maps(first.stdout)
    assert maps == _maps(launch(good).stdout), "setarch -R did not make the layout repeatable"
    obj = pf.unpack(good).objects[0]
    start, size = obj["map_start"], obj["map_end"] - obj["map_start"]
    # the launcher's own libc: there before the plan is mapped, in every run
    libc = next(m for m in maps if "libc.so" in m[2])
    # a mapping with free space below it for all but the object's last page
    below = [(prev[1], m[0], m[2]) for prev, m in zip(maps, maps[1:])]
    tail = next((hi for lo, hi, line in below if hi - lo >= size), None)
    assert tail, first.stdout
    cases = {"whole": libc[0] - start, "last page": tail - size + 4096 - start}
    for name, delta in cases.items():
        r = launch(_moved(good, delta))
        assert r.returncode == 127, (name, r.returncode, r.stdout[-500:], r.stderr)
        assert r.stderr.startswith("ldpool-exec: ") and r.stderr.count("\n") == 1, (name, r.stderr)
        assert "address taken" in r.stderr, (name, r.stderr)
