/* Request bodies of the A1111 API: JSON parsed and every field validated
 * into an srv_request, or a status + message for the client.
 *
 *   srv_request r; srv_error e;
 *   if (srv_parse_request(body, len, 0, &r, &e)) reply(e.status, e.error, e.detail);
 *   ...
 *   srv_request_free(&r);
 *
 * Nothing here touches files: names are checked later against the model
 * dirs (server_models.c). Fuzzed by tests/unit/test_server_request.c. */
#ifndef SDGEN_SERVER_REQUEST_H
#define SDGEN_SERVER_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define SRV_MAX_LORAS 8
#define SRV_MAX_BATCH 8
#define SRV_MAX_ITER 16
#define SRV_MAX_STEPS 150
#define SRV_MAX_SIDE 2048
#define SRV_MAX_PROMPT 16384

typedef struct srv_error {
  int status;       /* HTTP status */
  char error[64];   /* short reason ("bad field") */
  char detail[256]; /* which field and why; never a local path */
} srv_error;

typedef struct srv_lora {
  char name[256];
  float scale;
} srv_lora;

typedef struct srv_request {
  int img2img;
  char *prompt, *negative_prompt;
  char model[512];       /* "" = the server's current model */
  char sampler[32];      /* ours ("euler_a"); "" = the model's scheduler */
  char sampler_name[64]; /* as the client sent it */
  char vae[256];         /* "" = the model's VAE */
  char timestep_spacing[16];
  int width, height, steps, batch_size, n_iter;
  float cfg_scale, denoising_strength;
  int64_t seed; /* -1: random */
  srv_lora loras[SRV_MAX_LORAS];
  int n_loras;
  unsigned char *init_image; /* decoded bytes of init_images[0] (img2img) */
  size_t init_image_len;
  int openai; /* /v1/images/generations */
} srv_request;

/* Parses and validates a request body (txt2img, or img2img when img2img is
 * set); on failure fills err (status 400) and leaves out empty. */
int srv_parse_request(const char *body, size_t len, int img2img, srv_request *out, srv_error *err);
/* OpenAI images API body: prompt, n, size "WxH", response_format b64_json. */
int srv_parse_openai(const char *body, size_t len, srv_request *out, srv_error *err);
void srv_request_free(srv_request *r);

/* The request with its defaults filled in, as A1111 echoes `parameters`. */
cJSON *srv_request_echo(const srv_request *r);

/* A1111 sampler name ("DPM++ 2M Karras") -> ours ("dpmpp_2m_karras");
 * our own names pass through; NULL when unknown. */
const char *srv_sampler_map(const char *a1111);
/* The A1111 names the server accepts, for /sdapi/v1/samplers. */
extern const char *const srv_sampler_names[][2];
extern const int srv_n_samplers;

void srv_set_error(srv_error *e, int status, const char *error, const char *fmt, ...);

/* Base64 (RFC 4648, standard alphabet). decode skips whitespace and an
 * optional "data:...;base64," prefix; returns NULL on bad input. */
char *srv_b64_encode(const unsigned char *data, size_t n);
unsigned char *srv_b64_decode(const char *s, size_t *out_len);

#endif
