/* Binding model weights by name: a small helper shared by the models.
 *
 *   sd_binder b = {weights, err, SD_OK, "UNet"};
 *   r->w = sd_bind(&b, 4, "%s.conv1.weight", prefix);   // NULL + b.rc on failure
 *   ...
 *   if (b.rc) return b.rc;   // the first failure's message is in err
 *
 * A bound tensor must exist, be F32/F16/BF16 and have `ndim` dims (0 = any);
 * the first failure is kept, later calls return NULL at once. */
#ifndef SDGEN_MODELS_BIND_H
#define SDGEN_MODELS_BIND_H

#include "base/status.h"
#include "io/safetensors.h"

typedef struct sd_binder {
  const sd_weights *w;
  sd_error *err;
  int rc;
  const char *model; /* for messages: "UNet", "VAE" */
} sd_binder;

const sd_tensor *sd_bind(sd_binder *b, int ndim, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A 2-D (rows, rest) view of a weight: 1x1 convs used as linears. */
sd_tensor sd_view2d(const sd_tensor *t);

#endif
