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

/* A ResnetBlock2D's weights (UNet and VAE; the VAE has no time projection). */
typedef struct sd_resnet_weights {
  int in_ch, out_ch;
  const sd_tensor *norm1_w, *norm1_b; /* (in) */
  const sd_tensor *conv1_w, *conv1_b; /* (out, in, 3, 3), (out) */
  const sd_tensor *temb_w, *temb_b;   /* (out, T), (out); NULL without time embedding */
  const sd_tensor *norm2_w, *norm2_b; /* (out) */
  const sd_tensor *conv2_w, *conv2_b; /* (out, out, 3, 3) */
  const sd_tensor *skip_w, *skip_b;   /* (out, in, 1, 1) or NULL */
} sd_resnet_weights;

/* Binds `<prefix>.norm1 ... conv2[, time_emb_proj][, conv_shortcut]`. */
void sd_bind_resnet(sd_binder *b, sd_resnet_weights *r, const char *prefix, int with_temb);

/* A 2-D (rows, rest) view of a weight: 1x1 convs used as linears. */
sd_tensor sd_view2d(const sd_tensor *t);

#endif
