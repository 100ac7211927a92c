#include "io/pth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"

/* ---- the checkpoint ---- */

typedef struct pth_entry {
  char *name;
  sd_tensor view; /* owns_data 0: points into the file */
} pth_entry;

struct sd_pth {
  void *map;
  size_t map_len;
  pth_entry *entries;
  int n, cap;
};

/* ---- zip (stored entries only, as torch.save writes them) ---- */

typedef struct zip_entry {
  const char *name;
  size_t name_len;
  const unsigned char *data;
  size_t size;
} zip_entry;

static uint32_t rd16(const unsigned char *p) { return p[0] | (uint32_t)p[1] << 8; }
static uint32_t rd32(const unsigned char *p) {
  return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Lists the zip's entries from its central directory; every offset is
 * checked against the buffer. */
static int zip_list(const unsigned char *buf, size_t len, zip_entry **out,
                    int *n_out, sd_error *err) {
  *out = NULL;
  *n_out = 0;
  if (len < 22) return sd_fail(err, SD_ERR_FORMAT, "file too small for a zip");
  size_t eocd = (size_t)-1;
  size_t lowest = len > 22 + 65535 ? len - 22 - 65535 : 0;
  for (size_t i = len - 22 + 1; i-- > lowest;)
    if (rd32(buf + i) == 0x06054b50) {
      eocd = i;
      break;
    }
  if (eocd == (size_t)-1) {
    if (len >= 2 && buf[0] == 0x80)
      return sd_fail(err, SD_ERR_UNSUPPORTED,
                     "legacy (pre-1.6, non-zip) torch.save format is not "
                     "supported; re-save with a recent torch or convert to "
                     "safetensors");
    return sd_fail(err, SD_ERR_FORMAT, "not a zip-format torch checkpoint");
  }
  const uint32_t count = rd16(buf + eocd + 10);
  const uint32_t cd_size = rd32(buf + eocd + 12);
  const uint32_t cd_off = rd32(buf + eocd + 16);
  if (count == 0xffff || cd_off == 0xffffffffu)
    return sd_fail(err, SD_ERR_UNSUPPORTED, "zip64 checkpoints are not supported");
  if ((uint64_t)cd_off + cd_size > eocd)
    return sd_fail(err, SD_ERR_FORMAT, "zip central directory out of bounds");
  zip_entry *e = sd_calloc(count ? count : 1, sizeof *e);
  if (!e) return sd_fail(err, SD_ERR_OOM, "out of memory reading a zip");
  size_t p = cd_off;
  for (uint32_t i = 0; i < count; i++) {
    if (p + 46 > eocd || rd32(buf + p) != 0x02014b50) goto bad;
    const uint32_t method = rd16(buf + p + 10);
    const uint32_t csize = rd32(buf + p + 20), usize = rd32(buf + p + 24);
    const uint32_t nlen = rd16(buf + p + 28), xlen = rd16(buf + p + 30),
                   clen = rd16(buf + p + 32);
    const uint32_t loff = rd32(buf + p + 42);
    if (p + 46 + nlen > eocd) goto bad;
    e[i].name = (const char *)buf + p + 46;
    e[i].name_len = nlen;
    if (csize == 0xffffffffu || usize == 0xffffffffu || loff == 0xffffffffu) {
      sd_free(e);
      return sd_fail(err, SD_ERR_UNSUPPORTED, "zip64 checkpoints are not supported");
    }
    if (method != 0 || csize != usize) {
      const char *name = e[i].name; /* points into buf, not into e */
      sd_free(e);
      return sd_fail(err, SD_ERR_UNSUPPORTED,
                     "zip entry %.*s is compressed; torch checkpoints store "
                     "entries uncompressed", (int)nlen, name);
    }
    if ((uint64_t)loff + 30 > len || rd32(buf + loff) != 0x04034b50) goto bad;
    const uint64_t data = (uint64_t)loff + 30 + rd16(buf + loff + 26) +
                          rd16(buf + loff + 28);
    if (data + csize > len) goto bad;
    e[i].data = buf + data;
    e[i].size = csize;
    p += 46 + (size_t)nlen + xlen + clen;
  }
  *out = e;
  *n_out = (int)count;
  return SD_OK;
bad:
  sd_free(e);
  return sd_fail(err, SD_ERR_FORMAT, "corrupt zip directory");
}

/* ---- pickle, read as data ---- */

typedef enum pk_kind {
  PK_MARK, PK_NONE, PK_BOOL, PK_INT, PK_FLOAT, PK_STR, PK_TUPLE, PK_LIST,
  PK_DICT, PK_GLOBAL, PK_STORAGE, PK_TENSOR,
} pk_kind;

typedef struct pk_obj pk_obj;
struct pk_obj {
  pk_kind kind;
  int64_t i;
  double f;
  const char *s; /* STR / GLOBAL ("module.name"); not NUL-terminated */
  size_t slen;
  pk_obj **items; /* TUPLE/LIST items; DICT keys and values interleaved */
  int n, cap;
  /* STORAGE */
  sd_dtype dtype;
  const unsigned char *data;
  size_t nbytes;
  /* TENSOR */
  pk_obj *storage;
  int64_t offset;
  int ndim;
  int64_t shape[SD_MAX_DIMS], stride[SD_MAX_DIMS];
};

typedef struct pk_vm {
  const unsigned char *p, *end, *start;
  void **owned; /* everything allocated, freed together */
  int n_owned, cap_owned;
  pk_obj **stack;
  int sp, stack_cap;
  pk_obj **memo;
  int64_t memo_cap, memo_len;
  const zip_entry *zip;
  int n_zip;
  const char *prefix; /* zip folder holding data.pkl, e.g. "archive/" */
  size_t prefix_len;
  sd_error *err;
} pk_vm;

static pk_obj k_mark = {PK_MARK};

/* Array growth through the tracked allocator. */
static int grow(void **arr, int64_t *cap, int64_t need, size_t elem) {
  if (need <= *cap) return 0;
  int64_t nc = *cap ? *cap * 2 : 16;
  while (nc < need) nc *= 2;
  void *n = sd_calloc((size_t)nc, elem);
  if (!n) return -1;
  if (*arr) memcpy(n, *arr, (size_t)*cap * elem);
  sd_free(*arr);
  *arr = n;
  *cap = nc;
  return 0;
}

static void *vm_alloc(pk_vm *vm, size_t size) {
  if (vm->n_owned == vm->cap_owned) {
    int64_t cap = vm->cap_owned;
    if (grow((void **)&vm->owned, &cap, vm->n_owned + 1, sizeof(void *)))
      return NULL;
    vm->cap_owned = (int)cap;
  }
  void *p = sd_calloc(1, size);
  if (p) vm->owned[vm->n_owned++] = p;
  return p;
}

static pk_obj *new_obj(pk_vm *vm, pk_kind kind) {
  pk_obj *o = vm_alloc(vm, sizeof *o);
  if (o) o->kind = kind;
  return o;
}

static int add_item(pk_vm *vm, pk_obj *seq, pk_obj *item) {
  if (seq->n == seq->cap) {
    int nc = seq->cap ? seq->cap * 2 : 8;
    pk_obj **ni = vm_alloc(vm, (size_t)nc * sizeof *ni);
    if (!ni) return -1;
    if (seq->n) memcpy(ni, seq->items, (size_t)seq->n * sizeof *ni);
    seq->items = ni; /* the old block stays owned until the end */
    seq->cap = nc;
  }
  seq->items[seq->n++] = item;
  return 0;
}

static int vm_fail(pk_vm *vm, int code, const char *what) {
  return sd_fail(vm->err, code, "checkpoint pickle: %s at byte %ld", what,
                 (long)(vm->p - vm->start));
}

static int push(pk_vm *vm, pk_obj *o) {
  if (!o) return vm_fail(vm, SD_ERR_OOM, "out of memory");
  int64_t cap = vm->stack_cap;
  if (grow((void **)&vm->stack, &cap, vm->sp + 1, sizeof(pk_obj *)))
    return vm_fail(vm, SD_ERR_OOM, "out of memory");
  vm->stack_cap = (int)cap;
  vm->stack[vm->sp++] = o;
  return 0;
}

static pk_obj *pop(pk_vm *vm) {
  if (vm->sp == 0 || vm->stack[vm->sp - 1] == &k_mark) return NULL;
  return vm->stack[--vm->sp];
}

/* Index of the topmost mark, or -1. */
static int find_mark(const pk_vm *vm) {
  for (int i = vm->sp - 1; i >= 0; i--)
    if (vm->stack[i] == &k_mark) return i;
  return -1;
}

static int need(pk_vm *vm, size_t n) { return (size_t)(vm->end - vm->p) >= n; }

static uint64_t rd_le(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static int str_is(const pk_obj *o, const char *s) {
  return o && (o->kind == PK_STR || o->kind == PK_GLOBAL) &&
         o->slen == strlen(s) && memcmp(o->s, s, o->slen) == 0;
}

static const struct {
  const char *name;
  sd_dtype dtype;
} k_storage_types[] = {
    {"torch.FloatStorage", SD_F32},  {"torch.HalfStorage", SD_F16},
    {"torch.BFloat16Storage", SD_BF16}, {"torch.DoubleStorage", SD_F64},
    {"torch.LongStorage", SD_I64},   {"torch.IntStorage", SD_I32},
    {"torch.ShortStorage", SD_I16},  {"torch.CharStorage", SD_I8},
    {"torch.ByteStorage", SD_U8},    {"torch.BoolStorage", SD_BOOL},
};

/* BINPERSID ('storage', <Type>Storage, key, location, numel): the bytes of
 * zip entry <prefix>data/<key>. */
static pk_obj *load_storage(pk_vm *vm, const pk_obj *pid) {
  if (!pid || pid->kind != PK_TUPLE || pid->n < 5 || !str_is(pid->items[0], "storage") ||
      pid->items[2]->kind != PK_STR || pid->items[4]->kind != PK_INT) {
    vm_fail(vm, SD_ERR_FORMAT, "unexpected persistent id");
    return NULL;
  }
  int dt = -1;
  for (size_t i = 0; i < sizeof k_storage_types / sizeof k_storage_types[0]; i++)
    if (str_is(pid->items[1], k_storage_types[i].name)) dt = k_storage_types[i].dtype;
  if (dt < 0) {
    vm_fail(vm, SD_ERR_UNSUPPORTED, "unsupported storage type");
    return NULL;
  }
  const pk_obj *key = pid->items[2];
  for (int i = 0; i < vm->n_zip; i++) {
    const zip_entry *z = &vm->zip[i];
    if (z->name_len != vm->prefix_len + 5 + key->slen ||
        memcmp(z->name, vm->prefix, vm->prefix_len) != 0 ||
        memcmp(z->name + vm->prefix_len, "data/", 5) != 0 ||
        memcmp(z->name + vm->prefix_len + 5, key->s, key->slen) != 0)
      continue;
    const int64_t numel = pid->items[4]->i;
    if (numel < 0 || (uint64_t)numel * sd_dtype_size((sd_dtype)dt) > z->size) {
      vm_fail(vm, SD_ERR_FORMAT, "storage smaller than its element count");
      return NULL;
    }
    pk_obj *s = new_obj(vm, PK_STORAGE);
    if (!s) return NULL;
    s->dtype = (sd_dtype)dt;
    s->data = z->data;
    s->nbytes = (size_t)numel * sd_dtype_size((sd_dtype)dt);
    return s;
  }
  sd_fail(vm->err, SD_ERR_FORMAT, "checkpoint: storage data/%.*s missing from the zip",
          (int)key->slen, key->s);
  return NULL;
}

static int int_tuple(const pk_obj *t, int64_t *out, int max) {
  if (!t || t->kind != PK_TUPLE || t->n > max) return -1;
  for (int i = 0; i < t->n; i++) {
    if (t->items[i]->kind != PK_INT) return -1;
    out[i] = t->items[i]->i;
  }
  return t->n;
}

/* REDUCE with one of the few callables a state dict needs. */
static pk_obj *call(pk_vm *vm, const pk_obj *fn, const pk_obj *args) {
  if (!fn || fn->kind != PK_GLOBAL || !args || args->kind != PK_TUPLE) {
    vm_fail(vm, SD_ERR_FORMAT, "malformed REDUCE");
    return NULL;
  }
  if (str_is(fn, "collections.OrderedDict")) return new_obj(vm, PK_DICT);
  if (str_is(fn, "torch._utils._rebuild_parameter") ||
      str_is(fn, "torch._utils._rebuild_parameter_with_state")) {
    if (args->n < 1 || args->items[0]->kind != PK_TENSOR) {
      vm_fail(vm, SD_ERR_FORMAT, "malformed parameter");
      return NULL;
    }
    return args->items[0];
  }
  if (str_is(fn, "torch._utils._rebuild_tensor_v2")) {
    pk_obj *t = new_obj(vm, PK_TENSOR);
    if (!t) return NULL;
    int64_t off;
    if (args->n < 4 || args->items[0]->kind != PK_STORAGE ||
        args->items[1]->kind != PK_INT ||
        (t->ndim = int_tuple(args->items[2], t->shape, SD_MAX_DIMS)) < 0 ||
        int_tuple(args->items[3], t->stride, SD_MAX_DIMS) != t->ndim) {
      vm_fail(vm, SD_ERR_UNSUPPORTED, "tensor with unsupported layout");
      return NULL;
    }
    off = args->items[1]->i;
    t->storage = args->items[0];
    t->offset = off;
    return t;
  }
  sd_fail(vm->err, SD_ERR_UNSUPPORTED,
          "checkpoint pickle calls %.*s, which is not a tensor or dict "
          "constructor; refusing it (only plain state dicts are read)",
          (int)fn->slen, fn->s);
  return NULL;
}

static pk_obj *make_str(pk_vm *vm, const unsigned char *s, size_t n) {
  pk_obj *o = new_obj(vm, PK_STR);
  if (o) {
    o->s = (const char *)s;
    o->slen = n;
  }
  return o;
}

/* Runs the opcodes up to STOP; *result is the unpickled top object. */
static int vm_run(pk_vm *vm, pk_obj **result) {
  *result = NULL;
  while (vm->p < vm->end) {
    const unsigned char op = *vm->p++;
    pk_obj *o = NULL, *a, *b;
    uint64_t n;
    int m;
    switch (op) {
    case 0x80: /* PROTO */
      if (!need(vm, 1)) goto truncated;
      vm->p++;
      continue;
    case 0x95: /* FRAME */
      if (!need(vm, 8)) goto truncated;
      vm->p += 8;
      continue;
    case '.': /* STOP */
      *result = pop(vm);
      if (!*result) return vm_fail(vm, SD_ERR_FORMAT, "empty stack at STOP");
      return SD_OK;
    case '(': /* MARK */
      if (push(vm, &k_mark)) return vm->err->code;
      continue;
    case '}': o = new_obj(vm, PK_DICT); break;
    case ']': o = new_obj(vm, PK_LIST); break;
    case ')': o = new_obj(vm, PK_TUPLE); break;
    case 'N': o = new_obj(vm, PK_NONE); break;
    case 0x88:
    case 0x89:
      o = new_obj(vm, PK_BOOL);
      if (o) o->i = op == 0x88;
      break;
    case 'K': case 'M': case 'J': {
      const int w = op == 'K' ? 1 : op == 'M' ? 2 : 4;
      if (!need(vm, (size_t)w)) goto truncated;
      n = rd_le(vm->p, w);
      vm->p += w;
      o = new_obj(vm, PK_INT);
      if (o) o->i = op == 'J' ? (int64_t)(int32_t)n : (int64_t)n;
      break;
    }
    case 0x8a: /* LONG1 */
      if (!need(vm, 1) || !need(vm, 1 + (size_t)vm->p[0])) goto truncated;
      m = vm->p[0];
      if (m > 8) return vm_fail(vm, SD_ERR_UNSUPPORTED, "integer wider than 64 bits");
      n = m ? rd_le(vm->p + 1, m) : 0;
      if (m && m < 8 && (vm->p[m] & 0x80)) n |= ~(uint64_t)0 << (8 * m);
      vm->p += 1 + m;
      o = new_obj(vm, PK_INT);
      if (o) o->i = (int64_t)n;
      break;
    case 'G': { /* BINFLOAT, big-endian */
      if (!need(vm, 8)) goto truncated;
      uint64_t bits = 0;
      for (int i = 0; i < 8; i++) bits = bits << 8 | vm->p[i];
      vm->p += 8;
      o = new_obj(vm, PK_FLOAT);
      if (o) memcpy(&o->f, &bits, 8);
      break;
    }
    case 'X': case 'T': case 'B': case 0x8c: case 'U': case 'C': case 0x8d:
    case 0x8e: {
      const int w = (op == 0x8c || op == 'U' || op == 'C') ? 1
                    : (op == 0x8d || op == 0x8e)            ? 8
                                                            : 4;
      if (!need(vm, (size_t)w)) goto truncated;
      n = rd_le(vm->p, w);
      vm->p += w;
      if (n > (uint64_t)(vm->end - vm->p)) goto truncated;
      o = make_str(vm, vm->p, (size_t)n);
      vm->p += n;
      break;
    }
    case 'c': { /* GLOBAL module\nname\n */
      const unsigned char *nl1 = memchr(vm->p, '\n', (size_t)(vm->end - vm->p));
      const unsigned char *nl2 =
          nl1 ? memchr(nl1 + 1, '\n', (size_t)(vm->end - nl1 - 1)) : NULL;
      if (!nl2) goto truncated;
      size_t ml = (size_t)(nl1 - vm->p), nl = (size_t)(nl2 - nl1 - 1);
      char *s = vm_alloc(vm, ml + nl + 2);
      o = new_obj(vm, PK_GLOBAL);
      if (!s || !o) return vm_fail(vm, SD_ERR_OOM, "out of memory");
      memcpy(s, vm->p, ml);
      s[ml] = '.';
      memcpy(s + ml + 1, nl1 + 1, nl);
      o->s = s;
      o->slen = ml + 1 + nl;
      vm->p = nl2 + 1;
      break;
    }
    case 0x93: { /* STACK_GLOBAL */
      b = pop(vm);
      a = pop(vm);
      if (!a || !b || a->kind != PK_STR || b->kind != PK_STR)
        return vm_fail(vm, SD_ERR_FORMAT, "bad STACK_GLOBAL");
      char *s = vm_alloc(vm, a->slen + b->slen + 2);
      o = new_obj(vm, PK_GLOBAL);
      if (!s || !o) return vm_fail(vm, SD_ERR_OOM, "out of memory");
      memcpy(s, a->s, a->slen);
      s[a->slen] = '.';
      memcpy(s + a->slen + 1, b->s, b->slen);
      o->s = s;
      o->slen = a->slen + 1 + b->slen;
      break;
    }
    case 'q': case 'r': case 0x94: { /* BINPUT, LONG_BINPUT, MEMOIZE */
      int64_t idx;
      if (op == 0x94) {
        idx = vm->memo_len; /* Python: len(memo) */
      } else {
        const int w = op == 'q' ? 1 : 4;
        if (!need(vm, (size_t)w)) goto truncated;
        idx = (int64_t)rd_le(vm->p, w);
        vm->p += w;
      }
      if (vm->sp == 0 || vm->stack[vm->sp - 1] == &k_mark)
        return vm_fail(vm, SD_ERR_FORMAT, "memo of an empty stack");
      if (idx > (1 << 24)) return vm_fail(vm, SD_ERR_FORMAT, "memo index too large");
      if (grow((void **)&vm->memo, &vm->memo_cap, idx + 1, sizeof(pk_obj *)))
        return vm_fail(vm, SD_ERR_OOM, "out of memory");
      if (!vm->memo[idx]) vm->memo_len++;
      vm->memo[idx] = vm->stack[vm->sp - 1];
      continue;
    }
    case 'h': case 'j': { /* BINGET, LONG_BINGET */
      const int w = op == 'h' ? 1 : 4;
      if (!need(vm, (size_t)w)) goto truncated;
      uint64_t idx = rd_le(vm->p, w);
      vm->p += w;
      if (idx >= (uint64_t)vm->memo_cap || !vm->memo[idx])
        return vm_fail(vm, SD_ERR_FORMAT, "memo key missing");
      o = vm->memo[idx];
      break;
    }
    case 't': case 'l': case 'd': { /* TUPLE, LIST, DICT from the mark */
      m = find_mark(vm);
      if (m < 0) return vm_fail(vm, SD_ERR_FORMAT, "no mark");
      o = new_obj(vm, op == 't' ? PK_TUPLE : op == 'l' ? PK_LIST : PK_DICT);
      if (!o) return vm_fail(vm, SD_ERR_OOM, "out of memory");
      if (op == 'd' && (vm->sp - m - 1) % 2)
        return vm_fail(vm, SD_ERR_FORMAT, "odd DICT items");
      for (int i = m + 1; i < vm->sp; i++)
        if (add_item(vm, o, vm->stack[i])) return vm_fail(vm, SD_ERR_OOM, "out of memory");
      vm->sp = m;
      break;
    }
    case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
      const int k = op - 0x84;
      pk_obj *it[3];
      for (int i = k - 1; i >= 0; i--)
        if (!(it[i] = pop(vm))) return vm_fail(vm, SD_ERR_FORMAT, "stack underflow");
      o = new_obj(vm, PK_TUPLE);
      for (int i = 0; o && i < k; i++)
        if (add_item(vm, o, it[i])) o = NULL;
      break;
    }
    case 's': case 'a': { /* SETITEM, APPEND */
      b = pop(vm);
      a = op == 's' ? pop(vm) : NULL;
      pk_obj *target = vm->sp ? vm->stack[vm->sp - 1] : NULL;
      if (!b || (op == 's' && !a) || !target ||
          target->kind != (op == 's' ? PK_DICT : PK_LIST))
        return vm_fail(vm, SD_ERR_FORMAT, "bad SETITEM/APPEND");
      if ((a && add_item(vm, target, a)) || add_item(vm, target, b))
        return vm_fail(vm, SD_ERR_OOM, "out of memory");
      continue;
    }
    case 'u': case 'e': { /* SETITEMS, APPENDS */
      m = find_mark(vm);
      pk_obj *target = m > 0 ? vm->stack[m - 1] : NULL;
      if (!target || target->kind != (op == 'u' ? PK_DICT : PK_LIST) ||
          (op == 'u' && (vm->sp - m - 1) % 2))
        return vm_fail(vm, SD_ERR_FORMAT, "bad SETITEMS/APPENDS");
      for (int i = m + 1; i < vm->sp; i++)
        if (add_item(vm, target, vm->stack[i]))
          return vm_fail(vm, SD_ERR_OOM, "out of memory");
      vm->sp = m;
      continue;
    }
    case 'R': case 0x81: /* REDUCE, NEWOBJ */
      b = pop(vm);
      a = pop(vm);
      o = call(vm, a, b);
      if (!o) return vm->err->code ? vm->err->code : vm_fail(vm, SD_ERR_OOM, "out of memory");
      break;
    case 'b': /* BUILD: state of an OrderedDict or tensor; not needed */
      if (!pop(vm) || vm->sp == 0) return vm_fail(vm, SD_ERR_FORMAT, "bad BUILD");
      continue;
    case 'Q': /* BINPERSID */
      o = load_storage(vm, pop(vm));
      if (!o) return vm->err->code ? vm->err->code : vm_fail(vm, SD_ERR_OOM, "out of memory");
      break;
    case '0': /* POP */
      if (!pop(vm)) return vm_fail(vm, SD_ERR_FORMAT, "stack underflow");
      continue;
    default: {
      char what[64];
      vm->p--;
      snprintf(what, sizeof what, "unsupported opcode 0x%02x", op);
      return vm_fail(vm, SD_ERR_UNSUPPORTED, what);
    }
    }
    if (push(vm, o)) return vm->err->code;
  }
truncated:
  return vm_fail(vm, SD_ERR_FORMAT, "truncated");
}

/* ---- tensors ---- */

static int add_tensor(sd_pth *p, const char *name, size_t name_len,
                      const pk_obj *t, sd_error *err) {
  const pk_obj *s = t->storage;
  const size_t es = sd_dtype_size(s->dtype);
  int64_t numel = 1, expect = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] < 0) return sd_fail(err, SD_ERR_FORMAT, "negative size");
    /* torch ignores the stride of size-1 dimensions for contiguity */
    if (t->shape[i] != 1 && t->stride[i] != expect)
      return sd_fail(err, SD_ERR_UNSUPPORTED,
                     "checkpoint tensor %.*s is not contiguous", (int)name_len, name);
    expect *= t->shape[i];
    numel *= t->shape[i];
  }
  if (t->offset < 0 || (uint64_t)(t->offset + numel) * es > s->nbytes)
    return sd_fail(err, SD_ERR_FORMAT, "checkpoint tensor %.*s exceeds its storage",
                   (int)name_len, name);
  const unsigned char *data = s->data + (size_t)t->offset * es;
  if ((uintptr_t)data % es)
    return sd_fail(err, SD_ERR_UNSUPPORTED,
                   "checkpoint tensor %.*s is not aligned in the file",
                   (int)name_len, name);
  for (int i = 0; i < p->n; i++)
    if (strlen(p->entries[i].name) == name_len &&
        memcmp(p->entries[i].name, name, name_len) == 0)
      return sd_fail(err, SD_ERR_FORMAT, "duplicate tensor %.*s", (int)name_len, name);
  int64_t cap = p->cap;
  if (grow((void **)&p->entries, &cap, p->n + 1, sizeof *p->entries))
    return sd_fail(err, SD_ERR_OOM, "out of memory");
  p->cap = (int)cap;
  pth_entry *e = &p->entries[p->n];
  e->name = sd_alloc(name_len + 1);
  if (!e->name) return sd_fail(err, SD_ERR_OOM, "out of memory");
  memcpy(e->name, name, name_len);
  e->name[name_len] = '\0';
  memset(&e->view, 0, sizeof e->view);
  e->view.dtype = s->dtype;
  e->view.ndim = t->ndim;
  for (int i = 0; i < t->ndim; i++) e->view.shape[i] = t->shape[i];
  e->view.data = (void *)data;
  e->view.owns_data = 0;
  p->n++;
  return SD_OK;
}

