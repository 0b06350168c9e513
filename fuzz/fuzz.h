/*
 * fuzz.h: what the three harnesses share.
 *
 * Each harness (fuzz-header.c, fuzz-open.c, fuzz-bitmap.c) is one
 * LLVMFuzzerTestOneInput().  It is linked twice: with libFuzzer
 * (fuzz-NAME, configure --enable-fuzzing, clang) to search for inputs, and
 * with replay.c (replay-NAME, any compiler) to run the corpus kept in
 * fuzz/corpus/NAME/ under `make check`.
 *
 * A harness reports a broken expectation with FUZZ_CHECK, which prints what
 * it expected and aborts: libFuzzer then saves the input as a crash, and
 * the replay program fails.
 */
#ifndef AC_FUZZ_H
#define AC_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond, ...)                                               \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, \
                    #cond);                                                 \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
            abort();                                                        \
        }                                                                   \
    } while (0)

/* Reads the input front to back; past its end every value is 0, so that
 * any input is a valid one. */
struct fuzz_in {
    const uint8_t *p;
    size_t left;
};

static inline uint8_t fuzz_u8(struct fuzz_in *in)
{
    if (in->left == 0)
        return 0;
    in->left--;
    return *in->p++;
}

static inline uint16_t fuzz_u16(struct fuzz_in *in)
{
    uint16_t v = fuzz_u8(in);
    return (uint16_t)(v | (uint16_t)fuzz_u8(in) << 8);
}

static inline uint32_t fuzz_u32(struct fuzz_in *in)
{
    uint32_t v = fuzz_u16(in);
    return v | (uint32_t)fuzz_u16(in) << 16;
}

static inline uint64_t fuzz_u64(struct fuzz_in *in)
{
    uint64_t v = fuzz_u32(in);
    return v | (uint64_t)fuzz_u32(in) << 32;
}

#endif
