#include "models/bind.h"

#include <stdarg.h>
#include <stdio.h>

const sd_tensor *sd_bind(sd_binder *b, int ndim, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  if (b->rc) return NULL;
  const sd_tensor *t = sd_weights_get(b->w, name);
  if (!t) {
    b->rc = sd_fail(b->err, SD_ERR_FORMAT, "%s: missing tensor '%s'", b->model, name);
    return NULL;
  }
  if (ndim && t->ndim != ndim) {
    b->rc = sd_fail(b->err, SD_ERR_FORMAT, "%s: tensor '%s' has %d dims, expected %d", b->model,
                    name, t->ndim, ndim);
    return NULL;
  }
  if (t->dtype != SD_F32 && t->dtype != SD_F16 && t->dtype != SD_BF16) {
    b->rc = sd_fail(b->err, SD_ERR_FORMAT, "%s: tensor '%s' has dtype %s", b->model, name,
                    sd_dtype_name(t->dtype));
    return NULL;
  }
  return t;
}

sd_tensor sd_view2d(const sd_tensor *t) {
  sd_tensor v = *t;
  v.ndim = 2;
  v.shape[1] = sd_tensor_numel(t) / t->shape[0];
  return v;
}
