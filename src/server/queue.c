/* The front side of the Redis job queue (see queue.h). */
#define _GNU_SOURCE
#include "server/queue.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/redis_util.h"

#define WAIT_LIMIT_S (6 * 3600)

struct srv_redis_queue {
  srv_redis_addr addr;
  char stream[256];
};

int srv_redis_queue_open(srv_redis_queue **out, const char *url, const char *stream, char *msg,
                         size_t n) {
  *out = NULL;
  srv_redis_queue *q = calloc(1, sizeof *q);
  if (!q) return snprintf(msg, n, "out of memory"), -1;
  if (srv_redis_parse_url(url, &q->addr)) {
    free(q);
    snprintf(msg, n, "--queue expects redis://HOST:PORT/DB, got '%s'", url);
    return -1;
  }
  snprintf(q->stream, sizeof q->stream, "%s", stream);
  redisContext *c = srv_redis_connect(&q->addr, msg, n);
  if (!c) {
    free(q);
    return -1;
  }
  redisFree(c);
  *out = q;
  return 0;
}

void srv_redis_queue_close(srv_redis_queue *q) {
  free(q);
}

static void job_id(char *id, size_t n) {
  unsigned char b[12];
  int fd = open("/dev/urandom", O_RDONLY);
  if (fd < 0 || read(fd, b, sizeof b) != sizeof b) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(id, n, "%lx%lx%x", (long)ts.tv_sec, ts.tv_nsec, (unsigned)getpid());
  } else {
    for (size_t i = 0; i < sizeof b && 2 * i + 2 < n; i++) snprintf(id + 2 * i, 3, "%02x", b[i]);
  }
  if (fd >= 0) close(fd);
}

int srv_redis_submit(srv_redis_queue *q, const char *body, size_t len, int kind, cJSON **out,
                     srv_error *err) {
  *out = NULL;
  char msg[256], id[64];
  redisContext *c = srv_redis_connect(&q->addr, msg, sizeof msg);
  if (!c) {
    srv_set_error(err, 503, "queue unavailable", "the job queue does not answer");
    return -1;
  }
  job_id(id, sizeof id);
  redisReply *r =
      redisCommand(c, "XADD %s * id %s kind %d body %b", q->stream, id, kind, body, len);
  int ok = r && r->type == REDIS_REPLY_STRING;
  if (r) freeReplyObject(r);
  if (!ok) {
    redisFree(c);
    srv_set_error(err, 503, "queue unavailable", "the job could not be queued");
    return -1;
  }
  char key[400];
  snprintf(key, sizeof key, "%s:result:%s", q->stream, id);
  int rc = -1;
  srv_set_error(err, 504, "timeout", "no worker finished the job in time");
  for (int tries = 0; tries < WAIT_LIMIT_S * 20; tries++) {
    r = redisCommand(c, "GET %s", key);
    if (!r || r->type == REDIS_REPLY_ERROR) {
      srv_set_error(err, 503, "queue unavailable", "lost the connection to the job queue");
      if (r) freeReplyObject(r);
      break;
    }
    if (r->type == REDIS_REPLY_STRING) {
      cJSON *res = cJSON_ParseWithLength(r->str, r->len);
      freeReplyObject(r);
      const cJSON *st = cJSON_GetObjectItemCaseSensitive(res, "status");
      if (!cJSON_IsNumber(st)) {
        srv_set_error(err, 502, "bad worker result", "the worker's result is not valid");
      } else if (st->valueint == 200) {
        *out = cJSON_DetachItemFromObjectCaseSensitive(res, "body");
        rc = *out ? 0 : -1;
      } else {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(res, "error");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(res, "detail");
        srv_set_error(err, st->valueint, cJSON_IsString(e) ? e->valuestring : "failed", "%s",
                      cJSON_IsString(d) ? d->valuestring : "");
      }
      cJSON_Delete(res);
      break;
    }
    freeReplyObject(r);
    usleep(50000);
  }
  redisFree(c);
  return rc;
}
