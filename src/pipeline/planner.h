/* Memory planner: predicts each stage's peak before any weight is read and
 * picks the fastest strategy that fits the budget.
 *
 * Weights are mapped, so a component costs RSS only for the pages touched;
 * its resident cost is its stored size, or about one block's worth when
 * weights are streamed. Activation peaks come from running the model code
 * in plan mode (base/alloc.h: kernels skipped, allocations only counted),
 * so they follow the code rather than a formula.
 *
 * Strategies, fastest first (each level keeps the previous ones):
 *   0 resident        everything mapped and resident
 *   1 release TE      text encoders released after encoding
 *   2 VAE slicing     decode one image of the batch at a time
 *   3 VAE tiling      decode in blended tiles (bounded activations)
 *   4 streaming       UNet weights dropped after each block (page cache
 *                     keeps them; a step re-faults them)
 *   5 sequential      a batch of n images denoised one image at a time
 *                     (same images for deterministic samplers; ancestral
 *                     ones then draw their step noise per image)
 * Attention is always computed flash-style in key chunks (the full score
 * matrix never exists), so "attention slicing" is on at every level. */
#ifndef SDGEN_PIPELINE_PLANNER_H
#define SDGEN_PIPELINE_PLANNER_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "base/status.h"

enum { SD_PLAN_RESIDENT = 0, SD_PLAN_RELEASE_TE, SD_PLAN_VAE_SLICING, SD_PLAN_VAE_TILING,
       SD_PLAN_STREAMING, SD_PLAN_SEQUENTIAL, SD_PLAN_LEVELS };

#define SD_PLAN_MAX_STAGES 8

typedef struct sd_plan_stage {
  char name[32];
  int64_t weights;     /* resident weight bytes during the stage */
  int64_t activations; /* activation + scratch peak (plan mode) */
  int64_t buffers;     /* pipeline buffers alive across the stage */
  int64_t peak;        /* baseline + the three */
} sd_plan_stage;

typedef struct sd_plan {
  int level;           /* strategy level chosen (SD_PLAN_*) */
  int64_t budget;      /* bytes */
  int64_t baseline;    /* process RSS outside tracked memory (code, BLAS) */
  int64_t peak;        /* max over stages */
  int nstages;
  sd_plan_stage stage[SD_PLAN_MAX_STAGES];
  int64_t resident_peak; /* peak of level 0, for the low-memory warning */
  int64_t level_peak[SD_PLAN_LEVELS]; /* predicted peak of every level */
  /* The refiner's own plan, chosen with this one before any weight is read
   * (the stages run one after the other, so each fits the budget alone);
   * NULL when there is no refiner. Serialized under "refiner". */
  const struct sd_plan *refiner;
} sd_plan;

/* Stage estimates for one strategy level, supplied by the pipeline. */
typedef int (*sd_plan_estimate_fn)(void *user, int level, sd_plan *out, sd_error *err);

/* Evaluates every level with `estimate` and chooses the first (fastest)
 * level >= min_level whose peak fits `budget`. Fails with SD_ERR_OOM when none fits, naming the
 * smallest budget that would work. */
int sd_plan_choose(sd_plan *plan, int64_t budget, int min_level, sd_plan_estimate_fn estimate,
                   void *user, sd_error *err);

/* Default budget: MemAvailable (or the cgroup's) minus a safety margin of
 * max(512 MB, 10%). */
int64_t sd_plan_default_budget(void);

/* Process memory outside the tracked allocator (code, libraries, BLAS
 * buffers): measured now, plus the OpenBLAS packing buffers each worker
 * thread will touch (a per-thread bound, times sd_get_threads()). */
int64_t sd_plan_baseline(void);

/* Adds a stage (peak computed from baseline). */
void sd_plan_add_stage(sd_plan *p, const char *name, int64_t weights, int64_t activations,
                       int64_t buffers);

const char *sd_plan_level_name(int level);
/* JSON for the metadata: budget, level, strategies, per-stage predictions. */
cJSON *sd_plan_to_json(const sd_plan *p);
/* Multi-line human description (for --dry-run / --verbose). */
void sd_plan_describe(const sd_plan *p, char *buf, size_t n);

#endif