/* Dict entries become tensors, nested dicts dotted prefixes. */
static int collect(sd_pth *p, const pk_obj *d, char *name, size_t len,
                   size_t cap, int depth, sd_error *err) {
  if (depth > 8) return SD_OK;
  for (int i = 0; i + 1 < d->n; i += 2) {
    const pk_obj *k = d->items[i], *v = d->items[i + 1];
    if (k->kind != PK_STR || (v->kind != PK_TENSOR && v->kind != PK_DICT)) continue;
    if (len + k->slen + 2 > cap)
      return sd_fail(err, SD_ERR_FORMAT, "tensor name too long");
    memcpy(name + len, k->s, k->slen);
    size_t l = len + k->slen;
    int st;
    if (v->kind == PK_TENSOR) {
      st = add_tensor(p, name, l, v, err);
    } else {
      name[l] = '.';
      st = collect(p, v, name, l + 1, cap, depth + 1, err);
    }
    if (st) return st;
  }
  return SD_OK;
}

static void vm_free(pk_vm *vm) {
  for (int i = 0; i < vm->n_owned; i++) sd_free(vm->owned[i]);
  sd_free(vm->owned);
  sd_free(vm->stack);
  sd_free(vm->memo);
}

static int parse(sd_pth *p, const unsigned char *buf, size_t len, sd_error *err) {
  zip_entry *z = NULL;
  int nz = 0;
  int st = zip_list(buf, len, &z, &nz, err);
  if (st) return st;
  const zip_entry *pkl = NULL;
  for (int i = 0; i < nz && !pkl; i++) {
    const size_t nl = z[i].name_len;
    if (nl < 8 || memcmp(z[i].name + nl - 8, "data.pkl", 8) != 0) continue;
    /* data.pkl at the top or in the one folder torch.save creates */
    const char *slash = memchr(z[i].name, '/', nl - 8);
    if (nl == 8 || (slash && (size_t)(slash - z[i].name) == nl - 9)) pkl = &z[i];
  }
  if (!pkl) {
    sd_free(z);
    return sd_fail(err, SD_ERR_FORMAT, "zip holds no data.pkl: not a torch checkpoint");
  }
  pk_vm vm = {0};
  vm.p = vm.start = pkl->data;
  vm.end = pkl->data + pkl->size;
  vm.zip = z;
  vm.n_zip = nz;
  vm.prefix = pkl->name;
  vm.prefix_len = pkl->name_len - 8;
  vm.err = err;
  pk_obj *top = NULL;
  st = vm_run(&vm, &top);
  if (!st && top->kind != PK_DICT)
    st = sd_fail(err, SD_ERR_UNSUPPORTED, "checkpoint is not a dict of tensors");
  if (!st) {
    char name[1024];
    st = collect(p, top, name, 0, sizeof name, 0, err);
  }
  vm_free(&vm);
  sd_free(z);
  return st;
}

