/* Hub resolution and downloads against tests/hub/fake_hub.py on 127.0.0.1.
 *
 * The test builds tiny model repos under a fresh /tmp folder, starts the
 * fake hub on a free loopback port, and checks: the exact cache layout
 * huggingface_hub writes (blobs named by sha256 / git sha1, relative
 * symlinks, refs/main), fp16 variant and shard index handling, gated repos
 * and tokens, 404s, a broken-off download resumed with Range, a corrupt
 * download discarded, a full disk (RLIMIT_FSIZE), a cache left by diffusers
 * used without any request, and offline mode making no connection.
 * Skips (exit 77) when python3 is absent. Never leaves loopback. */
#define _GNU_SOURCE
/* Paths here are short names under one mkdtemp folder; GCC's worst-case
 * estimate for nested 4 KiB buffers is noise. */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/hub.h"
#include "io/sha256.h"
#include "test_util.h"

#define P 4096

static char tmp_root[P], hub_root[P], port_file[P], log_file[P], control_file[P];
static char endpoint[128];
static pid_t server_pid;

/* ---------------------------------------------------------------- files */

static void mkdirs(const char *path) {
  char buf[P];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      mkdir(buf, 0755);
      *p = '/';
    }
  mkdir(buf, 0755);
}

static void write_bytes(const char *path, const void *data, size_t len) {
  char dir[P];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash) {
    *slash = 0;
    mkdirs(dir);
  }
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(1);
  }
  fclose(f);
}

static void write_text(const char *path, const char *text) {
  write_bytes(path, text, strlen(text));
}

