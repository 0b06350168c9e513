/*
 * rangelock.h: exclusive locks on ranges of sectors.  Writes that allocate
 * sectors hold one over the sectors they touch, so that copy-on-write of a
 * partial sector never races with another write to that sector; writes to
 * other ranges, and all reads, proceed in parallel.
 */
#ifndef AC_RANGELOCK_H
#define AC_RANGELOCK_H

#include <pthread.h>
#include <stdint.h>

struct ac_range {
    uint64_t start, end;        /* [start, end) */
    struct ac_range *next;
};

struct ac_rangelock {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct ac_range *held;
};

int ac_rl_init(struct ac_rangelock *rl);
void ac_rl_destroy(struct ac_rangelock *rl);
/* Waits until no held range overlaps [start, end), then holds it in r
 * (which the caller keeps alive until ac_rl_unlock). */
void ac_rl_lock(struct ac_rangelock *rl, struct ac_range *r, uint64_t start, uint64_t end);
void ac_rl_unlock(struct ac_rangelock *rl, struct ac_range *r);

#endif
