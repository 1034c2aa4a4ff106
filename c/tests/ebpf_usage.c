/*
 * ebpf_usage.c: every function of ebpf_epoch.h used the way eBPF for Windows' runtime uses it (its
 * result type, pool tags, cache-aligned maps, epoch-freed entries, work items whose callbacks free
 * objects, the scoped enter/exit on a stack state, the free-list check after synchronize). Compiled
 * with -std=c11 -Wall -Wextra -Werror by gcc, clang and mingw-w64 (c/build.sh), and run on the
 * emulated kernel by c/sample-test.
 */
#include "ebpf_epoch.h"

#define EBPF_POOL_TAG_MAP 0x6D667065u   /* 'epfm' */
#define EBPF_POOL_TAG_ENTRY 0x65667065u /* 'epfe' */
#define EBPF_CACHE_LINE_SIZE 64u

typedef struct _ebpf_usage_entry
{
    uint32_t key;
    uint64_t value;
} ebpf_usage_entry_t;

typedef struct _ebpf_usage_map
{
    ebpf_usage_entry_t* volatile entries[8];
    ebpf_epoch_work_item_t* cleanup_work_item;
    volatile int32_t cleaned_up;
} ebpf_usage_map_t;

static volatile int32_t _ebpf_usage_callbacks;
static void* _ebpf_usage_late_block;
static volatile int32_t _ebpf_usage_late_runs;

static void
_ebpf_usage_late_second(_Inout_ void* context)
{
    (void)context;
    __atomic_add_fetch(&_ebpf_usage_late_runs, 1, __ATOMIC_RELAXED);
}

/* Scheduled just before terminate, as eBPF's map delete runs in an epoch work item: it frees memory
 * and schedules another work item while the module terminates. */
static void
_ebpf_usage_late_first(_Inout_ void* context)
{
    (void)context;
    ebpf_epoch_free(_ebpf_usage_late_block);
    ebpf_epoch_work_item_t* next = ebpf_epoch_allocate_work_item(NULL, _ebpf_usage_late_second);
    if (next != NULL) {
        ebpf_epoch_schedule_work_item(next);
    }
    __atomic_add_fetch(&_ebpf_usage_late_runs, 1, __ATOMIC_RELAXED);
}

/* A deferred-free callback, as eBPF's object code registers one. */
static void
_ebpf_usage_map_epoch_free(_Inout_ void* context)
{
    ebpf_usage_map_t* map = (ebpf_usage_map_t*)context;
    map->cleaned_up = 1;
    __atomic_add_fetch(&_ebpf_usage_callbacks, 1, __ATOMIC_RELAXED);
}

_Must_inspect_result_ static ebpf_result_t
_ebpf_usage_map_create(_Outptr_ ebpf_usage_map_t** map)
{
    ebpf_usage_map_t* local_map =
        (ebpf_usage_map_t*)ebpf_epoch_allocate_cache_aligned_with_tag(sizeof(ebpf_usage_map_t), EBPF_POOL_TAG_MAP);
    if (local_map == NULL) {
        return EBPF_NO_MEMORY;
    }
    local_map->cleanup_work_item = ebpf_epoch_allocate_work_item(local_map, _ebpf_usage_map_epoch_free);
    if (local_map->cleanup_work_item == NULL) {
        ebpf_epoch_free_cache_aligned(local_map);
        return EBPF_NO_MEMORY;
    }
    *map = local_map;
    return EBPF_SUCCESS;
}

static ebpf_result_t
_ebpf_usage_map_update(_Inout_ ebpf_usage_map_t* map, uint32_t key, uint64_t value)
{
    ebpf_usage_entry_t* entry = (ebpf_usage_entry_t*)ebpf_epoch_allocate(sizeof(ebpf_usage_entry_t));
    if (entry == NULL) {
        return EBPF_NO_MEMORY;
    }
    entry->key = key;
    entry->value = value;
    ebpf_usage_entry_t* old = __atomic_exchange_n(&map->entries[key % 8], entry, __ATOMIC_ACQ_REL);
    ebpf_epoch_free(old);
    return EBPF_SUCCESS;
}

