/* `generate serve`: the A1111-compatible HTTP API and the web page on
 * libmicrohttpd. One connection thread per client; generation requests go
 * to a bounded FIFO (503 with Retry-After when --queue-size jobs already
 * wait) that one engine thread runs in order. One thread for every
 * generation keeps one OpenMP team: a team per connection thread would
 * leave idle teams spinning beside the running one. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <malloc.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/engine.h"
#include "server/options.h"
#include "server/queue.h"
#include "server/server.h"
#include "server/web.h"

#define DEFAULT_MAX_BODY (50u << 20)

typedef struct server {
  srv_engine eng;
  const char *api_key;
  size_t max_body;
  int queue_size;
  pthread_mutex_t qmu;
  pthread_cond_t qcv;
  struct job *head, *tail; /* waiting jobs, FIFO */
  int waiting, running, stopping;
  pthread_t engine_thread;
  srv_redis_queue *redis; /* --queue: jobs go to workers */
} server;

typedef struct conn {
  char *body;
  size_t len, cap;
  int too_big;
} conn;

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) {
  g_stop = 1;
}

/* ---- responses ---- */

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, char *text,
                                 const char *type, const char *retry_after) {
  struct MHD_Response *r =
      MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(text);
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", type);
  if (retry_after) MHD_add_response_header(r, "Retry-After", retry_after);
  enum MHD_Result ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, cJSON *o) {
  char *s = o ? cJSON_PrintUnformatted(o) : NULL;
  cJSON_Delete(o);
  if (!s) {
    s = strdup("{\"error\":\"out of memory\",\"detail\":\"response too large\"}");
    status = 500;
    if (!s) return MHD_NO;
  }
  return send_text(c, status, s, "application/json", NULL);
}

static enum MHD_Result send_error(struct MHD_Connection *c, const srv_error *e,
                                  const char *retry_after) {
  cJSON *o = cJSON_CreateObject();
  char *s = NULL;
  if (o) {
    cJSON_AddStringToObject(o, "error", e->error);
    cJSON_AddStringToObject(o, "detail", e->detail);
    s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
  }
  if (!s && !(s = strdup("{\"error\":\"out of memory\"}"))) return MHD_NO;
  return send_text(c, e->status, s, "application/json", retry_after);
}

static enum MHD_Result fail(struct MHD_Connection *c, int status, const char *error,
                            const char *detail) {
  srv_error e;
  srv_set_error(&e, status, error, "%s", detail);
  return send_error(c, &e, NULL);
}

/* ---- auth ---- */

static int same(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  unsigned char d = na != nb;
  for (size_t i = 0; i < na; i++) d |= (unsigned char)(a[i] ^ b[i % (nb ? nb : 1)]);
  return d == 0;
}

/* Bearer KEY, or A1111's basic auth where the password (or user:password)
 * is the key. */
static int authorized(server *s, struct MHD_Connection *c) {
  if (!s->api_key) return 1;
  const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
  if (!h) return 0;
  if (!strncasecmp(h, "Bearer ", 7)) return same(h + 7, s->api_key);
  if (!strncasecmp(h, "Basic ", 6)) {
    size_t n = 0;
    unsigned char *d = srv_b64_decode(h + 6, &n);
    if (!d) return 0;
    char *up = strndup((char *)d, n);
    free(d);
    if (!up) return 0;
    char *colon = strchr(up, ':');
    int ok = same(up, s->api_key) || (colon && same(colon + 1, s->api_key));
    free(up);
    return ok;
  }
  return 0;
}

/* ---- the FIFO ---- */

typedef struct job {
  const srv_request *r;
  cJSON *out;
  srv_error err;
  int rc, done;
  struct job *next;
} job;

static void *engine_main(void *arg) {
  server *s = arg;
  pthread_mutex_lock(&s->qmu);
  for (;;) {
    while (!s->head && !s->stopping) pthread_cond_wait(&s->qcv, &s->qmu);
    if (!s->head) break;
    job *j = s->head;
    if (!(s->head = j->next)) s->tail = NULL;
    s->waiting--;
    s->running = 1;
    pthread_mutex_unlock(&s->qmu);
    j->rc = srv_engine_run(&s->eng, j->r, &j->out, &j->err);
    pthread_mutex_lock(&s->qmu);
    s->running = 0;
    j->done = 1;
    pthread_cond_broadcast(&s->qcv);
  }
  pthread_mutex_unlock(&s->qmu);
  return NULL;
}

