#include "base/status.h"

#include <stdarg.h>
#include <stdio.h>

static int set_message(sd_error *err, int code, int replace, const char *fmt,
                       va_list ap) {
  if (!err) return code;
  if (!replace && err->code != SD_OK && err->msg[0]) return code;
  err->code = code;
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  return code;
}

int sd_fail(sd_error *err, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  set_message(err, code, 0, fmt, ap);
  va_end(ap);
  return code;
}

int sd_fail_replace(sd_error *err, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  set_message(err, code, 1, fmt, ap);
  va_end(ap);
  return code;
}

void sd_error_clear(sd_error *err) {
  if (!err) return;
  err->code = SD_OK;
  err->msg[0] = 0;
}

const char *sd_status_name(int code) {
  static const char *const names[SD_ERR_COUNT] = {
      "ok",          "invalid argument", "i/o error",  "malformed input",
      "out of memory", "unsupported",    "numeric error", "cancelled",
      "network error"};
  if (code < 0 || code >= SD_ERR_COUNT) return "unknown error";
  return names[code];
}
