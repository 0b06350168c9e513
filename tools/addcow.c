/*
 * addcow: the command-line tool for add-cow images.
 *
 * Copyright (c) 2026 The libaddcow authors.  MIT licence: see COPYING.
 *
 * Built only on the public API (<addcow.h>), linked with the shared
 * library.  `check` and the "as stored" paths of `info` also read the
 * add-cow header directly: its layout is the public on-disk format
 * (docs/contract/FORMAT.md), not a library internal.  See addcow(1).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <addcow.h>

/* The on-disk format (docs/contract/FORMAT.md). */
#define HDR_MAGIC        UINT64_C(0x4144445F434F57FF)
#define HDR_VERSION      1u
#define HDR_OFF_VERSION  8
#define HDR_OFF_BACKING  12
#define HDR_OFF_IMAGE    1036
#define HDR_OFF_SIZE     2060
#define HDR_PATH_FIELD   1024u
#define HDR_SIZE         2068u
#define SECTOR           512u
#define MAX_VIRTUAL_SIZE UINT64_C(0x7FFFFFFFFFFFFE00)

/* Longest backing chain we follow (the library refuses more than 16
 * add-cow images, then the raw file at the bottom). */
#define MAX_CHAIN        32

#define IO_CHUNK         (1024u * 1024u)
#define ZERO_BLOCK       4096u          /* convert's hole granularity */

/* Exit codes of check, as qemu-img check's. */
#define CHECK_OK         0
#define CHECK_ERROR      1
#define CHECK_CORRUPT    2
#define CHECK_HARMLESS   3

#if defined(__GNUC__)
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#define NORETURN __attribute__((noreturn))
#else
#define PRINTF_LIKE(f, a)
#define NORETURN
#endif

static const char *cmd_name = "";       /* the subcommand, for messages */

/* ---- messages ------------------------------------------------------------ */

/* "addcow: SUBCOMMAND: message" on stderr. */
static void PRINTF_LIKE(1, 2) error_msg(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "addcow: ");
    if (cmd_name[0] != '\0')
        fprintf(stderr, "%s: ", cmd_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The library's message for the call that just failed. */
static int lib_error(void)
{
    error_msg("%s", addcow_last_error());
    return 1;
}

static int PRINTF_LIKE(1, 2) usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "addcow: ");
    if (cmd_name[0] != '\0')
        fprintf(stderr, "%s: ", cmd_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'addcow %s%s--help'.\n", cmd_name, cmd_name[0] != '\0' ? " " : "");
    return 1;
}

static NORETURN void out_of_memory(void)
{
    error_msg("out of memory");
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n != 0 ? n : 1);
    if (p == NULL)
        out_of_memory();
    return p;
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (p == NULL)
        out_of_memory();
    return p;
}

/* ---- numbers ------------------------------------------------------------- */

/* A byte count: decimal digits, then optionally one of K, M, G, T, P, E
 * (powers of 1024, either case).  0 or -1 (invalid or too large). */
static int parse_size(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    const char *p = s;

    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (*p != '\0') {
        static const char units[] = "KMGTPE";
        const char *u = strchr(units, *p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
        if (u == NULL || p[1] != '\0')
            return -1;
        for (int shift = (int)(u - units) + 1; shift > 0; shift--) {
            if (v > UINT64_MAX / 1024)
                return -1;
            v *= 1024;
        }
    }
    *out = v;
    return 0;
}

/* A byte value for -P: 0..255, decimal or 0x hex. */
static int parse_pattern(const char *s, unsigned char *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0' || v < 0 || v > 255)
        return -1;
    *out = (unsigned char)v;
    return 0;
}

/* "1.5 GiB" */
static void human_size(char *buf, size_t len, uint64_t n)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    int u = 0;
    double v = (double)n;
    while (v >= 1024.0 && u < 6) {
        v /= 1024.0;
        u++;
    }
    if (u == 0) {
        snprintf(buf, len, "%" PRIu64 " B", n);
        return;
    }
    snprintf(buf, len, "%.2f", v);
    size_t l = strlen(buf);     /* "1.50" -> "1.5", "2.00" -> "2" */
    while (l > 0 && buf[l - 1] == '0')
        buf[--l] = '\0';
    if (l > 0 && buf[l - 1] == '.')
        buf[--l] = '\0';
    snprintf(buf + l, len - l, " %s", units[u]);
}

/* ---- paths (docs/contract/FORMAT.md, "Paths") ----------------------------------- */

static bool has_protocol(const char *path)
{
    size_t n = strcspn(path, ":/");
    return path[n] == ':';
}

/* A stored path as the library opens it: absolute as is, relative to the
 * folder of the add-cow file. */
static char *resolve_path(const char *addcow_path, const char *stored)
{
    const char *slash = strrchr(addcow_path, '/');
    char *out;
    if (stored[0] == '/' || slash == NULL)
        return xstrdup(stored);
    size_t dirlen = (size_t)(slash - addcow_path);
    out = xmalloc(dirlen + 1 + strlen(stored) + 1);
    if (dirlen == 0)
        sprintf(out, "/%s", stored);
    else
        sprintf(out, "%.*s/%s", (int)dirlen, addcow_path, stored);
    return out;
}

/* The length of a file or block device, or -errno. */
static int64_t file_length(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    off_t end = lseek(fd, 0, SEEK_END);
    int err = errno;
    close(fd);
    return end < 0 ? -err : (int64_t)end;
}

/* Reads up to len bytes at offset 0 of path; the count or -errno. */
static ssize_t read_head(const char *path, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, (char *)buf + got, len - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = errno;
            close(fd);
            return -err;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    return (ssize_t)got;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        buf = (const char *)buf + n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* ---- JSON ---------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s, or 0. */
static size_t utf8_len(const unsigned char *s)
{
    size_t n;
    uint32_t c;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xE0) == 0xC0) {
        n = 2;
        c = s[0] & 0x1Fu;
    } else if ((s[0] & 0xF0) == 0xE0) {
        n = 3;
        c = s[0] & 0x0Fu;
    } else if ((s[0] & 0xF8) == 0xF0) {
        n = 4;
        c = s[0] & 0x07u;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3Fu);
    }
    if ((n == 2 && c < 0x80) || (n == 3 && c < 0x800) || (n == 4 && c < 0x10000) ||
        c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    return n;
}

/* A JSON string; bytes that are not UTF-8 become U+FFFD. */
static void json_string(FILE *f, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    fputc('"', f);
    while (*s != '\0') {
        if (*s == '"' || *s == '\\') {
            fprintf(f, "\\%c", *s++);
        } else if (*s == '\n') {
            fputs("\\n", f);
            s++;
        } else if (*s == '\t') {
            fputs("\\t", f);
            s++;
        } else if (*s < 0x20 || *s == 0x7F) {
            fprintf(f, "\\u%04x", *s++);
        } else {
            size_t n = utf8_len(s);
            if (n == 0) {
                fputs("\\ufffd", f);
                s++;
            } else {
                fwrite(s, 1, n, f);
                s += n;
            }
        }
    }
    fputc('"', f);
}