/* Returns a malloc'd copy of the file (NULL if absent). */
static unsigned char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  unsigned char *buf = malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  if (buf) buf[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static int same_content(const char *a, const char *b) {
  size_t la, lb;
  unsigned char *x = read_all(a, &la), *y = read_all(b, &lb);
  int same = x && y && la == lb && memcmp(x, y, la) == 0;
  free(x);
  free(y);
  return same;
}

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static int exists_l(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

static void random_file(const char *path, size_t len, uint32_t seed) {
  unsigned char *buf = malloc(len);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    buf[i] = (unsigned char)x;
  }
  write_bytes(path, buf, len);
  free(buf);
}

static void sha256_of_file(const char *path, char hex[65]) {
  size_t len;
  unsigned char *data = read_all(path, &len);
  sd_sha256_hex(data ? data : (unsigned char *)"", data ? len : 0, hex);
  free(data);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *f) {
  remove(path); /* keep going: remove what can be removed */
  return 0;
}

static void remove_tree(const char *path) {
  nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* --------------------------------------------------------------- server */

static int log_count(void) {
  FILE *f = fopen(log_file, "r");
  if (!f) return 0;
  int n = 0, ch;
  while ((ch = fgetc(f)) != EOF) n += ch == '\n';
  fclose(f);
  return n;
}

static int log_contains(const char *needle) {
  size_t len;
  unsigned char *data = read_all(log_file, &len);
  int found = data && strstr((char *)data, needle) != NULL;
  free(data);
  return found;
}

static void set_control(const char *json) { write_text(control_file, json); }

static int find_in_path(const char *exe) {
  const char *path = getenv("PATH");
  if (!path) return 0;
  char dir[P], full[P];
  for (const char *p = path; *p;) {
    const char *end = strchr(p, ':');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    snprintf(dir, sizeof dir, "%.*s", (int)len, p);
    snprintf(full, sizeof full, "%s/%s", dir[0] ? dir : ".", exe);
    if (access(full, X_OK) == 0) return 1;
    p += len;
    if (*p) p++;
  }
  return 0;
}

static int start_server(void) {
  char script[P];
  const char *override = getenv("SDGEN_FAKE_HUB");
  if (override) {
    snprintf(script, sizeof script, "%s", override);
  } else {
    /* The sources sit beside this file: tests/unit/ → tests/hub/. */
    snprintf(script, sizeof script, "%s", __FILE__);
    char *slash = strrchr(script, '/');
    if (slash) *slash = 0;
    strncat(script, "/../hub/fake_hub.py", sizeof script - strlen(script) - 1);
  }
  if (access(script, R_OK) != 0) {
    fprintf(stderr, "fake hub script not found: %s\n", script);
    return 0;
  }
  server_pid = fork();
  if (server_pid == 0) {
    execlp("python3", "python3", script, "--root", hub_root, "--port-file", port_file,
           "--log", log_file, "--control", control_file, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 1000; i++) {
    size_t len;
    unsigned char *port = read_all(port_file, &len);
    if (port) {
      snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", atoi((char *)port));
      free(port);
      return 1;
    }
    int status;
    if (waitpid(server_pid, &status, WNOHANG) == server_pid) {
      server_pid = 0;
      fprintf(stderr, "fake hub exited early\n");
      return 0;
    }
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

static void stop_server(void) {
  if (server_pid <= 0) return;
  kill(server_pid, SIGTERM);
  waitpid(server_pid, NULL, 0);
  server_pid = 0;
}

/* A loopback port nobody listens on: bound, then closed. */
static int closed_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(s, (struct sockaddr *)&a, &alen) != 0)
    return 9;
  close(s);
  return ntohs(a.sin_port);
}

/* ----------------------------------------------------------- model trees */

static void repo_file(const char *repo, const char *path, const char *text) {
  char full[P];
  snprintf(full, sizeof full, "%s/%s/%s", hub_root, repo, path);
  write_text(full, text);
}

static void repo_random(const char *repo, const char *path, size_t len, uint32_t seed) {
  char full[P];
  snprintf(full, sizeof full, "%s/%s/%s", hub_root, repo, path);
  random_file(full, len, seed);
}

static const char *const tiny_expected[] = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
    "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
    "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
};

static void make_repos(void) {
  const char *r = "test-org/tiny-sd";
  repo_file(r, "model_index.json",
            "{\"_class_name\": \"StableDiffusionPipeline\", \"_diffusers_version\": "
            "\"0.31.0\", \"feature_extractor\": [\"transformers\", "
            "\"CLIPImageProcessor\"], \"safety_checker\": [null, null], "
            "\"scheduler\": [\"diffusers\", \"PNDMScheduler\"], \"text_encoder\": "
            "[\"transformers\", \"CLIPTextModel\"], \"tokenizer\": [\"transformers\", "
            "\"CLIPTokenizer\"], \"unet\": [\"diffusers\", \"UNet2DConditionModel\"], "
            "\"vae\": [\"diffusers\", \"AutoencoderKL\"]}\n");
  repo_file(r, "README.md", "# tiny\n");
  repo_file(r, "feature_extractor/preprocessor_config.json", "{}\n");
  repo_file(r, "scheduler/scheduler_config.json", "{\"_class_name\": \"PNDMScheduler\"}\n");
  repo_file(r, "text_encoder/config.json", "{\"hidden_size\": 32}\n");
  repo_random(r, "text_encoder/model.safetensors", 5000, 1);
  repo_random(r, "text_encoder/model.fp16.safetensors", 2500, 2);
  repo_random(r, "text_encoder/pytorch_model.bin", 100, 3);
  repo_file(r, "tokenizer/vocab.json", "{\"a</w>\": 0}\n");
  repo_file(r, "tokenizer/merges.txt", "#version: 0.2\n");
  repo_file(r, "tokenizer/tokenizer_config.json", "{}\n");
  repo_file(r, "tokenizer/special_tokens_map.json", "{}\n");
  repo_file(r, "unet/config.json", "{\"sample_size\": 8}\n");
  repo_file(r, "unet/diffusion_pytorch_model.safetensors.index.json",
            "{\"metadata\": {}, \"weight_map\": {"
            "\"a\": \"diffusion_pytorch_model-00001-of-00002.safetensors\", "
            "\"b\": \"diffusion_pytorch_model-00002-of-00002.safetensors\"}}\n");
  repo_random(r, "unet/diffusion_pytorch_model-00001-of-00002.safetensors", 3000, 4);
  repo_random(r, "unet/diffusion_pytorch_model-00002-of-00002.safetensors", 3000, 5);
  repo_file(r, "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
            "{\"metadata\": {}, \"weight_map\": {"
            "\"a\": \"diffusion_pytorch_model.fp16-00001-of-00002.safetensors\", "
            "\"b\": \"diffusion_pytorch_model.fp16-00002-of-00002.safetensors\", "
            "\"c\": \"diffusion_pytorch_model.fp16-00002-of-00002.safetensors\"}}\n");
  repo_random(r, "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors", 1500, 6);
  repo_random(r, "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors", 1500, 7);
  repo_random(r, "unet/diffusion_pytorch_model.bin", 100, 8);
  repo_file(r, "vae/config.json", "{\"latent_channels\": 4}\n");
  repo_random(r, "vae/diffusion_pytorch_model.safetensors", 7000, 9);

  const char *g = "gated-org/gated-model";
  repo_file(g, "model_index.json",
            "{\"_class_name\": \"StableDiffusion3Pipeline\", \"scheduler\": "
            "[\"diffusers\", \"FlowMatchEulerDiscreteScheduler\"], \"transformer\": "
            "[\"diffusers\", \"SD3Transformer2DModel\"]}\n");
  repo_file(g, "scheduler/scheduler_config.json", "{}\n");
  repo_file(g, "transformer/config.json", "{}\n");
  repo_random(g, "transformer/diffusion_pytorch_model.safetensors", 4000, 10);

  repo_random("test-org/single", "sub/model.safetensors", 400000, 11);
  repo_random("test-org/single", "other.safetensors", 20000, 12);

  repo_file("test-org/pickles-only", "model_index.json",
            "{\"_class_name\": \"StableDiffusionPipeline\", \"unet\": [\"diffusers\", "
            "\"UNet2DConditionModel\"]}\n");
  repo_file("test-org/pickles-only", "unet/config.json", "{}\n");
  repo_random("test-org/pickles-only", "unet/diffusion_pytorch_model.bin", 100, 13);
}

/* -------------------------------------------------------------- helpers */

typedef struct progress_log {
  int calls, finished;
  int cancel;
} progress_log;

static int on_progress(void *user, const char *file, int64_t done, int64_t total,
                       double rate) {
  progress_log *p = user;
  p->calls++;
  if (total >= 0 && done == total) p->finished++;
  if (done < 0 || (total >= 0 && done > total)) p->finished = -1000;
  return p->cancel;
}

static sd_hub_options options(const char *cache_name) {
  static char caches[8][P];
  static int next;
  char *cache = caches[next++ % 8];
  snprintf(cache, P, "%s/%s", tmp_root, cache_name);
  sd_hub_options o = sd_hub_default_options();
  o.endpoint = endpoint;
  o.cache_dir = cache;
  return o;
}

/* snapshots/<commit>/<rel> must be a symlink ../(depth)blobs/<name>, where
 * name is the sha256 of the content for LFS files (a git sha1 otherwise),
 * and the blob must hold the hub's bytes. */
static void check_link(const char *snap, const char *repo, const char *rel) {
  char link[P], target[P], want[P], src[P], blob[P];
  snprintf(link, sizeof link, "%s/%s", snap, rel);
  snprintf(src, sizeof src, "%s/%s/%s", hub_root, repo, rel);
  struct stat st;
  CHECK_MSG(lstat(link, &st) == 0 && S_ISLNK(st.st_mode), "%s is not a symlink", rel);
  ssize_t n = readlink(link, target, sizeof target - 1);
  target[n > 0 ? n : 0] = 0;
  size_t used = 0;
  int ups = 2;
  for (const char *p = rel; *p; p++) ups += *p == '/';
  for (int i = 0; i < ups; i++) used += (size_t)snprintf(want + used, sizeof want - used, "../");
  const char *name = target + (strlen(target) > used + 6 ? used + 6 : strlen(target));
  CHECK_MSG(strncmp(target, want, used) == 0 && strncmp(target + used, "blobs/", 6) == 0,
            "%s links to %s (want %sblobs/...)", rel, target, want);
  size_t len = strlen(rel);
  if (len > 12 && strcmp(rel + len - 12, ".safetensors") == 0) {
    char hex[65];
    sha256_of_file(src, hex);
    CHECK_MSG(strcmp(name, hex) == 0, "%s: blob %s, content sha256 %s", rel, name, hex);
  } else {
    CHECK_MSG(strlen(name) == 40 && strspn(name, "0123456789abcdef") == 40,
              "%s: blob name %s is not a git sha1", rel, name);
  }
  snprintf(blob, sizeof blob, "%s/../../blobs/%s", snap, name);
  CHECK_MSG(lstat(blob, &st) == 0 && S_ISREG(st.st_mode), "%s: blob missing", rel);
  CHECK_MSG(same_content(link, src), "%s: content differs from the hub", rel);
}

/* Relative paths of the non-directories under dir (links not followed),
 * joined by '\n' into out, sorted by walk order. Returns the count. */
static int list_tree(const char *dir, const char *rel, char *out, size_t n) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int count = 0;
  struct dirent *e;
  char full[P], sub[P];
  while ((e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(full, sizeof full, "%s/%s", dir, e->d_name);
    snprintf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name);
    struct stat st;
    if (lstat(full, &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      count += list_tree(full, sub, out, n);
    } else {
      count++;
      size_t used = strlen(out);
      snprintf(out + used, n - used, "%s\n", sub);
    }
  }
  closedir(d);
  return count;
}

static int contains(const char *haystack, const char *needle) {
  return strstr(haystack, needle) != NULL;
}

/* ---------------------------------------------------------------- tests */

static void test_parse_names(void) {
  char repo[256], file[P];
  sd_error err = {0};
  CHECK(sd_hub_parse_name("stabilityai/stable-diffusion-xl-base-1.0", repo, sizeof repo,
                          file, sizeof file, &err) == SD_OK);
  CHECK(strcmp(repo, "stabilityai/stable-diffusion-xl-base-1.0") == 0 && !file[0]);
  CHECK(sd_hub_parse_name("org/name/unet/x.safetensors", repo, sizeof repo, file,
                          sizeof file, &err) == SD_OK);
  CHECK(strcmp(repo, "org/name") == 0 && strcmp(file, "unet/x.safetensors") == 0);
  const char *bad[] = {"name", "/abs/path", "./rel", "org/../x", "org/name/../../x",
                       "org/name/", "org//name", "or g/name", "../org/name",
                       "org/name/a//b", "~/x"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    CHECK_MSG(sd_hub_parse_name(bad[i], repo, sizeof repo, file, sizeof file, &err) ==
                  SD_ERR_ARG,
              "'%s' accepted", bad[i]);
  CHECK(strcmp(sd_hub_pipeline_for_class("StableDiffusionXLImg2ImgPipeline"),
               "sdxl-refiner") == 0);
  CHECK(strcmp(sd_hub_pipeline_for_class("StableDiffusion3Pipeline"), "sd3") == 0);
  CHECK(strcmp(sd_hub_pipeline_for_class("Other"), "") == 0);
}

static void test_local_path_and_bad_name(void) {
  char out[P];
  sd_error err = {0};
  sd_hub_options o = options("cache-unused");
  int before = log_count();
  CHECK(sd_hub_resolve(hub_root, &o, out, sizeof out, &err) == SD_OK);
  CHECK(strcmp(out, hub_root) == 0);
  sd_error_clear(&err);
  CHECK(sd_hub_resolve("no-such-thing", &o, out, sizeof out, &err) == SD_ERR_ARG);
  CHECK_MSG(contains(err.msg, "neither an existing file"), "%s", err.msg);
  CHECK(log_count() == before);
}

static void test_full_download(void) {
  char out[P], snap_root[P], refs[P], tree[16384] = "", blobs[P];
  sd_error err = {0};
  progress_log prog = {0};
  sd_hub_options o = options("cache-full");
  o.progress = on_progress;
  o.user = &prog;
  int rc = sd_hub_resolve("test-org/tiny-sd", &o, out, sizeof out, &err);
  CHECK_MSG(rc == SD_OK, "full download: %s", err.msg);
  if (rc) return;
  snprintf(snap_root, sizeof snap_root, "%s/models--test-org--tiny-sd/snapshots/",
           o.cache_dir);
  CHECK_MSG(strncmp(out, snap_root, strlen(snap_root)) == 0, "path %s", out);
  const char *commit = out + strlen(snap_root);
  CHECK(strlen(commit) == 40);
  size_t len;
  snprintf(refs, sizeof refs, "%s/models--test-org--tiny-sd/refs/main", o.cache_dir);
  unsigned char *ref = read_all(refs, &len);
  CHECK_MSG(ref && len == 40 && memcmp(ref, commit, 40) == 0, "refs/main: %s",
            ref ? (char *)ref : "(missing)");
  free(ref);

  int n = list_tree(out, "", tree, sizeof tree);
  int expected = (int)(sizeof tiny_expected / sizeof *tiny_expected);
  CHECK_MSG(n == expected, "snapshot holds %d files, want %d:\n%s", n, expected, tree);
  for (int i = 0; i < expected; i++) {
    char line[P];
    snprintf(line, sizeof line, "%s\n", tiny_expected[i]);
    CHECK_MSG(contains(tree, line), "missing %s", tiny_expected[i]);
    check_link(out, "test-org/tiny-sd", tiny_expected[i]);
  }
  /* Not the fp32 variant when fp16 exists, never pickles or unused parts. */
  CHECK(!log_contains("text_encoder/model.safetensors"));
  CHECK(!log_contains(".bin"));
  CHECK(!log_contains("feature_extractor"));
  CHECK(!log_contains("HEAD /cdn/"));
  CHECK(!log_contains("README"));
  CHECK(!log_contains("00001-of-00002.safetensors ") ||
        log_contains("fp16-00001-of-00002"));
  CHECK(!log_contains("unet/diffusion_pytorch_model-0000"));
  char blob_list[8192] = "";
  snprintf(blobs, sizeof blobs, "%s/models--test-org--tiny-sd/blobs", o.cache_dir);
  int nblobs = list_tree(blobs, "", blob_list, sizeof blob_list);
  /* Every file has distinct content except the 3 "{}" tokenizer/scheduler
   * configs that share a blob... none here share: count matches files minus
   * duplicates of identical text. */
  CHECK_MSG(nblobs >= expected - 2 && nblobs <= expected, "%d blobs", nblobs);
  CHECK_MSG(!contains(blob_list, ".incomplete"), "leftover partial: %s", blob_list);
  char lock_dir[P], lock_list[8192] = "";
  snprintf(lock_dir, sizeof lock_dir, "%s/.locks/models--test-org--tiny-sd", o.cache_dir);
  CHECK_MSG(list_tree(lock_dir, "", lock_list, sizeof lock_list) == nblobs,
            "locks:\n%s", lock_list);
  CHECK_MSG(prog.finished >= expected && prog.finished <= 2 * expected,
            "progress finished %d times", prog.finished);

  /* Complete in the cache now: the second resolve asks nothing. */
  int before = log_count();
  char again[P];
  CHECK(sd_hub_resolve("test-org/tiny-sd", &o, again, sizeof again, &err) == SD_OK);
  CHECK(strcmp(again, out) == 0);
  CHECK_MSG(log_count() == before, "%d requests for a cached repo", log_count() - before);
}

typedef struct list_seen {
  int count, complete;
  int64_t size;
  char repo[256], pipeline[32], commit[64];
} list_seen;

static int on_cached_repo(void *user, const sd_hub_cached_repo *r) {
  list_seen *s = user;
  s->count++;
  s->complete = r->complete;
  s->size = r->size_bytes;
  snprintf(s->repo, sizeof s->repo, "%s", r->repo);
  snprintf(s->pipeline, sizeof s->pipeline, "%s", r->pipeline);
  snprintf(s->commit, sizeof s->commit, "%s", r->commit);
  return 0;
}

/* A cache as huggingface_hub/diffusers leave it, written by hand: used in
 * place, with zero requests. */
static void test_prepopulated_cache(void) {
  sd_hub_options o = options("cache-diffusers");
  const char *commit = "0123456789abcdef0123456789abcdef01234567";
  const char *files[][2] = {
      {"model_index.json",
       "{\"_class_name\": \"StableDiffusionXLPipeline\", \"text_encoder\": "
       "[\"transformers\", \"CLIPTextModel\"], \"text_encoder_2\": [\"transformers\", "
       "\"CLIPTextModelWithProjection\"], \"tokenizer\": [\"transformers\", "
       "\"CLIPTokenizer\"], \"tokenizer_2\": [\"transformers\", \"CLIPTokenizer\"], "
       "\"unet\": [\"diffusers\", \"UNet2DConditionModel\"], \"vae\": [\"diffusers\", "
       "\"AutoencoderKL\"], \"scheduler\": [\"diffusers\", \"EulerDiscreteScheduler\"]}"},
      {"text_encoder/config.json", "{\"a\": 1}"},
      {"text_encoder/model.fp16.safetensors", "TE1"},
      {"text_encoder_2/config.json", "{\"a\": 2}"},
      {"text_encoder_2/model.fp16.safetensors", "TE2"},
      {"tokenizer/vocab.json", "{\"v\": 1}"},
      {"tokenizer/merges.txt", "#m1"},
      {"tokenizer_2/vocab.json", "{\"v\": 2}"},
      {"tokenizer_2/merges.txt", "#m2"},
      {"unet/config.json", "{\"u\": 1}"},
      {"unet/diffusion_pytorch_model.fp16.safetensors", "UNET"},
      {"vae/config.json", "{\"v\": 3}"},
      {"vae/diffusion_pytorch_model.fp16.safetensors", "VAE"},
      {"scheduler/scheduler_config.json", "{\"s\": 1}"},
  };
  char repo_dir[P], path[P], target[P];
  snprintf(repo_dir, sizeof repo_dir, "%s/models--cached-org--cached-xl", o.cache_dir);
  int64_t total = 0;
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    char name[65];
    sd_sha256_hex(files[i][1], strlen(files[i][1]), name);
    snprintf(path, sizeof path, "%s/blobs/%s", repo_dir, name);
    write_text(path, files[i][1]);
    total += (int64_t)strlen(files[i][1]);
    snprintf(path, sizeof path, "%s/snapshots/%s/%s", repo_dir, commit, files[i][0]);
    write_text(path, "");
    unlink(path);
    snprintf(target, sizeof target, "%s../../blobs/%s",
             strchr(files[i][0], '/') ? "../" : "", name);
    CHECK(symlink(target, path) == 0);
  }
  snprintf(path, sizeof path, "%s/refs/main", repo_dir);
  write_text(path, commit);

  int before = log_count();
  char out[P], want[P];
  sd_error err = {0};
  int rc = sd_hub_resolve("cached-org/cached-xl", &o, out, sizeof out, &err);
  CHECK_MSG(rc == SD_OK, "prepopulated: %s", err.msg);
  snprintf(want, sizeof want, "%s/snapshots/%s", repo_dir, commit);
  CHECK(rc != SD_OK || strcmp(out, want) == 0);
  CHECK_MSG(log_count() == before, "%d requests for a cached repo", log_count() - before);

  /* Listing: the repo, its size, its pipeline. */
  list_seen seen = {0};
  CHECK(sd_hub_list_cached(&o, on_cached_repo, &seen, &err) == SD_OK);
  CHECK_MSG(seen.count == 1 && strcmp(seen.repo, "cached-org/cached-xl") == 0,
            "listed %d, %s", seen.count, seen.repo);
  CHECK_MSG(seen.size == total, "size %lld want %lld", (long long)seen.size,
            (long long)total);
  CHECK(strcmp(seen.pipeline, "sdxl") == 0 && seen.complete == 1);
  CHECK(strcmp(seen.commit, commit) == 0);

  /* A blob gone: the snapshot is incomplete; offline says so. */
  char first_blob[65];
  sd_sha256_hex("UNET", 4, first_blob);
  snprintf(path, sizeof path, "%s/blobs/%s", repo_dir, first_blob);
  unlink(path);
  o.offline = 1;
  sd_error_clear(&err);
  CHECK(sd_hub_resolve("cached-org/cached-xl", &o, out, sizeof out, &err) != SD_OK);
  CHECK_MSG(contains(err.msg, "incomplete") && contains(err.msg, "unet/"), "%s", err.msg);
  memset(&seen, 0, sizeof seen);
  CHECK(sd_hub_list_cached(&o, on_cached_repo, &seen, &err) == SD_OK);
  CHECK(seen.count == 1 && seen.complete == 0);
  CHECK(log_count() == before);
}

static void test_gated(void) {
  char out[P], token_path[P];
  sd_error err = {0};
  set_control("{\"gated\": [\"gated-org/gated-model\"], \"token\": \"hf_good\"}");
  sd_hub_options o = options("cache-gated");
  int rc = sd_hub_resolve("gated-org/gated-model", &o, out, sizeof out, &err);
  CHECK(rc == SD_ERR_NETWORK);
  CHECK_MSG(contains(err.msg, "gated-org/gated-model is gated") &&
                contains(err.msg, "https://huggingface.co/gated-org/gated-model") &&
                contains(err.msg, "HF_TOKEN"),
            "%s", err.msg);

  setenv("HF_TOKEN", "hf_wrong", 1);
  sd_error_clear(&err);
  CHECK(sd_hub_resolve("gated-org/gated-model", &o, out, sizeof out, &err) ==
        SD_ERR_NETWORK);
  CHECK_MSG(contains(err.msg, "token was refused"), "%s", err.msg);

  setenv("HF_TOKEN", "hf_good", 1);
  sd_error_clear(&err);
  rc = sd_hub_resolve("gated-org/gated-model", &o, out, sizeof out, &err);
  CHECK_MSG(rc == SD_OK, "with HF_TOKEN: %s", err.msg);
  if (rc == SD_OK) check_link(out, "gated-org/gated-model",
                              "transformer/diffusion_pytorch_model.safetensors");
  unsetenv("HF_TOKEN");

  /* The token file huggingface_hub's login writes: $HF_HOME/token. */
  snprintf(token_path, sizeof token_path, "%s/token", getenv("HF_HOME"));
  write_text(token_path, "hf_good\n");
  sd_hub_options o2 = options("cache-gated-2");
  sd_error_clear(&err);
  rc = sd_hub_resolve("gated-org/gated-model", &o2, out, sizeof out, &err);
  CHECK_MSG(rc == SD_OK, "with token file: %s", err.msg);
  unlink(token_path);
  set_control("{}");
}

static void test_not_found(void) {
  char out[P];
  sd_error err = {0};
  sd_hub_options o = options("cache-404");
  CHECK(sd_hub_resolve("test-org/nope", &o, out, sizeof out, &err) == SD_ERR_NETWORK);
  CHECK_MSG(contains(err.msg, "test-org/nope not found on the hub"), "%s", err.msg);
  sd_error_clear(&err);
  CHECK(sd_hub_resolve("test-org/single/nope.safetensors", &o, out, sizeof out, &err) ==
        SD_ERR_NETWORK);
  CHECK_MSG(contains(err.msg, "test-org/single/nope.safetensors not found on the hub"),
            "%s", err.msg);
  sd_error_clear(&err);
  o.revision = "no-such-branch";
  CHECK(sd_hub_resolve("test-org/tiny-sd", &o, out, sizeof out, &err) == SD_ERR_NETWORK);
  CHECK_MSG(contains(err.msg, "revision 'no-such-branch' not found"), "%s", err.msg);
  o.revision = NULL;
  sd_error_clear(&err);
  CHECK(sd_hub_resolve("test-org/pickles-only", &o, out, sizeof out, &err) ==
        SD_ERR_UNSUPPORTED);
  CHECK_MSG(contains(err.msg, "unet/ safetensors") && contains(err.msg, "pickle"), "%s",
            err.msg);
  CHECK(!log_contains("pickles-only/resolve/main/unet/diffusion_pytorch_model.bin"));
}

/* Paths of the single-file repo's big blob for a given cache. */
static void single_paths(const sd_hub_options *o, char *partial, char *blob, char *link,
                         char *snaps) {
  char src[P], hex[65];
  snprintf(src, P, "%s/test-org/single/sub/model.safetensors", hub_root);
  sha256_of_file(src, hex);
  snprintf(blob, P, "%s/models--test-org--single/blobs/%s", o->cache_dir, hex);
  snprintf(partial, P, "%s.incomplete", blob);
  snprintf(snaps, P, "%s/models--test-org--single/snapshots", o->cache_dir);
  char tree[4096] = "";
  list_tree(snaps, "", tree, sizeof tree);
  snprintf(link, P, "%s/%s", snaps, tree); /* first entry, if any */
  char *nl = strchr(link, '\n');
  if (nl) *nl = 0;
}

static void test_resume_after_break(void) {
  char out[P], partial[P], blob[P], link[P], snaps[P], tree[4096] = "";
  sd_error err = {0};
  sd_hub_options o = options("cache-resume");
  const char *name = "test-org/single/sub/model.safetensors";
  set_control("{\"break\": {\"test-org/single/sub/model.safetensors\": 150000}}");
  int rc = sd_hub_resolve(name, &o, out, sizeof out, &err);
  CHECK(rc == SD_ERR_NETWORK);
  CHECK_MSG(contains(err.msg, "interrupted at 150000 of 400000") &&
                contains(err.msg, "resume"),
            "%s", err.msg);
  single_paths(&o, partial, blob, link, snaps);
  CHECK_MSG(file_size(partial) == 150000, "partial holds %ld", file_size(partial));
  CHECK(!exists_l(blob));
  CHECK_MSG(list_tree(snaps, "", tree, sizeof tree) == 0, "snapshots: %s", tree);

  set_control("{}");
  sd_error_clear(&err);
  rc = sd_hub_resolve(name, &o, out, sizeof out, &err);
  CHECK_MSG(rc == SD_OK, "resume: %s", err.msg);
  CHECK(log_contains("sub/model.safetensors bytes=150000-"));
  CHECK(!exists_l(partial));
  char src[P];
  snprintf(src, P, "%s/test-org/single/sub/model.safetensors", hub_root);
  CHECK(rc != SD_OK || same_content(out, src));
  if (rc == SD_OK) {
    char *snap_end = strstr(out, "/sub/model.safetensors");
    *snap_end = 0;
    check_link(out, "test-org/single", "sub/model.safetensors");
  }
}

static void test_checksum_mismatch(void) {
  char out[P], tree[4096] = "", dir[P];
  sd_error err = {0};
  sd_hub_options o = options("cache-corrupt");
  set_control("{\"corrupt\": [\"test-org/single/other.safetensors\"]}");
  int rc = sd_hub_resolve("test-org/single/other.safetensors", &o, out, sizeof out, &err);
  CHECK(rc == SD_ERR_FORMAT);
  CHECK_MSG(contains(err.msg, "checksum mismatch") && contains(err.msg, "discarded"), "%s",
            err.msg);
  snprintf(dir, sizeof dir, "%s/models--test-org--single", o.cache_dir);
  list_tree(dir, "", tree, sizeof tree);
  CHECK_MSG(!contains(tree, "blobs/") && !contains(tree, "snapshots/"),
            "left behind:\n%s", tree);
  set_control("{}");
  sd_error_clear(&err);
  CHECK(sd_hub_resolve("test-org/single/other.safetensors", &o, out, sizeof out, &err) ==
        SD_OK);
}

static void test_disk_full(void) {
  char out[P], partial[P], blob[P], link[P], snaps[P], tree[4096] = "";
  sd_error err = {0};
  sd_hub_options o = options("cache-full-disk");
  struct rlimit saved, small;
  getrlimit(RLIMIT_FSIZE, &saved);
  small = saved;
  small.rlim_cur = 100000;
  signal(SIGXFSZ, SIG_IGN);
  setrlimit(RLIMIT_FSIZE, &small);
  int rc = sd_hub_resolve("test-org/single/sub/model.safetensors", &o, out, sizeof out,
                          &err);
  setrlimit(RLIMIT_FSIZE, &saved);
  CHECK(rc == SD_ERR_IO);
  CHECK_MSG(contains(err.msg, "disk full") && contains(err.msg, "resume"), "%s", err.msg);
  single_paths(&o, partial, blob, link, snaps);
  CHECK_MSG(file_size(partial) == 100000, "partial holds %ld", file_size(partial));
  CHECK_MSG(list_tree(snaps, "", tree, sizeof tree) == 0, "snapshots: %s", tree);
  sd_error_clear(&err);
  rc = sd_hub_resolve("test-org/single/sub/model.safetensors", &o, out, sizeof out, &err);
  CHECK_MSG(rc == SD_OK, "after freeing space: %s", err.msg);
  CHECK(log_contains("sub/model.safetensors bytes=100000-"));
  CHECK(!exists_l(partial) && exists_l(blob));
}

static void test_cancel(void) {
  char out[P];
  sd_error err = {0};
  progress_log prog = {.cancel = 1};
  sd_hub_options o = options("cache-cancel");
  o.progress = on_progress;
  o.user = &prog;
  CHECK(sd_hub_resolve("test-org/single/sub/model.safetensors", &o, out, sizeof out,
                       &err) == SD_ERR_CANCELLED);
  CHECK_MSG(contains(err.msg, "cancelled"), "%s", err.msg);
}

static void test_offline_and_unreachable(void) {
  char out[P], closed[128];
  sd_error err = {0};
  snprintf(closed, sizeof closed, "http://127.0.0.1:%d", closed_port());
  int before = log_count();

  sd_hub_options o = options("cache-offline");
  o.endpoint = closed;
  o.offline = 1;
  CHECK(sd_hub_resolve("test-org/tiny-sd", &o, out, sizeof out, &err) == SD_ERR_IO);
  CHECK_MSG(contains(err.msg, "not in the Hugging Face cache") &&
                contains(err.msg, "offline"),
            "%s", err.msg);
  /* The live server too: offline must not even ask it. */
  o.endpoint = endpoint;
  sd_error_clear(&err);
  CHECK(sd_hub_resolve("test-org/single/other.safetensors", &o, out, sizeof out, &err) ==
        SD_ERR_IO);
  o.offline = 0;
  setenv("HF_HUB_OFFLINE", "1", 1);
  sd_error_clear(&err);
  CHECK(sd_hub_resolve("test-org/tiny-sd", &o, out, sizeof out, &err) == SD_ERR_IO);
  CHECK(sd_hub_download("test-org/tiny-sd", &o, NULL, 0, &err) == SD_ERR_IO);
  /* What the full-download test cached works offline. */
  sd_hub_options cached = options("cache-full");
  cached.endpoint = closed;
  sd_error_clear(&err);
  CHECK_MSG(sd_hub_resolve("test-org/tiny-sd", &cached, out, sizeof out, &err) == SD_OK,
            "offline from cache: %s", err.msg);
  unsetenv("HF_HUB_OFFLINE");
  CHECK_MSG(log_count() == before, "offline mode made %d requests", log_count() - before);

  /* Online but nothing listens: one clear line. */
  o.endpoint = closed;
  sd_error_clear(&err);
  CHECK(sd_hub_resolve("test-org/tiny-sd", &o, out, sizeof out, &err) == SD_ERR_NETWORK);
  CHECK_MSG(contains(err.msg, "cannot reach") && contains(err.msg, "HF_HUB_OFFLINE"), "%s",
            err.msg);
}

/* huggingface_hub follows the hub's relative redirects (renamed repos) on
 * HEAD, and the file lands under the name the user gave. */
static void test_renamed_repo(void) {
  char out[P], src[P];
  sd_error err = {0};
  sd_hub_options o = options("cache-renamed");
  set_control("{\"renamed\": {\"old-org/old-name\": \"test-org/single\"}}");
  int rc = sd_hub_resolve("old-org/old-name/other.safetensors", &o, out, sizeof out, &err);
  CHECK_MSG(rc == SD_OK, "renamed: %s", err.msg);
  snprintf(src, sizeof src, "%s/test-org/single/other.safetensors", hub_root);
  CHECK(rc != SD_OK || (same_content(out, src) &&
                        contains(out, "/models--old-org--old-name/snapshots/")));
  set_control("{}");
}

/* Every allocation failing in turn: each run ends in a clean error (or
 * succeeds once N passes the count), and nothing tracked stays allocated. */
static void test_allocation_failures(void) {
  char out[P];
  int64_t base = sd_alloc_get_stats().bytes_in_use;
  sd_hub_options cached = options("cache-full");
  cached.offline = 1;
  int done_cached = 0, done_download = 0;
  int64_t n = 1;
  for (; n < 400 && !(done_cached && done_download); n++) {
    sd_error err = {0};
    if (!done_cached) {
      sd_alloc_fail_at(n, 0);
      int rc = sd_hub_resolve("test-org/tiny-sd", &cached, out, sizeof out, &err);
      int failed = sd_alloc_fault_triggered();
      sd_alloc_fail_at(0, 0);
      CHECK_MSG(rc == SD_OK || (failed && rc != SD_OK && err.msg[0]),
                "fail at %lld: rc %d %s", (long long)n, rc, err.msg);
      if (!failed) done_cached = 1;
    }
    if (!done_download) {
      char cache_name[64];
      snprintf(cache_name, sizeof cache_name, "cache-oom-%lld", (long long)n);
      sd_hub_options o = options(cache_name);
      sd_error_clear(&err);
      sd_alloc_fail_at(n, 0);
      int rc = sd_hub_resolve("test-org/single/other.safetensors", &o, out, sizeof out,
                              &err);
      int failed = sd_alloc_fault_triggered();
      sd_alloc_fail_at(0, 0);
      CHECK_MSG(rc == SD_OK || (failed && rc != SD_OK && err.msg[0]),
                "download fail at %lld: rc %d %s", (long long)n, rc, err.msg);
      if (!failed) done_download = 1;
    }
    CHECK_MSG(sd_alloc_get_stats().bytes_in_use == base, "leak after failing alloc %lld",
              (long long)n);
  }
  CHECK(done_cached && done_download);
  CHECK_MSG(n > 10, "only %lld allocations to fail", (long long)n);
}

static void test_progress_renderer(void) {
  /* Output goes to stderr; only check it survives odd values. */
  CHECK(sd_hub_progress_stderr(NULL, "unet/diffusion_pytorch_model.fp16.safetensors."
                                     "with.a.very.long.name", 5, -1, 0) == 0);
  CHECK(sd_hub_progress_stderr(NULL, "x", 1500000, 3000000, 2.5e6) == 0);
  CHECK(sd_hub_progress_stderr(NULL, "x", 3000000, 3000000, 2.5e6) == 0);
}

int main(void) {
  if (!find_in_path("python3")) {
    fprintf(stderr, "SKIP: python3 not found; the fake hub server needs it\n");
    return 77;
  }
  snprintf(tmp_root, sizeof tmp_root, "/tmp/sdgen_hub_XXXXXX");
  if (!mkdtemp(tmp_root)) {
    fprintf(stderr, "cannot create a temporary folder\n");
    return 1;
  }
  snprintf(hub_root, sizeof hub_root, "%s/hub-repos", tmp_root);
  snprintf(port_file, sizeof port_file, "%s/port", tmp_root);
  snprintf(log_file, sizeof log_file, "%s/requests.log", tmp_root);
  snprintf(control_file, sizeof control_file, "%s/control.json", tmp_root);
  char hf_home[P];
  snprintf(hf_home, sizeof hf_home, "%s/hf-home", tmp_root);
  mkdirs(hf_home);
  /* Nothing from the caller's environment may steer these runs, and no
   * proxy may carry loopback traffic elsewhere. */
  const char *clear[] = {"HF_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "HF_ENDPOINT",
                         "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "http_proxy",
                         "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                         "ALL_PROXY"};
  for (size_t i = 0; i < sizeof clear / sizeof *clear; i++) unsetenv(clear[i]);
  setenv("HF_HOME", hf_home, 1);
  setenv("NO_PROXY", "*", 1);
  setenv("no_proxy", "*", 1);
  make_repos();
  set_control("{}");
  if (!start_server()) {
    fprintf(stderr, "cannot start the fake hub\n");
    stop_server();
    remove_tree(tmp_root);
    return 1;
  }
  test_parse_names();
  test_local_path_and_bad_name();
  test_full_download();
  test_prepopulated_cache();
  test_gated();
  test_not_found();
  test_resume_after_break();
  test_checksum_mismatch();
  test_disk_full();
  test_cancel();
  test_offline_and_unreachable();
  test_renamed_repo();
  test_allocation_failures();
  test_progress_renderer();
  CHECK_MSG(sd_alloc_get_stats().bytes_in_use == 0, "%lld tracked bytes still allocated",
            (long long)sd_alloc_get_stats().bytes_in_use);
  stop_server();
  if (t_failed && getenv("SDGEN_KEEP_TMP"))
    fprintf(stderr, "kept %s\n", tmp_root);
  else
    remove_tree(tmp_root);
  return test_finish();
}
