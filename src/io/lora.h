/* LoRA adapters: reading the files and binding them to a model's weights.
 *
 * Two file layouts are read (both .safetensors):
 *  - kohya / sd-scripts: `<module>.lora_down.weight`, `.lora_up.weight`,
 *    `.alpha` with `<module>` = `lora_unet_` / `lora_te_` / `lora_te1_` /
 *    `lora_te2_` + the module path with '.' -> '_' (SDXL UNets in their
 *    SGM names: `input_blocks_4_1_...`);
 *  - diffusers / PEFT: `unet.` / `text_encoder.` / `text_encoder_2.` /
 *    `transformer.` + the module path + `.lora_A.weight` / `.lora_B.weight`
 *    (alpha = rank unless the file has `.alpha`).
 * Names are never split on '_' (module names contain underscores): every
 * module of the model is turned into the names a LoRA would give it, which
 * are looked up in the file. Every module of every file must match exactly
 * one layer, with matching shapes; otherwise nothing is applied.
 *
 * Per touched weight W the adapters give the terms (down, up, s) with
 * s = user scale * alpha / rank (tensor/lowrank.h); stacked adapters add
 * their terms. They are applied either as a side path (the weight entry
 * carries the terms, the kernels add s * up(down(x)), no weight copy) or
 * merged (the entry is replaced by an owned F32 copy W + sum s up @ down).
 *
 *   sd_lora *l;
 *   sd_lora_open(&l, "style.safetensors", err);        // header + structure
 *   sd_adapter_target t[] = {{SD_LORA_UNET, w_unet, 1}, {SD_LORA_TE1, w_te1, 1}};
 *   float scale = 0.8f;
 *   sd_adapter *a;
 *   sd_adapter_bind(&a, &l, &scale, 1, t, 2, SD_LORA_FAMILY_SDXL, err); // takes l
 *   sd_adapter_attach_side(a, err);   // or sd_adapter_merge(a, err)
 *   ... run the models ...
 *   free the weight sets and models, then sd_adapter_free(a);
 */
#ifndef SDGEN_IO_LORA_H
#define SDGEN_IO_LORA_H

#include <stdint.h>

#include "base/status.h"
#include "io/safetensors.h"

typedef enum sd_lora_family {
  SD_LORA_FAMILY_ANY = 0, /* a UNet-family file that does not say which */
  SD_LORA_FAMILY_SD1,     /* SD 1.x / 2.x */
  SD_LORA_FAMILY_SDXL,
  SD_LORA_FAMILY_SDXL_REFINER,
  SD_LORA_FAMILY_SD3,
} sd_lora_family;

const char *sd_lora_family_name(sd_lora_family f);

typedef struct sd_lora sd_lora;

/* Maps `path` and checks its structure: every key a known LoRA tensor,
 * down/up pairs complete, ranks equal, shapes and dtypes usable. Reads no
 * tensor data. */
int sd_lora_open(sd_lora **out, const char *path, sd_error *err);
void sd_lora_free(sd_lora *l);
/* The family the file's names say it is for (ANY when they do not say). */
sd_lora_family sd_lora_file_family(const sd_lora *l);
int sd_lora_module_count(const sd_lora *l);
const char *sd_lora_path(const sd_lora *l);

typedef enum sd_lora_target_kind {
  SD_LORA_UNET = 0,
  SD_LORA_TE1,         /* CLIP-L (SD 1.x / 2.x: the only encoder) */
  SD_LORA_TE2,         /* OpenCLIP bigG (SDXL) */
  SD_LORA_TRANSFORMER, /* SD3 MMDiT */
  SD_LORA_TARGETS
} sd_lora_target_kind;

/* One component's weight set (diffusers / transformers names). */
typedef struct sd_adapter_target {
  sd_lora_target_kind kind;
  sd_weights *w;
} sd_adapter_target;

typedef struct sd_adapter sd_adapter;

/* Binds n files with their scales to the targets of a model of `family`.
 * Takes ownership of loras[0..n) (also on failure). Fails, with nothing
 * applied, for a file made for another family, a module that maps to no
 * layer (naming the key and the file), a shape that does not fit its
 * layer, or a NaN/Inf in a file's tensors. */
int sd_adapter_bind(sd_adapter **out, sd_lora **loras, const float *scales, int n,
                    const sd_adapter_target *targets, int ntargets, sd_lora_family family,
                    sd_error *err);
void sd_adapter_free(sd_adapter *a);

/* A file and its scale, as a run lists them. */
typedef struct sd_lora_spec {
  const char *path;
  float scale;
} sd_lora_spec;

/* sd_lora_open on every file, then sd_adapter_bind. *out stays NULL when
 * n is 0. */
int sd_adapter_load(sd_adapter **out, const sd_lora_spec *specs, int n,
                    const sd_adapter_target *targets, int ntargets, sd_lora_family family,
                    sd_error *err);

/* Side path: every touched weight entry gets its terms. */
int sd_adapter_attach_side(sd_adapter *a, sd_error *err);
/* Merged: every touched weight entry of the targets of `kind` (or every
 * target when kind is SD_LORA_TARGETS) becomes an owned F32 copy W + sum s
 * up @ down; the stored weight's pages are released. */
int sd_adapter_merge(sd_adapter *a, sd_lora_target_kind kind, sd_error *err);
/* A target's weight set is going away (text encoders dropped). */
void sd_adapter_forget(sd_adapter *a, const sd_weights *w);

/* Memory of a target kind: bytes of the adapter tensors (side path), and
 * the bytes merging adds (F32 copies minus the stored weights they
 * replace). */
int64_t sd_adapter_side_bytes(const sd_adapter *a, sd_lora_target_kind kind);
int64_t sd_adapter_merge_extra_bytes(const sd_adapter *a, sd_lora_target_kind kind);
int sd_adapter_touched(const sd_adapter *a, sd_lora_target_kind kind);
/* Side-path scratch of one product of `rows` rows through the largest term
 * of a target kind (down(x) and up converted to F32). */
int64_t sd_adapter_side_scratch_bytes(const sd_adapter *a, sd_lora_target_kind kind,
                                      int64_t rows);
int sd_adapter_is_merged(const sd_adapter *a);

/* diffusers path of a UNet module -> the SGM (single-file) path, e.g.
 * "down_blocks.1.attentions.0.proj_in" -> "input_blocks.4.1.proj_in" with 2
 * layers per block. up_attn[i]: up level i has attentions (its upsampler
 * then sits at index 2). Returns 0 when the path has no SGM counterpart. */
int sd_unet_sgm_path(const char *path, int layers_per_block, const int *up_attn, char *out,
                     size_t n);

#endif
