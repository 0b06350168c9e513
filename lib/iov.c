/*
 * iov.c: slicing and copying struct iovec arrays.
 */
#include "config.h"

#include <string.h>

#include "iov.h"

uint64_t ac_iov_size(const struct iovec *iov, int iovcnt)
{
    uint64_t n = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (UINT64_MAX - n < iov[i].iov_len)
            return UINT64_MAX;
        n += iov[i].iov_len;
    }
    return n;
}

int ac_iov_slice(const struct iovec *src, int src_cnt, uint64_t skip,
                 uint64_t len, struct iovec *dst)
{
    int n = 0;
    for (int i = 0; i < src_cnt && len > 0; i++) {
        uint64_t l = src[i].iov_len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        uint64_t take = l - skip < len ? l - skip : len;
        dst[n].iov_base = (char *)src[i].iov_base + skip;
        dst[n].iov_len = (size_t)take;
        n++;
        len -= take;
        skip = 0;
    }
    return n;
}

/* Calls fn on each piece of bytes [skip, skip + len) of the array. */
#define FOR_EACH_PIECE(iov, iovcnt, skip, len, P, N, BODY)              \
    do {                                                                \
        uint64_t _skip = (skip), _len = (len), _done = 0;               \
        for (int _i = 0; _i < (iovcnt) && _len > 0; _i++) {             \
            uint64_t _l = (iov)[_i].iov_len;                            \
            if (_skip >= _l) {                                          \
                _skip -= _l;                                            \
                continue;                                               \
            }                                                           \
            size_t N = (size_t)(_l - _skip < _len ? _l - _skip : _len); \
            char *P = (char *)(iov)[_i].iov_base + _skip;               \
            BODY;                                                       \
            _done += N;                                                 \
            _len -= N;                                                  \
            _skip = 0;                                                  \
        }                                                               \
        (void)_done;                                                    \
    } while (0)

void ac_iov_memset0(const struct iovec *iov, int iovcnt, uint64_t skip, uint64_t len)
{
    FOR_EACH_PIECE(iov, iovcnt, skip, len, p, n, memset(p, 0, n));
}

void ac_iov_to_buf(const struct iovec *iov, int iovcnt, uint64_t skip,
                   void *buf, uint64_t len)
{
    char *out = buf;
    FOR_EACH_PIECE(iov, iovcnt, skip, len, p, n, memcpy(out + _done, p, n));
}

void ac_iov_from_buf(const struct iovec *iov, int iovcnt, uint64_t skip,
                     const void *buf, uint64_t len)
{
    const char *in = buf;
    FOR_EACH_PIECE(iov, iovcnt, skip, len, p, n, memcpy(p, in + _done, n));
}