static void stop_engine(server *s) {
  pthread_mutex_lock(&s->qmu);
  s->stopping = 1;
  pthread_cond_broadcast(&s->qcv);
  pthread_mutex_unlock(&s->qmu);
  pthread_join(s->engine_thread, NULL);
}

/* Runs r on the engine thread and waits for it; -1 with a 503 when the
 * queue is full. */
static int run_queued(server *s, const srv_request *r, cJSON **out, srv_error *e) {
  job j = {.r = r};
  pthread_mutex_lock(&s->qmu);
  if (s->stopping || ((s->running || s->waiting) && s->waiting >= s->queue_size)) {
    pthread_mutex_unlock(&s->qmu);
    srv_set_error(e, 503, "busy", "the queue is full; retry later");
    return -1;
  }
  if (s->tail)
    s->tail->next = &j;
  else
    s->head = &j;
  s->tail = &j;
  s->waiting++;
  pthread_cond_broadcast(&s->qcv);
  while (!j.done) pthread_cond_wait(&s->qcv, &s->qmu);
  pthread_mutex_unlock(&s->qmu);
  *out = j.out;
  *e = j.err;
  return j.rc;
}

static int jobs_pending(server *s) {
  pthread_mutex_lock(&s->qmu);
  int n = s->waiting + s->running;
  pthread_mutex_unlock(&s->qmu);
  return n;
}

static enum MHD_Result generate(server *s, struct MHD_Connection *c, conn *k, int kind) {
  srv_request r;
  srv_error e;
  int bad = kind == 2 ? srv_parse_openai(k->body, k->len, &r, &e)
                      : srv_parse_request(k->body, k->len, kind == 1, &r, &e);
  if (bad) return send_error(c, &e, NULL);
  cJSON *out = NULL;
  int rc;
  if (s->redis) {
    rc = srv_redis_submit(s->redis, k->body, k->len, kind, &out, &e);
  } else {
    rc = run_queued(s, &r, &out, &e);
  }
  srv_request_free(&r);
  if (rc) return send_error(c, &e, e.status == 503 ? "5" : NULL);
  return send_json(c, 200, out);
}

static enum MHD_Result options_post(server *s, struct MHD_Connection *c, conn *k) {
  cJSON *o = k->len ? cJSON_ParseWithLength(k->body, k->len) : NULL;
  if (!o || !cJSON_IsObject(o)) {
    cJSON_Delete(o);
    return fail(c, 400, "malformed JSON", "the body must be a JSON object");
  }
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "sd_model_checkpoint");
  srv_error e;
  if (m && !cJSON_IsString(m)) {
    cJSON_Delete(o);
    return fail(c, 400, "bad field", "sd_model_checkpoint must be a string");
  }
  if (m && srv_engine_set_model(&s->eng, m->valuestring, &e)) {
    cJSON_Delete(o);
    return send_error(c, &e, NULL);
  }
  cJSON_Delete(o);
  return send_json(c, 200, cJSON_CreateObject());
}

static cJSON *options_get(server *s) {
  cJSON *o = cJSON_CreateObject();
  pthread_mutex_lock(&s->eng.mu);
  cJSON_AddStringToObject(o, "sd_model_checkpoint", s->eng.current_model);
  pthread_mutex_unlock(&s->eng.mu);
  cJSON_AddNumberToObject(o, "live_previews_enable", s->eng.preview_every > 0);
  return o;
}

static cJSON *samplers(void) {
  cJSON *a = cJSON_CreateArray();
  for (int i = 0; a && i < srv_n_samplers; i++) {
    cJSON *o = cJSON_CreateObject();
    if (!o) break;
    cJSON_AddStringToObject(o, "name", srv_sampler_names[i][0]);
    cJSON *al = cJSON_AddArrayToObject(o, "aliases");
    if (al) cJSON_AddItemToArray(al, cJSON_CreateString(srv_sampler_names[i][1]));
    cJSON_AddObjectToObject(o, "options");
    cJSON_AddItemToArray(a, o);
  }
  return a;
}