int sd_pth_open_memory(sd_pth **out, const unsigned char *buf, size_t len,
                       sd_error *err) {
  *out = NULL;
  sd_error local = {0};
  if (!err) err = &local; /* the parser reads back err->code */
  sd_pth *p = sd_calloc(1, sizeof *p);
  if (!p) return sd_fail(err, SD_ERR_OOM, "out of memory");
  int st = parse(p, buf, len, err);
  if (st) {
    sd_pth_free(p);
    return st;
  }
  *out = p;
  return SD_OK;
}

int sd_pth_open(sd_pth **out, const char *path, sd_error *err) {
  *out = NULL;
  int fd = open(path, O_RDONLY);
  if (fd < 0)
    return sd_fail(err, SD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
  struct stat stt;
  if (fstat(fd, &stt) != 0 || stt.st_size <= 0) {
    close(fd);
    return sd_fail(err, SD_ERR_FORMAT, "%s: empty or unreadable file", path);
  }
  size_t len = (size_t)stt.st_size;
  void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED)
    return sd_fail(err, SD_ERR_IO, "cannot map %s: %s", path, strerror(errno));
  sd_pth *p = NULL;
  sd_error inner = {0};
  int st = sd_pth_open_memory(&p, map, len, &inner);
  if (st) {
    munmap(map, len);
    return sd_fail(err, st, "%s: %s", path, inner.msg);
  }
  p->map = map;
  p->map_len = len;
  *out = p;
  return SD_OK;
}

void sd_pth_free(sd_pth *p) {
  if (!p) return;
  for (int i = 0; i < p->n; i++) sd_free(p->entries[i].name);
  sd_free(p->entries);
  if (p->map) munmap(p->map, p->map_len);
  sd_free(p);
}

const sd_tensor *sd_pth_get(const sd_pth *p, const char *name) {
  for (int i = 0; i < p->n; i++)
    if (strcmp(p->entries[i].name, name) == 0) return &p->entries[i].view;
  return NULL;
}

int sd_pth_count(const sd_pth *p) { return p->n; }
const char *sd_pth_name_at(const sd_pth *p, int i) {
  return i >= 0 && i < p->n ? p->entries[i].name : NULL;
}
const sd_tensor *sd_pth_tensor_at(const sd_pth *p, int i) {
  return i >= 0 && i < p->n ? &p->entries[i].view : NULL;
}
