/*
 * membackend.h: "memfs", an in-memory file system behind a struct
 * ac_backend_ops table, for tests.
 *
 * A memfs holds named files (path -> bytes + identity) and directories;
 * tests make a fresh one per test, fill it with memfs_put(), plug it into
 * the library with ac_options_set_backend_ops(opts, memfs_ops(fs)) (or take
 * ready options from memfs_options()), and read the results back with
 * memfs_get().  Every call is thread-safe (one mutex per memfs).
 *
 * Beyond plain storage it does two things that real files cannot:
 *
 *  - Fault injection: rules that make the n-th operation of some kinds, or
 *    every such operation on files whose name matches a pattern, fail with
 *    a chosen errno (memfs_fault_add).
 *
 *  - Recording and durability: a log, in order, of every operation that
 *    changes a file or makes it durable (create, write with its bytes,
 *    flush, truncate, punch, rename, unlink), and for each file, besides
 *    its current bytes, a "durable" copy: its bytes as of its last flush.
 *    A crash may leave a file anywhere between the two (any subset of the
 *    writes since its last flush); memfs_clone() and memfs_apply() replay a
 *    recorded log prefix by prefix, and memfs_rec_apply_buf() applies one
 *    record to a plain buffer, for building such crash states;
 *    memfs_crashgen builds them (power-loss states, torn at sectors).
 *
 * Paths are plain strings: no directory structure is checked ("a/b" may
 * exist without "a"); a name marked with memfs_mkdir() is a directory, which
 * open refuses with -EISDIR.  Names stay with their file (identity) across
 * rename; an unlinked file lives on while it is open.
 */
#ifndef AC_MEMBACKEND_H
#define AC_MEMBACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

struct memfs;
struct addcow_options;

/* ---- life cycle -------------------------------------------------------- */

struct memfs *memfs_new(void);
/* Frees everything, also handles the library never closed (check
 * memfs_open_handles() first to catch such leaks). NULL is fine. */
void memfs_free(struct memfs *fs);

/* The backend table of this memfs (valid until memfs_free). */
const struct ac_backend_ops *memfs_ops(struct memfs *fs);
/* New addcow_options (defaults) that use this memfs; addcow_options_free()
 * them.  NULL on ENOMEM. */
struct addcow_options *memfs_options(struct memfs *fs);

/* ---- contents ---------------------------------------------------------- */

/* Creates or replaces the file at path with len bytes of buf; the bytes are
 * durable at once.  Test setup: not counted, not faulted, not logged.
 * 0, or -EISDIR for a directory, -ENOMEM. */
int memfs_put(struct memfs *fs, const char *path, const void *buf, size_t len);
/* A malloc'd copy of the file's current bytes (*len gets the length; a
 * zero-length file gives a non-NULL 1-byte buffer), or NULL if there is no
 * such file (or it is a directory). */
unsigned char *memfs_get(struct memfs *fs, const char *path, size_t *len);
/* The same for the durable view: the bytes as of the file's last flush
 * (or memfs_put, or its creation: empty). */
unsigned char *memfs_get_durable(struct memfs *fs, const char *path, size_t *len);
/* Marks path as a directory (creating the name). 0, or -EEXIST. */
int memfs_mkdir(struct memfs *fs, const char *path);
/* 0: no such name; 1: a file; 2: a directory. */
int memfs_exists(struct memfs *fs, const char *path);
/* The identity number of the file at path (id[1] of ops->identity), or 0. */
uint64_t memfs_file_id(struct memfs *fs, const char *path);
/* Names, in creation order: memfs_count() of them; memfs_name_at(i) is a
 * malloc'd copy (NULL if i is out of range). */
size_t memfs_count(struct memfs *fs);
char *memfs_name_at(struct memfs *fs, size_t i);
/* Handles opened through the backend and not closed yet. */
unsigned memfs_open_handles(struct memfs *fs);

/* ---- behaviour switches ------------------------------------------------ */

/* Caps every preadv/pwritev at max bytes (0: no cap), to exercise the
 * callers' loops over short transfers. */
