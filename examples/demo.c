/*
 * demo: the tour of libaddcow.
 *
 * Makes a small base disk (a raw file), creates an add-cow overlay over it,
 * writes through the overlay (whole sectors and an unaligned few bytes),
 * reads back, and prints the allocation map and where each byte lives.
 * Everything goes into ./demo-work/, made anew each run.
 *
 * Build against the installed library:
 *   cc demo.c $(pkg-config --cflags --libs addcow) -o demo
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <addcow.h>

#define DIR "demo-work"
#define DISK_SIZE (64 * 1024)

static int fail(const char *what, int64_t r)
{
    fprintf(stderr, "demo: %s failed (%s): %s\n", what, strerror((int)-r),
            addcow_last_error());
    return 1;
}

static int make_base(const char *path)
{
    unsigned char buf[DISK_SIZE];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)('a' + (i / 4096) % 26);   /* 'a' x 4096, 'b' x 4096, ... */
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(buf, 1, sizeof(buf), f) != sizeof(buf) || fclose(f) != 0) {
        perror(path);
        return -1;
    }
    return 0;
}

static const char *describe(int flags)
{
    if (flags & ADDCOW_STATUS_ALLOCATED)
        return "allocated: in the image file (overlay.raw)";
    if (flags & ADDCOW_STATUS_ZERO)
        return "zero: nowhere, reads as zeros";
    return "backing: read from the backing file (base.raw)";
}

int main(void)
{
    addcow_image *img;
    int64_t r;

    printf("libaddcow %s\n\n", addcow_version());
    /* A fresh working folder. */
    unlink(DIR "/overlay.add-cow");
    unlink(DIR "/overlay.raw");
    unlink(DIR "/base.raw");
    if (mkdir(DIR, 0755) < 0 && errno != EEXIST) {
        perror(DIR);
        return 1;
    }
    if (make_base(DIR "/base.raw") < 0)
        return 1;
    printf("base.raw: %d bytes of 'a', 'b', 'c', ... (4 KiB each)\n", DISK_SIZE);

    /* Paths in the header are relative to the add-cow file's folder. */
    r = addcow_create(DIR "/overlay.add-cow", 0, "base.raw", "overlay.raw", NULL);
    if (r < 0)
        return fail("addcow_create", r);
    printf("created overlay.add-cow over base.raw, data in overlay.raw\n");

    r = addcow_open(DIR "/overlay.add-cow", ADDCOW_OPEN_RDWR, NULL, &img);
    if (r < 0)
        return fail("addcow_open", r);
    printf("virtual size %" PRId64 " bytes, backing '%s', image '%s'\n\n",
           addcow_get_size(img), addcow_get_backing_file(img), addcow_get_image_file(img));

    /* A whole 4 KiB block, and 5 bytes in the middle of a sector. */
    char block[4096];
    memset(block, 'X', sizeof(block));
    if ((r = addcow_pwrite(img, block, sizeof(block), 8192)) < 0)
        return fail("addcow_pwrite", r);
    if ((r = addcow_pwrite(img, "HELLO", 5, 20000)) < 0)
        return fail("addcow_pwrite", r);
    if ((r = addcow_write_zeroes(img, 40960, 8192, ADDCOW_ZEROES_MAY_UNMAP)) < 0)
        return fail("addcow_write_zeroes", r);
    if ((r = addcow_flush(img)) < 0)
        return fail("addcow_flush", r);
    printf("wrote 4096 x 'X' at 8192, \"HELLO\" at 20000, zeroed 8192 bytes at 40960, flushed\n\n");

    /* Read back through the overlay. */
    char got[32];
    struct { uint64_t off; const char *what; } probes[] = {
        { 0, "untouched: from base" }, { 8192, "overwritten block" },
        { 19995, "around HELLO (copy-on-write kept the rest of the sector)" },
        { 40960, "zeroed" },
    };
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        if ((r = addcow_pread(img, got, 16, probes[i].off)) < 0)
            return fail("addcow_pread", r);
        printf("read %6" PRIu64 ": \"", probes[i].off);
        for (int k = 0; k < 16; k++)
            putchar(got[k] >= 32 && got[k] < 127 ? got[k] : '.');
        printf("\"  %s\n", probes[i].what);
    }

    /* The allocation map, as runs. */
    printf("\nallocation map (%" PRId64 " bytes allocated):\n", addcow_get_allocated_bytes(img));
    uint64_t size = (uint64_t)addcow_get_size(img);
    for (uint64_t off = 0; off < size;) {
        uint64_t run;
        int flags = addcow_block_status(img, off, size - off, &run);
        if (flags < 0)
            return fail("addcow_block_status", flags);
        printf("  %8" PRIu64 " .. %8" PRIu64 "  %s\n", off, off + run, describe(flags));
        off += run;
    }

    if ((r = addcow_close(img)) < 0)
        return fail("addcow_close", r);
    printf("\nclosed; the files are in ./%s/\n", DIR);
    return 0;
}
