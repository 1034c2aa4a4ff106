/*
 * sample_nt.h: the few NT kernel declarations the C sample driver uses besides ebpf_epoch.h, so that
 * the same source builds with mingw-w64 for Windows (no WDK needed) and with the host's C compiler
 * for kepoch's emulated kernel (KEPOCH_SAMPLE_EMULATED). Layouts and signatures are those of the
 * WDK's wdm.h for x64.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

typedef int32_t NTSTATUS;
typedef void* HANDLE;
typedef unsigned char BOOLEAN;
typedef uint8_t SAMPLE_KIRQL;

#define STATUS_SUCCESS ((NTSTATUS)0)
#define STATUS_INSUFFICIENT_RESOURCES ((NTSTATUS)0xC000009A)
#define STATUS_UNSUCCESSFUL ((NTSTATUS)0xC0000001)
#define NT_SUCCESS(status) ((NTSTATUS)(status) >= 0)
#define THREAD_ALL_ACCESS 0x001FFFFFu
#define OBJ_KERNEL_HANDLE 0x00000200u
#define ALL_PROCESSOR_GROUPS 0xFFFFu
#define DPFLTR_IHVDRIVER_ID 77u
#define DPFLTR_ERROR_LEVEL 0u
#define DPFLTR_INFO_LEVEL 3u
#define SAMPLE_DISPATCH_LEVEL 2

typedef struct _UNICODE_STRING
{
    uint16_t Length;
    uint16_t MaximumLength;
    uint16_t* Buffer;
} UNICODE_STRING;

typedef struct _OBJECT_ATTRIBUTES
{
    uint32_t Length;
    HANDLE RootDirectory;
    UNICODE_STRING* ObjectName;
    uint32_t Attributes;
    void* SecurityDescriptor;
    void* SecurityQualityOfService;
} OBJECT_ATTRIBUTES;

struct _DRIVER_OBJECT
{
    int16_t Type;
    int16_t Size;
    void* DeviceObject;
    uint32_t Flags;
    void* DriverStart;
    uint32_t DriverSize;
    void* DriverSection;
    void* DriverExtension;
    UNICODE_STRING DriverName;
    UNICODE_STRING* HardwareDatabase;
    void* FastIoDispatch;
    void* DriverInit;
    void* DriverStartIo;
    void (*DriverUnload)(struct _DRIVER_OBJECT* driver);
    void* MajorFunction[28];
};

_Static_assert(offsetof(struct _DRIVER_OBJECT, DriverUnload) == 0x68, "DRIVER_OBJECT.DriverUnload at 0x68 (x64)");
_Static_assert(sizeof(OBJECT_ATTRIBUTES) == 48, "OBJECT_ATTRIBUTES is 48 bytes (x64)");

typedef void (*KSTART_ROUTINE)(void* context);

NTSTATUS
PsCreateSystemThread(
    HANDLE* thread,
    uint32_t access,
    OBJECT_ATTRIBUTES* attributes,
    HANDLE process,
    void* client_id,
    KSTART_ROUTINE routine,
    void* context);
NTSTATUS
PsTerminateSystemThread(NTSTATUS status);
NTSTATUS
ZwWaitForSingleObject(HANDLE handle, BOOLEAN alertable, int64_t* timeout);
NTSTATUS
ZwClose(HANDLE handle);
NTSTATUS
KeDelayExecutionThread(char mode, BOOLEAN alertable, int64_t* interval);
uint32_t
KeQueryActiveProcessorCountEx(uint16_t group);

#if defined(KEPOCH_SAMPLE_EMULATED)
/* The emulated kernel's DbgPrintEx takes exactly one "%s" argument; it raises and lowers IRQL
 * through routines (a WDK build inlines them on CR8). */
uint32_t
DbgPrintEx(uint32_t component, uint32_t level, const char* format, const char* text);
SAMPLE_KIRQL
KfRaiseIrql(SAMPLE_KIRQL irql);
void
KeLowerIrql(SAMPLE_KIRQL irql);
static inline SAMPLE_KIRQL
sample_raise_to_dispatch(void)
{
    return KfRaiseIrql(SAMPLE_DISPATCH_LEVEL);
}
static inline void
sample_lower(SAMPLE_KIRQL previous)
{
    KeLowerIrql(previous);
}
#else
uint32_t
DbgPrintEx(uint32_t component, uint32_t level, const char* format, ...);
/* KeRaiseIrql/KeLowerIrql on x64 write CR8, as wdm.h's inline versions do. */
static inline SAMPLE_KIRQL
sample_raise_to_dispatch(void)
{
    uint64_t previous;
    __asm__ __volatile__("movq %%cr8, %0" : "=r"(previous));
    __asm__ __volatile__("movq %0, %%cr8" : : "r"((uint64_t)SAMPLE_DISPATCH_LEVEL) : "memory");
    return (SAMPLE_KIRQL)previous;
}
static inline void
sample_lower(SAMPLE_KIRQL previous)
{
    __asm__ __volatile__("movq %0, %%cr8" : : "r"((uint64_t)previous) : "memory");
}
#endif
