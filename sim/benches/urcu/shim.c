/* liburcu read-side loops for the kepoch benchmark report (benches/report). Built by build.rs with
 * _LGPL_SOURCE, so rcu_read_lock/rcu_read_unlock are the library's inline fast paths, what a C user
 * of the library gets; the loops run in C so that no foreign call sits between iterations. */
#define _LGPL_SOURCE
#include <urcu/urcu-memb.h>
#include <urcu/urcu-qsbr.h>

void kepoch_urcu_memb_register(void) { urcu_memb_register_thread(); }
void kepoch_urcu_memb_unregister(void) { urcu_memb_unregister_thread(); }

/* 1 when the memb flavour's read side uses a compiler barrier (sys_membarrier available), 0 when it
 * falls back to a full fence. */
int kepoch_urcu_memb_uses_membarrier(void) { return urcu_memb_has_sys_membarrier; }

void kepoch_urcu_memb_loop(unsigned long iters)
{
    for (unsigned long i = 0; i < iters; i++) {
        urcu_memb_read_lock();
        urcu_memb_read_unlock();
    }
}

void kepoch_urcu_qsbr_register(void) { urcu_qsbr_register_thread(); }
void kepoch_urcu_qsbr_unregister(void) { urcu_qsbr_unregister_thread(); }

/* The QSBR read side is empty by design: its cost moves to urcu_qsbr_quiescent_state(), which the
 * application calls at points of its choosing. The loop measures the read side only. */
void kepoch_urcu_qsbr_loop(unsigned long iters)
{
    for (unsigned long i = 0; i < iters; i++) {
        urcu_qsbr_read_lock();
        cmm_barrier();
        urcu_qsbr_read_unlock();
    }
}
