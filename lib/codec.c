/*
 * codec.c: encode, decode and validate the add-cow v1 header (FORMAT.md).
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "codec.h"

uint64_t ac_get_be64(const unsigned char *p)
{
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) |
           ((uint64_t)p[2] << 40) | ((uint64_t)p[3] << 32) |
           ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
           ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}

uint32_t ac_get_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

void ac_put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

void ac_put_be32(unsigned char *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

int ac_header_probe(const void *buf, size_t len)
{
    const unsigned char *p = buf;

    if (buf == NULL || len < AC_OFF_BACKING)
        return 0;
    return ac_get_be64(p + AC_OFF_MAGIC) == AC_MAGIC &&
           ac_get_be32(p + AC_OFF_VERSION) == AC_VERSION;
}

/* Copies a NUL-terminated path field; 0 if the field has no NUL. */
static int copy_path_field(char *dst, const unsigned char *field)
{
    const void *nul = memchr(field, '\0', AC_PATH_FIELD);

    if (nul == NULL)
        return 0;
    size_t n = (size_t)((const unsigned char *)nul - field);
    memcpy(dst, field, n);
    memset(dst + n, 0, AC_PATH_FIELD - n);
    return 1;
}

enum ac_header_fault ac_header_decode(const void *buf, size_t len,
                                      struct ac_header *out)
{
    const unsigned char *p = buf;

    if (buf == NULL || len < AC_HEADER_SIZE)
        return AC_HDR_SHORT;
    if (ac_get_be64(p + AC_OFF_MAGIC) != AC_MAGIC)
        return AC_HDR_BAD_MAGIC;
    out->version = ac_get_be32(p + AC_OFF_VERSION);
    if (out->version != AC_VERSION)
        return AC_HDR_BAD_VERSION;
    if (!copy_path_field(out->backing_file, p + AC_OFF_BACKING))
        return AC_HDR_BACKING_NO_NUL;
    if (!copy_path_field(out->image_file, p + AC_OFF_IMAGE))
        return AC_HDR_IMAGE_NO_NUL;
    if (out->image_file[0] == '\0')
        return AC_HDR_IMAGE_EMPTY;
    out->size = ac_get_be64(p + AC_OFF_SIZE);
    if (out->size > AC_MAX_VIRTUAL_SIZE + AC_SECTOR_SIZE - 1)
        return AC_HDR_SIZE_TOO_BIG;
    return AC_HDR_OK;
}

int ac_header_fault_errno(enum ac_header_fault f)
{
    switch (f) {
    case AC_HDR_OK:            return 0;
    case AC_HDR_BAD_VERSION:   return -ENOTSUP;
    case AC_HDR_SIZE_TOO_BIG:  return -EFBIG;
    default:                   return -EINVAL;
    }
}

const char *ac_header_fault_str(enum ac_header_fault f)
{
    switch (f) {
    case AC_HDR_OK:             return "valid header";
    case AC_HDR_SHORT:          return "file too short for the 2068-byte add-cow header";
    case AC_HDR_BAD_MAGIC:      return "not an add-cow image (bad magic)";
    case AC_HDR_BAD_VERSION:    return "unsupported add-cow version (only version 1 is known)";
    case AC_HDR_BACKING_NO_NUL: return "corrupt header: backing_file field has no NUL terminator";
    case AC_HDR_IMAGE_NO_NUL:   return "corrupt header: image_file field has no NUL terminator";
    case AC_HDR_IMAGE_EMPTY:    return "corrupt header: image_file is empty";
    case AC_HDR_SIZE_TOO_BIG:   return "virtual size too large (more than 2^63 - 512 bytes)";
    }
    return "unknown header fault";
}

void ac_header_encode(void *buf, const char *backing_file,
                      const char *image_file, uint64_t size)
{
    unsigned char *p = buf;

    memset(p, 0, AC_HEADER_SIZE);
    ac_put_be64(p + AC_OFF_MAGIC, AC_MAGIC);
    ac_put_be32(p + AC_OFF_VERSION, AC_VERSION);
    if (backing_file != NULL)
        memcpy(p + AC_OFF_BACKING, backing_file, strnlen(backing_file, AC_PATH_MAX_LEN));
    memcpy(p + AC_OFF_IMAGE, image_file, strnlen(image_file, AC_PATH_MAX_LEN));
    ac_put_be64(p + AC_OFF_SIZE, size);
}
