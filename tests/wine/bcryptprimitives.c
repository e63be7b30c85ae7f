/*
 * For tests/wine.rs only, never shipped: Wine 8 (Debian 12's) lacks
 * bcryptprimitives.dll, whose ProcessPrng the Rust standard library calls
 * for random bytes on Windows 10 and later. This stand-in gives Wine's
 * RtlGenRandom instead. The test builds it with mingw-w64's gcc into its
 * own Wine prefix.
 */
#include <windows.h>
#include <ntsecapi.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
