#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <link.h>
#include <dlfcn.h>
#include <elf.h>
#include <stdlib.h>
extern int lib_obj[]; int lib_func(int);
int exe_func(int x) { return x; }
static const char *base(const char *p) { const char *s = p ? strrchr(p, '/') : 0; return s ? s + 1 : p ? p : "(null)"; }
static void show(const char *what, void *addr)
{
    Dl_info i; const ElfW(Sym) *sym = 0; struct link_map *lm = 0;
    int r = dladdr(addr, &i);
    printf("%s: dladdr=%d file=%s sym=%s exact=%s", what, r != 0, base(i.dli_fname), i.dli_sname ? i.dli_sname : "(null)", i.dli_saddr == addr ? "yes" : "no");
    Dl_info j; dladdr1(addr, &j, (void **)&sym, RTLD_DL_SYMENT);
    printf(" syment_size=%lu", sym ? (unsigned long)sym->st_size : 0UL);
    dladdr1(addr, &j, (void **)&lm, RTLD_DL_LINKMAP);
    printf(" linkmap_base_matches=%s\n", lm && (void *)lm->l_addr == j.dli_fbase ? "yes" : lm && lm->l_addr == 0 ? "nonpie" : "no");
}
int main(void)
{
    show("exe_func", (void *)exe_func);
    show("exe_func+1", (char *)exe_func + 1);
    show("lib_func", (void *)lib_func);
    show("lib_obj", (void *)lib_obj);
    show("lib_obj[3]", (void *)&lib_obj[3]);
    show("puts", (void *)puts);
    void *h = dlopen("libplug.so", RTLD_NOW);
    show("plug_func", dlsym(h, "plug_func"));
    struct link_map *lm; char origin[4096], cwd[4096];
    dlinfo(h, RTLD_DI_LINKMAP, &lm);
    printf("linkmap name: %s\n", base(lm->l_name));
    dlinfo(h, RTLD_DI_ORIGIN, origin);
    printf("origin ends with /sub: %s\n", strlen(origin) > 4 && !strcmp(origin + strlen(origin) - 4, "/sub") ? "yes" : "no");
    void *self = dlopen(0, RTLD_NOW); Dl_serinfo sz; dlinfo(self, RTLD_DI_SERINFOSIZE, &sz);
    printf("serinfo count >= 2: %s\n", sz.dls_cnt >= 2 ? "yes" : "no");
    Dl_serinfo *si = malloc(sz.dls_size); dlinfo(self, RTLD_DI_SERINFOSIZE, si); dlinfo(self, RTLD_DI_SERINFO, si);
    int sub = 0; for (unsigned k = 0; k < si->dls_cnt; k++) if (strstr(si->dls_serpath[k].dls_name, "/sub")) sub++;
    printf("serinfo lists the RUNPATH sub dir: %d\n", sub);
    for (unsigned k = 0; k < si->dls_cnt; k++) {
        /* $ORIGIN is "<B>/." under an explicit "ld.so ./exe": drop "/." components */
        char d[4096], *q; snprintf(d, sizeof d, "%s", si->dls_serpath[k].dls_name);
        while ((q = strstr(d, "/./"))) memmove(q, q + 2, strlen(q + 2) + 1);
        size_t l = strlen(d); if (l > 2 && !strcmp(d + l - 2, "/.")) d[l - 2] = 0;
        printf("  search dir %s flags %#x\n", d, si->dls_serpath[k].dls_flags);
    }
    return 0;
}