static enum MHD_Result route(server *s, struct MHD_Connection *c, const char *url,
                             const char *method, conn *k) {
  int get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
  if (get && (!strcmp(url, "/") || !strcmp(url, "/index.html"))) {
    char *page = strdup(srv_web_page);
    if (!page) return MHD_NO;
    return send_text(c, 200, page, "text/html; charset=utf-8", NULL);
  }
  if (get && !strcmp(url, "/healthz")) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    cJSON_AddStringToObject(o, "version", sdgen_version());
    return send_json(c, 200, o);
  }
  if (!authorized(s, c)) return fail(c, 401, "unauthorized", "missing or wrong API key");
  if (get && !strcmp(url, "/sdapi/v1/progress"))
    return send_json(c, 200, srv_engine_progress(&s->eng, jobs_pending(s)));
  if (post && !strcmp(url, "/sdapi/v1/interrupt")) {
    srv_engine_interrupt(&s->eng);
    return send_json(c, 200, cJSON_CreateObject());
  }
  if (get && !strcmp(url, "/sdapi/v1/sd-models"))
    return send_json(c, 200, srv_models_list(&s->eng.models));
  if (get && !strcmp(url, "/sdapi/v1/loras"))
    return send_json(c, 200, srv_loras_list(&s->eng.models));
  if (get && !strcmp(url, "/sdapi/v1/samplers")) return send_json(c, 200, samplers());
  if (!strcmp(url, "/sdapi/v1/options")) {
    if (get) return send_json(c, 200, options_get(s));
    if (post) return options_post(s, c, k);
  }
  if (post && !strcmp(url, "/sdapi/v1/txt2img")) return generate(s, c, k, 0);
  if (post && !strcmp(url, "/sdapi/v1/img2img")) return generate(s, c, k, 1);
  if (post && !strcmp(url, "/v1/images/generations")) return generate(s, c, k, 2);
  return fail(c, 404, "not found", "no such endpoint");
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls) {
  server *s = cls;
  conn *k = *con_cls;
  if (!k) {
    if (!(k = calloc(1, sizeof *k))) return MHD_NO;
    *con_cls = k;
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    /* an oversized body is read and dropped, then answered with 413:
     * clients that send the whole body first would see a broken pipe */
    if (cl && strtoull(cl, NULL, 10) > s->max_body) k->too_big = 1;
    return MHD_YES;
  }
  if (*upload_data_size) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    if (k->too_big) return MHD_YES;
    if (k->len + n > s->max_body) {
      k->too_big = 1;
      free(k->body);
      k->body = NULL;
      k->len = k->cap = 0;
      return MHD_YES;
    }
    if (k->len + n + 1 > k->cap) {
      size_t cap = k->cap ? k->cap : 4096;
      while (cap < k->len + n + 1) cap *= 2;
      char *b = realloc(k->body, cap);
      if (!b) return MHD_NO;
      k->body = b;
      k->cap = cap;
    }
    memcpy(k->body + k->len, upload_data, n);
    k->len += n;
    k->body[k->len] = 0;
    return MHD_YES;
  }
  if (k->too_big)
    return fail(c, 413, "body too large", "the request body is over the server's limit");
  return route(s, c, url, method, k);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe) {
  conn *k = *con_cls;
  if (k) {
    free(k->body);
    free(k);
  }
  *con_cls = NULL;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: generate serve [--host 127.0.0.1] [--port 7860] [--api-key KEY]\n"
          "                      [--model-dir DIR ...] [--model NAME] [--lora-dir DIR ...]\n"
          "                      [--max-memory SIZE] [--queue-size N] [--output DIR]\n"
          "                      [--threads N] [--preview-every N] [--max-body SIZE]\n"
          "                      [--max-models N (resident models, default 2)]\n"
          "                      [--allow-paths] [--queue redis://HOST:PORT/DB]\n"
          "                      [--stream sdgen:jobs]\n"
          "Serves the AUTOMATIC1111 API (/sdapi/v1/*) and a web page at /.\n"
          "Binding an address other than 127.0.0.1 / localhost needs --api-key.\n");
}