static void json_string_or_null(FILE *f, const char *s)
{
    if (s == NULL)
        fputs("null", f);
    else
        json_string(f, s);
}

/* ---- progress -------------------------------------------------------------- */

struct progress {
    bool enabled;       /* -p and stderr is a terminal */
    int shown;          /* hundredths of a percent last drawn, -1: none */
};

static void progress_init(struct progress *p, bool wanted)
{
    p->enabled = wanted && isatty(STDERR_FILENO);
    p->shown = -1;
}

static void progress_show(struct progress *p, uint64_t done, uint64_t total)
{
    if (!p->enabled)
        return;
    int v = 10000;
    if (total > 0 && done < total)
        v = (int)((double)done / (double)total * 10000.0);
    if (v == p->shown)
        return;
    p->shown = v;
    fprintf(stderr, "\r    (%d.%02d/100%%)", v / 100, v % 100);
    fflush(stderr);
}

static void progress_end(struct progress *p, bool completed)
{
    if (!p->enabled)
        return;
    if (completed)
        progress_show(p, 1, 1);
    if (p->shown >= 0)
        fputc('\n', stderr);
}

static int progress_cb(uint64_t done, uint64_t total, void *opaque)
{
    progress_show(opaque, done, total);
    return 0;
}

/* ---- opening ----------------------------------------------------------------- */

static addcow_image *open_image(const char *path, unsigned flags)
{
    addcow_image *img;
    if (addcow_open(path, flags, NULL, &img) < 0) {
        lib_error();
        return NULL;
    }
    return img;
}

/* Closes, reporting a failed final flush; returns the exit code. */
static int close_image(addcow_image *img, int status)
{
    if (addcow_close(img) < 0) {
        lib_error();
        return 1;
    }
    return status;
}

/* ---- the backing chain ------------------------------------------------------ */

struct level {
    char *path;                 /* as opened: resolved from the level above */
    bool addcow;                /* else a raw file */
    addcow_image *img;          /* add-cow levels: a read-only handle */
    uint64_t size;
    int64_t allocated;          /* add-cow levels */
    const char *image_stored;   /* add-cow levels, owned by img */
    char *image_resolved;
    const char *backing_stored; /* NULL: none */
    char *backing_resolved;
};

struct chain {
    int n;
    struct level lv[MAX_CHAIN];
};

static void chain_free(struct chain *c)
{
    for (int i = 0; i < c->n; i++) {
        struct level *l = &c->lv[i];
        addcow_close(l->img);
        free(l->path);
        free(l->image_resolved);
        free(l->backing_resolved);
    }
    c->n = 0;
}

/* Opens path and every add-cow image below it, read-only; the bottom raw
 * file, if any, is a level without a handle. */
static int chain_open(const char *path, struct chain *c)
{
    char *next = xstrdup(path);
    bool next_addcow = true;

    c->n = 0;
    while (next != NULL) {
        if (c->n == MAX_CHAIN) {
            free(next);
            error_msg("backing chain of '%s' is deeper than %d files", path, MAX_CHAIN);
            chain_free(c);
            return -1;
        }
        struct level *l = &c->lv[c->n++];
        memset(l, 0, sizeof(*l));
        l->path = next;
        next = NULL;
        if (!next_addcow) {
            int64_t len = file_length(l->path);
            if (len < 0) {
                error_msg("backing file '%s': %s", l->path, strerror((int)-len));
                chain_free(c);
                return -1;
            }
            l->size = (uint64_t)len;
            break;
        }
        l->addcow = true;
        if (addcow_open(l->path, ADDCOW_OPEN_RDONLY, NULL, &l->img) < 0) {
            lib_error();
            chain_free(c);
            return -1;
        }
        l->size = (uint64_t)addcow_get_size(l->img);
        l->allocated = addcow_get_allocated_bytes(l->img);
        l->image_stored = addcow_get_image_file(l->img);
        l->image_resolved = resolve_path(l->path, l->image_stored);
        l->backing_stored = addcow_get_backing_file(l->img);
        if (l->allocated < 0) {
            lib_error();
            chain_free(c);
            return -1;
        }
        if (l->backing_stored != NULL) {
            unsigned char head[HDR_SIZE];
            l->backing_resolved = resolve_path(l->path, l->backing_stored);
            ssize_t n = read_head(l->backing_resolved, head, sizeof(head));
            if (n < 0) {
                error_msg("backing file '%s': %s", l->backing_resolved, strerror((int)-n));
                chain_free(c);
                return -1;
            }
            next_addcow = addcow_probe(head, (size_t)n) == 1;
            next = xstrdup(l->backing_resolved);
        }
    }
    return 0;
}

/* ---- subcommands -------------------------------------------------------------- */

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *synopsis;
    const char *help;
};

static const struct command *find_command(const char *name);
static void print_help(const struct command *c);

/* getopt_long for a subcommand: argv[0] is its name.  Returns the option,
 * -1 at the end, 'h' for --help, '?' after printing a usage error. */
static int next_opt(int argc, char **argv, const char *shortopts, const struct option *longopts)
{
    int c = getopt_long(argc, argv, shortopts, longopts, NULL);
    /* optopt: the short option's letter, 0 for an unknown long option, or
     * a long option's value (>= 1000) */
    if (optopt >= 1000)
        optopt = 0;
    if (c == '?') {
        if (optopt != 0)
            usage_error("unknown option '-%c'", optopt);
        else
            usage_error("unknown option '%s'", argv[optind - 1]);
    } else if (c == ':') {
        if (optopt != 0)
            usage_error("option '-%c' needs a value", optopt);
        else
            usage_error("option '%s' needs a value", argv[optind - 1]);
        c = '?';
    }
    return c;
}

enum output_format { OUT_HUMAN, OUT_JSON };

static int parse_output(const char *s, enum output_format *f)
{
    if (strcmp(s, "human") == 0)
        *f = OUT_HUMAN;
    else if (strcmp(s, "json") == 0)
        *f = OUT_JSON;
    else {
        usage_error("--output: '%s' is neither 'human' nor 'json'", s);
        return -1;
    }
    return 0;
}

#define HELP_OPTION { "help", no_argument, NULL, 'h' }
#define END_OPTIONS { NULL, 0, NULL, 0 }
#define OUTPUT_OPTION_VAL 1000
#define SHRINK_OPTION_VAL 1001
#define RAW_OPTION_VAL    1002

/* ---- create ---- */

/* The default image file name, stored relative to FILE's folder: FILE's
 * last component with ".add-cow" replaced by ".raw", or with ".raw" added. */
static char *default_image_name(const char *file)
{
    const char *base = strrchr(file, '/');
    base = base != NULL ? base + 1 : file;
    size_t len = strlen(base);
    static const char suffix[] = ".add-cow";
    if (len > strlen(suffix) && strcmp(base + len - strlen(suffix), suffix) == 0)
        len -= strlen(suffix);
    char *out = xmalloc(len + 5);
    memcpy(out, base, len);
    strcpy(out + len, ".raw");
    return out;
}

