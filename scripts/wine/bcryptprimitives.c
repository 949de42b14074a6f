/*
 * Test scaffolding for Wine 8 only: a bcryptprimitives.dll that exports ProcessPrng.
 *
 * Rust's standard library (1.78 and later) takes its random bytes from
 * bcryptprimitives.dll!ProcessPrng, which Windows 10 and 11 have and Wine 8 does not, so every
 * Rust program fails to start under Wine 8. scripts/windows-setup builds this file with MinGW
 * into the test Wine prefix's system32 when Wine has no such DLL of its own. It is never
 * shipped: real Windows has the function.
 *
 * ProcessPrng fills the buffer from RtlGenRandom (advapi32!SystemFunction036), which takes a
 * ULONG length, so in chunks below 4 GiB.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
