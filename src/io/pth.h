/* PyTorch checkpoints (.pth / .pt written by torch.save, zip format) read
 * without Python: the zip's data.pkl is parsed as data, never executed, and
 * every tensor becomes a read-only view into the memory-mapped file.
 *
 *   sd_pth *p;
 *   if (sd_pth_open(&p, "RealESRGAN_x4plus.pth", &err)) ...
 *   const sd_tensor *t = sd_pth_get(p, "params_ema.conv_first.weight");
 *   sd_pth_free(p);
 *
 * What the reader understands: the opcodes of pickle protocols 2-5 that
 * torch.save emits (dicts, lists, tuples, strings, numbers, memo, marks,
 * persistent ids) and exactly four callables: collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter and
 * torch.<Type>Storage as a storage tag. Any other callable is refused with
 * SD_ERR_UNSUPPORTED naming it (a pickle that would run code is just an
 * error). Nested dicts are flattened with dotted names, so the released
 * Real-ESRGAN files, {"params_ema": {...}}, give "params_ema.conv_first.weight".
 *
 * Storages must be stored uncompressed (torch always does) and tensors must
 * be contiguous; the legacy (pre-1.6, non-zip) format is not supported. */
#ifndef SDGEN_IO_PTH_H
#define SDGEN_IO_PTH_H

#include "base/status.h"
#include "tensor/tensor.h"

typedef struct sd_pth sd_pth;

int sd_pth_open(sd_pth **out, const char *path, sd_error *err);
/* Parses a checkpoint held in memory (buf must stay valid while the result
 * lives; used by tests and fuzzing). */
int sd_pth_open_memory(sd_pth **out, const unsigned char *buf, size_t len,
                       sd_error *err);
void sd_pth_free(sd_pth *p);

/* NULL when absent. Views live as long as the checkpoint. */
const sd_tensor *sd_pth_get(const sd_pth *p, const char *name);
int sd_pth_count(const sd_pth *p);
const char *sd_pth_name_at(const sd_pth *p, int i);
const sd_tensor *sd_pth_tensor_at(const sd_pth *p, int i);

#endif
