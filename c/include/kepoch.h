/*
 * kepoch.h: kepoch's C API for Windows kernel drivers (x64). Per-CPU epoch-based reclamation that
 * survives processor hot-add: readers enter and exit epochs at any IRQL up to DISPATCH_LEVEL, writers
 * free what they unlinked and it is released once every reader that could still see it has exited.
 * Blocks carry the pool tag they were allocated with (0, or a tag NT would refuse: the domain's).
 *
 * Link the static library `kepoch_c.lib` (bash c/build.sh) and ntoskrnl.lib/hal.lib. Compiles as
 * C11 and C++17 with or without the WDK's headers (include the WDK's first when you use them).
 *
 * Fail-fast: misuse that kepoch can see is never silent. Functions returning kepoch_status_t return
 * STATUS_INVALID_PARAMETER (0xC000000D) for bad arguments other than an invalid domain handle.
 * Everything else logs a line naming the function and the misuse (DbgPrintEx, component IHVDRIVER,
 * error level; not above device IRQL) and bug checks
 * MANUALLY_INITIATED_CRASH (0xE2) with:
 *   Parameter 1: KEPOCH_BUGCHECK_MARKER ('KEPC', 0x4350454B)
 *   Parameter 2: the function, KEPOCH_FUNCTION_*
 *   Parameter 3: the misuse, KEPOCH_MISUSE_*
 *   Parameter 4: the address involved (state, block, work item or domain; 0 for NULL)
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#if !defined(__cplusplus)
#include <stdbool.h>
#endif

#include "kepoch_sal.h"

/* The WDK's DRIVER_OBJECT (kepoch only passes the pointer on). */
struct _DRIVER_OBJECT;

