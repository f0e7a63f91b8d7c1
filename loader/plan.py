"""The plan of one program (_native/launcher/plan.h): where each pooled
object lives, how each of its pages is mapped, the per-process fixups,
TLS, the glibc family to dlopen and the order of initialisers.

    build_plan(resolution, source, ...) -> bytes          a program
    build_dlopen_plan(resolution, new, source, first_index) -> bytes
    placements(objects, source) -> {index: PlacedImage}    the images used
    plan_stats(plan) -> per-object page counts (shared / private / anon)
    explain(plan) -> text for humans (`python -m loader.plan PROG --explain`)

Conventions the launcher relies on (beyond plan.h):
  * objects are the non-glibc objects planned, in load order; global
    index = first_index + position (the lease's earlier objects keep theirs);
  * init lists the libraries (never the main program, whose DT_INIT and
    init arrays __libc_start_main runs) in the order glibc runs them;
    finalisers run in the reverse order, the main program's first;
  * glibc function imports that pooled code calls or points at go through
    the source's stub region (loader/stubs.py): the plan's slot records
    say which import fills which slot of the per-process slot table;
  * TLS: tls_tpoff is carved from the launcher's static reserve, the main
    program's block first (it ends at the thread pointer); tls_modid is
    1 + global index; in a dlopen plan tls_tpoff is 0 (dynamic TLS only);
  * fixups of one object are listed together; within an object in
    relocation order (COPY after the objects it copies from have been
    fixed, since objects are fixed in reverse load order).
"""
import os
from types import SimpleNamespace

from loader import planformat as pf
from loader.elf import DT, DF_1_NODELETE, PT_DYNAMIC, PT_GNU_EH_FRAME, PT_PHDR, PT_TLS
from loader.errors import ResolveError
from loader.scope import Scope
from loader.fixups import Imports, libc_values, object_fixups
from loader.image import image_key, PAGE, PROT_EXEC, PROT_READ, PROT_WRITE, relro_range
from loader.initorder import init_order
from loader.interpose import NotPoolable, hosted_libraries, interpositions
from loader.segments import object_segments


def _missing_error(resolution):
    m = resolution.missing[0]
    name = m if isinstance(m, str) else getattr(m, "name", None) or (m[0] if isinstance(m, tuple) else str(m))
    return ResolveError(f"error while loading shared libraries: {name}: "
                        "cannot open shared object file: No such file or directory")


def _phdr_addr(elf, base):
    p = elf.segment(PT_PHDR)
    if p is not None:
        return base + p.vaddr
    for s in elf.loads:
        if s.offset <= elf.e_phoff < s.offset + s.filesz:
            return base + s.vaddr + (elf.e_phoff - s.offset)
    return 0


def _array(elf, base, tag, sztag):
    a = elf.dyn.get(DT[tag])
    if a is None:
        return 0, 0
    return base + a, elf.dyn.get(DT[sztag], 0) // 8


