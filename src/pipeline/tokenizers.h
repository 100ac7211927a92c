/* Finding a model's tokenizers: the diffusers folder's tokenizer, tokenizer_2 and tokenizer_3 dirs,
 * or a --tokenizers folder laid out as clip/ (vocab.json, merges.txt,
 * tokenizer_config_<convention>.json) and t5/ (spiece.model or
 * tokenizer.json), which single-file checkpoints need. */
#ifndef SDGEN_PIPELINE_TOKENIZERS_H
#define SDGEN_PIPELINE_TOKENIZERS_H

#include "base/status.h"
#include "text/clip_tokenizer.h"
#include "text/t5_tokenizer.h"

/* sub: "tokenizer" (CLIP-L, pad <|endoftext|>) or "tokenizer_2" (bigG,
 * pad "!"). Tries <dir>/<sub>, then <dir>/clip with the matching config
 * suffix, for each of dir1 and dir2 (either may be NULL); then the
 * repository that publishes the tokenizer (openai/clip-vit-large-patch14,
 * laion/CLIP-ViT-bigG-14-laion2B-39B-b160k) in the Hugging Face cache,
 * downloading it unless HF_HUB_OFFLINE is set. */
int sd_open_clip_tokenizer(const char *dir1, const char *dir2, const char *sub,
                           sd_clip_tokenizer **out, sd_error *err);

/* T5: <dir>/tokenizer_3, then <dir>/t5, then google/t5-v1_1-xxl. */
int sd_open_t5_tokenizer(const char *dir1, const char *dir2, sd_t5_tokenizer **out,
                         sd_error *err);

#endif
