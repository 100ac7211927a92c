/* Resident models: sdgen_model_load / sdgen_model_generate / sdgen_model_free.
 *
 * A handle keeps what is expensive to redo and cheap to hold: the resolved
 * path, the parsed configs and tokenizers, and the weight files mapped and
 * bound (views, nothing copied). Weight pages are not "held": each run
 * starts by giving them back (MADV_DONTNEED; the page cache keeps the
 * files), so the memory plan measures the process without them and every
 * plan level, streaming included, works on a handle exactly as on a fresh
 * load. A run faults back in what its plan touches. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "pipeline/generate_internal.h"
#include "pipeline/sd3_pipeline.h"
#include "pipeline/unet_pipeline.h"

/* Copies the load params' strings into one owned block. */
static int own_strings(sdgen_model *m, const sdgen_params *p) {
  const char **fields[] = {&m->load.model,    &m->load.config_dir, &m->load.tokenizers_dir,
                           &m->load.clip_l,   &m->load.clip_g,     &m->load.t5,
                           &m->load.lora_dir, &m->load.vae};
  size_t nf = sizeof fields / sizeof *fields, total = 0;
  m->load = *p;
  for (size_t i = 0; i < nf; i++) total += *fields[i] ? strlen(*fields[i]) + 1 : 0;
  for (int i = 0; i < p->n_loras; i++) total += p->loras[i].path ? strlen(p->loras[i].path) + 1 : 0;
  m->text = sd_alloc(total + 1);
  if (!m->text) return SD_ERR_OOM;
  if (p->n_loras > 0) {
    m->loras = sd_calloc((size_t)p->n_loras, sizeof *m->loras);
    if (!m->loras) return SD_ERR_OOM;
  }
  char *s = m->text;
  for (size_t i = 0; i < nf; i++) {
    if (!*fields[i]) continue;
    size_t len = strlen(*fields[i]) + 1;
    memcpy(s, *fields[i], len);
    *fields[i] = s;
    s += len;
  }
  for (int i = 0; i < p->n_loras; i++) {
    m->loras[i] = p->loras[i];
    if (!p->loras[i].path) continue;
    size_t len = strlen(p->loras[i].path) + 1;
    memcpy(s, p->loras[i].path, len);
    m->loras[i].path = s;
    s += len;
  }
  m->load.loras = m->loras;
  /* the handle keeps no request state */
  m->load.prompt = m->load.negative_prompt = NULL;
  m->load.on_progress = NULL;
  m->load.on_event = NULL;
  m->load.on_preview = NULL;
  m->load.user = NULL;
  return SD_OK;
}

/* "path\tscale\n" per LoRA of the run ("" for none). */
static char *lora_signature(const gen_run *r) {
  size_t n = 1;
  for (int i = 0; i < r->n_loras; i++) n += strlen(r->lora_specs[i].path) + 32;
  char *sig = sd_alloc(n);
  if (!sig) return NULL;
  size_t u = 0;
  sig[0] = 0;
  for (int i = 0; i < r->n_loras; i++)
    u += (size_t)snprintf(sig + u, n - u, "%s\t%.9g\n", r->lora_specs[i].path,
                          (double)r->lora_specs[i].scale);
  return sig;
}

/* (Re)loads the handle's UNet-family model with r's LoRAs. */
static int load_unet(sdgen_model *h, const gen_run *r, sd_error *err) {
  char *sig = lora_signature(r);
  if (!sig) return sd_fail(err, SD_ERR_OOM, "out of memory");
  sd_unet_model_free(h->unet);
  h->unet = NULL;
  sd_free(h->lora_sig);
  h->lora_sig = NULL;
  sd_load_options lo = {.path = h->path, .config_dir = h->load.config_dir,
                        .tokenizers_dir = h->load.tokenizers_dir,
                        .prefer_fp16 = h->load.prefer_fp16, .loras = r->lora_specs,
                        .n_loras = r->n_loras};
  int rc = sd_unet_model_load(&h->unet, &lo, err);
  if (rc) {
    sd_free(sig);
    return rc;
  }
  h->lora_sig = sig;
  return SD_OK;
}

int gen_model_unet(gen_run *r, sd_unet_model **out) {
  sdgen_model *h = r->model;
  *out = NULL;
  char *sig = lora_signature(r);
  if (!sig) return sd_fail(r->err, SD_ERR_OOM, "out of memory");
  int same = h->unet && h->lora_sig && strcmp(sig, h->lora_sig) == 0 &&
             (h->unet->te1 || h->unet->te2);
  sd_free(sig);
  if (!same) {
    double t = sd_now();
    int rc = load_unet(h, r, r->err);
    if (rc) return rc;
    r->t_load += sd_now() - t;
  }
  *out = h->unet;
  return SD_OK;
}

