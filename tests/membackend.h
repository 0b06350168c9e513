/* membackend.h: in-memory, fault-injecting and recording backends (being written). */
#ifndef AC_MEMBACKEND_H
#define AC_MEMBACKEND_H
#endif
