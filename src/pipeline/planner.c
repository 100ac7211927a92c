#include "pipeline/planner.h"

#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "base/memprobe.h"
#include "tensor/ops.h"

static const char *const k_level_names[SD_PLAN_LEVELS] = {
    "resident", "release text encoders", "VAE slicing", "VAE tiling", "weight streaming",
    "sequential batch"};

const char *sd_plan_level_name(int level) {
  return level >= 0 && level < SD_PLAN_LEVELS ? k_level_names[level] : "?";
}

int64_t sd_plan_default_budget(void) {
  sd_mem_sample s;
  sd_mem_probe(&s);
  if (s.sys_available <= 0) return INT64_MAX / 4;
  int64_t margin = s.sys_available / 10;
  if (margin < (512LL << 20)) margin = 512LL << 20;
  int64_t b = s.sys_available - margin;
  return b > (256LL << 20) ? b : (256LL << 20);
}

int64_t sd_plan_baseline(void) {
  sd_mem_sample s;
  sd_mem_probe(&s);
  sd_alloc_stats st = sd_alloc_get_stats();
  int64_t untracked = s.rss > 0 ? s.rss - st.bytes_in_use : 0;
  if (untracked < 0) untracked = 0;
  /* OpenBLAS runs single-threaded inside each of our worker threads and
   * gives every calling thread its own buffer, of which only the packed
   * blocks get touched: one A block (GEMM_P x GEMM_Q) and one B panel of
   * GEMM_Q x rows, where rows is at most 1280 here (the largest conv output
   * channel count; linear layers run in 256-row blocks). Measured on this
   * OpenBLAS's Haswell SGEMM: 0.43 MB + 1.25 kB per row, so 2.0 MB per
   * thread at 1280 rows, and pages once touched stay. 4 MB per thread
   * bounds that with room for cores whose kernels pack larger blocks. (A
   * flat 32 MB used to stand here: 8x too much on 2 threads, too little on
   * 16, and the main reason the streaming plans predicted 15% high.) */
  int threads = sd_get_threads();
  /* The C library does not hand every freed block back at once: glibc
   * keeps free memory at the top of its heap up to a trim threshold and
   * cannot return the holes between live blocks, so RSS runs ahead of the
   * live (tracked) bytes. Measured 2-15 MB over the tracked peak (tiny to
   * full-size SD 1.5 / SDXL stages); 16 MB bounds it. Kernel scratch is not
   * here: the plan-mode runs count it exactly (sd_plan_scratch). */
  const int64_t allocator_slack = 16LL << 20;
  return untracked + allocator_slack + (int64_t)(threads > 0 ? threads : 1) * (4LL << 20);
}

void sd_plan_add_stage(sd_plan *p, const char *name, int64_t weights, int64_t activations,
                       int64_t buffers) {
  if (p->nstages >= SD_PLAN_MAX_STAGES) return;
  sd_plan_stage *s = &p->stage[p->nstages++];
  snprintf(s->name, sizeof s->name, "%s", name);
  s->weights = weights;
  s->activations = activations;
  s->buffers = buffers;
  s->peak = p->baseline + weights + activations + buffers;
  if (s->peak > p->peak) p->peak = s->peak;
}

