/*
 * rangelock.c: a list of held ranges under a mutex.  In-flight allocating
 * writes are few, so a list is enough.
 */
#include "config.h"

#include "rangelock.h"

int ac_rl_init(struct ac_rangelock *rl)
{
    rl->held = NULL;
    if (pthread_mutex_init(&rl->mu, NULL) != 0)
        return -1;
    if (pthread_cond_init(&rl->cv, NULL) != 0) {
        pthread_mutex_destroy(&rl->mu);
        return -1;
    }
    return 0;
}

void ac_rl_destroy(struct ac_rangelock *rl)
{
    pthread_cond_destroy(&rl->cv);
    pthread_mutex_destroy(&rl->mu);
}

static int overlaps(const struct ac_rangelock *rl, uint64_t start, uint64_t end)
{
    for (const struct ac_range *r = rl->held; r != NULL; r = r->next)
        if (r->start < end && start < r->end)
            return 1;
    return 0;
}

void ac_rl_lock(struct ac_rangelock *rl, struct ac_range *r, uint64_t start, uint64_t end)
{
    r->start = start;
    r->end = end;
    pthread_mutex_lock(&rl->mu);
    while (overlaps(rl, start, end))
        pthread_cond_wait(&rl->cv, &rl->mu);
    r->next = rl->held;
    rl->held = r;
    pthread_mutex_unlock(&rl->mu);
}

void ac_rl_unlock(struct ac_rangelock *rl, struct ac_range *r)
{
    pthread_mutex_lock(&rl->mu);
    for (struct ac_range **p = &rl->held; *p != NULL; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            break;
        }
    }
    pthread_cond_broadcast(&rl->cv);
    pthread_mutex_unlock(&rl->mu);
}
