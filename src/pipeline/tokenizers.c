#include "pipeline/tokenizers.h"

#include <stdio.h>
#include <string.h>

#include "io/model_dir.h"

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
  return sd_fail(err, SD_ERR_IO,
                 "no CLIP tokenizer found: pass --tokenizers DIR (a folder with clip/vocab.json "
                 "and clip/merges.txt, or a diffusers model folder)");
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
  return sd_fail(err, SD_ERR_IO,
                 "no T5 tokenizer found: pass --tokenizers DIR (a folder with t5/spiece.model "
                 "or t5/tokenizer.json), or --no-t5");
}
