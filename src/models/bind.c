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

void sd_bind_resnet(sd_binder *b, sd_resnet_weights *r, const char *p, int with_temb) {
  r->norm1_w = sd_bind(b, 1, "%s.norm1.weight", p);
  r->norm1_b = sd_bind(b, 1, "%s.norm1.bias", p);
  r->conv1_w = sd_bind(b, 4, "%s.conv1.weight", p);
  r->conv1_b = sd_bind(b, 1, "%s.conv1.bias", p);
  if (with_temb) {
    r->temb_w = sd_bind(b, 2, "%s.time_emb_proj.weight", p);
    r->temb_b = sd_bind(b, 1, "%s.time_emb_proj.bias", p);
  }
  r->norm2_w = sd_bind(b, 1, "%s.norm2.weight", p);
  r->norm2_b = sd_bind(b, 1, "%s.norm2.bias", p);
  r->conv2_w = sd_bind(b, 4, "%s.conv2.weight", p);
  r->conv2_b = sd_bind(b, 1, "%s.conv2.bias", p);
  if (b->rc) return;
  r->in_ch = (int)r->conv1_w->shape[1];
  r->out_ch = (int)r->conv1_w->shape[0];
  if (sd_weights_getf(b->w, "%s.conv_shortcut.weight", p)) {
    r->skip_w = sd_bind(b, 4, "%s.conv_shortcut.weight", p);
    r->skip_b = sd_bind(b, 1, "%s.conv_shortcut.bias", p);
  } else if (r->in_ch != r->out_ch) {
    b->rc = sd_fail(b->err, SD_ERR_FORMAT, "%s: '%s' changes channels but has no conv_shortcut",
                    b->model, p);
  }
}
