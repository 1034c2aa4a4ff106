/*
 * kepoch_c_sample: a C driver written against ebpf_epoch.h only (plus sample_nt.h's kernel
 * routines), the way eBPF for Windows uses its epoch module.
 *
 * DriverEntry initiates the epoch module, publishes a first route, allocates two work items (one is
 * scheduled, the other cancelled; without work items, as under Wine, it says so and goes on) and starts one system thread per active processor. Each thread
 * loops until unload: enter, read the published route (and again inside a nested epoch at
 * DISPATCH_LEVEL), exit; allocate a new route, publish it, free the old one; now and then a
 * cache-aligned block. A reader that ever sees a route whose check word is wrong (freed memory)
 * counts it as bad. Unload stops and joins the threads, frees the last route, synchronizes, logs
 * the counters and terminates.
 *
 * Built for Windows by c/build.sh (kepoch_c_sample.sys); built for the host and run on kepoch's
 * emulated kernel by c/sample-test.
 */
#include "ebpf_epoch.h"
#include "sample_nt.h"

#define SAMPLE_POOL_TAG 0x706D6153u /* 'Samp' */
#define SAMPLE_MAX_THREADS 64u

typedef struct _route
{
    uint64_t gateway;
    uint64_t check; /* ~gateway while the route is alive */
} route_t;

static route_t* _route;
static HANDLE _threads[SAMPLE_MAX_THREADS];
static uint32_t _thread_count;
static int32_t _stop;
static uint64_t _next_gateway = 1;
static uint64_t _reads;
static uint64_t _writes;
static uint64_t _bad_reads;
static uint64_t _work_items_run;
static uint64_t _cache_aligned;
static void* _work_context = (void*)0x5A5A;

static void
_log(uint32_t level, const char* text)
{
    DbgPrintEx(DPFLTR_IHVDRIVER_ID, level, "%s", text);
}

/* Appends "name value" to line at *at (no CRT in a driver: decimal by hand). */
static void
_append(char* line, size_t size, size_t* at, const char* name, uint64_t value)
{
    char digits[24];
    size_t count = 0;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0 && count < sizeof(digits));
    while (*name != '\0' && *at + 1 < size) {
        line[(*at)++] = *name++;
    }
    while (count > 0 && *at + 1 < size) {
        line[(*at)++] = digits[--count];
    }
    line[*at] = '\0';
}

/* Checks a route a reader holds: freed memory (poisoned or reused) breaks its check word. */
static void
_check_route(const route_t* route)
{
    if (route != NULL && route->check != ~route->gateway) {
        __atomic_add_fetch(&_bad_reads, 1, __ATOMIC_RELAXED);
    }
    __atomic_add_fetch(&_reads, 1, __ATOMIC_RELAXED);
}

static void
_publish_route(void)
{
    route_t* route = (route_t*)ebpf_epoch_allocate_with_tag(sizeof(route_t), SAMPLE_POOL_TAG);
    if (route == NULL) {
        return;
    }
    route->gateway = __atomic_add_fetch(&_next_gateway, 1, __ATOMIC_RELAXED);
    route->check = ~route->gateway;
    route_t* old = __atomic_exchange_n(&_route, route, __ATOMIC_ACQ_REL);
    /* Readers may still hold `old`: it is released once they have exited. */
    ebpf_epoch_free(old);
    __atomic_add_fetch(&_writes, 1, __ATOMIC_RELAXED);
}

static void
_worker(void* context)
{
    uint64_t round = 0;
    (void)context;
    while (!__atomic_load_n(&_stop, __ATOMIC_ACQUIRE)) {
        ebpf_epoch_state_t outer;
        ebpf_epoch_enter(&outer);
        route_t* held = __atomic_load_n(&_route, __ATOMIC_ACQUIRE);
        _check_route(held);
        if (round % 4 == 0) {
            /* A reader that keeps its route across a sleep: the writers free many routes and the
             * cycles run meanwhile, and this one must stay intact. */
            int64_t five_milliseconds = -50000; /* relative, 100 ns units: several cycles */
            KeDelayExecutionThread(0, 0, &five_milliseconds);
            _check_route(held);
        }
        /* A nested epoch at DISPATCH_LEVEL, as a DPC or a spin-lock holder reads. */
        SAMPLE_KIRQL previous = sample_raise_to_dispatch();
        ebpf_epoch_state_t inner;
        ebpf_epoch_enter(&inner);
        _check_route(__atomic_load_n(&_route, __ATOMIC_ACQUIRE));
        ebpf_epoch_exit(&inner);
        sample_lower(previous);
        _check_route(held);
        ebpf_epoch_exit(&outer);

        _publish_route();
        if (++round % 16 == 0) {
            void* line = ebpf_epoch_allocate_cache_aligned_with_tag(100, SAMPLE_POOL_TAG);
            if (line != NULL) {
                if (((uintptr_t)line & 63u) == 0 && ((uint8_t*)line)[99] == 0) {
                    __atomic_add_fetch(&_cache_aligned, 1, __ATOMIC_RELAXED);
                }
                ebpf_epoch_free_cache_aligned(line);
            }
        }
    }
    PsTerminateSystemThread(STATUS_SUCCESS);
}

static void
_work_item_callback(void* context)
{
    if (context == _work_context) {
        __atomic_add_fetch(&_work_items_run, 1, __ATOMIC_RELAXED);
    }
}

