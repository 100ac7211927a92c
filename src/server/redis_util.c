#include "server/redis_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int srv_redis_parse_url(const char *url, srv_redis_addr *a) {
  memset(a, 0, sizeof *a);
  a->port = 6379;
  if (strncmp(url, "redis://", 8)) return -1;
  const char *h = url + 8, *end = h + strcspn(h, ":/");
  if (end == h || (size_t)(end - h) >= sizeof a->host) return -1;
  memcpy(a->host, h, (size_t)(end - h));
  char *e;
  if (*end == ':') {
    long p = strtol(end + 1, &e, 10);
    if (e == end + 1 || p < 1 || p > 65535) return -1;
    a->port = (int)p;
    end = e;
  }
  if (*end == '/' && end[1]) {
    long d = strtol(end + 1, &e, 10);
    if (e == end + 1 || *e || d < 0 || d > 1000) return -1;
    a->db = (int)d;
  } else if (*end && strcmp(end, "/")) {
    return -1;
  }
  return 0;
}

redisContext *srv_redis_connect(const srv_redis_addr *a, char *msg, size_t n) {
  struct timeval tv = {5, 0};
  redisContext *c = redisConnectWithTimeout(a->host, a->port, tv);
  if (!c || c->err) {
    snprintf(msg, n, "cannot connect to Redis at %s:%d: %s", a->host, a->port,
             c ? c->errstr : "out of memory");
    if (c) redisFree(c);
    return NULL;
  }
  if (a->db) {
    redisReply *r = redisCommand(c, "SELECT %d", a->db);
    int ok = r && r->type != REDIS_REPLY_ERROR;
    if (r) freeReplyObject(r);
    if (!ok) {
      snprintf(msg, n, "Redis SELECT %d failed", a->db);
      redisFree(c);
      return NULL;
    }
  }
  return c;
}