int sdgen_model_load(sdgen_ctx *ctx, const sdgen_params *p, sdgen_model **out) {
  sd_error *err = &ctx->err;
  sd_error_clear(err);
  *out = NULL;
  if (!p->model) return sd_fail(err, SD_ERR_ARG, "no model given");
  if (p->n_loras < 0 || (p->n_loras > 0 && !p->loras))
    return sd_fail(err, SD_ERR_ARG, "bad LoRA list");
  sdgen_model *m = sd_calloc(1, sizeof *m);
  if (!m) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int rc = own_strings(m, p);
  if (rc) {
    rc = sd_fail(err, rc, "out of memory");
    goto fail;
  }
  double t = sd_now();
  if ((rc = sd_resolve_model(p, p->model, m->path, sizeof m->path, err))) goto fail;
  if ((rc = gen_model_family(m->path, &m->family, err))) goto fail;
  if (strcmp(m->family, "sd3") == 0) {
    sd3_sources src = {.model = m->path, .clip_l = m->load.clip_l, .clip_g = m->load.clip_g,
                       .t5 = m->load.t5, .tokenizers = m->load.tokenizers_dir,
                       .skip_t5 = m->load.no_t5};
    rc = sd3_pipeline_open(&m->sd3, &src, err);
  } else { /* with the LoRAs the load params name (list and prompt tags) */
    sdgen_params lp = *p;
    sdgen_lora *lcm_loras = NULL; /* lcm_auto: the recipe's LCM-LoRA joins the set */
    if (p->lcm_auto && (rc = gen_lcm_params(m->path, p, &lp, &lcm_loras, err))) goto fail;
    if (!lp.prompt) lp.prompt = "";
    gen_run *r = sd_calloc(1, sizeof *r); /* large (LoRA paths): not on the stack */
    if (!r) {
      sd_free(lcm_loras);
      rc = sd_fail(err, SD_ERR_OOM, "out of memory");
      goto fail;
    }
    r->p = &lp;
    r->err = err;
    rc = gen_resolve_loras(r);
    if (!rc) rc = load_unet(m, r, err);
    gen_free_loras(r);
    sd_free(r);
    sd_free(lcm_loras);
  }
  if (rc) goto fail;
  m->t_load = sd_now() - t;
  *out = m;
  return SD_OK;
fail:
  sdgen_model_free(m);
  return rc;
}

void sdgen_model_free(sdgen_model *m) {
  if (!m) return;
  sd_unet_model_free(m->unet);
  sd3_pipeline_free(m->sd3);
  sd_free(m->lora_sig);
  sd_free(m->loras);
  sd_free(m->text);
  sd_free(m);
  sd_alloc_trim();
}

int sdgen_model_generate(sdgen_ctx *ctx, sdgen_model *m, const sdgen_params *params,
                         sdgen_result *res) {
  /* the request's params with the load-time settings of the handle */
  sdgen_params q = *params;
  q.model = m->load.model;
  q.config_dir = m->load.config_dir;
  q.tokenizers_dir = m->load.tokenizers_dir;
  q.prefer_fp16 = m->load.prefer_fp16;
  q.clip_l = m->load.clip_l;
  q.clip_g = m->load.clip_g;
  q.t5 = m->load.t5;
  q.no_t5 = m->load.no_t5;
  q.vae = m->load.vae;
  ctx->cancel = 0;
  return gen_run_model(ctx, m, &q, res);
}

static void release_weights(sd_weights *w) {
  if (w) sd_weights_release_pages(w);
}

void gen_model_release_pages(sdgen_model *m) {
  if (m->unet) {
    release_weights(m->unet->w_te1);
    release_weights(m->unet->w_te2);
    release_weights(m->unet->w_unet);
    release_weights(m->unet->w_vae);
  }
  /* SD3: the pipeline binds its components per run and releases them */
}

void gen_model_begin_run(sdgen_model *m) {
  gen_model_release_pages(m);
  if (m->unet) {
    sd_unet_model *u = m->unet;
    sd_unet_set_weight_streaming(u->unet, 0);
    if (u->te1) u->te1->stream_weights = 0;
    if (u->te2) u->te2->stream_weights = 0;
  }
  if (m->sd3) sd3_pipeline_set_encoder_streaming(m->sd3, 0);
}
