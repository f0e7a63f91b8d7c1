"""Library trees built with gcc for the resolution tests, and the ld.so
oracle they are checked against (LD_TRACE_LOADED_OBJECTS, as ldd does)."""
import os
import re
import shutil
import subprocess
import struct

from loader import hwcaps

RTLD = "/lib64/ld-linux-x86-64.so.2"
_ADDR = re.compile(r" \(0x[0-9a-f]+\)$")
BASE_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


def strip_addresses(lines):
    return [_ADDR.sub("", ln) for ln in lines]


def ldso_trace(path, env=None, cwd=None, kernel=False):
    """(exit status, listing lines without addresses, stderr) from the real
    ld.so: `ld.so PATH` (explicit) or PATH executed by the kernel."""
    e = dict(BASE_ENV, **(env or {}), LD_TRACE_LOADED_OBJECTS="1")
    cmd = [path] if kernel else [RTLD, path]
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=cwd, timeout=60)
    return r.returncode, strip_addresses(r.stdout.splitlines()), r.stderr.strip()


def ldso_error(stderr):
    """The `NAME: problem` part of ld.so's 'error while loading shared libraries' line."""
    m = re.search(r"error while loading shared libraries: (.*)$", stderr)
    return m.group(1) if m else None


class Tree:
    """A directory of small programs and libraries made with gcc."""

    def __init__(self, root):
        self.root = str(root)
        self.src = os.path.join(self.root, "src")
        os.makedirs(self.src, exist_ok=True)
        self._n = 0

    def p(self, rel):
        return os.path.join(self.root, rel)

    def _gcc(self, out, code, args, cwd=None):
        self._n += 1
        src = os.path.join(self.src, f"s{self._n}.c")
        with open(src, "w") as f:
            f.write(code)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        r = subprocess.run(["gcc", "-o", out, src, *args], capture_output=True, text=True, cwd=cwd)
        if r.returncode:
            raise RuntimeError(f"gcc failed for {out}: {r.stderr}")
        return out

    @staticmethod
    def _link_args(needs, rpath, runpath, extra):
        args = ["-Wl,--no-as-needed"]
        args += [n for n in needs]
        if rpath is not None:
            args += ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{rpath}"]
        if runpath is not None:
            args += ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{runpath}"]
        return args + list(extra)

    def lib(self, rel, soname="", needs=(), rpath=None, runpath=None, extra=(), m32=False):
        """Shared library at `rel`; soname "" = its file name, None = none.
        `needs` are files or -l options to link against (DT_NEEDED)."""
        out = self.p(rel)
        ident = re.sub(r"\W", "_", rel)
        args = ["-shared", "-fPIC"]
        if soname is not None:
            args.append(f"-Wl,-soname,{soname or os.path.basename(rel)}")
        if m32:
            args = ["-m32", "-nostdlib"] + args
            return self._gcc(out, f"int f_{ident}(void) {{ return 1; }}\n", args)
        return self._gcc(out, f"int f_{ident}(void) {{ return 1; }}\n",
                         args + self._link_args(needs, rpath, runpath, extra))

    def exe(self, rel, needs=(), rpath=None, runpath=None, extra=()):
        return self._gcc(self.p(rel), "int main(void) { return 0; }\n",
                         self._link_args(needs, rpath, runpath, extra))

    def copy(self, src, rel):
        out = self.p(rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copy(src, out)
        return out

    def patch_machine(self, rel, machine=183):
        with open(self.p(rel), "r+b") as f:
            f.seek(18)
            f.write(struct.pack("<H", machine))

    def text(self, rel, content="not an ELF file, but longer than an ELF header\n" * 3):
        out = self.p(rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            f.write(content)
        return out


def build_tree(root):
    """Every scenario of test_resolve/test_ldd; returns {scenario: (program, env, cwd)}."""
    t = Tree(root)
    plat = hwcaps.detect().platform
    S = {}
    # RPATH of the loader chain; RUNPATH only for its own object's needs
    libb = t.lib("lib1/libb.so")
    liba = t.lib("lib1/liba.so", needs=[libb])
    S["rpath_chain"] = (t.exe("bin/rpath_chain", needs=[liba], rpath="$ORIGIN/../lib1"), {}, None)
    S["runpath_own"] = (t.exe("bin/runpath_own", needs=[liba], runpath="$ORIGIN/../lib1"), {}, None)
    libc2 = t.lib("lib2/libc2.so", needs=[libb], runpath="/nonexistent")
    S["runpath_stops_chain"] = (t.exe("bin/runpath_stops", needs=[libc2], rpath="$ORIGIN/../lib1:$ORIGIN/../lib2"), {}, None)
    libd2 = t.lib("lib2/libd2.so", needs=[libb], rpath="/nonexistent")
    S["rpath_continues_chain"] = (t.exe("bin/rpath_cont", needs=[libd2], rpath="$ORIGIN/../lib2:$ORIGIN/../lib1"), {}, None)
    # precedence: RPATH > LD_LIBRARY_PATH > RUNPATH > cache > default dirs
    for d in ("p_rpath", "p_llp", "p_runpath"):
        prec = t.lib(f"{d}/libprec.so")
    S["prec_rpath_vs_llp"] = (t.exe("bin/prec_rpath", needs=[prec], rpath="$ORIGIN/../p_rpath"), {"LD_LIBRARY_PATH": t.p("p_llp")}, None)
    S["prec_llp_vs_runpath"] = (t.exe("bin/prec_runpath", needs=[prec], runpath="$ORIGIN/../p_runpath"), {"LD_LIBRARY_PATH": t.p("p_llp")}, None)
    S["prec_runpath_alone"] = (t.p("bin/prec_runpath"), {}, None)
    # dynamic string tokens
    libdst1 = t.lib(f"dst/{plat}/libdst1.so")
    libdst2 = t.lib(f"dst/{hwcaps.DST_LIB}/libdst2.so")
    libdst3 = t.lib("dst/$UNKNOWN/libdst3.so")
    S["dst_tokens"] = (t.exe("bin/dst", needs=[libdst1, libdst2, libdst3],
                             rpath="${ORIGIN}/../dst/$PLATFORM:$ORIGIN/../dst/${LIB}/:$ORIGIN/../dst/$UNKNOWN//"), {}, None)
    # SONAME differs from the file name; a later need matched by SONAME
    stub = t.lib("build/libfile.so.1")
    t.lib("lib3/libfile.so.1", soname="libsoname.so.2")
    stub2 = t.lib("build/libsoname.so.2")
    needsoname = t.lib("lib3/libneedsoname.so", needs=[stub2])
    S["soname_match"] = (t.exe("bin/soname", needs=[stub, needsoname], rpath="$ORIGIN/../lib3"), {}, None)
    # one file under two names (symlink, no SONAME): loaded once
    t.lib("lib4/libdup.so.1", soname=None)
    os.symlink("libdup.so.1", t.p("lib4/libdup.so"))
    S["same_file_two_names"] = (t.exe("bin/dup", needs=[f"-L{t.p('lib4')}", "-l:libdup.so.1", "-l:libdup.so"],
                                      rpath="$ORIGIN/../lib4"), {}, None)
    # wrong class / machine candidates earlier in the path are skipped
    t.lib("bad32/libwc.so", m32=True)
    wc = t.lib("good/libwc.so")
    t.copy(wc, "badm/libwc.so")
    t.patch_machine("badm/libwc.so")
    S["skip_wrong_class_machine"] = (t.exe("bin/wc", needs=[wc], rpath="$ORIGIN/../bad32:$ORIGIN/../badm:$ORIGIN/../good"), {}, None)
    S["only_wrong_class"] = (t.exe("bin/wc32", needs=[wc], rpath="$ORIGIN/../bad32"), {}, None)
    # a non-ELF candidate stops the search with an error
    t.text("badelf/libwc.so")
    S["invalid_candidate"] = (t.exe("bin/inv", needs=[wc], rpath="$ORIGIN/../badelf:$ORIGIN/../good"), {}, None)
    # missing libraries, nested, needed twice
    gone = t.lib("build/libgone.so")
    gone2 = t.lib("build/libgone2.so")
    mid = t.lib("lib5/libmid.so", needs=[gone, gone2])
    S["missing"] = (t.exe("bin/missing", needs=[mid, gone], rpath="$ORIGIN/../lib5"), {}, None)
    # hwcaps subdirectories of a search directory
    for sub in ("", "glibc-hwcaps/x86-64-v2/", "glibc-hwcaps/x86-64-v3/", "tls/", "x86_64/"):
        hw1 = t.lib(f"hw/{sub}libhw.so")
    hw2 = t.lib("hw/x86_64/libhw2.so")
    t.lib("hw/libhw2.so")
    S["hwcaps_subdirs"] = (t.exe("bin/hw", needs=[hw1, hw2], rpath="$ORIGIN/../hw"), {}, None)
    S["hwcaps_tuned_down"] = (t.p("bin/hw"), {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, None)
    S["hwcaps_no_v2"] = (t.p("bin/hw"), {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-SSE4_2:glibc.cpu.hwcap_mask=0"}, None)
    S["hwcap_mask_zero"] = (t.p("bin/hw"), {"LD_HWCAP_MASK": "0"}, None)
    # names with '/', absolute and relative to the working directory; $ORIGIN in DT_NEEDED
    absl = t.lib("lib6/libabs.so", soname=None)
    t.lib("lib6/sub/librel.so", soname=None)
    t.lib("build/libq.so", soname="$ORIGIN/../lib6/libq.so")
    t.lib("lib6/libq.so", soname="libq.so")
    rel = t._gcc(t.p("bin/slash"), "int main(void){return 0;}\n",
                 ["-Wl,--no-as-needed", absl, "sub/librel.so", t.p("build/libq.so")], cwd=t.p("lib6"))
    S["slash_names"] = (rel, {}, t.p("lib6"))
    S["slash_names_other_cwd"] = (rel, {}, t.root)
    # LD_LIBRARY_PATH forms: empty element = cwd, relative, ';', $ORIGIN (main's)
    llp = t.lib("llp/libllp.so")
    S["llp_empty_is_cwd"] = (t.exe("bin/llp", needs=[llp]), {"LD_LIBRARY_PATH": "/nonexistent::"}, t.p("llp"))
    S["llp_relative"] = (t.p("bin/llp"), {"LD_LIBRARY_PATH": "llp//"}, t.root)
    S["llp_semicolon_origin"] = (t.p("bin/llp"), {"LD_LIBRARY_PATH": "/nonexistent;$ORIGIN/../llp"}, None)
    # preloads: by name (through LD_LIBRARY_PATH), by path, missing, also a dependency
    pre = t.lib("pre/libpre.so")
    S["preload"] = (t.p("bin/rpath_chain"), {"LD_PRELOAD": f"libpre.so {t.p('lib1/libb.so')}:libnothere.so",
                                             "LD_LIBRARY_PATH": t.p("pre")}, None)
    S["preload_dst"] = (t.p("bin/rpath_chain"), {"LD_PRELOAD": "$ORIGIN/../pre/libpre.so"}, None)
    S["llp_platform_lib"] = (t.exe("bin/dst_llp", needs=[libdst1, libdst2]),
                             {"LD_LIBRARY_PATH": f"{t.p('dst')}/$PLATFORM:{t.p('dst')}/$LIB"}, None)
    # DF_1_NODEFLIB: neither the cache nor the default directories
    S["nodeflib"] = (t.exe("bin/nodeflib", extra=["-Wl,-z,nodefaultlib"]), {}, None)
    S["nodeflib_llp"] = (t.p("bin/nodeflib"), {"LD_LIBRARY_PATH": "/lib/x86_64-linux-gnu"}, None)
    # circular dependencies, and a library as the main object
    cyc2_stub = t.lib("build/libcyc2.so")
    cyc1 = t.lib("cyc/libcyc1.so", needs=[cyc2_stub], rpath="$ORIGIN")
    t.lib("cyc/libcyc2.so", needs=[cyc1], rpath="$ORIGIN")
    S["circular"] = (t.exe("bin/cyc", needs=[cyc1], rpath="$ORIGIN/../cyc"), {}, None)
    S["library_as_main"] = (cyc1, {}, None)
    # $ORIGIN of a symlinked program: explicit ld.so uses the link's directory
    rl = t.lib("real/rlib/libreal.so")
    t.exe("real/bin/origin", needs=[rl], rpath="$ORIGIN/../rlib")
    os.makedirs(t.p("linkdir"), exist_ok=True)
    os.symlink(t.p("real/bin/origin"), t.p("linkdir/origin"))
    S["symlinked_program"] = (t.p("linkdir/origin"), {}, None)
    S["relative_program_path"] = ("./bin/rpath_chain", {}, t.root)
    # DT_FILTER / DT_AUXILIARY: the filtee goes just before its filter
    t.lib("filt/libfiltee.so")
    t.lib("filt/libauxee.so")
    filt = t.lib("filt/libfilt.so", needs=[libb], extra=["-Wl,--filter=libfiltee.so", "-Wl,--auxiliary=libauxee.so",
                                                          "-Wl,--auxiliary=libauxmissing.so"])
    S["filters"] = (t.exe("bin/filt", needs=[filt], rpath="$ORIGIN/../filt:$ORIGIN/../lib1"), {}, None)
    fee2 = t.lib("filt/libfiltee2.so")
    filt2 = t.lib("filt/libfilt2.so", extra=["-Wl,--filter=libfiltee2.so"])
    S["filter_moves_later_filtee"] = (t.exe("bin/filt2", needs=[filt2, fee2], rpath="$ORIGIN/../filt"), {}, None)
    filt3 = t.lib("filt/libfilt3.so", extra=["-Wl,--filter=libfiltermissing.so"])
    S["filter_missing"] = (t.exe("bin/filt3", needs=[filt3], rpath="$ORIGIN/../filt"), {}, None)
    # another spelling of the interpreter; ld.so as the first DT_NEEDED (listed before the vDSO)
    S["other_interp_name"] = (t.exe("bin/interp", extra=["-Wl,--dynamic-linker=/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"]),
                              {}, None)
    S["ld_so_needed_first"] = (t.exe("bin/ldso_path", needs=["/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"]), {}, None)
    # symbol versions: one the provider lacks (fatal at start), a provider without any
    vcode = "int x_{0}(void) {{ return 1; }}\n"
    stubs = []
    for name, script in (("libver.so", "VERS_1 { global: *; };"), ("libnover.so", "VERS_1 { global: *; };")):
        with open(t.p(f"src/{name}.map"), "w") as f:
            f.write(script + "\n")
        stubs.append(t._gcc(t.p(f"build/{name}"), vcode.format(name[3:-3]),
                            ["-shared", "-fPIC", f"-Wl,-soname,{name}", f"-Wl,--version-script={t.p(f'src/{name}.map')}"]))
    with open(t.p("src/v2.map"), "w") as f:
        f.write("VERS_2 { global: *; };\n")
    t._gcc(t.p("ver/libver.so"), vcode.format("ver"), ["-shared", "-fPIC", "-Wl,-soname,libver.so",
                                                        f"-Wl,--version-script={t.p('src/v2.map')}"])
    t._gcc(t.p("ver/libnover.so"), vcode.format("nover"), ["-shared", "-fPIC", "-Wl,-soname,libnover.so"])
    S["symbol_versions"] = (t._gcc(t.p("bin/ver"), "int x_ver(void); int x_nover(void);\n"
                                   "int main(void) { return x_ver() + x_nover(); }\n",
                                   ["-Wl,--no-as-needed", *stubs, "-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/../ver"]),
                            {}, None)
    return t, S