static int cmd_create(int argc, char **argv)
{
    static const struct option opts[] = { HELP_OPTION, END_OPTIONS };
    const char *backing = NULL, *image = NULL;
    int c;

    while ((c = next_opt(argc, argv, ":hb:i:", opts)) != -1) {
        switch (c) {
        case 'h': print_help(find_command("create")); return 0;
        case 'b': backing = optarg; break;
        case 'i': image = optarg; break;
        default: return 1;
        }
    }
    int nargs = argc - optind;
    if (nargs < 1 || nargs > 2)
        return usage_error("expected FILE [SIZE]");
    const char *file = argv[optind];
    uint64_t size = 0;
    if (nargs == 2) {
        if (parse_size(argv[optind + 1], &size) < 0)
            return usage_error("invalid size '%s'", argv[optind + 1]);
        if (size == 0 && backing != NULL)
            return usage_error("size 0 with a backing file: leave SIZE out to take the "
                               "backing file's size");
    } else if (backing == NULL) {
        return usage_error("SIZE is needed when there is no backing file");
    }
    if (file[0] == '\0' || file[strlen(file) - 1] == '/')
        return usage_error("'%s' is not a file name", file);
    char *def = image == NULL ? default_image_name(file) : NULL;
    int r = addcow_create(file, size, backing, image != NULL ? image : def, NULL);
    free(def);
    return r < 0 ? lib_error() : 0;
}

/* ---- info ---- */

static void info_json_level(const struct level *l, const char *indent)
{
    printf("%s\"filename\": ", indent);
    json_string(stdout, l->path);
    printf(",\n%s\"format\": \"%s\",\n", indent, l->addcow ? "add-cow" : "raw");
    printf("%s\"virtual-size\": %" PRIu64, indent, l->size);
    if (!l->addcow)
        return;
    printf(",\n%s\"allocated-bytes\": %" PRId64 ",\n", indent, l->allocated);
    printf("%s\"image-filename\": ", indent);
    json_string(stdout, l->image_stored);
    printf(",\n%s\"full-image-filename\": ", indent);
    json_string(stdout, l->image_resolved);
    printf(",\n%s\"backing-filename\": ", indent);
    json_string_or_null(stdout, l->backing_stored);
    printf(",\n%s\"full-backing-filename\": ", indent);
    json_string_or_null(stdout, l->backing_resolved);
}

static int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {
        HELP_OPTION, { "output", required_argument, NULL, OUTPUT_OPTION_VAL }, END_OPTIONS
    };
    enum output_format fmt = OUT_HUMAN;
    int c;

    while ((c = next_opt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case 'h': print_help(find_command("info")); return 0;
        case OUTPUT_OPTION_VAL:
            if (parse_output(optarg, &fmt) < 0)
                return 1;
            break;
        default: return 1;
        }
    }
    if (argc - optind != 1)
        return usage_error("expected one FILE");

    struct chain *ch = xmalloc(sizeof(*ch));
    if (chain_open(argv[optind], ch) < 0) {
        free(ch);
        return 1;
    }
    const struct level *top = &ch->lv[0];
    const char *bfmt = ch->n > 1 ? (ch->lv[1].addcow ? "add-cow" : "raw") : NULL;
    if (fmt == OUT_JSON) {
        printf("{\n");
        info_json_level(top, "    ");
        printf(",\n    \"backing-filename-format\": ");
        json_string_or_null(stdout, bfmt);
        printf(",\n    \"chain\": [");
        for (int i = 0; i < ch->n; i++) {
            printf("%s\n        {\n", i > 0 ? "," : "");
            info_json_level(&ch->lv[i], "            ");
            printf("\n        }");
        }
        printf("\n    ]\n}\n");
    } else {
        char h[64];
        printf("image: %s\n", top->path);
        printf("file format: add-cow\n");
        human_size(h, sizeof(h), top->size);
        printf("virtual size: %s (%" PRIu64 " bytes)\n", h, top->size);
        human_size(h, sizeof(h), (uint64_t)top->allocated);
        printf("allocated: %s (%" PRId64 " bytes)\n", h, top->allocated);
        printf("image file: %s\n", top->image_stored);
        printf("image file (resolved): %s\n", top->image_resolved);
        if (top->backing_stored != NULL) {
            printf("backing file: %s\n", top->backing_stored);
            printf("backing file (resolved): %s\n", top->backing_resolved);
            printf("backing file format: %s\n", bfmt);
        } else {
            printf("backing file: none\n");
        }
        printf("backing chain:\n");
        for (int i = 0; i < ch->n; i++) {
            const struct level *l = &ch->lv[i];
            printf("  %d: %s (%s, %" PRIu64 " bytes", i, l->path,
                   l->addcow ? "add-cow" : "raw", l->size);
            if (l->addcow)
                printf(", %" PRId64 " allocated, image file %s", l->allocated,
                       l->image_resolved);
            printf(")\n");
        }
    }
    chain_free(ch);
    free(ch);
    return fflush(stdout) == 0 ? 0 : (error_msg("writing output: %s", strerror(errno)), 1);
}

/* ---- map ---- */

struct map_entry {
    uint64_t start, length;
    int depth;
    bool present, zero, data;
    const char *file;           /* where the data is; NULL for zero runs */
};

struct mapper {
    enum output_format fmt;
    bool have;                  /* cur holds a run not printed yet */
    bool first;
    struct map_entry cur;
};

static void map_print(struct mapper *m, const struct map_entry *e)
{
    if (m->fmt == OUT_JSON) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d, "
               "\"present\": %s, \"zero\": %s, \"data\": %s",
               m->first ? "" : ",\n", e->start, e->length, e->depth,
               e->present ? "true" : "false", e->zero ? "true" : "false",
               e->data ? "true" : "false");
        if (e->data)
            printf(", \"offset\": %" PRIu64, e->start);
        printf("}");
    } else {
        printf("%-20" PRIu64 " %-20" PRIu64 " %-6d %-10s %s\n", e->start, e->length, e->depth,
               e->data ? (e->depth == 0 ? "allocated" : "backing") : "zero",
               e->file != NULL ? e->file : "-");
    }
    m->first = false;
}

/* Adds a run, merged with the previous one when nothing but the length
 * would tell them apart. */
static void map_add(struct mapper *m, const struct map_entry *e)
{
    struct map_entry *c = &m->cur;
    if (m->have && c->start + c->length == e->start && c->depth == e->depth &&
        c->present == e->present && c->zero == e->zero && c->data == e->data &&
        c->file == e->file) {
        c->length += e->length;
        return;
    }
    if (m->have)
        map_print(m, c);
    *c = *e;
    m->have = true;
}