/* The counters a test reads: reads, writes, bad reads, work items run, cache-aligned blocks. */
void
kepoch_sample_counters(uint64_t counters[5])
{
    counters[0] = __atomic_load_n(&_reads, __ATOMIC_RELAXED);
    counters[1] = __atomic_load_n(&_writes, __ATOMIC_RELAXED);
    counters[2] = __atomic_load_n(&_bad_reads, __ATOMIC_RELAXED);
    counters[3] = __atomic_load_n(&_work_items_run, __ATOMIC_RELAXED);
    counters[4] = __atomic_load_n(&_cache_aligned, __ATOMIC_RELAXED);
}

/* The bugs the host test makes the sample commit: 1 frees a block twice, 2 exits an epoch it did
 * not enter. Both must stop the machine with a message naming the function. */
void
kepoch_sample_misuse(int which)
{
    if (which == 1) {
        /* Inside an epoch, so that the block cannot be released between the two frees. */
        ebpf_epoch_state_t inside;
        ebpf_epoch_enter(&inside);
        void* block = ebpf_epoch_allocate(32);
        ebpf_epoch_free(block);
        ebpf_epoch_free(block);
        ebpf_epoch_exit(&inside);
    } else if (which == 2) {
        ebpf_epoch_state_t never_entered = {0};
        ebpf_epoch_exit(&never_entered);
    }
}

static void
_stop_threads(void)
{
    __atomic_store_n(&_stop, 1, __ATOMIC_RELEASE);
    for (uint32_t i = 0; i < _thread_count; i++) {
        ZwWaitForSingleObject(_threads[i], 0, NULL);
        ZwClose(_threads[i]);
    }
    _thread_count = 0;
}

static void
DriverUnload(struct _DRIVER_OBJECT* driver)
{
    (void)driver;
    _stop_threads();
    ebpf_epoch_free(__atomic_exchange_n(&_route, NULL, __ATOMIC_ACQ_REL));
    ebpf_epoch_synchronize();

    char line[200];
    size_t at = 0;
    _append(line, sizeof(line), &at, "kepoch_c_sample: unloading: reads ", _reads);
    _append(line, sizeof(line), &at, ", writes ", _writes);
    _append(line, sizeof(line), &at, ", bad reads ", _bad_reads);
    _append(line, sizeof(line), &at, ", work items run ", _work_items_run);
    _append(line, sizeof(line), &at, ", cache-aligned blocks ", _cache_aligned);
    _log(_bad_reads == 0 ? DPFLTR_INFO_LEVEL : DPFLTR_ERROR_LEVEL, line);

    ebpf_epoch_terminate();
    _log(DPFLTR_INFO_LEVEL, "kepoch_c_sample: unloaded");
}

NTSTATUS
DriverEntry(struct _DRIVER_OBJECT* driver, UNICODE_STRING* registry_path)
{
    (void)registry_path;
    /* A driver loaded again starts from zero (the statics of an image loaded anew would). */
    _thread_count = 0;
    __atomic_store_n(&_stop, 0, __ATOMIC_RELEASE);
    _reads = _writes = _bad_reads = _work_items_run = _cache_aligned = 0;
    kepoch_ebpf_epoch_set_driver_object(driver);
    if (ebpf_epoch_initiate() != EBPF_SUCCESS) {
        _log(DPFLTR_ERROR_LEVEL, "kepoch_c_sample: ebpf_epoch_initiate failed");
        return STATUS_UNSUCCESSFUL;
    }
    _publish_route();

    /* One work item runs after the current epoch; the other is cancelled before it is scheduled. A
     * kernel without the work-item routines (Wine 8 lacks IoSizeofWorkItem) gets none: logged. */
    ebpf_epoch_work_item_t* scheduled = ebpf_epoch_allocate_work_item(_work_context, _work_item_callback);
    ebpf_epoch_work_item_t* cancelled = ebpf_epoch_allocate_work_item(_work_context, _work_item_callback);
    if (scheduled != NULL && cancelled != NULL) {
        ebpf_epoch_schedule_work_item(scheduled);
        ebpf_epoch_cancel_work_item(cancelled);
    } else {
        ebpf_epoch_cancel_work_item(scheduled);
        ebpf_epoch_cancel_work_item(cancelled);
        _log(DPFLTR_INFO_LEVEL, "kepoch_c_sample: ebpf_epoch_allocate_work_item returned NULL: running without work items");
    }

    uint32_t processors = KeQueryActiveProcessorCountEx(ALL_PROCESSOR_GROUPS);
    if (processors > SAMPLE_MAX_THREADS) {
        processors = SAMPLE_MAX_THREADS;
    }
    for (uint32_t i = 0; i < processors; i++) {
        OBJECT_ATTRIBUTES attributes = {0};
        attributes.Length = sizeof(attributes);
        attributes.Attributes = OBJ_KERNEL_HANDLE;
        NTSTATUS status = PsCreateSystemThread(
            &_threads[_thread_count], THREAD_ALL_ACCESS, &attributes, NULL, NULL, _worker, NULL);
        if (!NT_SUCCESS(status)) {
            _log(DPFLTR_INFO_LEVEL, "kepoch_c_sample: a worker thread could not be created");
            break;
        }
        _thread_count++;
    }
    driver->DriverUnload = DriverUnload;
    _log(DPFLTR_INFO_LEVEL, "kepoch_c_sample: loaded");
    return STATUS_SUCCESS;
}
