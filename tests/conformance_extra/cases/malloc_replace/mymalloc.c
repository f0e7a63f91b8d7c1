#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
static char *arena, *top; static size_t left;
static unsigned long calls;
unsigned long mymalloc_calls(void) { return calls; }
static void *bump(size_t n, size_t align)
{
    if (!arena) { arena = top = mmap(0, 64 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); left = 64 << 20; }
    size_t pad = (align - ((size_t)(top + 16) & (align - 1))) & (align - 1);
    if (n + 16 + pad > left) return 0;
    char *p = top + 16 + pad; ((size_t *)p)[-1] = n;
    top = p + n; left -= n + 16 + pad;
    calls++;
    return p;
}
void *malloc(size_t n) { return bump(n, 16); }
void free(void *p) { (void)p; }
void *calloc(size_t a, size_t b) { void *p = bump(a * b, 16); if (p) memset(p, 0, a * b); return p; }
void *realloc(void *o, size_t n) { void *p = bump(n, 16); if (p && o) { size_t on = ((size_t *)o)[-1]; memcpy(p, o, on < n ? on : n); } return p; }
int posix_memalign(void **r, size_t al, size_t n) { *r = bump(n, al < 16 ? 16 : al); return *r ? 0 : 12; }
void *aligned_alloc(size_t al, size_t n) { return bump(n, al < 16 ? 16 : al); }
void *memalign(size_t al, size_t n) { return bump(n, al < 16 ? 16 : al); }
size_t malloc_usable_size(void *p) { return p ? ((size_t *)p)[-1] : 0; }