int srv_serve_main(int argc, char **argv) {
  const char *host = "127.0.0.1", *output = NULL, *redis_url = NULL;
  const char *stream = "sdgen:jobs";
  long port = 7860, queue_size = 16, preview = 0;
  int64_t max_body = DEFAULT_MAX_BODY;
  srv_common co = {.max_models = -1};
  const char *api_key = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int missing = 0;
#define OPT(name) (!strcmp(a, name) && (v || (missing = 1, 0)) && ++i)
    int common = srv_common_option(argc, argv, &i, &co);
    if (common < 0) return 2;
    if (common) {
      continue;
    } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (OPT("--host")) {
      host = v;
    } else if (OPT("--port")) {
      if (srv_parse_int(a, v, 1, 65535, &port)) return 2;
    } else if (OPT("--api-key")) {
      api_key = v;
    } else if (OPT("--output")) {
      output = v;
    } else if (OPT("--queue-size")) {
      if (srv_parse_int(a, v, 0, 100000, &queue_size)) return 2;
    } else if (OPT("--preview-every")) {
      if (srv_parse_int(a, v, 0, 1000, &preview)) return 2;
    } else if (OPT("--max-body")) {
      if ((max_body = srv_parse_size(v)) <= 0)
        return fprintf(stderr, "error: --max-body expects a size like 50M\n"), 2;
    } else if (OPT("--queue")) {
      redis_url = v;
    } else if (OPT("--stream")) {
      stream = v;
    } else {
      if (missing)
        fprintf(stderr, "error: %s needs a value\n", a);
      else
        fprintf(stderr, "error: unknown argument '%s' (see generate serve --help)\n", a);
      return 2;
    }
#undef OPT
  }
  int loopback = !strcmp(host, "127.0.0.1") || !strcmp(host, "localhost");
  if (!loopback && !api_key) {
    fprintf(stderr, "error: binding %s needs --api-key (only 127.0.0.1 is open without one)\n",
            host);
    return 2;
  }
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, !strcmp(host, "localhost") ? "127.0.0.1" : host, &addr.sin_addr) != 1) {
    fprintf(stderr, "error: --host expects an IPv4 address, got '%s'\n", host);
    return 2;
  }
  static server s;
  char msg[512];
  if (srv_engine_init(&s.eng, &co.models, co.model, output, (int)co.threads, co.max_memory,
                      (int)preview, msg, sizeof msg)) {
    fprintf(stderr, "error: %s\n", msg);
    srv_engine_free(&s.eng);
    return 1;
  }
  if (co.max_models >= 0) s.eng.max_models = (int)co.max_models;
  s.api_key = api_key;
  s.max_body = (size_t)max_body;
  s.queue_size = (int)queue_size;
  pthread_mutex_init(&s.qmu, NULL);
  pthread_cond_init(&s.qcv, NULL);
  if (redis_url && srv_redis_queue_open(&s.redis, redis_url, stream, msg, sizeof msg)) {
    fprintf(stderr, "error: %s\n", msg);
    srv_engine_free(&s.eng);
    return 1;
  }
  if (pthread_create(&s.engine_thread, NULL, engine_main, &s)) {
    fprintf(stderr, "error: cannot start the engine thread\n");
    srv_redis_queue_close(s.redis);
    srv_engine_free(&s.eng);
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
#ifdef M_ARENA_MAX
  /* glibc gives each connection thread its own malloc arena and keeps it:
   * a burst of clients would leave the server megabytes larger for good.
   * one arena serves the few small allocations of requests well enough. */
  mallopt(M_ARENA_MAX, 1);
#endif
  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG,
      (uint16_t)port, NULL, NULL, handler, &s, MHD_OPTION_SOCK_ADDR, &addr,
      MHD_OPTION_NOTIFY_COMPLETED, completed, &s, MHD_OPTION_CONNECTION_LIMIT, 512u,
      MHD_OPTION_CONNECTION_TIMEOUT, 3600u, MHD_OPTION_END);
  if (!d) {
    fprintf(stderr, "error: cannot listen on %s:%ld (in use?)\n", host, port);
    stop_engine(&s);
    srv_redis_queue_close(s.redis);
    srv_engine_free(&s.eng);
    return 1;
  }
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  printf("sdgen server listening on http://%s:%ld/ (model: %s%s)\n", host, port,
         s.eng.current_model[0] ? s.eng.current_model : "none",
         redis_url ? ", jobs go to Redis" : "");
  fflush(stdout);
  while (!g_stop) pause();
  fprintf(stderr, "stopping\n");
  srv_engine_interrupt(&s.eng);
  MHD_stop_daemon(d); /* waits for the connection threads: their jobs finish first */
  stop_engine(&s);
  srv_redis_queue_close(s.redis);
  srv_engine_free(&s.eng);
  return 0;
}
