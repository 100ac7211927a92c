/* CLIP byte-level BPE tokenizer (SD 1.x, SDXL, SD3 `tokenizer/`, `tokenizer_2/`).
 *
 * Reproduces the ids of transformers' CLIPTokenizer(prompt, padding="max_length",
 * max_length=77, truncation=True): [bos] + bpe_ids[:max_len-2] + [eos], padded
 * with the pad id. The rules, in order:
 *   1. added special tokens (bos, eos, unk and the pad token) are split off the
 *      raw text by exact, case-sensitive match; with pad "!" (SDXL tokenizer_2)
 *      every "!" is therefore id 0 and never reaches BPE;
 *   2. each piece between them: NFC, runs of White_Space -> one space,
 *      per-character lowercase (no final-sigma context rule);
 *   3. pre-tokenization 's|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+;
 *   4. each pre-token's bytes through the GPT-2 byte-to-unicode table, "</w>"
 *      on the last symbol, BPE merges by rank (line order of merges.txt).
 * No html unescaping, no ftfy.
 *
 * Usage:
 *   sd_clip_tokenizer *tok;
 *   if (sd_clip_tokenizer_load_dir(&tok, "model/tokenizer", &err)) ...
 *   int32_t ids[77];  // sd_clip_tokenizer_max_len(tok) entries
 *   sd_clip_tokenize(tok, "a photo of a cat", ids, &err);
 *   sd_clip_tokenizer_free(tok);
 *
 * A loaded tokenizer is read-only: one may serve several threads. */
#ifndef SDGEN_TEXT_CLIP_TOKENIZER_H
#define SDGEN_TEXT_CLIP_TOKENIZER_H

#include <stdint.h>

#include "base/status.h"

typedef struct sd_clip_tokenizer sd_clip_tokenizer;

/* Loads vocab.json (piece -> id) and merges.txt ("#version" line optional,
 * then "left right" per line). pad_id: the id padding uses (49407 for
 * `<|endoftext|>`, 0 for `!`); when it is not bos/eos its piece also becomes
 * an added special token (rule 1). max_len: padded length (77), >= 2. */
int sd_clip_tokenizer_load(sd_clip_tokenizer **out, const char *vocab_json, const char *merges_txt,
                           int pad_id, int max_len, sd_error *err);

/* Loads dir/vocab.json + dir/merges.txt; the pad token and model_max_length
 * come from dir/tokenizer_config.json, else dir/special_tokens_map.json, else
 * the defaults (`<|endoftext|>`, 77). */
int sd_clip_tokenizer_load_dir(sd_clip_tokenizer **out, const char *dir, sd_error *err);

/* Same with config files named tokenizer_config<suffix>.json and
 * special_tokens_map<suffix>.json (the fixtures' shared tokenizers/clip/
 * folder: suffix "_sd15" or "_sdxl2"). */
int sd_clip_tokenizer_load_dir_suffix(sd_clip_tokenizer **out, const char *dir, const char *suffix,
                                      sd_error *err);

void sd_clip_tokenizer_free(sd_clip_tokenizer *tok);

/* ids_out: max_len entries, [bos] + ids + [eos] + padding (truncated). */
int sd_clip_tokenize(const sd_clip_tokenizer *tok, const char *utf8, int32_t *ids_out,
                     sd_error *err);

/* The ids of the text alone: no bos/eos, no truncation, no padding (added
 * special tokens found in the text are included). *ids is from sd_alloc
 * (free with sd_free); *n may be 0. Used by tests and by long-prompt
 * chunking. */
int sd_clip_tokenize_raw(const sd_clip_tokenizer *tok, const char *utf8, int32_t **ids, int *n,
                         sd_error *err);

int sd_clip_tokenizer_max_len(const sd_clip_tokenizer *tok);
int sd_clip_tokenizer_pad_id(const sd_clip_tokenizer *tok);
int sd_clip_tokenizer_bos_id(const sd_clip_tokenizer *tok);
int sd_clip_tokenizer_eos_id(const sd_clip_tokenizer *tok);
int sd_clip_tokenizer_vocab_size(const sd_clip_tokenizer *tok);

#endif