/* Maps [off, off + len) of chain level k. */
static int map_level(const struct chain *ch, int k, uint64_t off, uint64_t len, struct mapper *m)
{
    const struct level *l = &ch->lv[k];
    while (len > 0) {
        uint64_t run;
        int st = addcow_block_status(l->img, off, len, &run);
        if (st < 0)
            return lib_error();
        if (run == 0 || run > len) {
            error_msg("block status of '%s' at %" PRIu64 " returned a run of %" PRIu64
                      " bytes", l->path, off, run);
            return 1;
        }
        struct map_entry e = { .start = off, .length = run, .depth = k };
        if (st & ADDCOW_STATUS_ALLOCATED) {
            e.present = e.data = true;
            e.file = l->image_resolved;
            map_add(m, &e);
        } else if (st & ADDCOW_STATUS_ZERO) {
            e.zero = true;
            map_add(m, &e);
        } else if (k + 1 < ch->n && ch->lv[k + 1].addcow) {
            int r = map_level(ch, k + 1, off, run, m);
            if (r != 0)
                return r;
        } else {
            e.depth = k + 1;
            e.present = e.data = true;
            e.file = l->backing_resolved;
            map_add(m, &e);
        }
        off += run;
        len -= run;
    }
    return 0;
}

static int cmd_map(int argc, char **argv)
{
    static const struct option opts[] = {
        HELP_OPTION, { "output", required_argument, NULL, OUTPUT_OPTION_VAL }, END_OPTIONS
    };
    struct mapper m = { .fmt = OUT_HUMAN, .first = true };
    int c;

    while ((c = next_opt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case 'h': print_help(find_command("map")); return 0;
        case OUTPUT_OPTION_VAL:
            if (parse_output(optarg, &m.fmt) < 0)
                return 1;
            break;
        default: return 1;
        }
    }
    if (argc - optind != 1)
        return usage_error("expected one FILE");

    struct chain *ch = xmalloc(sizeof(*ch));
    if (chain_open(argv[optind], ch) < 0) {
        free(ch);
        return 1;
    }
    if (m.fmt == OUT_JSON)
        printf("[");
    else
        printf("%-20s %-20s %-6s %-10s %s\n", "Start", "Length", "Depth", "Status", "File");
    int r = ch->lv[0].size > 0 ? map_level(ch, 0, 0, ch->lv[0].size, &m) : 0;
    if (r == 0) {
        if (m.have)
            map_print(&m, &m.cur);
        if (m.fmt == OUT_JSON)
            printf("]\n");
    }
    chain_free(ch);
    free(ch);
    if (fflush(stdout) != 0) {
        error_msg("writing output: %s", strerror(errno));
        return 1;
    }
    return r;
}

/* ---- check ---- */

struct checker {
    bool repair;
    int errors;         /* corruptions left */
    int harmless;       /* harmless issues left */
    int repaired;
};

