/* `generate worker`: takes jobs from a Redis stream with a consumer group
 * and runs them (see queue.h for the wire format). A job whose worker died
 * stays pending in the group; after --claim-after milliseconds idle another
 * worker takes it with XAUTOCLAIM. The result is written with SET NX, so a
 * job run twice (a slow worker whose job was claimed) completes once. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/engine.h"
#include "server/options.h"
#include "server/redis_util.h"
#include "server/server.h"

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) {
  g_stop = 1;
}

typedef struct worker {
  srv_engine eng;
  redisContext *c;
  const char *stream, *group;
  char consumer[128];
  long claim_after_ms, ttl_s;
} worker;

/* Field value of a stream entry's [k1, v1, k2, v2, ...] array. */
static const redisReply *field(const redisReply *kv, const char *name) {
  if (!kv || kv->type != REDIS_REPLY_ARRAY) return NULL;
  for (size_t i = 0; i + 1 < kv->elements; i += 2)
    if (kv->element[i]->type == REDIS_REPLY_STRING && !strcmp(kv->element[i]->str, name))
      return kv->element[i + 1];
  return NULL;
}

static char *result_json(int rc, cJSON *body, const srv_error *e) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  if (rc == 0) {
    cJSON_AddNumberToObject(o, "status", 200);
    cJSON_AddItemToObject(o, "body", body);
  } else {
    cJSON_AddNumberToObject(o, "status", e->status);
    cJSON_AddStringToObject(o, "error", e->error);
    cJSON_AddStringToObject(o, "detail", e->detail);
  }
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}

/* Runs one stream entry (reply: [entry id, [fields]]) and acknowledges it.
 * Returns -1 when Redis failed (the caller reconnects). */
static int run_entry(worker *w, const redisReply *entry) {
  if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 2 ||
      entry->element[0]->type != REDIS_REPLY_STRING)
    return 0;
  const char *eid = entry->element[0]->str;
  const redisReply *id = field(entry->element[1], "id"), *kind = field(entry->element[1], "kind"),
                   *body = field(entry->element[1], "body");
  char key[400];
  int valid = id && kind && body && id->type == REDIS_REPLY_STRING &&
              kind->type == REDIS_REPLY_STRING && body->type == REDIS_REPLY_STRING;
  if (valid) {
    snprintf(key, sizeof key, "%s:result:%s", w->stream, id->str);
    redisReply *r = redisCommand(w->c, "EXISTS %s", key);
    if (!r) return -1;
    int done = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    if (!done) {
      printf("job %s started\n", id->str);
      fflush(stdout);
      int k = atoi(kind->str);
      srv_request req;
      srv_error e;
      cJSON *out = NULL;
      int bad = k == 2 ? srv_parse_openai(body->str, body->len, &req, &e)
                       : srv_parse_request(body->str, body->len, k == 1, &req, &e);
      int rc = bad ? -1 : srv_engine_run(&w->eng, &req, &out, &e);
      if (!bad) srv_request_free(&req);
      char *s = result_json(rc, out, &e);
      if (!s) {
        srv_set_error(&e, 500, "out of memory", "response too large");
        s = result_json(-1, NULL, &e);
      }
      if (!s) return 0;
      r = redisCommand(w->c, "SET %s %s NX EX %ld", key, s, w->ttl_s);
      free(s);
      if (!r) return -1;
      int stored = r->type == REDIS_REPLY_STATUS;
      freeReplyObject(r);
      printf("job %s %s\n", id->str, stored ? (rc ? "failed" : "done") : "already done elsewhere");
      fflush(stdout);
    }
  }
  redisReply *r = redisCommand(w->c, "XACK %s %s %s", w->stream, w->group, eid);
  if (!r) return -1;
  freeReplyObject(r);
  return 0;
}

/* One job of a dead worker, if any has been idle long enough. */
static int claim_one(worker *w) {
  redisReply *r = redisCommand(w->c, "XAUTOCLAIM %s %s %s %ld 0-0 COUNT 1", w->stream, w->group,
                               w->consumer, w->claim_after_ms);
  if (!r) return -1;
  int rc = 0;
  if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 &&
      r->element[1]->type == REDIS_REPLY_ARRAY && r->element[1]->elements > 0) {
    const redisReply *entry = r->element[1]->element[0];
    if (entry->type == REDIS_REPLY_ARRAY && entry->elements >= 2 &&
        entry->element[1]->type == REDIS_REPLY_ARRAY) {
      printf("claimed job entry %s of a dead worker\n", entry->element[0]->str);
      rc = run_entry(w, entry) ? -1 : 1;
    }
  }
  freeReplyObject(r);
  return rc;
}

