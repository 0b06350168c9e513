/* membackend.c: being written. */
#include "config.h"
#include "membackend.h"
