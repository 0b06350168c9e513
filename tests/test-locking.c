/*
 * test-locking.c: locks between processes (API.md, options: "locking";
 * the library's decision: a read-write handle holds an exclusive lock on
 * the add-cow file and on the image file, a read-only one shared locks,
 * backing files get shared locks; a conflict is -EBUSY).
 *
 * A forked child opens an image and holds it (two pipes keep the two in
 * step) while this process tries its own opens, on real files in the
 * scratch folder.  When an open is refused, addcow_last_error() must name
 * the file and, where the OS tells it (Linux: /proc), the process that
 * holds the lock.
 *
 * The child never calls cmocka: it reports its open's result through the
 * pipe and leaves with _exit(), so that it neither runs the parent's
 * cmocka state nor removes the scratch folder.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "addcow.h"
#include "testutil.h"

#define DISK (64u * 1024)

/* ---- a child process that holds an image open ---------------------------- */

struct holder {
    pid_t pid;
    int to_child;           /* a byte (or EOF): close and leave */
    int from_child;         /* the child's open result, an int */
};

/* Forks a child that opens `path` with `flags`, tells its result, and holds
 * the handle until hold_stop().  Returns the child's open result (0: it
 * holds the image). */
static int hold_start(struct holder *h, const char *path, unsigned flags)
{
    int down[2], up[2];
    assert_int_equal(pipe(down), 0);
    assert_int_equal(pipe(up), 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(down[1]);
        close(up[0]);
        addcow_image *img = NULL;
        int r = addcow_open(path, flags, NULL, &img);
        char c;
        int code = write(up[1], &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : 3;
        /* Wait for the parent (a byte, or the pipe closed). */
        if (read(down[0], &c, 1) < 0)
            code = 4;
        if (img != NULL && addcow_close(img) != 0)
            code = 5;
        _exit(code);
    }
    close(down[0]);
    close(up[1]);
    h->pid = pid;
    h->to_child = down[1];
    h->from_child = up[0];
    int r = 1;
    assert_int_equal(read(h->from_child, &r, sizeof(r)), (ssize_t)sizeof(r));
    return r;
}

/* Tells the child to close its handle and leave; checks it did. */
static void hold_stop(struct holder *h)
{
    char c = 'x';
    int st = 0;
    assert_int_equal(write(h->to_child, &c, 1), 1);
    assert_int_equal(waitpid(h->pid, &st, 0), h->pid);
    close(h->to_child);
    close(h->from_child);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* Kills the child, handle and all: the OS drops its locks. */
static void hold_kill(struct holder *h)
{
    int st = 0;
    assert_int_equal(kill(h->pid, SIGKILL), 0);
    assert_int_equal(waitpid(h->pid, &st, 0), h->pid);
    close(h->to_child);
    close(h->from_child);
    assert_true(WIFSIGNALED(st));
}

/* ---- fixtures ---------------------------------------------------------------- */

/* dir/base.raw and dir/disk.add-cow over it (image file dir/disk.raw). */
static const char *make_image(const char *tag)
{
    const char *dir = tu_subdir(tag);
    tu_make_raw(tu_str("%s/base.raw", dir), DISK, 7);
    char *acow = tu_str("%s/disk.add-cow", dir);
    assert_int_equal(addcow_create(acow, 0, "base.raw", "disk.raw", NULL), 0);
    return acow;
}

/* Whether the OS shows the OFD locks on `file` at all: /proc/locks lists
 * them as "N: OFDLCK ADVISORY WRITE -1 MAJ:MIN:INODE START END" (proc(5)),
 * with the numbers of stat(2).  Where it does not (no /proc, or a file
 * system whose lock list names another device), the library cannot name
 * the holder. */
static bool os_shows_locks(const char *file)
{
    struct stat st;
    char line[256], want[64];
    bool found = false;
    assert_int_equal(stat(file, &st), 0);
    snprintf(want, sizeof(want), " %02x:%02x:%llu ", major(st.st_dev), minor(st.st_dev),
             (unsigned long long)st.st_ino);
    FILE *f = fopen("/proc/locks", "r");
    if (f == NULL)
        return false;
    while (!found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, "OFDLCK") != NULL && strstr(line, want) != NULL;
    fclose(f);
    return found;
}

/* Opens path, which must fail with -EBUSY and a message that names `file`
 * and says who holds the lock: `holder` (a pid), or this process; where
 * the OS does not show locks, only that it is locked. */
static void open_busy(const char *path, unsigned flags, const char *file, pid_t holder)
{
    bool shown = os_shows_locks(file);
    addcow_image *img = NULL;
    int r = addcow_open(path, flags, NULL, &img);
    const char *msg = addcow_last_error();
    if (r != -EBUSY || img != NULL)
        fail_msg("open(%s, %s) returned %d, not -EBUSY: %s", path,
                 flags == ADDCOW_OPEN_RDWR ? "rdwr" : "rdonly", r, msg);
    if (strstr(msg, tu_str("'%s'", file)) == NULL)
        fail_msg("message does not name '%s': %s", file, msg);
    if (strstr(msg, "in use") == NULL)
        fail_msg("message does not say the file is in use: %s", msg);
    const char *who = !shown ? "locked by "
                    : holder == getpid() ? "locked by another handle in this process"
                    : tu_str("locked by process %ld", (long)holder);
    if (!shown)
        print_message("# /proc/locks does not show the locks of '%s': no holder to name\n",
                      file);
    if (strstr(msg, who) == NULL)
        fail_msg("message does not say '%s': %s", who, msg);
    /* The whole message: "<call>: <what>" (API.md). */
    assert_true(strncmp(msg, "addcow_open: ", 13) == 0);
}

static void open_ok_close(const char *path, unsigned flags)
{
    addcow_image *img = tu_open_ok(path, flags, NULL);
    unsigned char b[512];
    assert_int_equal(addcow_pread(img, b, sizeof(b), 0), (int64_t)sizeof(b));
    assert_int_equal(addcow_close(img), 0);
}

/* ---- tests --------------------------------------------------------------------- */

/* A writer in another process: a second writer and a reader are refused,
 * naming the add-cow file and the holder's pid; after it closes, both
 * succeed. */
static void test_writer_refuses_writer_and_reader(void **state)
{
    (void)state;
    const char *acow = make_image("writer");
    struct holder h;
    assert_int_equal(hold_start(&h, acow, ADDCOW_OPEN_RDWR), 0);
    open_busy(acow, ADDCOW_OPEN_RDWR, acow, h.pid);
    open_busy(acow, ADDCOW_OPEN_RDONLY, acow, h.pid);
    hold_stop(&h);
    open_ok_close(acow, ADDCOW_OPEN_RDWR);
    open_ok_close(acow, ADDCOW_OPEN_RDONLY);
}

/* A reader in another process: writers are refused (naming it), readers
 * share. */
static void test_reader_refuses_writer_shares_reader(void **state)
{
    (void)state;
    const char *acow = make_image("reader");
    struct holder h;
    assert_int_equal(hold_start(&h, acow, ADDCOW_OPEN_RDONLY), 0);
    open_busy(acow, ADDCOW_OPEN_RDWR, acow, h.pid);
    open_ok_close(acow, ADDCOW_OPEN_RDONLY);
    /* Two other readers at once, in two processes. */
    struct holder h2;
    assert_int_equal(hold_start(&h2, acow, ADDCOW_OPEN_RDONLY), 0);
    open_ok_close(acow, ADDCOW_OPEN_RDONLY);
    /* Both readers hold it: the refusal may name either or both. */
    addcow_image *img = NULL;
    assert_int_equal(addcow_open(acow, ADDCOW_OPEN_RDWR, NULL, &img), -EBUSY);
    assert_null(img);
    const char *msg = addcow_last_error();
    if (os_shows_locks(acow) && strstr(msg, tu_str("process %ld", (long)h.pid)) == NULL &&
        strstr(msg, tu_str("process %ld", (long)h2.pid)) == NULL &&
        strstr(msg, tu_str("processes %ld", (long)h.pid)) == NULL &&
        strstr(msg, tu_str("processes %ld", (long)h2.pid)) == NULL)
        fail_msg("message names neither reader (%ld, %ld): %s", (long)h.pid, (long)h2.pid,
                 msg);
    hold_stop(&h2);
    hold_stop(&h);
    open_ok_close(acow, ADDCOW_OPEN_RDWR);
}

/* The other way round: this process holds the image, a child's opens are
 * refused until it closes. */
static void test_child_refused_by_parent(void **state)
{
    (void)state;
    const char *acow = make_image("parent-holds");
    addcow_image *img = tu_open_ok(acow, ADDCOW_OPEN_RDWR, NULL);
    struct holder h;
    assert_int_equal(hold_start(&h, acow, ADDCOW_OPEN_RDWR), -EBUSY);
    hold_stop(&h);
    assert_int_equal(hold_start(&h, acow, ADDCOW_OPEN_RDONLY), -EBUSY);
    hold_stop(&h);
    assert_int_equal(addcow_close(img), 0);
    assert_int_equal(hold_start(&h, acow, ADDCOW_OPEN_RDWR), 0);
    hold_stop(&h);
}

/* Two overlays naming one image file: while one is open for writing, the
 * other cannot be opened at all, and the refusal names the image file. */
static void test_two_overlays_one_image_file(void **state)
{
    (void)state;
    const char *dir = tu_subdir("shared-image");
    tu_make_raw(tu_str("%s/base.raw", dir), DISK, 9);
    tu_make_raw(tu_str("%s/shared.raw", dir), DISK, 0);
    char *a = tu_str("%s/a.add-cow", dir), *b = tu_str("%s/b.add-cow", dir);
    char *image = tu_str("%s/shared.raw", dir);
    tu_make_addcow(a, "base.raw", "shared.raw", DISK);
    tu_make_addcow(b, "base.raw", "shared.raw", DISK);

    struct holder h;
    assert_int_equal(hold_start(&h, a, ADDCOW_OPEN_RDWR), 0);
    open_busy(b, ADDCOW_OPEN_RDWR, image, h.pid);
    open_busy(b, ADDCOW_OPEN_RDONLY, image, h.pid);
    hold_stop(&h);

    /* A reader of one overlay: the other cannot write, but can read. */
    assert_int_equal(hold_start(&h, a, ADDCOW_OPEN_RDONLY), 0);
    open_busy(b, ADDCOW_OPEN_RDWR, image, h.pid);
    open_ok_close(b, ADDCOW_OPEN_RDONLY);
    hold_stop(&h);

    /* Nobody: each in turn. */
    open_ok_close(a, ADDCOW_OPEN_RDWR);
    open_ok_close(b, ADDCOW_OPEN_RDWR);
}

/* The same, both in this process: the message says so. */
static void test_two_handles_in_one_process(void **state)
{
    (void)state;
    const char *dir = tu_subdir("one-process");
    tu_make_raw(tu_str("%s/base.raw", dir), DISK, 11);
    tu_make_raw(tu_str("%s/shared.raw", dir), DISK, 0);
    char *a = tu_str("%s/a.add-cow", dir), *b = tu_str("%s/b.add-cow", dir);
    tu_make_addcow(a, "base.raw", "shared.raw", DISK);
    tu_make_addcow(b, "base.raw", "shared.raw", DISK);
    addcow_image *img = tu_open_ok(a, ADDCOW_OPEN_RDWR, NULL);
    open_busy(a, ADDCOW_OPEN_RDWR, a, getpid());
    open_busy(b, ADDCOW_OPEN_RDWR, tu_str("%s/shared.raw", dir), getpid());
    assert_int_equal(addcow_close(img), 0);
    open_ok_close(b, ADDCOW_OPEN_RDWR);
}

/* An overlay holds its backing add-cow image shared: that one cannot be
 * opened for writing meanwhile (the message names it and the holder). */
static void test_backing_held_by_overlay(void **state)
{
    (void)state;
    const char *dir = tu_subdir("backing");
    tu_make_raw(tu_str("%s/base.raw", dir), DISK, 13);
    char *mid = tu_str("%s/mid.add-cow", dir), *top = tu_str("%s/top.add-cow", dir);
    assert_int_equal(addcow_create(mid, 0, "base.raw", "mid.raw", NULL), 0);
    assert_int_equal(addcow_create(top, 0, "mid.add-cow", "top.raw", NULL), 0);
    struct holder h;
    assert_int_equal(hold_start(&h, top, ADDCOW_OPEN_RDWR), 0);
    open_busy(mid, ADDCOW_OPEN_RDWR, mid, h.pid);
    open_ok_close(mid, ADDCOW_OPEN_RDONLY);
    hold_stop(&h);
    open_ok_close(mid, ADDCOW_OPEN_RDWR);
}

/* A holder that dies without closing: the OS drops its locks, the image
 * opens. */
static void test_holder_killed(void **state)
{
    (void)state;
    const char *acow = make_image("killed");
    struct holder h;
    assert_int_equal(hold_start(&h, acow, ADDCOW_OPEN_RDWR), 0);
    open_busy(acow, ADDCOW_OPEN_RDWR, acow, h.pid);
    hold_kill(&h);
    open_ok_close(acow, ADDCOW_OPEN_RDWR);
}

/* locking=off opens despite a holder (API.md: the option overrides). */
static void test_locking_off_overrides(void **state)
{
    (void)state;
    const char *acow = make_image("locking-off");
    struct holder h;
    assert_int_equal(hold_start(&h, acow, ADDCOW_OPEN_RDWR), 0);
    addcow_options *o = tu_options1("locking", "off");
    addcow_image *img = tu_open_ok(acow, ADDCOW_OPEN_RDONLY, o);
    assert_int_equal(addcow_close(img), 0);
    addcow_options_free(o);
    hold_stop(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_refuses_writer_and_reader),
        cmocka_unit_test(test_reader_refuses_writer_shares_reader),
        cmocka_unit_test(test_child_refused_by_parent),
        cmocka_unit_test(test_two_overlays_one_image_file),
        cmocka_unit_test(test_two_handles_in_one_process),
        cmocka_unit_test(test_backing_held_by_overlay),
        cmocka_unit_test(test_holder_killed),
        cmocka_unit_test(test_locking_off_overrides),
    };
    return cmocka_run_group_tests(tests, NULL, tu_free_strings);
}
