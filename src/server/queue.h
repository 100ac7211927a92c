/* Jobs on Redis: `generate serve --queue redis://…` adds each validated
 * request to a stream (XADD) and waits for its result key; `generate
 * worker` reads the stream with a consumer group (XREADGROUP), claims the
 * jobs of dead workers (XAUTOCLAIM after --claim-after), runs them, writes
 * the result once (SET key NX EX ttl: a job finished twice keeps its first
 * result) and acknowledges (XACK).
 *
 *   stream entry:  id <job id>  kind 0|1|2 (txt2img, img2img, openai)  body <JSON>
 *   result key:    <stream>:result:<job id> = {"status": 200, "body": {...}}
 *                  or {"status": 4xx/5xx, "error": ..., "detail": ...}
 */
#ifndef SDGEN_SERVER_QUEUE_H
#define SDGEN_SERVER_QUEUE_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "server/request.h"

typedef struct srv_redis_queue srv_redis_queue;

/* Parses redis://HOST:PORT/DB and checks that the server answers. */
int srv_redis_queue_open(srv_redis_queue **out, const char *url, const char *stream, char *msg,
                         size_t n);
void srv_redis_queue_close(srv_redis_queue *q);
/* Enqueues a request body and waits for its result (thread-safe: one
 * connection per call). */
int srv_redis_submit(srv_redis_queue *q, const char *body, size_t len, int kind, cJSON **out,
                     srv_error *err);

#endif
