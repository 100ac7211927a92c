/* Model names that just work: local paths, the Hugging Face cache, downloads.
 *
 * A model value is resolved in this order:
 *   1. an existing path (folder or file) is used as it is;
 *   2. the Hugging Face cache, in huggingface_hub's layout, used in place:
 *        <cache>/models--ORG--NAME/refs/<revision>        commit sha (text)
 *        <cache>/models--ORG--NAME/snapshots/<sha>/<path>  symlink into ../../blobs
 *        <cache>/models--ORG--NAME/blobs/<etag>            content
 *      where <cache> is $HF_HUB_CACHE, else $HF_HOME/hub, else
 *      $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub;
 *   3. a download from the hub into that same cache (libcurl), so diffusers
 *      reuses what we fetched and we reuse what diffusers fetched.
 *
 * Names: `ORG/NAME` is a diffusers pipeline repo: model_index.json is read,
 * and for each component folder we use (text_encoder*, tokenizer*, unet,
 * transformer, vae, scheduler) its config/tokenizer files and its safetensors
 * weights, the fp16 variant preferred, shards through their index. Pickle
 * files are never fetched. `ORG/NAME/path/in/repo.safetensors` fetches that
 * one file.
 *
 * Downloads follow huggingface_hub: HEAD {endpoint}/{repo}/resolve/{rev}/{path}
 * gives the commit (X-Repo-Commit) and the blob name (X-Linked-Etag for LFS
 * files, which is the SHA-256 of the content and is verified, else ETag);
 * the body is written to blobs/<etag>.incomplete, resumed with a Range
 * request after an interruption, renamed when complete and then linked from
 * the snapshot. A failed file never appears in snapshots/.
 *
 * Usage:
 *   sd_hub_options o = sd_hub_default_options();
 *   o.progress = sd_hub_progress_stderr;
 *   char dir[4096];
 *   sd_error err = {0};
 *   if (sd_hub_resolve("stabilityai/stable-diffusion-xl-base-1.0", &o, dir,
 *                      sizeof dir, &err) != SD_OK)
 *     fprintf(stderr, "%s\n", err.msg);
 *
 * Every failure leaves one line in err saying what to do (gated repo, file
 * not on the hub, no network, disk full, checksum mismatch, interrupted). */
#ifndef SDGEN_IO_HUB_H
#define SDGEN_IO_HUB_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

/* Called during a download, at most ~10 times a second per file and once
 * more with done == total when the file completes. total is -1 if unknown.
 * Returning nonzero cancels the download (SD_ERR_CANCELLED; the partial file
 * is kept for resuming). */
typedef int (*sd_hub_progress_fn)(void *user, const char *file, int64_t done,
                                  int64_t total, double bytes_per_s);

typedef struct sd_hub_options {
  const char *endpoint;  /* NULL: $HF_ENDPOINT, else https://huggingface.co */
  const char *token;     /* NULL: $HF_TOKEN, else $HF_TOKEN_PATH, else
                            $HF_HOME/token (~/.cache/huggingface/token) */
  const char *cache_dir; /* NULL: see the resolution order above */
  const char *revision;  /* NULL: "main"; a branch, tag or 40-hex commit */
  int offline;           /* 1: cache only, never touch the network; also on
                            when $HF_HUB_OFFLINE is 1/true/yes/on */
  long stall_timeout_s;  /* a transfer below 1 byte/s this long is cut off
                            (resumable); 0: 60 s */
  sd_hub_progress_fn progress; /* NULL: silent */
  void *user;                  /* passed to progress */
} sd_hub_options;

/* All fields NULL/0: everything comes from the environment. */
sd_hub_options sd_hub_default_options(void);

/* Splits a hub name into repo ("ORG/NAME") and file ("" for a whole repo,
 * else the path inside the repo). SD_ERR_ARG if name is not of that form
 * (absolute or ./ paths, empty or ".." segments, odd characters). */
int sd_hub_parse_name(const char *name, char *repo, size_t repo_n, char *file,
                      size_t file_n, sd_error *err);

/* Resolves a model value to a local folder (pipeline repo) or file, in the
 * order described above, downloading what is missing. out_path receives the
 * path (inside the cache for hub names). */
int sd_hub_resolve(const char *name, const sd_hub_options *opt, char *out_path,
                   size_t out_n, sd_error *err);

/* Makes sure a hub name is complete in the cache (a local path is an
 * error here). out_path may be NULL. */
int sd_hub_download(const char *name, const sd_hub_options *opt,
                    char *out_path, size_t out_n, sd_error *err);

/* Path of the cache folder the options select (for messages and listing). */
int sd_hub_cache_dir(const sd_hub_options *opt, char *out, size_t out_n,
                     sd_error *err);

typedef struct sd_hub_cached_repo {
  const char *repo;       /* "ORG/NAME" */
  const char *commit;     /* what refs/main names ("" if no ref) */
  const char *snapshot;   /* snapshots/<commit> folder ("" if none) */
  const char *class_name; /* model_index.json _class_name ("" if none) */
  const char *pipeline;   /* sd15, sdxl, sdxl-refiner, sd3, or "" */
  int64_t size_bytes;     /* complete blobs on disk */
  int64_t partial_bytes;  /* *.incomplete blobs awaiting resume */
  int complete;           /* every file we would fetch is present */
} sd_hub_cached_repo;

/* Calls fn for each models--* repo in the cache, in name order. fn returning
 * nonzero stops the walk. A missing cache folder lists nothing. */
int sd_hub_list_cached(const sd_hub_options *opt,
                       int (*fn)(void *user, const sd_hub_cached_repo *repo),
                       void *user, sd_error *err);

/* Maps a diffusers pipeline class to our preset name ("" if unknown):
 * StableDiffusionPipeline → sd15, StableDiffusionXLPipeline → sdxl,
 * StableDiffusionXLImg2ImgPipeline → sdxl-refiner,
 * StableDiffusion3Pipeline → sd3. */
const char *sd_hub_pipeline_for_class(const char *class_name);

/* Default progress renderer for a terminal: one line per file on stderr,
 * redrawn in place: name, bar, bytes done/total, rate, ETA; a newline when
 * the file completes. user is ignored. Always returns 0. */
int sd_hub_progress_stderr(void *user, const char *file, int64_t done,
                           int64_t total, double bytes_per_s);

#endif
