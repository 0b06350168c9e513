/*
 * codec.h: the add-cow v1 header and bitmap geometry.  Pure functions on
 * bytes: no I/O, no allocation, no global state.
 */
#ifndef AC_CODEC_H
#define AC_CODEC_H

#include <stddef.h>
#include <stdint.h>

#define AC_MAGIC          UINT64_C(0x4144445F434F57FF)  /* "ADD_COW\xff" */
#define AC_VERSION        1u
#define AC_SECTOR_SIZE    512u
#define AC_SECTOR_SHIFT   9
#define AC_PATH_FIELD     1024u      /* bytes of one path field, NUL included */
#define AC_PATH_MAX_LEN   (AC_PATH_FIELD - 1)

#define AC_OFF_MAGIC      0
#define AC_OFF_VERSION    8
#define AC_OFF_BACKING    12
#define AC_OFF_IMAGE      1036
#define AC_OFF_SIZE       2060
#define AC_HEADER_SIZE    2068u      /* the bitmap starts here */

/* Largest virtual size libaddcow accepts: it must fit in int64_t (the API
 * returns sizes as int64_t), and the add-cow file, 2068 + size/4096 bytes,
 * must fit too.  A multiple of 512. */
#define AC_MAX_VIRTUAL_SIZE  (UINT64_C(0x7FFFFFFFFFFFFE00))

struct ac_header {
    uint32_t version;
    char backing_file[AC_PATH_FIELD];   /* "" = no backing file */
    char image_file[AC_PATH_FIELD];
    uint64_t size;                      /* as stored, maybe not a multiple of 512 */
};

/* Why a header was refused; ac_header_strerror() gives a sentence. */
enum ac_header_fault {
    AC_HDR_OK = 0,
    AC_HDR_SHORT,            /* fewer than 2068 bytes */
    AC_HDR_BAD_MAGIC,
    AC_HDR_BAD_VERSION,
    AC_HDR_BACKING_NO_NUL,   /* backing_file has no NUL in its 1024 bytes */
    AC_HDR_IMAGE_NO_NUL,
    AC_HDR_IMAGE_EMPTY,
    AC_HDR_SIZE_TOO_BIG,     /* size past AC_MAX_VIRTUAL_SIZE */
};

/* Decodes and validates a header.  Returns AC_HDR_OK and fills *out, or a
 * fault (and *out is unspecified). */
enum ac_header_fault ac_header_decode(const void *buf, size_t len,
                                      struct ac_header *out);

/* The negative errno that a fault maps to (-ENOTSUP for the version,
 * -EFBIG for the size, -EINVAL for corruption). */
int ac_header_fault_errno(enum ac_header_fault f);
const char *ac_header_fault_str(enum ac_header_fault f);

/* Encodes a header into exactly AC_HEADER_SIZE bytes at buf.  The paths must
 * be at most AC_PATH_MAX_LEN bytes (backing may be NULL or ""); the rest of
 * each field is zero-filled. */
void ac_header_encode(void *buf, const char *backing_file,
                      const char *image_file, uint64_t size);

/* 1 if buf starts with the magic and version 1; needs at least 12 bytes. */
int ac_header_probe(const void *buf, size_t len);

/* Geometry: sectors for a stored size (rounded down), bitmap bytes for a
 * sector count, and the add-cow file length that holds them. */
static inline uint64_t ac_sectors_for_size(uint64_t size)
{
    return size >> AC_SECTOR_SHIFT;
}

static inline uint64_t ac_bitmap_bytes(uint64_t sectors)
{
    return sectors / 8 + (sectors % 8 != 0);
}

static inline uint64_t ac_file_length_for_size(uint64_t size)
{
    return AC_HEADER_SIZE + ac_bitmap_bytes(ac_sectors_for_size(size));
}

/* Big-endian helpers, exposed for the tests' golden bytes. */
uint64_t ac_get_be64(const unsigned char *p);
uint32_t ac_get_be32(const unsigned char *p);
void ac_put_be64(unsigned char *p, uint64_t v);
void ac_put_be32(unsigned char *p, uint32_t v);

#endif
