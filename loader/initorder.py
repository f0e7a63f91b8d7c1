"""The order in which glibc 2.36 runs initialisers (and, reversed, the
finalisers of the initial objects): elf/dl-sort-maps.c with
glibc.rtld.dynamic_sort=2, the depth-first sort.

_dl_map_object_deps gives every object an l_initfini list (itself, then
its DT_NEEDED objects in order) and sorts the main map's list with
_dl_sort_maps_dfs: depth-first from the LAST object in load order back to
the first, each finished object pushed at the front of the result; the
main program never entered as a dependency and forced to the front.
_dl_init then calls initialisers from the back of that list.
"""


def init_order(objects, force_first=True):
    """`objects` in load order (main first), each with .deps (loaded
    objects per DT_NEEDED, None for missing ones).  Returns the objects in
    the order their initialisers run: dependencies first, main last.
    force_first=False for a dlopen'ed root (it takes part in the sort)."""
    if not objects:
        return []
    main = objects[0]
    visited = set()
    finished = []                       # postorder == the order _dl_init runs

    def dfs(start):
        # iterative form of dfs_traversal (deep chains would overflow the stack)
        stack = [(start, iter(start.deps))]
        visited.add(id(start))
        while stack:
            node, it = stack[-1]
            for dep in it:
                if dep is None or id(dep) in visited or (force_first and dep is main):
                    continue
                visited.add(id(dep))
                stack.append((dep, iter(dep.deps)))
                break
            else:
                stack.pop()
                finished.append(node)

    for obj in reversed(objects):
        if id(obj) not in visited:
            dfs(obj)
    if force_first and finished[-1] is not main:
        finished.remove(main)
        finished.append(main)
    return finished