static int read_one(worker *w) {
  redisReply *r = redisCommand(w->c, "XREADGROUP GROUP %s %s COUNT 1 BLOCK 1000 STREAMS %s >",
                               w->group, w->consumer, w->stream);
  if (!r) return -1;
  int rc = 0;
  /* [[stream, [[id, [fields]]]]] or nil on timeout */
  if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
    const redisReply *s = r->element[0];
    if (s->type == REDIS_REPLY_ARRAY && s->elements >= 2 &&
        s->element[1]->type == REDIS_REPLY_ARRAY)
      for (size_t i = 0; i < s->element[1]->elements && !rc; i++)
        rc = run_entry(w, s->element[1]->element[i]);
  } else if (r->type == REDIS_REPLY_ERROR) {
    fprintf(stderr, "warning: %s\n", r->str);
    rc = -1;
  }
  freeReplyObject(r);
  return rc;
}

static int setup_group(worker *w, char *msg, size_t n) {
  redisReply *r = redisCommand(w->c, "XGROUP CREATE %s %s 0 MKSTREAM", w->stream, w->group);
  if (!r) return snprintf(msg, n, "Redis connection lost"), -1;
  int ok = r->type != REDIS_REPLY_ERROR || strstr(r->str, "BUSYGROUP");
  if (!ok) snprintf(msg, n, "XGROUP CREATE failed: %s", r->str);
  freeReplyObject(r);
  return ok ? 0 : -1;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: generate worker --redis redis://HOST:PORT/DB [--model-dir DIR ...]\n"
          "                       [--model NAME] [--lora-dir DIR ...] [--stream sdgen:jobs]\n"
          "                       [--group sdgen] [--consumer NAME] [--claim-after MS]\n"
          "                       [--result-ttl S] [--max-memory SIZE] [--threads N]\n"
          "                       [--allow-paths] [--max-models N]\n"
          "Runs the jobs that `generate serve --queue` puts on a Redis stream.\n");
}

int srv_worker_main(int argc, char **argv) {
  const char *url = NULL, *consumer = NULL;
  static worker w;
  w.stream = "sdgen:jobs";
  w.group = "sdgen";
  w.claim_after_ms = 60000;
  w.ttl_s = 3600;
  srv_common co = {.max_models = -1};
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
    } else if (OPT("--redis")) {
      url = v;
    } else if (OPT("--stream")) {
      w.stream = v;
    } else if (OPT("--group")) {
      w.group = v;
    } else if (OPT("--consumer")) {
      consumer = v;
    } else if (OPT("--claim-after")) {
      if (srv_parse_int(a, v, 1, 86400000, &w.claim_after_ms)) return 2;
    } else if (OPT("--result-ttl")) {
      if (srv_parse_int(a, v, 1, 30 * 86400, &w.ttl_s)) return 2;
    } else {
      if (missing)
        fprintf(stderr, "error: %s needs a value\n", a);
      else
        fprintf(stderr, "error: unknown argument '%s' (see generate worker --help)\n", a);
      return 2;
    }
#undef OPT
  }
  srv_redis_addr addr;
  if (!url || srv_redis_parse_url(url, &addr)) {
    fprintf(stderr, "error: --redis expects redis://HOST:PORT/DB\n");
    return 2;
  }
  char host[64] = "host";
  gethostname(host, sizeof host - 1);
  if (consumer)
    snprintf(w.consumer, sizeof w.consumer, "%s", consumer);
  else
    snprintf(w.consumer, sizeof w.consumer, "%.60s-%ld", host, (long)getpid());
  char msg[512];
  if (srv_engine_init(&w.eng, &co.models, co.model, NULL, (int)co.threads, co.max_memory, 0, msg,
                      sizeof msg)) {
    fprintf(stderr, "error: %s\n", msg);
    srv_engine_free(&w.eng);
    return 1;
  }
  if (co.max_models >= 0) w.eng.max_models = (int)co.max_models;
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  int rc = 0, announced = 0;
  while (!g_stop) {
    if (!w.c) {
      if (!(w.c = srv_redis_connect(&addr, msg, sizeof msg)) || setup_group(&w, msg, sizeof msg)) {
        fprintf(stderr, "warning: %s; retrying\n", msg);
        if (w.c) redisFree(w.c);
        w.c = NULL;
        sleep(1);
        continue;
      }
      if (!announced++) {
        printf("sdgen worker %s on %s stream %s group %s\n", w.consumer, url, w.stream, w.group);
        fflush(stdout);
      }
    }
    int r = claim_one(&w);
    if (r == 0) r = read_one(&w);
    if (r < 0) {
      fprintf(stderr, "warning: Redis connection lost; reconnecting\n");
      redisFree(w.c);
      w.c = NULL;
    }
  }
  if (w.c) redisFree(w.c);
  srv_engine_free(&w.eng);
  return rc;
}
