/*
 * dump-map: prints the runs of an add-cow image: offset, length, status.
 *
 *   dump-map IMAGE.add-cow
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <addcow.h>

int main(int argc, char **argv)
{
    addcow_image *img;

    if (argc != 2) {
        fprintf(stderr, "usage: %s IMAGE.add-cow\n", argv[0]);
        return 2;
    }
    int r = addcow_open(argv[1], ADDCOW_OPEN_RDONLY, NULL, &img);
    if (r < 0) {
        fprintf(stderr, "dump-map: %s\n", addcow_last_error());
        return 1;
    }
    uint64_t size = (uint64_t)addcow_get_size(img);
    const char *backing = addcow_get_backing_file(img);
    printf("# %s: size %" PRIu64 ", image file '%s', backing file %s%s%s, "
           "%" PRId64 " bytes allocated\n", argv[1], size, addcow_get_image_file(img),
           backing ? "'" : "", backing ? backing : "none", backing ? "'" : "",
           addcow_get_allocated_bytes(img));
    printf("# offset length flags status\n");
    for (uint64_t off = 0; off < size;) {
        uint64_t run;
        int flags = addcow_block_status(img, off, size - off, &run);
        if (flags < 0) {
            fprintf(stderr, "dump-map: %s\n", addcow_last_error());
            addcow_close(img);
            return 1;
        }
        printf("%" PRIu64 " %" PRIu64 " %d %s\n", off, run, flags,
               (flags & ADDCOW_STATUS_ALLOCATED) ? "allocated"
               : (flags & ADDCOW_STATUS_ZERO) ? "zero" : "backing");
        off += run;
    }
    addcow_close(img);
    return 0;
}
