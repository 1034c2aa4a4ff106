// headers.cpp: kepoch.h and ebpf_epoch.h compile as C++17 (-Wall -Wextra -Werror) and keep their C
// layouts: the epoch states are 32 bytes, the configuration 32, and every function is callable.
#include "ebpf_epoch.h"
#include "kepoch.h"

static_assert(sizeof(ebpf_epoch_state_t) == 32, "ebpf_epoch_state_t is 32 bytes");
static_assert(sizeof(kepoch_epoch_state_t) == 32, "kepoch_epoch_state_t is 32 bytes");
static_assert(sizeof(kepoch_config_t) == 32, "kepoch_config_t is 32 bytes");
static_assert(EBPF_NO_MEMORY == 12, "eBPF's numbering");

static void
callback(void* context)
{
    (void)context;
}

int
kepoch_headers_cpp(kepoch_domain_t* domain)
{
    kepoch_epoch_state_t state{};
    kepoch_enter(domain, &state);
    void* block = kepoch_allocate(domain, 16, 0);
    kepoch_free(domain, block);
    kepoch_exit(domain, &state);
    kepoch_work_item_t* item = kepoch_work_item_allocate(domain, callback, nullptr);
    kepoch_work_item_cancel(item);
    kepoch_stats_t stats{};
    ebpf_epoch_state_t epoch_state{};
    ebpf_epoch_enter(&epoch_state);
    ebpf_epoch_exit(&epoch_state);
    return kepoch_stats(domain, &stats, sizeof(stats)) == 0 && ebpf_epoch_is_free_list_empty(0) ? 0 : 1;
}
