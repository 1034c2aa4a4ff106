/*
 * Test fixture of the Wine smoke test (test-scripts/driver-smoke.sh) only, never shipped.
 *
 * Rust's standard library for Windows imports ProcessPrng from bcryptprimitives.dll, which Windows 10
 * and later provide. Wine 8 has no bcryptprimitives.dll, so kepochctl.exe would not start under it.
 * This stand-in exports ProcessPrng and fills the buffer with RtlGenRandom (advapi32's
 * SystemFunction036), which Wine implements.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
