/* T5 v1.1 tokenizer (SentencePiece unigram), as SD3 / SD3.5 `tokenizer_3/`.
 *
 * Reproduces sentencepiece's Encode on spiece.model followed by what
 * StableDiffusion3Pipeline asks of the tokenizer (padding="max_length",
 * truncation=True): pieces[:max_len-1] + [</s> = 1], padded with <pad> = 0.
 *   - normalization: the model's precompiled character map (nmt_nfkc; a
 *     double-array trie of replacement rules, longest match wins), leading and
 *     trailing whitespace dropped, runs of spaces collapsed, a "▁" prefix and
 *     every space written as "▁";
 *   - segmentation: Viterbi over the pieces' log-probabilities; a character no
 *     piece covers is <unk> at (lowest score - 10), and consecutive <unk>
 *     pieces are merged into one (one <unk> per run of unknown characters).
 * Literal special-token strings in the text ("</s>", "<extra_id_0>") are not
 * treated specially, as sentencepiece does not.
 *
 * The folder may hold spiece.model (read by a small protobuf reader) or only
 * tokenizer.json (Unigram model with a Precompiled normalizer); spiece.model
 * is preferred when both are present.
 *
 * Usage:
 *   sd_t5_tokenizer *tok;
 *   if (sd_t5_tokenizer_load_dir(&tok, "model/tokenizer_3", &err)) ...
 *   int32_t ids[256];
 *   sd_t5_tokenize(tok, "a photo of a cat", ids, 256, &err);
 *   sd_t5_tokenizer_free(tok);
 *
 * A loaded tokenizer is read-only: one may serve several threads. */
#ifndef SDGEN_TEXT_T5_TOKENIZER_H
#define SDGEN_TEXT_T5_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef struct sd_t5_tokenizer sd_t5_tokenizer;

int sd_t5_tokenizer_load_dir(sd_t5_tokenizer **out, const char *dir, sd_error *err);
/* From a serialized sentencepiece ModelProto (the bytes of spiece.model). */
int sd_t5_tokenizer_load_model(sd_t5_tokenizer **out, const void *data, size_t len, sd_error *err);
int sd_t5_tokenizer_load_model_file(sd_t5_tokenizer **out, const char *path, sd_error *err);
/* From a Hugging Face tokenizer.json with a Unigram model. */
int sd_t5_tokenizer_load_json_file(sd_t5_tokenizer **out, const char *path, sd_error *err);
void sd_t5_tokenizer_free(sd_t5_tokenizer *tok);

/* ids_out: max_len entries (>= 1): pieces (truncated to max_len-1), </s>,
 * then <pad>. */
int sd_t5_tokenize(const sd_t5_tokenizer *tok, const char *utf8, int32_t *ids_out, int max_len,
                   sd_error *err);

/* Piece ids of the text alone (no </s>, no truncation, no padding). *ids is
 * from sd_alloc (free with sd_free); *n may be 0. */
int sd_t5_tokenize_raw(const sd_t5_tokenizer *tok, const char *utf8, int32_t **ids, int *n,
                       sd_error *err);

/* The normalized text sentencepiece segments ("▁a▁photo"); from sd_alloc. */
int sd_t5_normalize(const sd_t5_tokenizer *tok, const char *utf8, char **out, size_t *out_len,
                    sd_error *err);

int sd_t5_tokenizer_vocab_size(const sd_t5_tokenizer *tok);
int sd_t5_tokenizer_eos_id(const sd_t5_tokenizer *tok);
int sd_t5_tokenizer_pad_id(const sd_t5_tokenizer *tok);
int sd_t5_tokenizer_unk_id(const sd_t5_tokenizer *tok);
/* The piece of an id (NUL-terminated, valid while tok lives), NULL if out of range. */
const char *sd_t5_tokenizer_piece(const sd_t5_tokenizer *tok, int id);

#endif
