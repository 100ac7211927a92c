/* Command-line helpers shared by `generate serve` and `generate worker`. */
#ifndef SDGEN_SERVER_OPTIONS_H
#define SDGEN_SERVER_OPTIONS_H

#include <stdint.h>

/* "4G", "600M", "1024K", "123" bytes; -1 on a bad value. */
int64_t srv_parse_size(const char *s);
/* Integer in [lo, hi]; prints "error: OPT ..." and returns -1 on a bad value. */
int srv_parse_int(const char *opt, const char *v, long lo, long hi, long *out);

#endif