static void PRINTF_LIKE(2, 3) found(struct checker *ck, const char *fmt, ...)
{
    va_list ap;
    ck->errors++;
    printf("ERROR: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

static void PRINTF_LIKE(2, 3) warn_found(struct checker *ck, const char *fmt, ...)
{
    va_list ap;
    ck->harmless++;
    printf("Warning: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

static void PRINTF_LIKE(1, 2) note(const char *fmt, ...)
{
    va_list ap;
    printf("Note: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

/* After a successful repair of one issue of the kind counted in *counter. */
static void PRINTF_LIKE(3, 4) repaired(struct checker *ck, int *counter, const char *fmt, ...)
{
    va_list ap;
    (*counter)--;
    ck->repaired++;
    printf("Repaired: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

static uint64_t get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

static uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Checks one path field: NUL-terminated, zero after the NUL.  Returns the
 * path (in the header buffer) or NULL when corrupt. */
static const char *check_path_field(struct checker *ck, int fd, unsigned char *hdr,
                                    unsigned off, const char *what)
{
    unsigned char *f = hdr + off;
    unsigned char *nul = memchr(f, 0, HDR_PATH_FIELD);
    if (nul == NULL) {
        found(ck, "header: the %s field has no NUL in its %u bytes", what, HDR_PATH_FIELD);
        return NULL;
    }
    size_t used = (size_t)(nul - f);
    size_t rest = HDR_PATH_FIELD - used;
    bool dirty = false;
    for (size_t i = 0; i < rest; i++)
        dirty |= nul[i] != 0;
    if (dirty) {
        warn_found(ck, "header: the %s field has non-zero bytes after its NUL "
                   "(ignored on read)", what);
        if (ck->repair) {
            memset(nul, 0, rest);
            int r = pwrite_full(fd, nul, rest, off + used);
            if (r == 0 && fdatasync(fd) < 0)
                r = -errno;
            if (r < 0)
                printf("Could not repair: writing the header: %s\n", strerror(-r));
            else
                repaired(ck, &ck->harmless, "zeroed the bytes after the %s field's NUL", what);
        }
    }
    return (const char *)f;
}

/* The library's own verdict: does the image open?  Returns -1 when the
 * check cannot be completed (the image is in use). */
static int check_library_open(struct checker *ck, const char *file, addcow_image *held)
{
    addcow_image *img = held;
    int r = img == NULL ? addcow_open(file, ADDCOW_OPEN_RDONLY, NULL, &img) : 0;
    if (r < 0) {
        if (r == -EBUSY) {
            error_msg("%s", addcow_last_error());
            return -1;
        }
        found(ck, "the image does not open: %s", addcow_last_error());
        return 0;
    }
    int64_t size = addcow_get_size(img);
    int64_t alloc = addcow_get_allocated_bytes(img);
    if (alloc < 0)
        found(ck, "reading the bitmap: %s", addcow_last_error());
    else
        printf("%" PRId64 "/%" PRId64 " bytes = %.2f%% allocated\n", alloc, size,
               size > 0 ? 100.0 * (double)alloc / (double)size : 0.0);
    if (img != held)
        addcow_close(img);
    return 0;
}

/* Returns the exit code. */
static int check_image(struct checker *ck, const char *file)
{
    int r;
    int fd = open(file, (ck->repair ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
        error_msg("'%s': %s", file, strerror(errno));
        return CHECK_ERROR;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        error_msg("'%s': %s", file, strerror(errno));
        close(fd);
        return CHECK_ERROR;
    }
    if (!S_ISREG(st.st_mode)) {
        error_msg("'%s' is not a regular file", file);
        close(fd);
        return CHECK_ERROR;
    }

    /* With -r, an exclusive handle keeps writers away while we repair.  An
     * image the library cannot open cannot be open elsewhere either. */
    addcow_image *held = NULL;
    if (ck->repair && (r = addcow_open(file, ADDCOW_OPEN_RDWR, NULL, &held)) < 0) {
        held = NULL;
        if (r == -EBUSY) {
            error_msg("%s", addcow_last_error());
            close(fd);
            return CHECK_ERROR;
        }
    }

    int status = CHECK_ERROR;
    unsigned char hdr[HDR_SIZE];
    size_t got = 0;
    while (got < sizeof(hdr)) {
        ssize_t n = pread(fd, hdr + got, sizeof(hdr) - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            error_msg("reading '%s': %s", file, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (got < 8 || get_be64(hdr) != HDR_MAGIC) {
        error_msg("'%s' is not an add-cow image (no add-cow magic)", file);
        goto out;
    }
    if (got < 12) {
        found(ck, "header: the file is only %zu bytes long (a header is %u)", got, HDR_SIZE);
        goto summary;
    }
    uint32_t version = get_be32(hdr + HDR_OFF_VERSION);
    if (version != HDR_VERSION) {
        error_msg("'%s': add-cow version %" PRIu32 " is not supported (only version %u)",
                  file, version, HDR_VERSION);
        goto out;
    }
    if (got < HDR_SIZE) {
        found(ck, "header: the file is only %zu bytes long (a header is %u)", got, HDR_SIZE);
        goto summary;
    }

    const char *backing = check_path_field(ck, fd, hdr, HDR_OFF_BACKING, "backing_file");
    const char *image = check_path_field(ck, fd, hdr, HDR_OFF_IMAGE, "image_file");
    if (image != NULL && image[0] == '\0') {
        found(ck, "header: the image_file field is empty");
        image = NULL;
    }
    uint64_t hsize = get_be64(hdr + HDR_OFF_SIZE);
    bool size_ok = hsize <= MAX_VIRTUAL_SIZE;
    if (!size_ok) {
        found(ck, "header: size %" PRIu64 " is larger than the largest virtual size %" PRIu64,
              hsize, MAX_VIRTUAL_SIZE);
    } else if (hsize % SECTOR != 0) {
        uint64_t down = hsize / SECTOR * SECTOR;
        warn_found(ck, "header: size %" PRIu64 " is not a multiple of 512 (the virtual size "
                   "is %" PRIu64 ")", hsize, down);
        if (ck->repair) {
            unsigned char be[8];
            put_be64(be, down);
            r = pwrite_full(fd, be, 8, HDR_OFF_SIZE);
            if (r == 0 && fdatasync(fd) < 0)
                r = -errno;
            if (r < 0)
                printf("Could not repair: writing the header: %s\n", strerror(-r));
            else
                repaired(ck, &ck->harmless, "set the header's size to %" PRIu64, down);
        }
    }
    bool files_ok = backing != NULL && image != NULL;
    if (!size_ok)
        goto summary;

    uint64_t sectors = hsize / SECTOR;
    uint64_t vsize = sectors * SECTOR;
    uint64_t bitmap_len = (sectors + 7) / 8;
    uint64_t need = HDR_SIZE + bitmap_len;
    uint64_t flen = (uint64_t)st.st_size;
    bool bitmap_ok = true;
    if (flen < need) {
        found(ck, "the add-cow file is %" PRIu64 " bytes long; the header and the bitmap "
              "of %" PRIu64 " sectors need %" PRIu64, flen, sectors, need);
        bitmap_ok = false;
        if (ck->repair) {
            if (ftruncate(fd, (off_t)need) < 0 || fdatasync(fd) < 0) {
                printf("Could not repair: extending the add-cow file: %s\n", strerror(errno));
            } else {
                repaired(ck, &ck->errors, "extended the add-cow file to %" PRIu64 " bytes with "
                         "zero bitmap bytes: sectors %" PRIu64 " and up now read from the "
                         "backing file (or as zeros)", need, (flen - HDR_SIZE) * 8);
                bitmap_ok = true;
            }
        }
    } else if (flen > need) {
        note("the add-cow file has %" PRIu64 " bytes after the bitmap (ignored)", flen - need);
    }

    if (bitmap_ok && sectors % 8 != 0) {
        unsigned char last;
        ssize_t n = pread(fd, &last, 1, (off_t)(need - 1));
        if (n != 1) {
            error_msg("reading '%s': %s", file, n < 0 ? strerror(errno) : "short read");
            goto out;
        }
        unsigned char stray = (unsigned char)(last & (0xFFu << (sectors % 8)));
        if (stray != 0) {
            warn_found(ck, "bitmap: bits are set past the last sector (byte %" PRIu64
                       " is 0x%02x; only its low %u bits count)", need - 1, last,
                       (unsigned)(sectors % 8));
            if (ck->repair) {
                last &= (unsigned char)~stray;
                r = pwrite_full(fd, &last, 1, need - 1);
                if (r == 0 && fdatasync(fd) < 0)
                    r = -errno;
                if (r < 0)
                    printf("Could not repair: writing the bitmap: %s\n", strerror(-r));
                else
                    repaired(ck, &ck->harmless, "cleared the bits past the last sector");
            }
        }
    }

    if (image != NULL) {
        if (has_protocol(image)) {
            note("image file '%s' is not a local file; not checked", image);
        } else {
            char *path = resolve_path(file, image);
            struct stat ist;
            if (stat(path, &ist) < 0) {
                found(ck, "image file '%s': %s", path, strerror(errno));
                files_ok = false;
            } else if (S_ISDIR(ist.st_mode)) {
                found(ck, "image file '%s' is a directory", path);
                files_ok = false;
            } else if (ist.st_dev == st.st_dev && ist.st_ino == st.st_ino) {
                found(ck, "image file '%s' is the add-cow file itself", path);
                files_ok = false;
            } else {
                int64_t ilen = file_length(path);
                if (ilen < 0) {
                    found(ck, "image file '%s': %s", path, strerror((int)-ilen));
                    files_ok = false;
                } else if ((uint64_t)ilen < vsize) {
                    warn_found(ck, "image file '%s' is %" PRId64 " bytes long, shorter than "
                               "the virtual size %" PRIu64 " (allowed: allocated sectors past "
                               "its end read as zeros)", path, ilen, vsize);
                    if (ck->repair) {
                        int ifd = S_ISREG(ist.st_mode) ? open(path, O_WRONLY | O_CLOEXEC) : -1;
                        int err = S_ISREG(ist.st_mode) ? errno : ENOTSUP;
                        if (ifd >= 0 && (ftruncate(ifd, (off_t)vsize) < 0 || fsync(ifd) < 0))
                            err = errno;
                        else if (ifd >= 0)
                            err = 0;
                        if (ifd >= 0)
                            close(ifd);
                        if (err != 0)
                            printf("Could not repair: extending the image file: %s\n",
                                   strerror(err));
                        else
                            repaired(ck, &ck->harmless, "extended the image file to %" PRIu64
                                     " bytes (sparse)", vsize);
                    }
                } else if ((uint64_t)ilen > vsize) {
                    note("image file '%s' is %" PRId64 " bytes long, longer than the virtual "
                         "size (the bytes past it are ignored)", path, ilen);
                }
            }
            free(path);
        }
    }

    if (backing != NULL && backing[0] != '\0') {
        if (has_protocol(backing)) {
            found(ck, "backing file '%s' has a protocol prefix: not reachable as a local file",
                  backing);
            files_ok = false;
        } else {
            char *path = resolve_path(file, backing);
            struct stat bst;
            if (stat(path, &bst) < 0) {
                found(ck, "backing file '%s' is not reachable: %s", path, strerror(errno));
                files_ok = false;
            }
            free(path);
        }
    }

    if (files_ok && bitmap_ok && check_library_open(ck, file, held) < 0)
        goto out;

summary:
    if (ck->errors > 0)
        printf("\n%d errors were found on the image.\n", ck->errors);
    if (ck->harmless > 0)
        printf("%s%d harmless issues were found on the image%s.\n", ck->errors > 0 ? "" : "\n",
               ck->harmless, ck->repair ? "" : " (check -r repairs them)");
    if (ck->errors == 0 && ck->harmless == 0)
        printf("No errors were found on the image.\n");
    if (ck->repaired > 0)
        printf("%d issues were repaired.\n", ck->repaired);
    status = ck->errors > 0 ? CHECK_CORRUPT : ck->harmless > 0 ? CHECK_HARMLESS : CHECK_OK;
out:
    if (held != NULL)
        addcow_close(held);
    close(fd);
    if (fflush(stdout) != 0 && status != CHECK_ERROR) {
        error_msg("writing output: %s", strerror(errno));
        status = CHECK_ERROR;
    }
    return status;
}

static int cmd_check(int argc, char **argv)
{
    static const struct option opts[] = { HELP_OPTION, END_OPTIONS };
    struct checker ck = { .repair = false };
    int c;

    while ((c = next_opt(argc, argv, ":hr", opts)) != -1) {
        switch (c) {
        case 'h': print_help(find_command("check")); return 0;
        case 'r': ck.repair = true; break;
        default: return CHECK_ERROR;
        }
    }
    if (argc - optind != 1)
        return usage_error("expected one FILE");
    return check_image(&ck, argv[optind]);
}

/* ---- hydrate, detach, commit ---- */

/* Parses [-p] FILE for the three long operations. */
static int parse_p_file(int argc, char **argv, bool allow_p, bool *progress, const char **file)
{
    static const struct option opts[] = { HELP_OPTION, END_OPTIONS };
    int c;

    *progress = false;
    while ((c = next_opt(argc, argv, allow_p ? ":hp" : ":h", opts)) != -1) {
        switch (c) {
        case 'h': print_help(find_command(argv[0])); return 0;
        case 'p': *progress = true; break;
        default: return 1;
        }
    }
    if (argc - optind != 1)
        return usage_error("expected one FILE");
    *file = argv[optind];
    return -1;
}

static int cmd_hydrate(int argc, char **argv)
{
    bool want_progress;
    const char *file;
    int r = parse_p_file(argc, argv, true, &want_progress, &file);
    if (r >= 0)
        return r;
    addcow_image *img = open_image(file, ADDCOW_OPEN_RDWR);
    if (img == NULL)
        return 1;
    struct progress p;
    progress_init(&p, want_progress);
    progress_show(&p, 0, 1);
    r = addcow_hydrate(img, 0, 0, progress_cb, &p);
    progress_end(&p, r >= 0);
    if (r < 0)
        lib_error();
    return close_image(img, r < 0 ? 1 : 0);
}

static int cmd_detach(int argc, char **argv)
{
    bool unused;
    const char *file;
    int r = parse_p_file(argc, argv, false, &unused, &file);
    if (r >= 0)
        return r;
    addcow_image *img = open_image(file, ADDCOW_OPEN_RDWR);
    if (img == NULL)
        return 1;
    r = addcow_detach(img);
    if (r < 0)
        lib_error();
    return close_image(img, r < 0 ? 1 : 0);
}

static int cmd_commit(int argc, char **argv)
{
    bool want_progress;
    const char *file;
    int r = parse_p_file(argc, argv, true, &want_progress, &file);
    if (r >= 0)
        return r;
    addcow_image *img = open_image(file, ADDCOW_OPEN_RDWR);
    if (img == NULL)
        return 1;
    struct progress p;
    progress_init(&p, want_progress);
    progress_show(&p, 0, 1);
    r = addcow_commit(img, progress_cb, &p);
    progress_end(&p, r >= 0);
    if (r < 0)
        lib_error();
    return close_image(img, r < 0 ? 1 : 0);
}

/* ---- convert ---- */

static bool all_zero(const unsigned char *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Writes the non-zero ZERO_BLOCK-aligned blocks of buf (disk offset off). */
static int write_nonzero(int fd, const unsigned char *buf, size_t n, uint64_t off)
{
    size_t i = 0;
    while (i < n) {
        /* skip zero blocks */
        size_t blk = (size_t)(ZERO_BLOCK - (off + i) % ZERO_BLOCK);
        if (blk > n - i)
            blk = n - i;
        if (all_zero(buf + i, blk)) {
            i += blk;
            continue;
        }
        size_t start = i;
        i += blk;
        while (i < n) {
            blk = ZERO_BLOCK < n - i ? ZERO_BLOCK : n - i;
            if (all_zero(buf + i, blk))
                break;
            i += blk;
        }
        int r = pwrite_full(fd, buf + start, i - start, off + start);
        if (r < 0)
            return r;
    }
    return 0;
}

static int cmd_convert(int argc, char **argv)
{
    static const struct option opts[] = { HELP_OPTION, END_OPTIONS };
    bool want_progress = false;
    int c;

    while ((c = next_opt(argc, argv, ":hp", opts)) != -1) {
        switch (c) {
        case 'h': print_help(find_command("convert")); return 0;
        case 'p': want_progress = true; break;
        default: return 1;
        }
    }
    if (argc - optind != 2)
        return usage_error("expected FILE OUT");
    const char *file = argv[optind], *out = argv[optind + 1];

    addcow_image *img = open_image(file, ADDCOW_OPEN_RDONLY);
    if (img == NULL)
        return 1;
    int fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        error_msg("'%s': %s", out, strerror(errno));
        addcow_close(img);
        return 1;
    }
    uint64_t size = (uint64_t)addcow_get_size(img);
    unsigned char *buf = xmalloc(IO_CHUNK);
    struct progress p;
    progress_init(&p, want_progress);
    progress_show(&p, 0, size);
    int status = 0;
    for (uint64_t off = 0; off < size && status == 0;) {
        uint64_t run;
        int st = addcow_block_status(img, off, size - off, &run);
        if (st < 0) {
            status = lib_error();
            break;
        }
        if (run == 0)
            run = 1;    /* never loop forever on a bad answer */
        if (st & ADDCOW_STATUS_ZERO) {
            off += run;
            progress_show(&p, off, size);
            continue;
        }
        for (uint64_t end = off + run; off < end;) {
            size_t n = end - off < IO_CHUNK ? (size_t)(end - off) : IO_CHUNK;
            int64_t got = addcow_pread(img, buf, n, off);
            if (got < 0) {
                status = lib_error();
                break;
            }
            if ((uint64_t)got != n) {
                error_msg("'%s': short read at %" PRIu64, file, off);
                status = 1;
                break;
            }
            int r = write_nonzero(fd, buf, n, off);
            if (r < 0) {
                error_msg("writing '%s': %s", out, strerror(-r));
                status = 1;
                break;
            }
            off += n;
            progress_show(&p, off, size);
        }
    }
    if (status == 0 && (ftruncate(fd, (off_t)size) < 0 || fsync(fd) < 0)) {
        error_msg("writing '%s': %s", out, strerror(errno));
        status = 1;
    }
    progress_end(&p, status == 0);
    if (close(fd) < 0 && status == 0) {
        error_msg("writing '%s': %s", out, strerror(errno));
        status = 1;
    }
    if (status != 0)
        unlink(out);    /* no half-written output */
    free(buf);
    addcow_close(img);
    return status;
}

/* ---- resize ---- */

static int cmd_resize(int argc, char **argv)
{
    static const struct option opts[] = {
        HELP_OPTION, { "shrink", no_argument, NULL, SHRINK_OPTION_VAL }, END_OPTIONS
    };
    bool shrink = false;
    int c;

    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_help(find_command("resize"));
            return 0;
        }
    /* The size goes first, so that getopt never takes "-1M" for an option. */
    if (argc < 3)
        return usage_error("expected FILE [+-]SIZE");
    const char *size_arg = argv[--argc];
    while ((c = next_opt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case SHRINK_OPTION_VAL: shrink = true; break;
        default: return 1;
        }
    }
    if (argc - optind != 1)
        return usage_error("expected FILE [+-]SIZE");
    const char *file = argv[optind];
    int sign = size_arg[0] == '+' ? 1 : size_arg[0] == '-' ? -1 : 0;
    uint64_t n;
    if (parse_size(size_arg + (sign != 0), &n) < 0)
        return usage_error("invalid size '%s'", size_arg);

    addcow_image *img = open_image(file, ADDCOW_OPEN_RDWR);
    if (img == NULL)
        return 1;
    uint64_t cur = (uint64_t)addcow_get_size(img);
    uint64_t want = n;
    if (sign > 0 && n > UINT64_MAX - cur) {
        error_msg("'%s': %" PRIu64 " + %" PRIu64 " bytes is too large", file, cur, n);
        return close_image(img, 1);
    }
    if (sign < 0 && n > cur) {
        error_msg("'%s' is %" PRIu64 " bytes; cannot shrink it by %" PRIu64, file, cur, n);
        return close_image(img, 1);
    }
    if (sign != 0)
        want = sign > 0 ? cur + n : cur - n;
    if (want < cur && !shrink) {
        error_msg("shrinking '%s' from %" PRIu64 " to %" PRIu64 " bytes loses the data past "
                  "the new end; use --shrink to do it anyway", file, cur, want);
        return close_image(img, 1);
    }
    int status = 0;
    if (addcow_truncate(img, want) < 0)
        status = lib_error();
    return close_image(img, status);
}

/* ---- read, write ---- */

struct range_args {
    bool quiet, raw, zero, unmap, have_pattern;
    unsigned char pattern;
    const char *file;
    uint64_t off, len;
};

static int parse_range(int argc, char **argv, bool writing, struct range_args *a)
{
    static const struct option opts[] = {
        HELP_OPTION, { "raw", no_argument, NULL, RAW_OPTION_VAL }, END_OPTIONS
    };
    int c;

    memset(a, 0, sizeof(*a));
    while ((c = next_opt(argc, argv, writing ? ":hqP:zu" : ":hqP:", opts)) != -1) {
        switch (c) {
        case 'h': print_help(find_command(argv[0])); return 0;
        case 'q': a->quiet = true; break;
        case 'z': a->zero = true; break;
        case 'u': a->unmap = true; break;
        case RAW_OPTION_VAL:
            if (writing)
                return usage_error("unknown option '--raw'");
            a->raw = true;
            break;
        case 'P':
            if (parse_pattern(optarg, &a->pattern) < 0)
                return usage_error("invalid pattern '%s' (a byte: 0..255 or 0x00..0xff)",
                                   optarg);
            a->have_pattern = true;
            break;
        default: return 1;
        }
    }
    if (argc - optind != 3)
        return usage_error("expected FILE OFFSET LENGTH");
    a->file = argv[optind];
    if (parse_size(argv[optind + 1], &a->off) < 0)
        return usage_error("invalid offset '%s'", argv[optind + 1]);
    if (parse_size(argv[optind + 2], &a->len) < 0)
        return usage_error("invalid length '%s'", argv[optind + 2]);
    if (a->off > UINT64_MAX - a->len)
        return usage_error("offset + length is too large");
    if (a->raw && a->have_pattern)
        return usage_error("-P and --raw do not go together");
    if (a->zero && a->have_pattern)
        return usage_error("-P and -z do not go together");
    if (a->unmap && !a->zero)
        return usage_error("-u needs -z");
    if (!a->have_pattern)
        a->pattern = 0xcd;      /* qemu-io's default for write */
    return -1;
}

static int cmd_write(int argc, char **argv)
{
    struct range_args a;
    int r = parse_range(argc, argv, true, &a);
    if (r >= 0)
        return r;
    addcow_image *img = open_image(a.file, ADDCOW_OPEN_RDWR);
    if (img == NULL)
        return 1;
    int status = 0;
    if (a.zero) {
        if (addcow_write_zeroes(img, a.off, a.len, a.unmap ? ADDCOW_ZEROES_MAY_UNMAP : 0) < 0)
            status = lib_error();
    } else {
        size_t bl = a.len < IO_CHUNK ? (size_t)a.len : IO_CHUNK;
        unsigned char *buf = xmalloc(bl);
        memset(buf, a.pattern, bl);
        uint64_t size = (uint64_t)addcow_get_size(img);
        if (a.off > size || a.len > size - a.off) {
            /* refused whole, before any chunk is written, as the library would */
            error_msg("write of %" PRIu64 " bytes at %" PRIu64 " reaches past the end of "
                      "'%s' (virtual size %" PRIu64 ")", a.len, a.off, a.file, size);
            status = 1;
        } else {
            for (uint64_t done = 0; done < a.len;) {
                size_t n = a.len - done < bl ? (size_t)(a.len - done) : bl;
                if (addcow_pwrite(img, buf, n, a.off + done) < 0) {
                    status = lib_error();
                    break;
                }
                done += n;
            }
        }
        free(buf);
    }
    if (status == 0 && addcow_flush(img) < 0)
        status = lib_error();
    status = close_image(img, status);
    if (status == 0 && !a.quiet)
        printf("wrote %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", a.len, a.len,
               a.off);
    return status;
}

static int cmd_read(int argc, char **argv)
{
    struct range_args a;
    int r = parse_range(argc, argv, false, &a);
    if (r >= 0)
        return r;
    addcow_image *img = open_image(a.file, ADDCOW_OPEN_RDONLY);
    if (img == NULL)
        return 1;
    uint64_t size = (uint64_t)addcow_get_size(img);
    if (a.off > size || a.len > size - a.off) {
        error_msg("read of %" PRIu64 " bytes at %" PRIu64 " reaches past the end of '%s' "
                  "(virtual size %" PRIu64 ")", a.len, a.off, a.file, size);
        return close_image(img, 1);
    }
    size_t bl = a.len < IO_CHUNK ? (size_t)a.len : IO_CHUNK;
    unsigned char *buf = xmalloc(bl);
    int status = 0;
    for (uint64_t done = 0; done < a.len && status == 0;) {
        size_t n = a.len - done < bl ? (size_t)(a.len - done) : bl;
        int64_t got = addcow_pread(img, buf, n, a.off + done);
        if (got < 0) {
            status = lib_error();
            break;
        }
        if ((uint64_t)got != n) {
            error_msg("'%s': short read at %" PRIu64, a.file, a.off + done);
            status = 1;
            break;
        }
        if (a.have_pattern) {
            for (size_t i = 0; i < n; i++) {
                if (buf[i] != a.pattern) {
                    size_t j = i;
                    while (j < n && buf[j] != a.pattern)
                        j++;
                    error_msg("Pattern verification failed at offset %" PRIu64 ", %zu bytes "
                              "(0x%02x, expected 0x%02x)", a.off + done + i, j - i, buf[i],
                              a.pattern);
                    status = 1;
                    break;
                }
            }
        }
        if (a.raw && fwrite(buf, 1, n, stdout) != n) {
            error_msg("writing output: %s", strerror(errno));
            status = 1;
        }
        done += n;
    }
    free(buf);
    status = close_image(img, status);
    if (status == 0 && !a.quiet && !a.raw)
        printf("read %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", a.len, a.len,
               a.off);
    if (fflush(stdout) != 0 && status == 0) {
        error_msg("writing output: %s", strerror(errno));
        status = 1;
    }
    return status;
}

/* ---- the table ------------------------------------------------------------------ */

static const struct command commands[] = {
    { "create", cmd_create, "create [-b BACKING] [-i IMAGE_FILE] FILE [SIZE]",
      "Creates the add-cow file FILE and, when missing, its image file (sparse).\n"
      "  -b BACKING     the backing file (raw or add-cow); stored as given, a relative\n"
      "                 path is relative to FILE's folder\n"
      "  -i IMAGE_FILE  the image file, stored as given (relative: to FILE's folder);\n"
      "                 default: FILE's name with .add-cow replaced by .raw, or with\n"
      "                 .raw added (vm/disk.add-cow -> disk.raw, in vm/)\n"
      "  SIZE           bytes, a multiple of 512, with an optional K, M, G or T suffix\n"
      "                 (powers of 1024); default: the backing file's size\n" },
    { "info", cmd_info, "info [--output=human|json] FILE",
      "Shows the virtual size, the allocated bytes, the image and backing files as\n"
      "stored in the header and as resolved, and the backing chain.\n" },
    { "map", cmd_map, "map [--output=human|json] FILE",
      "Lists the disk as runs: start, length, depth in the chain (0: this image)\n"
      "and whether the data is allocated here, in a backing file, or reads as zeros.\n"
      "--output=json prints qemu-img map's JSON shape.\n" },
    { "check", cmd_check, "check [-r] FILE",
      "Checks the header, the file lengths, the bitmap's last byte, the image file\n"
      "and that the backing file is reachable.\n"
      "  -r   repairs what can be repaired safely, and says what it did\n"
      "Exit status: 0 no problem, 1 the check could not be done, 2 the image is\n"
      "corrupt or does not open, 3 only harmless issues (check -r repairs them).\n"
      "With -r, the status is the state after the repairs.\n" },
    { "hydrate", cmd_hydrate, "hydrate [-p] FILE",
      "Copies the backing file's data into the image file for every sector not\n"
      "written yet, so that the image no longer needs its backing file.\n"
      "Resumable: a second run skips what is done.\n"
      "  -p   shows progress (on a terminal only)\n" },
    { "detach", cmd_detach, "detach FILE",
      "Clears the backing file from the header once no sector reads from it\n"
      "(after hydrate); the image file is then the whole disk, a plain raw file.\n" },
    { "commit", cmd_commit, "commit [-p] FILE",
      "Writes every sector written in FILE into its backing file, then marks\n"
      "them unwritten, so that the backing file alone holds the disk.\n"
      "  -p   shows progress (on a terminal only)\n" },
    { "convert", cmd_convert, "convert [-p] FILE OUT",
      "Writes the virtual disk to the new raw file OUT (which must not exist),\n"
      "leaving holes for zeros.\n"
      "  -p   shows progress (on a terminal only)\n" },
    { "resize", cmd_resize, "resize [--shrink] FILE [+|-]SIZE",
      "Sets the virtual size to SIZE, or grows (+) or shrinks (-) it by SIZE.\n"
      "The grown area reads as zeros.  Shrinking needs --shrink: data past the new\n"
      "end is lost.\n" },
    { "read", cmd_read, "read [-q] [-P PATTERN | --raw] FILE OFFSET LENGTH",
      "Reads LENGTH bytes at OFFSET of the virtual disk.\n"
      "  -P PATTERN  checks that every byte is PATTERN (0..255 or 0x00..0xff);\n"
      "              exit status 1 and a message at the first difference\n"
      "  --raw       writes the bytes to standard output\n"
      "  -q          no \"read N/N bytes\" line\n" },
    { "write", cmd_write, "write [-q] [-P PATTERN | -z [-u]] FILE OFFSET LENGTH",
      "Writes LENGTH bytes at OFFSET of the virtual disk, then flushes.\n"
      "  -P PATTERN  the byte to write (default 0xcd)\n"
      "  -z          writes zeros (write_zeroes); -u: may punch holes\n"
      "  -q          no \"wrote N/N bytes\" line\n" },
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static void print_help(const struct command *c)
{
    printf("Usage: addcow %s\n\n%s", c->synopsis, c->help);
    printf("\nOffsets and sizes take K, M, G, T suffixes.  Errors: a message on\n"
           "standard error and a non-zero exit status.  See addcow(1).\n");
}

static void print_main_help(void)
{
    printf("Usage: addcow COMMAND [OPTIONS] ARGS...\n"
           "       addcow COMMAND --help\n"
           "       addcow --version\n\n"
           "Creates, inspects and changes add-cow disk images (libaddcow %s).\n\n"
           "Commands:\n", addcow_version());
    for (size_t i = 0; i < N_COMMANDS; i++)
        printf("  %s\n", commands[i].synopsis);
    printf("\nSee addcow(1) for details.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage_error("no command given");
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        print_main_help();
        return 0;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0) {
        printf("addcow %s (library %s)\n", PACKAGE_VERSION, addcow_version());
        return 0;
    }
    if (strcmp(name, "help") == 0) {
        if (argc < 3) {
            print_main_help();
            return 0;
        }
        const struct command *c = find_command(argv[2]);
        if (c == NULL)
            return usage_error("unknown command '%s'", argv[2]);
        print_help(c);
        return 0;
    }
    const struct command *c = find_command(name);
    if (c == NULL)
        return usage_error("unknown command '%s'", name);
    cmd_name = c->name;
    opterr = 0;
    optind = 1;
    return c->run(argc - 1, argv + 1);
}