void memfs_set_max_io(struct memfs *fs, size_t max);
/* false: punch_hole fails with -EOPNOTSUPP (a file system without holes). */
void memfs_set_punch_supported(struct memfs *fs, bool on);
/* false: the table's lock op is NULL (a backend without locks). */
void memfs_set_locking(struct memfs *fs, bool on);

/* ---- operation counts and fault injection ------------------------------ */

/* Operation kinds, as bits of a mask. */
#define MEMFS_OP_OPEN      0x001u
#define MEMFS_OP_READ      0x002u
#define MEMFS_OP_WRITE     0x004u
#define MEMFS_OP_FLUSH     0x008u
#define MEMFS_OP_TRUNCATE  0x010u
#define MEMFS_OP_SIZE      0x020u
#define MEMFS_OP_PUNCH     0x040u
#define MEMFS_OP_LOCK      0x080u
#define MEMFS_OP_IDENTITY  0x100u
#define MEMFS_OP_RENAME    0x200u
#define MEMFS_OP_UNLINK    0x400u
#define MEMFS_OP_ALL       0x7ffu
/* The ones that move or persist data. */
#define MEMFS_OP_DATA (MEMFS_OP_READ | MEMFS_OP_WRITE | MEMFS_OP_FLUSH | \
                       MEMFS_OP_TRUNCATE | MEMFS_OP_PUNCH)

/* "write", "flush", ... for one kind bit. */
const char *memfs_op_name(unsigned op);

/* Operations of the kinds in mask performed since memfs_new() or the last
 * memfs_op_count_reset(), failed ones included (close is not counted). */
uint64_t memfs_op_count(struct memfs *fs, unsigned mask);
void memfs_op_count_reset(struct memfs *fs);

struct memfs_fault {
    unsigned ops;          /* MEMFS_OP_* kinds the rule applies to */
    const char *pattern;   /* fnmatch(3) pattern on the file's name (rename:
                            * either name); NULL: every file */
    uint64_t nth;          /* 0: every matching op fails; n: the n-th matching
                            * op counted from when the rule was added */
    bool sticky;           /* with nth: the n-th and every later one fail */
    int err;               /* positive errno to fail with */
};

/* Adds a rule (copied); up to 8 at once.  0 or -ENOSPC. */
int memfs_fault_add(struct memfs *fs, const struct memfs_fault *rule);
/* Shortcuts: the n-th operation of any kind fails once; every operation of
 * the kinds in mask on files matching pattern fails. */
int memfs_fail_nth(struct memfs *fs, uint64_t n, int err);
int memfs_fail_ops(struct memfs *fs, unsigned mask, const char *pattern, int err);
/* Removes every rule (the hit count stays). */
void memfs_fault_clear(struct memfs *fs);
/* Operations failed by a rule so far. */
uint64_t memfs_fault_hits(struct memfs *fs);
/* The last operation a rule failed: its kind, the file's name (rename: the
 * old name) copied into name (cut to name_size), and its number in the
 * count of all operations.  false if no rule has hit yet. */
bool memfs_fault_last(struct memfs *fs, unsigned *op, char *name, size_t name_size,
                      uint64_t *seq);

/* ---- recording --------------------------------------------------------- */

enum memfs_rec_kind {
    MEMFS_REC_CREATE = 1,  /* open created an empty file `name` */
    MEMFS_REC_WRITE,       /* data[0..length) written at offset */
    MEMFS_REC_FLUSH,       /* the file's current bytes became durable */
    MEMFS_REC_TRUNCATE,    /* length set to offset (new bytes are zeros) */
    MEMFS_REC_PUNCH,       /* [offset, offset + length) zeroed, length kept */
    MEMFS_REC_RENAME,      /* name -> new_name */
    MEMFS_REC_UNLINK,      /* name removed */
};

struct memfs_rec {
    enum memfs_rec_kind kind;
    uint64_t file;             /* identity number of the file */
    char *name;                /* its name at the time (rename: the old one) */
    char *new_name;            /* rename: the new name; else NULL */
    uint64_t offset;           /* write, punch: start; truncate: new length */
    uint64_t length;           /* write, punch: bytes */
    unsigned char *data;       /* write: the bytes; else NULL */
    uint64_t old_length;       /* the file's length before the operation */
};

