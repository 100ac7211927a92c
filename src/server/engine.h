/* The generation side of the server and the worker: runs one validated
 * request through the sdgen library and builds the A1111 response (images
 * as base64 PNG with their parameters chunk, the request echoed, the info
 * JSON string). Progress, the live preview and interruption are kept here
 * for /sdapi/v1/progress and /sdapi/v1/interrupt. One job at a time. */
#ifndef SDGEN_SERVER_ENGINE_H
#define SDGEN_SERVER_ENGINE_H

#include <pthread.h>
#include <stdint.h>

#include "sdgen.h"
#include "server/models.h"
#include "server/request.h"

#define SRV_MAX_RESIDENT 16

typedef struct srv_resident {
  char key[4400]; /* model path | decoder */
  sdgen_model *model;
  double last_used;
} srv_resident;

typedef struct srv_engine {
  sdgen_ctx *ctx;
  srv_models models;
  char current_model[512]; /* name as sd-models lists it */
  char output_root[4096];  /* job folders go here */
  int keep_outputs;        /* --output given: files stay */
  int threads;
  int64_t max_memory;
  int preview_every;
  uint64_t job_counter;
  /* resident models (when the library has the handle API), LRU; only the
   * generating thread touches them */
  srv_resident models_cache[SRV_MAX_RESIDENT];
  int n_cached, max_models; /* max_models 0: load per request */

  pthread_mutex_t mu; /* guards everything below and current_model */
  int busy;
  int step, total;   /* of the current generation */
  int iter, n_iter;  /* which generation of the job */
  double started;    /* monotonic seconds */
  char *preview_b64; /* last preview as a base64 PNG, or NULL */
  volatile int interrupt;
} srv_engine;

/* output_dir: where images stay (NULL: a private temporary folder whose
 * files are removed after each response). Returns 0 or -1 with msg. */
int srv_engine_init(srv_engine *e, const srv_models *models, const char *model,
                    const char *output_dir, int threads, int64_t max_memory, int preview_every,
                    char *msg, size_t n);
void srv_engine_free(srv_engine *e);

/* Runs r; on success *out is the response body, else err is filled. */
int srv_engine_run(srv_engine *e, const srv_request *r, cJSON **out, srv_error *err);

/* Sets the current model (404 when unknown). */
int srv_engine_set_model(srv_engine *e, const char *name, srv_error *err);
/* /sdapi/v1/progress body; job_count is the jobs running plus waiting. */
cJSON *srv_engine_progress(srv_engine *e, int job_count);
void srv_engine_interrupt(srv_engine *e);

/* Replaces absolute paths in a library message with their last component,
 * so error bodies never show local paths. */
void srv_scrub_paths(char *s);

double srv_now(void);

#endif
