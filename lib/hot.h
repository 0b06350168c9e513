/*
 * hot.h: marks the functions of the common read and write paths.
 *
 * GCC places functions marked hot together (.text.hot), so a read or a
 * write touches a few code pages instead of a dozen.  This matters where
 * every system call costs TLB misses (virtual machines with shadow or
 * paravirtual page tables): measured with the benchmark's case 3.
 */
#ifndef AC_HOT_H
#define AC_HOT_H

#if defined(__GNUC__)
#define AC_HOT __attribute__((hot))
#else
#define AC_HOT
#endif

#endif