int sd_plan_choose(sd_plan *plan, int64_t budget, int min_level, sd_plan_estimate_fn estimate,
                   void *user, sd_error *err) {
  sd_plan levels[SD_PLAN_LEVELS];
  int chosen = -1, smallest = 0;
  int64_t baseline = sd_plan_baseline();
  for (int level = 0; level < SD_PLAN_LEVELS; level++) {
    sd_plan *p = &levels[level];
    memset(p, 0, sizeof *p);
    p->level = level;
    p->budget = budget;
    p->baseline = baseline;
    int rc = estimate(user, level, p, err);
    if (rc) return rc;
    if (p->peak < levels[smallest].peak || (min_level > smallest && level == min_level))
      smallest = level;
    if (chosen < 0 && level >= min_level && p->peak <= budget) chosen = level;
  }
  *plan = levels[chosen >= 0 ? chosen : smallest];
  plan->resident_peak = levels[0].peak;
  for (int l = 0; l < SD_PLAN_LEVELS; l++) plan->level_peak[l] = levels[l].peak;
  if (chosen >= 0) return SD_OK;
  char need[32], have[32];
  return sd_fail(err, SD_ERR_OOM,
                 "not enough memory: the most frugal plan needs %s, the budget is %s "
                 "(raise --max-memory to at least %s, or pick a smaller model or size)",
                 sd_format_size(levels[smallest].peak, need, sizeof need),
                 sd_format_size(budget, have, sizeof have), need);
}

cJSON *sd_plan_to_json(const sd_plan *p) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON_AddNumberToObject(o, "budget_bytes", (double)p->budget);
  cJSON_AddNumberToObject(o, "predicted_peak_bytes", (double)p->peak);
  cJSON_AddNumberToObject(o, "resident_peak_bytes", (double)p->resident_peak);
  cJSON_AddNumberToObject(o, "baseline_bytes", (double)p->baseline);
  cJSON_AddStringToObject(o, "level", sd_plan_level_name(p->level));
  cJSON *lv = cJSON_AddObjectToObject(o, "predicted_peak_by_level");
  for (int l = 0; lv && l < SD_PLAN_LEVELS; l++)
    cJSON_AddNumberToObject(lv, sd_plan_level_name(l), (double)p->level_peak[l]);
  cJSON *st = cJSON_AddArrayToObject(o, "strategies");
  for (int l = 1; st && l <= p->level; l++)
    cJSON_AddItemToArray(st, cJSON_CreateString(sd_plan_level_name(l)));
  cJSON *stages = cJSON_AddArrayToObject(o, "stages");
  for (int i = 0; stages && i < p->nstages; i++) {
    cJSON *s = cJSON_CreateObject();
    if (!s) break;
    cJSON_AddStringToObject(s, "stage", p->stage[i].name);
    cJSON_AddNumberToObject(s, "predicted_peak_bytes", (double)p->stage[i].peak);
    cJSON_AddNumberToObject(s, "weights_bytes", (double)p->stage[i].weights);
    cJSON_AddNumberToObject(s, "activations_bytes", (double)p->stage[i].activations);
    cJSON_AddNumberToObject(s, "buffers_bytes", (double)p->stage[i].buffers);
    cJSON_AddItemToArray(stages, s);
  }
  if (p->refiner) {
    cJSON *ref = sd_plan_to_json(p->refiner);
    if (ref) cJSON_AddItemToObject(o, "refiner", ref);
  }
  return o;
}

void sd_plan_describe(const sd_plan *p, char *buf, size_t n) {
  char a[32], b[32], c[32], d[32];
  size_t u = (size_t)snprintf(buf, n, "Memory plan: %s, predicted peak %s of %s budget",
                              sd_plan_level_name(p->level), sd_format_size(p->peak, a, sizeof a),
                              sd_format_size(p->budget, b, sizeof b));
  for (int l = 0; l < SD_PLAN_LEVELS && u < n; l++)
    u += (size_t)snprintf(buf + u, n - u, "%s%s %lld", l ? "," : "\n   levels (bytes):",
                          sd_plan_level_name(l), (long long)p->level_peak[l]);
  for (int i = 0; i < p->nstages && u < n; i++) {
    const sd_plan_stage *s = &p->stage[i];
    u += (size_t)snprintf(buf + u, n - u,
                          "\n   %-10s peak %8s = weights %8s + activations %8s + buffers %s",
                          s->name, sd_format_size(s->peak, a, sizeof a),
                          sd_format_size(s->weights, b, sizeof b),
                          sd_format_size(s->activations, c, sizeof c),
                          sd_format_size(s->buffers, d, sizeof d));
  }
}
