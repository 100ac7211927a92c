#include "pipeline/tokenizers.h"

#include <stdio.h>
#include <string.h>

#include "io/hub.h"
#include "io/model_dir.h"

/* Repositories that publish the tokenizers single files leave out, with the
 * files a tokenizer folder needs. Found in the Hugging Face cache, else
 * downloaded (never with HF_HUB_OFFLINE). */
#define CLIP_L_REPO "openai/clip-vit-large-patch14"
#define CLIP_G_REPO "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
#define T5_REPO "google/t5-v1_1-xxl"

/* Fetches files of repo into the cache; *dir = the snapshot folder. */
static int hub_folder(const char *repo, const char *const *files, int nfiles, int optional_from,
                      char *dir, size_t n, sd_error *err) {
  sd_hub_options ho = sd_hub_default_options();
  char name[1024], path[4096];
  dir[0] = 0;
  for (int i = 0; i < nfiles; i++) {
    snprintf(name, sizeof name, "%s/%s", repo, files[i]);
    sd_error e = {0};
    int rc = sd_hub_download(name, &ho, path, sizeof path, &e);
    if (rc && i < optional_from) return sd_fail(err, rc, "%s", e.msg);
    if (!rc && !dir[0]) {
      snprintf(dir, n, "%s", path);
      char *slash = strrchr(dir, '/');
      if (slash) *slash = 0;
    }
  }
  return SD_OK;
}

int sd_open_clip_tokenizer(const char *dir1, const char *dir2, const char *sub,
                           sd_clip_tokenizer **out, sd_error *err) {
  const char *dirs[2] = {dir1, dir2};
  char p[4200];
  /* The shared clip/ folder keeps both conventions side by side. */
  const char *suffix = strcmp(sub, "tokenizer_2") == 0 ? "_sdxl2" : "_sd15";
  for (int i = 0; i < 2; i++) {
    if (!dirs[i]) continue;
    sd_path_join(p, sizeof p, dirs[i], sub);
    if (sd_is_dir(p)) return sd_clip_tokenizer_load_dir(out, p, err);
    sd_path_join(p, sizeof p, dirs[i], "clip");
    if (sd_is_dir(p)) return sd_clip_tokenizer_load_dir_suffix(out, p, suffix, err);
  }
  static const char *const files[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                      "special_tokens_map.json"};
  const char *repo = strcmp(sub, "tokenizer_2") == 0 ? CLIP_G_REPO : CLIP_L_REPO;
  sd_error e = {0};
  if (hub_folder(repo, files, 4, 2, p, sizeof p, &e) == SD_OK && p[0])
    return sd_clip_tokenizer_load_dir(out, p, err);
  return sd_fail(err, SD_ERR_IO,
                 "no CLIP tokenizer found (%s): pass --tokenizers DIR (a folder with "
                 "clip/vocab.json and clip/merges.txt, or a diffusers model folder)", e.msg);
}

int sd_open_t5_tokenizer(const char *dir1, const char *dir2, sd_t5_tokenizer **out,
                         sd_error *err) {
  const char *dirs[2] = {dir1, dir2};
  static const char *const subs[2] = {"tokenizer_3", "t5"};
  char p[4200];
  for (int i = 0; i < 2; i++)
    for (int k = 0; dirs[i] && k < 2; k++) {
      sd_path_join(p, sizeof p, dirs[i], subs[k]);
      if (sd_is_dir(p)) return sd_t5_tokenizer_load_dir(out, p, err);
    }
  static const char *const files[] = {"spiece.model", "tokenizer_config.json",
                                      "special_tokens_map.json"};
  sd_error e = {0};
  if (hub_folder(T5_REPO, files, 3, 1, p, sizeof p, &e) == SD_OK && p[0])
    return sd_t5_tokenizer_load_dir(out, p, err);
  return sd_fail(err, SD_ERR_IO,
                 "no T5 tokenizer found (%s): pass --tokenizers DIR (a folder with "
                 "t5/spiece.model or t5/tokenizer.json), or --no-t5", e.msg);
}
