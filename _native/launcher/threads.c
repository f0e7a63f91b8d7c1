/* The process's threads, as glibc's own __pthread_init_static_tls reaches
 * them when a dlopen'ed object takes static TLS: nptl's lists of thread
 * descriptors in _rtld_global (dl_stack_used: stacks nptl allocated;
 * dl_stack_user: the main thread and user-supplied stacks), walked under
 * their lock.  The offsets come from the descriptors libc exports for
 * libthread_db (_thread_db_*: {size in bits, count, offset}), as gdb finds
 * them; the lock (dl_stack_cache_lock) has none, so its place is derived
 * from the layout of glibc 2.36's struct rtld_global (checked: the two
 * lists adjacent, as that layout has them) and used only on that version.
 * On x86-64 a thread's descriptor is at its thread pointer. */
#include "ldp.h"
#include <gnu/libc-version.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>

struct list { struct list *next, *prev; };

static int field(const char *name, uint32_t *off)
{
    const uint32_t *d = dlvsym(RTLD_DEFAULT, name, "GLIBC_PRIVATE");
    if (!d) return -1;
    *off = d[2];
    return 0;
}

static void lll_lock(int *f)
{
    int zero = 0;
    if (__atomic_compare_exchange_n(f, &zero, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return;
    while (__atomic_exchange_n(f, 2, __ATOMIC_ACQUIRE) != 0) syscall(SYS_futex, f, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
}

static void lll_unlock(int *f)
{
    if (__atomic_exchange_n(f, 0, __ATOMIC_RELEASE) > 1) syscall(SYS_futex, f, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

int ldp_each_thread(void (*fn)(uint64_t tp, void *arg), void *arg)
{
    static int ready = 0;                     /* 1: found, -1: not available */
    static char *rtld;
    static uint32_t used, user, list;
    if (!ready) {
        ready = -1;
        rtld = dlvsym(RTLD_DEFAULT, "_rtld_global", "GLIBC_PRIVATE");
        if (rtld && strcmp(gnu_get_libc_version(), "2.36") == 0 &&
            field("_thread_db_rtld_global__dl_stack_used", &used) == 0 &&
            field("_thread_db_rtld_global__dl_stack_user", &user) == 0 &&
            field("_thread_db_pthread_list", &list) == 0 && user == used + sizeof(struct list))
            ready = 1;
    }
    if (ready < 0) return -1;
    /* dl_stack_user, dl_stack_cache, dl_stack_cache_actsize, dl_in_flight_stack, dl_stack_cache_lock */
    int *lock = (int *)(rtld + user + 2 * sizeof(struct list) + sizeof(size_t) + sizeof(uintptr_t));
    lll_lock(lock);
    uint32_t heads[2] = {used, user};
    for (int k = 0; k < 2; k++) {
        struct list *h = (struct list *)(rtld + heads[k]);
        for (struct list *l = h->next; l && l != h; l = l->next) fn((uint64_t)l - list, arg);
    }
    lll_unlock(lock);
    return 0;
}
