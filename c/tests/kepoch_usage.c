/*
 * kepoch_usage.c: kepoch.h's own API from C, as a driver uses it: a configuration validated field by
 * field, a domain, nested enters at PASSIVE and DISPATCH, plain and cache-aligned blocks, a work item
 * scheduled and one cancelled, flush, synchronize, the statistics (whose layout the C compiler and
 * kepoch must agree on), destroy. Compiled with -std=c11 -Wall -Wextra -Werror by c/build.sh and run
 * on the emulated kernel by c/sample-test.
 */
#include "kepoch.h"

#define STATUS_INVALID_PARAMETER ((kepoch_status_t)0xC000000D)
#define USAGE_TAG 0x67617355u /* 'Usag' */

/* The caller raises and lowers IRQL (the host build's routines, CR8 in a WDK build). */
uint8_t
kepoch_usage_raise(void);
void
kepoch_usage_lower(uint8_t previous);

static volatile int32_t _usage_runs;
static kepoch_domain_t* _usage_domain;
static void* _usage_late_block;
static volatile int32_t _usage_late_runs;

/* A work item scheduled just before the domain is destroyed: it runs while the destroy shuts the
 * domain down, and still frees and allocates through the handle. */
static void
_usage_late_callback(void* context)
{
    (void)context;
    kepoch_free(_usage_domain, _usage_late_block);
    void* more = kepoch_allocate(_usage_domain, 8, 0);
    kepoch_free(_usage_domain, more);
    __atomic_add_fetch(&_usage_late_runs, 1, __ATOMIC_RELAXED);
}

static void
_usage_callback(void* context)
{
    if (context == (void*)&_usage_runs) {
        __atomic_add_fetch(&_usage_runs, 1, __ATOMIC_RELAXED);
    }
}

/* One field out of range at a time: every one is refused. 0 when all were, else the line. */
static int
_usage_bad_configs(struct _DRIVER_OBJECT* driver)
{
    kepoch_domain_t* domain = (kepoch_domain_t*)1;
    kepoch_config_t config;
    for (int field = 0; field < 9; field++) {
        kepoch_config_init(&config);
        switch (field) {
        case 0: config.size = 4; break;
        case 1: config.strategy = 3; break;
        case 2: config.idle_deactivation = 2; break;
        case 3: config.cycle_period_us = 99; break;
        case 4: config.max_frees_per_visit = 15; break;
        case 5: config.pool_tag = 0; break;
        case 6: config.pool_tag = 0x0A0A0A0Au; break; /* not printable */
        case 7: config.dpc_probe_ms = 60001; break;
        default: config.reserved = 1; break;
        }
        if (kepoch_domain_create(&config, driver, &domain) != STATUS_INVALID_PARAMETER || domain != NULL) {
            return __LINE__ * 100 + field;
        }
    }
    if (kepoch_domain_create(NULL, NULL, &domain) != STATUS_INVALID_PARAMETER ||
        kepoch_domain_create(NULL, driver, NULL) != STATUS_INVALID_PARAMETER) {
        return __LINE__;
    }
    return 0;
}

/* Runs the whole API; 0 when every result is the expected one, else the line of the first miss. */
int
kepoch_usage_run(struct _DRIVER_OBJECT* driver)
{
    int bad = _usage_bad_configs(driver);
    if (bad != 0) {
        return bad;
    }
    kepoch_config_t config;
    kepoch_config_init(&config);
    if (config.size != sizeof(config) || config.strategy != KEPOCH_STRATEGY_CALLBACK) {
        return __LINE__;
    }
    config.pool_tag = USAGE_TAG;
    config.cycle_period_us = 500;
    kepoch_domain_t* domain = NULL;
    if (kepoch_domain_create(&config, driver, &domain) != 0 || domain == NULL) {
        return __LINE__;
    }

    kepoch_epoch_state_t outer;
    kepoch_enter(domain, &outer);
    uint8_t previous = kepoch_usage_raise();
    kepoch_epoch_state_t inner;
    kepoch_enter(domain, &inner);
    uint64_t* block = (uint64_t*)kepoch_allocate(domain, 40, 0);
    uint8_t* line = (uint8_t*)kepoch_allocate_cache_aligned(domain, 200, USAGE_TAG);
    if (block == NULL || line == NULL || block[4] != 0 || ((uintptr_t)block % 16) != 0 ||
        ((uintptr_t)line % 64) != 0 || line[199] != 0) {
        return __LINE__;
    }
    kepoch_free(domain, block);
    kepoch_free_cache_aligned(domain, line);
    kepoch_free(domain, NULL);
    kepoch_exit(domain, &inner);
    kepoch_usage_lower(previous);
    kepoch_exit(domain, &outer);

    kepoch_work_item_t* scheduled = kepoch_work_item_allocate(domain, _usage_callback, (void*)&_usage_runs);
    kepoch_work_item_t* cancelled = kepoch_work_item_allocate(domain, _usage_callback, (void*)&_usage_runs);
    if (scheduled == NULL || cancelled == NULL) {
        return __LINE__;
    }
    kepoch_work_item_schedule(scheduled);
    kepoch_work_item_cancel(cancelled);
    kepoch_work_item_cancel(NULL);
    kepoch_flush(domain);
    kepoch_synchronize(domain);

    kepoch_stats_t stats;
    if (kepoch_stats(domain, &stats, sizeof(stats) - 1) != STATUS_INVALID_PARAMETER ||
        kepoch_stats(domain, NULL, sizeof(stats)) != STATUS_INVALID_PARAMETER) {
        return __LINE__;
    }
    if (kepoch_stats(domain, &stats, sizeof(stats)) != 0) {
        return __LINE__;
    }
    /* Two enters and exits, two blocks and one work item retired; the blocks released by synchronize. */
    if (stats.size != sizeof(stats) || stats.strategy != KEPOCH_STRATEGY_CALLBACK || stats.enters < 2 ||
        stats.enters != stats.exits || stats.retired < 3 || stats.freed < 2 || stats.double_retires != 0 ||
        stats.active_processors == 0 || stats.max_processors < stats.active_processors) {
        return __LINE__;
    }
    _usage_domain = domain;
    _usage_late_block = kepoch_allocate(domain, 8, USAGE_TAG);
    kepoch_work_item_t* late = kepoch_work_item_allocate(domain, _usage_late_callback, NULL);
    if (_usage_late_block == NULL || late == NULL) {
        return __LINE__;
    }
    kepoch_work_item_schedule(late);
    kepoch_domain_destroy(domain);
    if (__atomic_load_n(&_usage_late_runs, __ATOMIC_RELAXED) != 1) {
        return __LINE__; /* the destroy ran the item scheduled before it */
    }
    if (__atomic_load_n(&_usage_runs, __ATOMIC_RELAXED) != 1) {
        return __LINE__; /* the scheduled item ran once (at the latest when the domain was destroyed) */
    }
    return 0;
}