def assign_tls(objs, pooled, start=0):
    """({entry index: tpoff}, size, max align) with glibc's
    _dl_determine_tlsoffset (TLS variant II) over the pooled objects in
    load order, from `start` bytes already used."""
    offset, maxalign, out = start, 1, {}
    for k in pooled:
        tls = objs[k].elf.segment(PT_TLS)
        if tls is None or tls.memsz == 0 and tls.filesz == 0:
            continue
        align = max(tls.align, 1)
        firstbyte = (-tls.vaddr) & (align - 1)
        off = -(-(offset + tls.memsz - firstbyte) // align) * align + firstbyte
        out[k] = -off
        offset = off
        maxalign = max(maxalign, align)
    return out, offset, maxalign


def placements(objs, source):
    """{index in objs: PlacedImage} of the non-glibc objects, in load order.
    Identical files loaded as distinct objects get distinct images
    (instance 1, 2...).  Use it for the keys a lease holds."""
    placed, copies = {}, {}
    # a dlopen'ed plugin binds to its program (python's extension modules
    # to python's C API): its image is pre-relocated with the program too
    host = objs[0] if objs and getattr(objs[0], "kind", None) == "main" and not objs[0].is_glibc else None
    for k, o in enumerate(objs):
        if o.is_glibc:
            continue
        key = image_key(o.elf)
        n = copies.get(key, 0)
        copies[key] = n + 1
        h = host if k and getattr(o, "kind", None) == "dlopen" else None
        placed[k] = source.place(o, n, host=h) if n or h else source.place(o)
    return placed


def _placements(objs, source, first_index, planned, old_index=None):
    """Scope entries of every object, placements of the pooled ones and
    their global indices (load order among pooled objects, or `old_index`
    for the ones loaded before, where dlclose left holes; the `planned`
    ones numbered from first_index)."""
    placed = placements(objs, source)
    entries = [(o.elf, 0, True) if o.is_glibc else (o.elf, placed[k].base, False)
               for k, o in enumerate(objs)]
    old = [k for k in placed if k not in planned]
    gindex = {k: i for i, k in enumerate(old)} if old_index is None else dict(zip(old, old_index))
    for i, k in enumerate(k for k in sorted(planned) if k in placed):
        gindex[k] = first_index + i
    return entries, placed, gindex


def _env_bind_now(resolution):
    """LD_BIND_NOW of the environment the resolution was made with."""
    ctx = getattr(getattr(resolution, "state", None), "ctx", None)
    env = getattr(ctx, "env", None) or {}
    return bool(env.get("LD_BIND_NOW"))


def _text_in_pool(source, text_in_pool):
    """The mapping policy: None takes the source's (source.text_in_pool:
    the pool holds whole images, for clients that cannot see host files;
    a source without it keeps whole images but host clients map text from
    the files all the same)."""
    if text_in_pool is None:
        return bool(getattr(source, "text_in_pool", False))
    return text_in_pool


SANITIZER_INITS = ("__asan_init", "__tsan_init", "__msan_init", "__lsan_init", "__hwasan_init")


def _host_allocators(resolution):
    """Libraries that replace a function glibc calls (a malloc in a
    DT_NEEDED library) are left to ld.so like glibc's family: the launcher
    has ld.so preload them (by path) before glibc runs, and pooled code
    binds to them by name.  Marks them on the resolution, so that its later
    dlopen plans agree."""
    objs = resolution.objects
    main = 0 if objs and getattr(objs[0], "kind", "main") == "main" else -1
    pos = {id(o): k for k, o in enumerate(objs)}
    while True:                # ld.so loads their dependencies too: so may they
        scope = Scope.from_resolution(resolution)
        found = hosted_libraries(scope, main)
        if not found:
            return
        for name in SANITIZER_INITS:
            d = scope.lookup(name)
            if d is not None and not scope.is_glibc(d[0]) and scope.elf(d[0]).symbol(d[1]).shndx:
                # it would check and report the launcher's memory and maps
                raise NotPoolable(f"{objs[d[0]].path} is a sanitizer runtime: it cannot be pooled")
        queue = [objs[k] for k in found]
        while queue:
            o = queue.pop()
            if o is None or o.is_glibc or pos.get(id(o)) in (None, main):
                continue
            o.is_glibc = True
            o.hosted = True
            queue.extend(o.deps)


def _family_name(o):
    """What the launcher dlopens for a glibc-family object: its soname, or
    for a hosted library the path ld.so preloaded it by."""
    if getattr(o, "hosted", False):
        path = o.elf.path        # as ld.so built it (l_name), like a pooled object's
        return path if os.path.isabs(path) else os.path.abspath(path)
    return o.soname or o.path.rsplit("/", 1)[-1]


def build_plan(resolution, source, argv0=None, first_index=0, bind_now=False, lease=0,
               static_tls_used=0, with_stats=False, text_in_pool=None):
    """The plan of a program: every object of `resolution` (a
    loader.resolve.Resolution, main program first).  `text_in_pool`: map
    every page from the pool (True) or the pages identical to the file
    from the file (False); None: the source's policy."""
    objs = resolution.objects
    if resolution.missing:
        raise _missing_error(resolution)
    version_errors = getattr(resolution, "version_errors", None)
    if version_errors:
        # ld.so names the program by argv[0] ("required by ./prog")
        msg, main = version_errors[0], resolution.main.path
        if argv0 and msg.endswith(f"(required by {main})"):
            msg = msg[:-len(main) - 1] + argv0 + ")"
        if argv0 and msg.startswith(f"{main}: "):
            msg = argv0 + msg[len(main):]
        raise ResolveError(msg)
    bind_now = bind_now or _env_bind_now(resolution)
    _host_allocators(resolution)
    planned = set(range(len(objs)))
    entries, placed, gindex = _placements(objs, source, first_index, planned)
    pooled = [k for k in range(len(objs)) if k in placed]
    tls, tls_size, tls_align = assign_tls(objs, pooled, static_tls_used)
    order = [o.index if o.index >= 0 else objs.index(o) for o in init_order(objs)]
    main = 0 if objs and getattr(objs[0], "kind", "main") == "main" else None
    init = [k for k in order if k in placed and k != main]
    glibc = [k for k, o in enumerate(objs) if o.is_glibc]
    scope = Scope(entries)
    return _assemble(objs, source, scope, entries, placed, gindex, pooled, tls,
                     (tls_size, tls_align), init, glibc, first_index, bind_now, lease, with_stats,
                     text_in_pool=_text_in_pool(source, text_in_pool),
                     interposed=interpositions(scope), progname=argv0)


def build_dlopen_plan(resolution, new, source, first_index, bind_now=False, lease=0,
                      with_stats=False, text_in_pool=None, old_index=None, local_objs=(), deepbind=False):
    """The plan of a dlopen: `new` are the objects resolve_dlopen added to
    `resolution` (already appended to resolution.objects), the root first.
    They are relocated as glibc does: global scope (the objects loaded
    before), then the root's own breadth-first dependency list.  Their TLS
    is dynamic (tls_tpoff 0, tls_modid set); the launcher gives those that
    static TLS accesses target (TPOFF, TLSDESC fixups) a static block of
    its reserve at dlopen time, as glibc does from its surplus.
    `local_objs`: objects loaded before by dlopen(RTLD_LOCAL), which are not
    in the global scope (ids, or the objects).  `deepbind`: the dlopen was
    RTLD_DEEPBIND (the new objects search their own list first)."""
    objs = resolution.objects
    bind_now = bind_now or _env_bind_now(resolution)
    text_in_pool = _text_in_pool(source, text_in_pool)
    if not new:
        return _assemble(objs, source, None, [], {}, {}, [], {}, (0, 1), [], [], first_index,
                         bind_now, lease, with_stats, text_in_pool=text_in_pool)
    pos = {id(o): k for k, o in enumerate(objs)}
    planned = {pos[id(o)] for o in new}
    entries, placed, gindex = _placements(objs, source, first_index, planned, old_index)
    root = new[0]
    local, seen = [], set()
    queue = [root]
    while queue:                                  # the root's l_searchlist
        o = queue.pop(0)
        if o is None or id(o) in seen:
            continue
        seen.add(id(o))
        local.append(pos[id(o)])
        queue.extend(o.deps)
    hidden = {id(o) for o in local_objs}
    glob = [k for k in range(min(planned)) if id(objs[k]) not in hidden]
    scope = Scope(entries, global_count=glob, local_scopes={k: local for k in planned},
                  deepbind=planned if deepbind else ())
    pooled = [k for k in sorted(planned) if k in placed]
    order = [pos[id(o)] for o in init_order([objs[k] for k in local], force_first=False)]
    init = [k for k in order if k in planned and k in placed]
    glibc = [k for k in sorted(planned) if objs[k].is_glibc]
    return _assemble(objs, source, scope, entries, placed, gindex, pooled, {}, (0, 1), init, glibc,
                     first_index, bind_now, lease, with_stats, dynamic_tls=True,
                     text_in_pool=text_in_pool)


def _assemble(objs, source, scope, entries, placed, gindex, pooled, tls, tls_total, init, glibc,
              first_index, bind_now, lease, with_stats, dynamic_tls=False, text_in_pool=True,
              interposed=(), progname=None):
    data = pf.PlanData(first_index=first_index, lease=lease, pool_size=source.pool_size)
    strings = data.strings
    stubs = getattr(source, "stubs", None)
    ctx = SimpleNamespace(entries=entries, scope=scope, placed=placed, source=source,
                          global_index=gindex, imports=Imports(strings), bind_now=bind_now,
                          glibc_flags=bytes(1 if e[2] else 0 for e in entries),
                          stubs=stubs, slots={},
                          names=[progname if getattr(o, "kind", "") == "main" else getattr(o, "path", None)
                                 for o in objs])
    if stubs is not None:
        data.stubs = (stubs.addr, stubs.size, stubs.pool_off, stubs.slots_addr, stubs.slots_size)
    data.static_tls_size, data.static_tls_align = tls_total
    counts = {}
    for k in pooled:
        o, p = objs[k], placed[k]
        elf, base = o.elf, p.base
        fs = object_fixups(ctx, k)
        for x in interposed:
            if x.definer == k:
                imp = ctx.imports.add(x.name, x.version, 0)
                if x.copy:       # glibc wrote its own at start: the program's gets that value
                    fs.add(x.addr, pf.FIX_COPY, imp, x.size, width=x.size)
                else:            # writes nothing: no page of it need be private
                    fs.fixes.append((x.addr, pf.FIX_INTERPOSE, imp, x.size, 0))
                    fs.counts["INTERPOSE"] += 1
        counts[gindex[k]] = fs
        segs = object_segments(elf, p, fs.pages, from_file=not text_in_pool)
        rec = {"l_addr": base, "map_start": p.map_start, "map_end": p.map_end,
               "phdr": _phdr_addr(elf, base), "phnum": elf.e_phnum,
               # the file the launcher maps SEG_FILE pages from must be this one
               "file_dev": elf.st_dev, "file_ino": elf.st_ino, "file_size": elf.size,
               "file_mtime_ns": elf.st_mtime_ns,
               "seg_first": len(data.segments), "seg_count": len(segs),
               "fix_first": len(data.fixups), "fix_count": len(fs.fixes)}
        data.segments += segs
        data.fixups += fs.fixes
        dyn = elf.segment(PT_DYNAMIC)
        rec["l_ld"] = base + dyn.vaddr if dyn is not None else 0
        kind = getattr(o, "kind", "main" if k == 0 else "needed")
        flags = 0
        if kind == "main":
            flags |= pf.OBJ_MAIN
            data.main_obj = gindex[k]
            rec["entry"] = base + elf.e_entry
            rec["name"] = strings.add("")
        else:
            rec["name"] = strings.add(o.path)
        if kind == "preload":
            flags |= pf.OBJ_PRELOAD
        if elf.flags_1 & DF_1_NODELETE:
            flags |= pf.OBJ_NODELETE
        if elf.bind_now or bind_now:
            flags |= pf.OBJ_BIND_NOW
        rec["flags"] = flags
        # the file the launcher opens for LDP_SEG_FILE: absolute, because the
        # program may chdir before a dlopen; not normalised, since it is the
        # link map's l_name (dladdr, dlinfo's origin) and ld.so keeps the
        # path as it built it ("$ORIGIN/../lib/x.so")
        path = o.elf.path
        rec["path"] = strings.add(path if os.path.isabs(path) and kind != "main" else os.path.abspath(path))
        rec["init"] = base + elf.dyn[DT["INIT"]] if DT["INIT"] in elf.dyn else 0
        rec["fini"] = base + elf.dyn[DT["FINI"]] if DT["FINI"] in elf.dyn else 0
        rec["preinit_array"], rec["preinit_count"] = _array(elf, base, "PREINIT_ARRAY", "PREINIT_ARRAYSZ")
        rec["init_array"], rec["init_count"] = _array(elf, base, "INIT_ARRAY", "INIT_ARRAYSZ")
        rec["fini_array"], rec["fini_count"] = _array(elf, base, "FINI_ARRAY", "FINI_ARRAYSZ")
        t = elf.segment(PT_TLS)
        if k in tls or (dynamic_tls and t is not None and (t.memsz or t.filesz)):
            rec.update(tls_image=base + t.vaddr, tls_filesz=t.filesz, tls_memsz=t.memsz,
                       tls_align=max(t.align, 1), tls_tpoff=tls.get(k, 0), tls_modid=1 + gindex[k])
        rec["relro_start"], rec["relro_end"] = relro_range(elf, base)
        eh = elf.segment(PT_GNU_EH_FRAME)
        rec["eh_frame_hdr"] = base + eh.vaddr if eh is not None else 0
        data.objects.append(rec)
    libc = next((e for e, _, g in entries if g and e.soname == "libc.so.6"), None)
    if libc is not None:
        data.libc_build_id = libc_values(ctx.imports, libc)
    data.imports = ctx.imports.rows
    data.slots = [(k, imp, g, flags) for k, (imp, g, flags) in sorted(ctx.slots.items())]
    data.init = [gindex[k] for k in init]
    data.glibc = [strings.add(_family_name(objs[k])) for k in glibc
                  if not (objs[k].soname or "").startswith("ld-linux")]
    blob = pf.pack(data)
    return (blob, counts) if with_stats else blob


def plan_stats(plan):
    """[{index, path, shared, private, anon, file, fixups}] pages per object, and totals."""
    p = pf.unpack(plan) if isinstance(plan, (bytes, bytearray, memoryview)) else plan
    rows = []
    for i, o in enumerate(p.objects):
        c = {"index": p.hdr["first_index"] + i, "path": p.string(o["path"]),
             "shared": 0, "private": 0, "anon": 0, "file": 0, "fixups": o["fix_count"]}
        for addr, length, off, prot, kind in p.segments[o["seg_first"]:o["seg_first"] + o["seg_count"]]:
            if prot or kind != pf.SEG_ANON:
                c[pf.SEG_NAMES[kind]] += length // PAGE
        rows.append(c)
    total = {k: sum(r[k] for r in rows) for k in ("shared", "private", "anon", "file", "fixups")}
    return rows, total


def explain(plan):
    p = pf.unpack(plan)
    h = p.hdr
    out = [f"plan: {h['nobj']} objects, {h['nseg']} segments, {h['nfix']} fixups, "
           f"{h['nimport']} imports, static TLS {h['static_tls_size']} bytes (align {h['static_tls_align']}), "
           f"pool {h['pool_size']:#x}, first_index {h['first_index']}",
           "glibc: " + " ".join(p.string(g) for g in p.glibc),
           "init: " + " ".join(str(i) for i in p.init)]
    rows, total = plan_stats(p)
    for i, o in enumerate(p.objects):
        r = rows[i]
        out.append(f"[{r['index']}] {p.string(o['path'])}  l_addr={o['l_addr']:#x} "
                   f"range={o['map_start']:#x}-{o['map_end']:#x} pages shared={r['shared']} "
                   f"private={r['private']} anon={r['anon']} file={r['file']} fixups={o['fix_count']}"
                   + (f" tls(tpoff={o['tls_tpoff']}, modid={o['tls_modid']})" if o["tls_modid"] else ""))
        for addr, length, off, prot, kind in p.segments[o["seg_first"]:o["seg_first"] + o["seg_count"]]:
            pr = ("r" if prot & PROT_READ else "-") + ("w" if prot & PROT_WRITE else "-") + ("x" if prot & PROT_EXEC else "-")
            out.append(f"    {addr:#x}-{addr + length:#x} {pr} {pf.SEG_NAMES[kind]}"
                       + (f" file+{off:#x}" if kind == pf.SEG_FILE else
                          f" pool+{off:#x}" if kind != pf.SEG_ANON else ""))
    if h["stubs_addr"]:
        out.append(f"stubs {h['stubs_addr']:#x}+{h['stubs_size']:#x} pool+{h['stubs_pool_off']:#x}, "
                   f"slots {h['slots_addr']:#x}+{h['slots_size']:#x}: {h['nslot']} filled")
        for k, imp, g, flags in p.slots:
            out.append(f"  slot {k}: import {imp} (first user [{g}])" + (" bind-now" if flags & pf.SLOT_BIND_NOW else ""))
    if h["libc_build_id_len"]:
        out.append(f"libc build-id {h['libc_build_id'].hex()}")
    for i, ((name, ver, flags, _), value) in enumerate(zip(p.imports, p.import_values)):
        out.append(f"  import {i}: {p.string(name)}" + (f"@{p.string(ver)}" if ver != pf.NONE else "")
                   + (" weak" if flags & pf.IMP_WEAK else "") + (" func" if flags & pf.IMP_FUNC else "")
                   + (" tls" if flags & pf.IMP_TLS else "")
                   + (f" libc+{value:#x}" if flags & pf.IMP_LIBC else "") + (" ifunc" if flags & pf.IMP_IFUNC else ""))
    out.append(f"total pages: shared={total['shared']} private={total['private']} anon={total['anon']} "
               f"file={total['file']}")
    return "\n".join(out)


def main(argv=None):
    """Debug entry point: `python -m loader.plan PROG -o PLAN --pool-file FILE`
    writes a plan and the private pool it refers to, for
    `ldpool-exec --plan PLAN --pool FILE PROG ARGS...`."""
    import argparse
    import os
    import sys
    from loader.errors import LdpoolError
    ap = argparse.ArgumentParser(prog="python -m loader.plan", description=main.__doc__.split("\n")[0])
    ap.add_argument("program")
    ap.add_argument("-o", "--output", help="plan file to write")
    ap.add_argument("--pool-file", help="pool file to create (e.g. /dev/shm/ldpool-debug)")
    ap.add_argument("--pool-size", type=lambda s: int(s, 0), default=1 << 30)
    ap.add_argument("--explain", action="store_true", help="print the plan")
    args = ap.parse_args(argv)
    from loader.localpool import LocalPool
    from loader.resolve import resolve_program
    try:
        res = resolve_program(args.program, env=dict(os.environ), cwd=os.getcwd())
        with LocalPool(args.pool_file, size=args.pool_size) as pool:
            blob = build_plan(res, pool, argv0=args.program,
                              bind_now=bool(os.environ.get("LD_BIND_NOW")))
        if args.output:
            with open(args.output, "wb") as f:
                f.write(blob)
        if args.explain or not args.output:
            print(explain(blob))
    except LdpoolError as e:
        print(f"ldpool: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
