/*
 * ebpf_epoch.h: eBPF for Windows' epoch API (libs/runtime/ebpf_epoch.h) on kepoch, as a drop-in:
 * the same function names, parameter and return types, and contract, implemented by kepoch's
 * static library over one driver-wide kepoch domain. c/README.md has the table of every function
 * and where kepoch's behaviour differs.
 *
 * The one addition: call kepoch_ebpf_epoch_set_driver_object(DriverObject) before
 * ebpf_epoch_initiate (the work items belong to the driver object).
 *
 * Types this header defines when the including code has not: LIST_ENTRY and KIRQL (from the WDK's
 * headers when included first), and ebpf_result_t with eBPF's numbering (define
 * KEPOCH_EBPF_HAVE_RESULT_T when eBPF's own ebpf_result.h is included instead).
 *
 * Misuse fails fast as kepoch.h documents (bug check 0xE2 with KEPOCH_BUGCHECK_MARKER).
 */
#pragma once

#include "kepoch.h"

#if !defined(_WINNT_) && !defined(_NTDEF_)
typedef struct _LIST_ENTRY
{
    struct _LIST_ENTRY* Flink;
    struct _LIST_ENTRY* Blink;
} LIST_ENTRY, *PLIST_ENTRY;
#endif
#if !defined(_WDMDDK_) && !defined(_NTDDK_) && !defined(KEPOCH_HAVE_KIRQL)
typedef unsigned char KIRQL;
#endif

