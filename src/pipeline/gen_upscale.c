/* Upscale stage: Lanczos as PIL does it, or Real-ESRGAN (RRDBNet) when the
 * user names an upscaler model. */
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "io/model_dir.h"
#include "io/pth.h"
#include "models/rrdbnet.h"
#include "pipeline/generate_internal.h"
#include "pipeline/upscale_lanczos.h"

/* Real-ESRGAN at the network's scale, repeated x2 nets for 4x. */
static int upscale_rrdbnet(gen_run *r, const char *path) {
  sd_weights *w = NULL;
  sd_pth *pth = NULL;
  sd_rrdbnet *net = NULL;
  int rc = gen_open_upscaler(path, r->p->upscale, &w, &pth, &net, r->err);
  if (rc) goto done;
  int scale = sd_rrdbnet_config_of(net)->scale;
  sd_realesrgan_params rp = sd_realesrgan_default_params();
  /* Tiles bound the activations (the untiled network at 1024x1024 needs
   * several GB); 256 is within RealESRGANer's usual settings. */
  rp.tile = r->p->upscale_tile > 0 ? r->p->upscale_tile : 256;
  rp.tile_pad = 10;
  for (int pass = 1; pass * scale <= r->p->upscale && !rc; pass *= scale)
    for (int i = 0; i < r->n && !rc; i++) {
      sd_image big = {0};
      rc = sd_realesrgan_upscale_image(net, &r->final[i], &rp, &big, r->err);
      if (!rc) {
        sd_image_free(&r->final[i]);
        r->final[i] = big;
      }
    }
  snprintf(r->upscale_method, sizeof r->upscale_method, "realesrgan-x%d (tile %d)", scale,
           rp.tile);
  sd_monitor_optimization(&r->mon, "Real-ESRGAN tiled in %dx%d tiles", rp.tile, rp.tile);
done:
  sd_rrdbnet_free(net);
  sd_weights_free(w);
  sd_pth_free(pth);
  return rc;
}

int gen_upscale(gen_run *r) {
  const sdgen_params *p = r->p;
  int rc = SD_OK;
  sd_monitor_cleanup(&r->mon, "Cleaning memory before upscaling...");
  sd_monitor_stage(&r->mon, "Before upscaling");
  double t = sd_now();
  if (p->upscaler) {
    char path[4096];
    if ((rc = sd_resolve_model(p, p->upscaler, path, sizeof path, r->err))) return rc;
    rc = upscale_rrdbnet(r, path);
  } else {
    for (int i = 0; i < r->n && !rc; i++) {
      sd_image big = {0};
      rc = sd_lanczos_upscale(&r->final[i], p->upscale, &big, r->err);
      if (!rc) {
        sd_image_free(&r->final[i]);
        r->final[i] = big;
      }
    }
    snprintf(r->upscale_method, sizeof r->upscale_method, "lanczos (PIL)");
  }
  if (rc) return rc;
  r->out_width = r->final[0].width;
  r->out_height = r->final[0].height;
  r->t_upscale = sd_now() - t;
  sd_monitor_stage(&r->mon, "After upscaling");
  return SD_OK;
}