static uint64_t
_ebpf_usage_map_find(_In_ ebpf_usage_map_t* map, uint32_t key)
{
    ebpf_epoch_state_t epoch_state = {0};
    ebpf_epoch_enter(&epoch_state);
    ebpf_usage_entry_t* entry = __atomic_load_n(&map->entries[key % 8], __ATOMIC_ACQUIRE);
    uint64_t value = (entry != NULL && entry->key == key) ? entry->value : 0;
    ebpf_epoch_exit(&epoch_state);
    return value;
}

/* Runs the whole API; 0 when every result is the expected one, else the line of the first miss. */
int
ebpf_usage_run(struct _DRIVER_OBJECT* driver)
{
    kepoch_ebpf_epoch_set_driver_object(driver);
    if (ebpf_epoch_initiate() != EBPF_SUCCESS) {
        return __LINE__;
    }
    if (ebpf_epoch_initiate() != EBPF_ALREADY_INITIALIZED) {
        return __LINE__;
    }
    if (ebpf_epoch_create_cpu_work_queue(0) != EBPF_SUCCESS ||
        ebpf_epoch_create_cpu_work_queue(0xFFFFFFFFu) != EBPF_INVALID_ARGUMENT) {
        return __LINE__;
    }
    ebpf_usage_map_t* map = NULL;
    if (_ebpf_usage_map_create(&map) != EBPF_SUCCESS) {
        return __LINE__;
    }
    if (((uintptr_t)map % EBPF_CACHE_LINE_SIZE) != 0 || map->entries[3] != NULL) {
        return __LINE__; /* cache-aligned and zeroed */
    }
    for (uint32_t round = 0; round < 64; round++) {
        if (_ebpf_usage_map_update(map, round, (uint64_t)round * 10) != EBPF_SUCCESS) {
            return __LINE__;
        }
        if (_ebpf_usage_map_find(map, round) != (uint64_t)round * 10) {
            return __LINE__;
        }
    }
    void* tagged = ebpf_epoch_allocate_with_tag(24, EBPF_POOL_TAG_ENTRY);
    if (tagged == NULL || ((uint8_t*)tagged)[23] != 0) {
        return __LINE__;
    }
    ebpf_epoch_free(tagged);
    ebpf_epoch_free(NULL);
    ebpf_epoch_free_cache_aligned(NULL);

    ebpf_epoch_work_item_t* unused = ebpf_epoch_allocate_work_item(map, _ebpf_usage_map_epoch_free);
    if (unused == NULL) {
        return __LINE__;
    }
    ebpf_epoch_cancel_work_item(unused);
    ebpf_epoch_cancel_work_item(NULL);

    /* Tear down as eBPF does: entries freed under the epoch, the map's cleanup as a work item. */
    for (uint32_t slot = 0; slot < 8; slot++) {
        ebpf_epoch_free(__atomic_exchange_n(&map->entries[slot], NULL, __ATOMIC_ACQ_REL));
    }
    ebpf_epoch_schedule_work_item(map->cleanup_work_item);
    ebpf_epoch_synchronize();
    if (__atomic_load_n(&_ebpf_usage_callbacks, __ATOMIC_RELAXED) != 1 || !map->cleaned_up) {
        return __LINE__; /* synchronize waited for the work item scheduled before it */
    }
    ebpf_epoch_free_cache_aligned(map);
    ebpf_epoch_synchronize();
    if (!ebpf_epoch_is_free_list_empty(0)) {
        return __LINE__;
    }
    _ebpf_usage_late_block = ebpf_epoch_allocate(16);
    ebpf_epoch_work_item_t* late = ebpf_epoch_allocate_work_item(NULL, _ebpf_usage_late_first);
    if (_ebpf_usage_late_block == NULL || late == NULL) {
        return __LINE__;
    }
    ebpf_epoch_schedule_work_item(late);
    ebpf_epoch_terminate();
    if (__atomic_load_n(&_ebpf_usage_late_runs, __ATOMIC_RELAXED) != 2) {
        return __LINE__; /* both ran: the one scheduled before terminate and the one it scheduled */
    }
    return 0;
}