#ifdef __cplusplus
extern "C"
{
#endif

#if !defined(KEPOCH_EBPF_HAVE_RESULT_T)
    /** The ebpf_result_t values these functions return (eBPF for Windows' numbering). */
    typedef enum ebpf_result
    {
        EBPF_SUCCESS = 0,
        EBPF_VERIFICATION_FAILED = 1,
        EBPF_JIT_COMPILATION_FAILED = 2,
        EBPF_PROGRAM_LOAD_FAILED = 3,
        EBPF_INVALID_FD = 4,
        EBPF_INVALID_OBJECT = 5,
        EBPF_INVALID_ARGUMENT = 6,
        EBPF_OBJECT_NOT_FOUND = 7,
        EBPF_OBJECT_ALREADY_EXISTS = 8,
        EBPF_FILE_NOT_FOUND = 9,
        EBPF_ALREADY_PINNED = 10,
        EBPF_NOT_PINNED = 11,
        EBPF_NO_MEMORY = 12,
        EBPF_PROGRAM_TOO_LARGE = 13,
        EBPF_RPC_EXCEPTION = 14,
        EBPF_ALREADY_INITIALIZED = 15,
    } ebpf_result_t;
#endif

    typedef struct _ebpf_epoch_work_item ebpf_epoch_work_item_t;

    /** One per nesting level, in place from enter to exit (kepoch keeps its token in it). */
    typedef struct _ebpf_epoch_state
    {
        LIST_ENTRY epoch_list_entry; /* kepoch: the token and the entered check */
        uint64_t epoch;              /* kepoch: the token */
        uint32_t cpu_id;             /* the processor index at the enter */
        KIRQL irql_at_enter;         /* the IRQL at the enter */
    } ebpf_epoch_state_t;

    /** kepoch's addition: the driver object the work items belong to; before ebpf_epoch_initiate. */
    void
    kepoch_ebpf_epoch_set_driver_object(_In_opt_ struct _DRIVER_OBJECT* driver_object);

    /**
     * Creates the driver-wide domain. EBPF_SUCCESS; EBPF_NO_MEMORY when it cannot be created;
     * EBPF_INVALID_OBJECT without a driver object; EBPF_ALREADY_INITIALIZED. PASSIVE_LEVEL.
     */
    _Must_inspect_result_ ebpf_result_t
    ebpf_epoch_initiate(void);

    /** Destroys it: scheduled work items run, everything freed is released. PASSIVE_LEVEL. */
    void
    ebpf_epoch_terminate(void);

    /** eBPF's hot-add hook; kepoch prepares hot-added processors itself: only checks cpu_id. */
    _Must_inspect_result_ ebpf_result_t
    ebpf_epoch_create_cpu_work_queue(uint32_t cpu_id);

    /** Called prior to touching memory with lifetime under epoch control. IRQL <= DISPATCH_LEVEL. */
    _IRQL_requires_same_ void
    ebpf_epoch_enter(_Out_ ebpf_epoch_state_t* epoch_state);

    /** Called after touching memory with lifetime under epoch control, at the IRQL of the enter. */
    _IRQL_requires_same_ void
    ebpf_epoch_exit(_In_ ebpf_epoch_state_t* epoch_state);

    /** Zeroed memory under epoch control, or NULL. */
    _Must_inspect_result_ _Ret_writes_maybenull_(size) void*
    ebpf_epoch_allocate(size_t size);

    /** Zeroed memory starting on a cache line, tagged tag, or NULL. */
    _Must_inspect_result_ _Ret_writes_maybenull_(size) void*
    ebpf_epoch_allocate_cache_aligned_with_tag(size_t size, uint32_t tag);

    /** Zeroed memory tagged tag, or NULL. */
    __drv_allocatesMem(Mem) _Must_inspect_result_ _Ret_writes_maybenull_(size) void*
    ebpf_epoch_allocate_with_tag(size_t size, uint32_t tag);

    /** Frees memory once the current epoch ends; NULL is ignored; a double free fails fast. */
    void
    ebpf_epoch_free(_Frees_ptr_opt_ void* memory);

    /** ebpf_epoch_free for ebpf_epoch_allocate_cache_aligned_with_tag's memory. */
    void
    ebpf_epoch_free_cache_aligned(_Frees_ptr_opt_ void* memory);

    /**
     * Waits for the current epoch to end (and the work items scheduled before to run). PASSIVE_LEVEL,
     * outside any epoch, never from a work item's callback (the wait would include its own run).
     */
    _IRQL_requires_max_(PASSIVE_LEVEL) void
    ebpf_epoch_synchronize(void);

/* eBPF's callback type returns `const void`, a qualifier compilers warn about: kept, warning silenced
 * here only. GNU C compilers (gcc, clang, mingw-w64) also take a plain `void (*)(void*)` without a
 * cast (clang refuses the conversion otherwise): the parameter is a transparent union of the two,
 * passed exactly like eBPF's function pointer. */
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-qualifiers"
#endif
#if !defined(__cplusplus) && (defined(__GNUC__) || defined(__clang__))
    typedef union
    {
        const void (*ebpf_callback)(_Inout_ void* context);
        void (*plain_callback)(_Inout_ void* context);
    } __attribute__((transparent_union)) kepoch_ebpf_epoch_callback_t;
#else
    typedef const void (*kepoch_ebpf_epoch_callback_t)(_Inout_ void* context);
#endif
    /**
     * A work item that runs callback(callback_context) when the current epoch ends (once scheduled),
     * at PASSIVE_LEVEL outside any epoch. Must be scheduled or cancelled. NULL when out of memory.
     * (eBPF's parameter type: `const void (*callback)(void* context)`.)
     */
    ebpf_epoch_work_item_t*
    ebpf_epoch_allocate_work_item(_In_ const void* callback_context, _In_ kepoch_ebpf_epoch_callback_t callback);
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC diagnostic pop
#endif

    /** Schedules the work item to run when the current epoch ends; it is freed after it ran. */
    void
    ebpf_epoch_schedule_work_item(_Inout_ ebpf_epoch_work_item_t* work_item);

    /** Cancels (and frees) a work item that was not scheduled. NULL is ignored. */
    void
    ebpf_epoch_cancel_work_item(_In_opt_ _Frees_ptr_opt_ ebpf_epoch_work_item_t* work_item);

    /** Whether nothing freed on processor cpu_id waits to be released. */
    bool
    ebpf_epoch_is_free_list_empty(uint32_t cpu_id);

#ifdef __cplusplus
}
#endif
