/* Status codes and error messages.
 *
 * Library functions return an int status (SD_OK = 0) and, on failure, leave a
 * one-line message in a caller-owned sd_error. Nothing in the library prints
 * or exits on its own; the caller decides. */
#ifndef SDGEN_BASE_STATUS_H
#define SDGEN_BASE_STATUS_H

#include <stddef.h>

enum {
  SD_OK = 0,
  SD_ERR_ARG,         /* invalid parameter given by the caller/user */
  SD_ERR_IO,          /* file missing, unreadable, unwritable */
  SD_ERR_FORMAT,      /* file present but malformed or inconsistent */
  SD_ERR_OOM,         /* allocation failed or budget exceeded */
  SD_ERR_UNSUPPORTED, /* valid input we do not handle */
  SD_ERR_NUMERIC,     /* NaN/Inf detected */
  SD_ERR_CANCELLED,   /* interrupted by the user */
  SD_ERR_NETWORK,     /* download failed */
  SD_ERR_COUNT
};

#define SD_ERROR_MSG_MAX 512

typedef struct sd_error {
  int code;
  char msg[SD_ERROR_MSG_MAX];
} sd_error;

/* Records code and a printf-style message in err (which may be NULL) and
 * returns code, so callers can write `return sd_fail(err, SD_ERR_IO, ...)`.
 * An existing message is kept: the first (innermost) failure wins. */
int sd_fail(sd_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like sd_fail but always overwrites: used to add outer context. */
int sd_fail_replace(sd_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

void sd_error_clear(sd_error *err);

/* Short name of a code, e.g. "out of memory". */
const char *sd_status_name(int code);

#endif
