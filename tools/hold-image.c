/*
 * hold-image: a test helper for test-cli-check.sh and test-cli-data.sh.
 * Opens an add-cow image with the public API (read-write with "rw",
 * read-only with "ro"), prints "ready", and keeps it open, with its
 * locks, until its standard input reaches end of file.
 *
 *   hold-image FILE rw|ro
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include <addcow.h>

int main(int argc, char **argv)
{
    addcow_image *img;

    if (argc != 3 || (strcmp(argv[2], "rw") != 0 && strcmp(argv[2], "ro") != 0)) {
        fprintf(stderr, "usage: hold-image FILE rw|ro\n");
        return 2;
    }
    unsigned flags = strcmp(argv[2], "rw") == 0 ? ADDCOW_OPEN_RDWR : ADDCOW_OPEN_RDONLY;
    if (addcow_open(argv[1], flags, NULL, &img) < 0) {
        fprintf(stderr, "hold-image: %s\n", addcow_last_error());
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    while (getchar() != EOF)
        ;
    return addcow_close(img) < 0 ? 1 : 0;
}
