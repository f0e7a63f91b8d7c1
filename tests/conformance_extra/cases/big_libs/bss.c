char huge[256 << 20];
long bss_check(void)
{
    long z = 0;
    for (long i = 0; i < (long)sizeof huge; i += 1 << 20) z += huge[i];
    huge[0] = 1; huge[sizeof huge - 1] = 2;
    return z;
}