#ifdef __cplusplus
extern "C"
{
#endif

    /* ---- fail-fast codes (bug check 0xE2 parameters) ---- */
#define KEPOCH_BUGCHECK_CODE 0xE2u
#define KEPOCH_BUGCHECK_MARKER 0x4350454Bu

#define KEPOCH_FUNCTION_ENTER 1u              /* ebpf_epoch_enter, kepoch_enter */
#define KEPOCH_FUNCTION_EXIT 2u               /* ebpf_epoch_exit, kepoch_exit */
#define KEPOCH_FUNCTION_FREE 3u               /* ebpf_epoch_free, kepoch_free */
#define KEPOCH_FUNCTION_FREE_CACHE_ALIGNED 4u /* ebpf_epoch_free_cache_aligned, kepoch_free_cache_aligned */
#define KEPOCH_FUNCTION_SCHEDULE_WORK_ITEM 5u /* ebpf_epoch_schedule_work_item, kepoch_work_item_schedule */
#define KEPOCH_FUNCTION_CANCEL_WORK_ITEM 6u   /* ebpf_epoch_cancel_work_item, kepoch_work_item_cancel */
#define KEPOCH_FUNCTION_SYNCHRONIZE 7u        /* ebpf_epoch_synchronize, kepoch_synchronize */
#define KEPOCH_FUNCTION_TERMINATE 8u          /* ebpf_epoch_terminate, kepoch_domain_destroy */
#define KEPOCH_FUNCTION_ALLOCATE 9u           /* ebpf_epoch_allocate*, kepoch_allocate* */
#define KEPOCH_FUNCTION_ALLOCATE_WORK_ITEM 10u /* ebpf_epoch_allocate_work_item, kepoch_work_item_allocate */
#define KEPOCH_FUNCTION_IS_FREE_LIST_EMPTY 11u /* ebpf_epoch_is_free_list_empty */
#define KEPOCH_FUNCTION_OTHER 12u             /* kepoch_flush, kepoch_stats, ebpf_epoch_create_cpu_work_queue, ebpf_epoch_initiate */

#define KEPOCH_MISUSE_NULL 1u                   /* a required pointer is NULL */
#define KEPOCH_MISUSE_STATE_IN_USE 2u           /* a state entered again before its exit */
#define KEPOCH_MISUSE_STATE_NOT_ENTERED 3u      /* an exit of a state not entered, or exited already */
#define KEPOCH_MISUSE_IRQL_CHANGED 4u           /* exit at another IRQL than the enter */
#define KEPOCH_MISUSE_MIGRATED_AT_DISPATCH 5u   /* entered at DISPATCH_LEVEL, exited on another processor */
#define KEPOCH_MISUSE_IRQL_TOO_HIGH 6u          /* called above the IRQL the function allows */
#define KEPOCH_MISUSE_DOUBLE_FREE 7u            /* a block freed twice */
#define KEPOCH_MISUSE_NOT_KEPOCH_MEMORY 8u      /* a pointer kepoch did not allocate */
#define KEPOCH_MISUSE_WRONG_FREE_FUNCTION 9u    /* a cache-aligned block freed with the plain free, or back */
#define KEPOCH_MISUSE_SCHEDULED_TWICE 10u       /* a work item scheduled while its schedule is pending */
#define KEPOCH_MISUSE_CANCEL_AFTER_SCHEDULE 11u /* a scheduled work item cancelled */
#define KEPOCH_MISUSE_NOT_A_WORK_ITEM 12u       /* a pointer that is not a live work item */
#define KEPOCH_MISUSE_NOT_INITIATED 13u         /* ebpf_epoch_* before ebpf_epoch_initiate or after terminate */
#define KEPOCH_MISUSE_WORK_ITEMS_OUTSTANDING 14u /* terminate with work items neither scheduled nor cancelled */
#define KEPOCH_MISUSE_BAD_PROCESSOR 15u         /* a processor index at or above the maximum */
#define KEPOCH_MISUSE_NOT_A_DOMAIN 16u          /* a pointer that is not a live domain */

    /* ---- types ---- */

    /** An NTSTATUS (32 bits). */
    typedef int32_t kepoch_status_t;

    /** A domain: everything retired in it waits for the readers of it. */
    typedef struct kepoch_domain kepoch_domain_t;

    /** A one-shot work item: scheduled once, it runs at PASSIVE_LEVEL outside any epoch, then is freed. */
    typedef struct kepoch_work_item kepoch_work_item_t;

    /** A work item's callback. */
    typedef void (*kepoch_work_callback_t)(_Inout_ void* context);

    /**
     * The caller's epoch state: filled in by kepoch_enter, consumed by kepoch_exit. One per nesting
     * level; it stays in place (stack or pool) between the two. Same size and layout as eBPF's
     * ebpf_epoch_state_t.
     */
    typedef struct kepoch_epoch_state
    {
        uintptr_t reserved[3];
        uint32_t cpu_id;    /* the processor index at the enter */
        uint8_t irql_at_enter;
    } kepoch_epoch_state_t;

#define KEPOCH_STRATEGY_LAZY 0u     /* per-CPU state on a processor's first use */
#define KEPOCH_STRATEGY_CALLBACK 1u /* prepared in processor-change notifications (default) */
#define KEPOCH_STRATEGY_EAGER 2u    /* every index below the maximum at load (refuses max > active) */

    /** A domain's configuration: kepoch_config_init fills in the defaults. */
    typedef struct kepoch_config
    {
        uint32_t size;                /* sizeof(kepoch_config_t) */
        uint32_t strategy;            /* KEPOCH_STRATEGY_*; default CALLBACK */
        uint32_t idle_deactivation;   /* 0 or 1: idle processors leave the cycle; default 1 */
        uint32_t cycle_period_us;     /* 100..1000000; default 1000 */
        uint32_t max_frees_per_visit; /* 0 (no bound) or 16..1000000; default 256; a visit also stops after 50 us of work unless 0 */
        uint32_t pool_tag;            /* the domain's tag, 4 printable characters; default 'CpeK' ("KepC") */
        uint32_t dpc_probe_ms;        /* 0: trust DPC delivery; else probe up to this long (<= 60000); default 500 */
        uint32_t reserved;            /* 0 */
    } kepoch_config_t;

    /** Counters of a domain (kepoch_stats). */
    typedef struct kepoch_stats
    {
        uint32_t size; /* sizeof(kepoch_stats_t) */
        uint32_t strategy;
        uint32_t max_processors;
        uint32_t active_processors;
        uint64_t cpus_prepared;
        uint64_t enters;
        uint64_t exits;
        uint64_t retired; /* blocks freed and work items scheduled */
        uint64_t freed;   /* of those, released */
        uint64_t pending; /* retired - freed */
        uint64_t double_retires;
        uint64_t cycles;
        uint64_t messages;
        uint64_t work_items_run;
        uint64_t hot_add_complete;
        uint64_t visits_cut_short;
    } kepoch_stats_t;

    /* The layouts kepoch's library was built with (it asserts the same numbers). */
#if defined(__cplusplus)
#define KEPOCH_STATIC_ASSERT(condition, message) static_assert(condition, message)
#else
#define KEPOCH_STATIC_ASSERT(condition, message) _Static_assert(condition, message)
#endif
    KEPOCH_STATIC_ASSERT(sizeof(kepoch_epoch_state_t) == 32, "kepoch_epoch_state_t is 32 bytes");
    KEPOCH_STATIC_ASSERT(sizeof(kepoch_config_t) == 32, "kepoch_config_t is 32 bytes");
    KEPOCH_STATIC_ASSERT(offsetof(kepoch_config_t, pool_tag) == 20, "kepoch_config_t.pool_tag at 20");
    KEPOCH_STATIC_ASSERT(sizeof(kepoch_stats_t) == 112, "kepoch_stats_t is 112 bytes");
    KEPOCH_STATIC_ASSERT(offsetof(kepoch_stats_t, cpus_prepared) == 16, "kepoch_stats_t.cpus_prepared at 16");
    KEPOCH_STATIC_ASSERT(offsetof(kepoch_stats_t, pending) == 56, "kepoch_stats_t.pending at 56");
    KEPOCH_STATIC_ASSERT(offsetof(kepoch_stats_t, work_items_run) == 88, "kepoch_stats_t.work_items_run at 88");
    KEPOCH_STATIC_ASSERT(offsetof(kepoch_stats_t, visits_cut_short) == 104, "kepoch_stats_t.visits_cut_short at 104");

    /* ---- domains ---- */

    /** Fills config with the defaults. Any IRQL. */
    void
    kepoch_config_init(_Out_ kepoch_config_t* config);

    /**
     * Creates a domain (config NULL: the defaults) whose work items belong to driver_object, which
     * must stay valid until kepoch_domain_destroy. STATUS_INVALID_PARAMETER for NULL pointers, a
     * field out of range (logged with its name) or a call above PASSIVE_LEVEL; the load's status
     * otherwise (e.g. STATUS_NOT_SUPPORTED for EAGER where max > active).
     */
    _IRQL_requires_max_(PASSIVE_LEVEL) _Must_inspect_result_ kepoch_status_t
    kepoch_domain_create(
        _In_opt_ const kepoch_config_t* config,
        _In_ struct _DRIVER_OBJECT* driver_object,
        _Outptr_ kepoch_domain_t** domain);

    /**
     * Destroys a domain: stops its cycles, runs its scheduled work items (their callbacks may still
     * use the domain) and releases everything freed. Blocks allocated and never freed are leaked
     * (Driver Verifier shows them under their tag). Fails fast while work items are neither
     * scheduled nor cancelled.
     */
    _IRQL_requires_max_(PASSIVE_LEVEL) void
    kepoch_domain_destroy(_In_ kepoch_domain_t* domain);

    /* ---- readers ---- */

    /** Enters an epoch. IRQL <= DISPATCH_LEVEL; nests, one state per level. */
    _IRQL_requires_max_(DISPATCH_LEVEL) _IRQL_requires_same_ void
    kepoch_enter(_In_ kepoch_domain_t* domain, _Out_ kepoch_epoch_state_t* state);

    /**
     * Exits the epoch of state, at the IRQL of its enter; a thread that entered below DISPATCH_LEVEL
     * may have moved to another processor.
     */
    _IRQL_requires_max_(DISPATCH_LEVEL) _IRQL_requires_same_ void
    kepoch_exit(_In_ kepoch_domain_t* domain, _Inout_ kepoch_epoch_state_t* state);

    /* ---- memory ---- */

    /** A zeroed, 16-byte aligned block tagged tag (0: the domain's), or NULL. IRQL <= DISPATCH_LEVEL. */
    _IRQL_requires_max_(DISPATCH_LEVEL) _Must_inspect_result_ _Ret_writes_maybenull_(size) void*
    kepoch_allocate(_In_ kepoch_domain_t* domain, size_t size, uint32_t tag);

    /** A zeroed block that starts on a 64-byte cache line, or NULL. IRQL <= DISPATCH_LEVEL. */
    _IRQL_requires_max_(DISPATCH_LEVEL) _Must_inspect_result_ _Ret_writes_maybenull_(size) void*
    kepoch_allocate_cache_aligned(_In_ kepoch_domain_t* domain, size_t size, uint32_t tag);

    /**
     * Frees a block of kepoch_allocate once every reader that entered before has exited. NULL is
     * ignored; a double free or a foreign pointer fails fast. IRQL <= DISPATCH_LEVEL.
     */
    _IRQL_requires_max_(DISPATCH_LEVEL) void
    kepoch_free(_In_ kepoch_domain_t* domain, _Frees_ptr_opt_ void* memory);

    /** kepoch_free for blocks of kepoch_allocate_cache_aligned. */
    _IRQL_requires_max_(DISPATCH_LEVEL) void
    kepoch_free_cache_aligned(_In_ kepoch_domain_t* domain, _Frees_ptr_opt_ void* memory);

    /* ---- work items ---- */

    /** A work item that will run callback(context), or NULL. IRQL <= DISPATCH_LEVEL. */
    _IRQL_requires_max_(DISPATCH_LEVEL) _Must_inspect_result_ _Ret_maybenull_ kepoch_work_item_t*
    kepoch_work_item_allocate(
        _In_ kepoch_domain_t* domain, _In_ kepoch_work_callback_t callback, _In_opt_ void* context);

    /**
     * Schedules it: once every reader inside now has exited it runs at PASSIVE_LEVEL, outside any
     * epoch, and is freed after the callback returns. Scheduling it again before fails fast.
     */
    _IRQL_requires_max_(DISPATCH_LEVEL) void
    kepoch_work_item_schedule(_Inout_ kepoch_work_item_t* item);

    /** Frees an unscheduled work item; NULL is ignored; a scheduled one fails fast. */
    _IRQL_requires_max_(DISPATCH_LEVEL) void
    kepoch_work_item_cancel(_In_opt_ _Frees_ptr_opt_ kepoch_work_item_t* item);

    /* ---- writers ---- */

    /**
     * Waits until everything freed before the call is released. PASSIVE_LEVEL, outside any epoch.
     */
    _IRQL_requires_max_(PASSIVE_LEVEL) void
    kepoch_synchronize(_In_ kepoch_domain_t* domain);

    /** Starts a reclamation cycle now. IRQL <= DISPATCH_LEVEL. */
    _IRQL_requires_max_(DISPATCH_LEVEL) void
    kepoch_flush(_In_ kepoch_domain_t* domain);

    /**
     * Writes the counters into stats (size: sizeof(kepoch_stats_t) or more). STATUS_INVALID_PARAMETER
     * for NULL or a short buffer, STATUS_INSUFFICIENT_RESOURCES without pool for the snapshot.
     */
    _IRQL_requires_max_(DISPATCH_LEVEL) _Must_inspect_result_ kepoch_status_t
    kepoch_stats(
        _In_ kepoch_domain_t* domain, _Out_writes_bytes_(size) kepoch_stats_t* stats, size_t size);

#ifdef __cplusplus
}
#endif