/* Clears the log and starts logging successful operations. */
void memfs_record_start(struct memfs *fs);
void memfs_record_stop(struct memfs *fs);
size_t memfs_rec_count(struct memfs *fs);
/* The i-th record; stays valid until the log is cleared or the memfs freed. */
const struct memfs_rec *memfs_rec_at(struct memfs *fs, size_t i);
const char *memfs_rec_kind_name(enum memfs_rec_kind k);

/* A copy of the files (current and durable bytes, names, identities);
 * no handles, rules, counts or log.  NULL on ENOMEM. */
struct memfs *memfs_clone(struct memfs *fs);
/* Replays one record on a memfs (a clone of the state the log started
 * from): same effect as the original operation, a flush included.
 * Records for files no longer there are ignored.  0 or -errno. */
int memfs_apply(struct memfs *fs, const struct memfs_rec *r);
/* Applies a write, truncate or punch record to a plain malloc'd buffer
 * (realloc'd as needed); other kinds change nothing.  0 or -ENOMEM. */
int memfs_rec_apply_buf(const struct memfs_rec *r, unsigned char **buf, size_t *len);

/* ---- power-loss states ------------------------------------------------- */

/* What a power loss keeps of the changes (write, truncate, punch) made to a
 * file since its last flush.  The disk stores whole 512-byte sectors, each
 * taken from a page cache that already holds every earlier change to it, in
 * any order: so each sector of the file shows the state after some prefix of
 * the changes that touched it.  The file's length (metadata) is the length
 * after some prefix, in order, of the changes that set it (truncates, writes
 * past the end); a truncate is all-or-nothing, with that prefix. */
enum memfs_loss {
    MEMFS_LOSS_NONE = 0,    /* none: the file as of its last flush */
    MEMFS_LOSS_ALL,         /* all: the file as written */
    MEMFS_LOSS_TORN,        /* a random subset of the writes and punches
                             * lands, each whole or torn (a random subset of
                             * its sectors); a random prefix of the length
                             * changes */
};

/* What one power-loss state kept, summed over the files. */
struct memfs_loss_stats {
    size_t pending;         /* changes since the files' last flushes */
    size_t landed;          /* changes of which at least one sector landed */
    size_t torn;            /* changes of which some sectors, not all, landed */
};

/* One file after a power loss: its durable bytes (dlen of them) with the
 * records pend[0..n) (its writes, truncates and punches since that flush,
 * in order; other kinds are skipped) kept as mode says, random choices
 * drawn from *rng (an xorshift64* state, as tu_rand's).  *out gets a
 * malloc'd buffer, *out_len its length; st (may be NULL) is added to.
 * 0 or -ENOMEM. */
int memfs_loss_file(const unsigned char *durable, size_t dlen,
                    const struct memfs_rec *const *pend, size_t n, enum memfs_loss mode,
                    uint64_t *rng, unsigned char **out, size_t *out_len,
                    struct memfs_loss_stats *st);

/* A crash-state generator: replays a recorded log (recs[0..n), which may be
 * an edited copy of memfs_rec_at()'s records; the records must outlive the
 * generator) on a clone of `start` (the files before the first record),
 * keeping for each file the records since its last flush. */
struct memfs_crashgen;
struct memfs_crashgen *memfs_crashgen_new(struct memfs *start,
                                          const struct memfs_rec *const *recs, size_t n);
void memfs_crashgen_free(struct memfs_crashgen *g);
/* Moves to the point after the first k records (k never goes back).
 * 0, -EINVAL (k past the log or behind the current point), or the -errno
 * of a record that does not replay. */
int memfs_crashgen_seek(struct memfs_crashgen *g, size_t k);
/* The current point (records replayed). */
size_t memfs_crashgen_pos(const struct memfs_crashgen *g);
/* Records of the file at path since its last flush, at the current point
 * (0 for no such file). */
size_t memfs_crashgen_pending(struct memfs_crashgen *g, const char *path);
/* Writes into dst (memfs_put: creating or replacing each name, durable)
 * every file of the current point as a power loss there could leave it
 * (memfs_loss_file for each).  Directories are made too.  0 or -errno. */
int memfs_crashgen_fill(struct memfs_crashgen *g, struct memfs *dst, enum memfs_loss mode,
                        uint64_t *rng, struct memfs_loss_stats *st);

#endif
