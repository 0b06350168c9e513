/*
 * iov.h: helpers for struct iovec arrays.
 */
#ifndef AC_IOV_H
#define AC_IOV_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* Total bytes of an iovec array (saturates at UINT64_MAX). */
uint64_t ac_iov_size(const struct iovec *iov, int iovcnt);

/* Describes bytes [skip, skip + len) of src in dst, which must have room
 * for src_cnt entries.  Returns the number of entries used. */
int ac_iov_slice(const struct iovec *src, int src_cnt, uint64_t skip,
                 uint64_t len, struct iovec *dst);

/* Fills bytes [skip, skip + len) of the iovec array with zeros. */
void ac_iov_memset0(const struct iovec *iov, int iovcnt, uint64_t skip, uint64_t len);

/* Copies between a flat buffer and bytes [skip, skip + len) of an array. */
void ac_iov_to_buf(const struct iovec *iov, int iovcnt, uint64_t skip,
                   void *buf, uint64_t len);
void ac_iov_from_buf(const struct iovec *iov, int iovcnt, uint64_t skip,
                     const void *buf, uint64_t len);

#endif
