/* redis://HOST:PORT/DB connections shared by the queue front and workers. */
#ifndef SDGEN_SERVER_REDIS_UTIL_H
#define SDGEN_SERVER_REDIS_UTIL_H

#include <hiredis/hiredis.h>
#include <stddef.h>

typedef struct srv_redis_addr {
  char host[256];
  int port, db;
} srv_redis_addr;

int srv_redis_parse_url(const char *url, srv_redis_addr *a);
/* Connects and selects the db; NULL with msg on failure. */
redisContext *srv_redis_connect(const srv_redis_addr *a, char *msg, size_t n);

#endif
