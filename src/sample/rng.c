/* torch-compatible noise streams, computed on the CPU.
 *
 * CPU generator (torch.Generator("cpu")): mt19937 seeded with the low 32 bits
 * of the manual_seed value (torch truncates 64-bit seeds the same way), and
 * torch's two normal transforms:
 *  - numel >= 16 (contiguous float32): every element first gets a uniform
 *    float u = (r & 0xffffff) * 2^-24 from one 32-bit draw; then blocks of 16
 *    become 8 Box-Muller pairs (radius from 1 - u[j], angle from u[j + 8]); a
 *    tail that is not a multiple of 16 is handled by drawing 16 fresh uniforms
 *    for the last 16 slots and transforming them again. On x86 torch runs this
 *    with AVX2 and the Cephes-style log / sincos polynomials of its
 *    avx_mathfun.h, compiled with FMA enabled so that every multiply whose
 *    result feeds one add is fused. They are restated here in scalar float
 *    arithmetic with fmaf exactly where that build fuses and a rounding
 *    everywhere else, which gives the same bits (checked bitwise against
 *    the fixtures' draws of 16 .. 262144 values).
 *  - numel < 16: one double normal at a time, from two 53-bit uniforms, with
 *    the second value of each Box-Muller pair cached on the generator (as
 *    torch's next_double_normal_sample) and used by the next draw.
 *
 * CUDA generator (torch.Generator("cuda")): Philox4x32-10 as curand; torch's
 * randn kernel gives thread t the Philox subsequence t, counter offset the
 * generator's running offset, and writes element t + k*stride from the k-th
 * value of curand_normal4 (stride = threads in the grid). The stream is
 * exact; the values are not bitwise (see cuda_randn). */
#include "sample/rng.h"

#include <math.h>
#include <string.h>

#include "base/alloc.h"
#include "sample/rng_internal.h"

/* Fusing is decided explicitly (fmaf) to match the reference build; the
 * compiler must not contract any other multiply-add, or low bits change. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define MT_N 624
#define MT_M 397

struct sd_rng {
  sd_rng_kind kind;
  uint64_t seed;
  /* CPU */
  uint32_t mt[MT_N];
  int mt_pos;
  int has_cached_normal;
  double cached_normal;
  /* CUDA: Philox counter offset consumed so far (in 32-bit outputs). */
  uint64_t philox_offset;
};

/* ---- mt19937 (torch's at::mt19937) ---- */

static void mt_seed(sd_rng *g, uint32_t s) {
  g->mt[0] = s;
  for (int i = 1; i < MT_N; i++)
    g->mt[i] = 1812433253u * (g->mt[i - 1] ^ (g->mt[i - 1] >> 30)) + (uint32_t)i;
  g->mt_pos = MT_N;
}

static void mt_twist(sd_rng *g) {
  uint32_t *s = g->mt;
  for (int i = 0; i < MT_N; i++) {
    uint32_t y = (s[i] & 0x80000000u) | (s[(i + 1) % MT_N] & 0x7fffffffu);
    uint32_t v = s[(i + MT_M) % MT_N] ^ (y >> 1);
    if (y & 1u) v ^= 0x9908b0dfu;
    s[i] = v;
  }
  g->mt_pos = 0;
}

static inline uint32_t mt_next(sd_rng *g) {
  if (g->mt_pos >= MT_N) mt_twist(g);
  uint32_t y = g->mt[g->mt_pos++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

/* ---- Cephes-style float log and sincos (torch avx_mathfun.h semantics) ---- */

static inline uint32_t f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static inline float u2f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Natural log for x in (0, 1]; the polynomial in the mantissa and the split
 * ln2 = 0.693359375 - 2.12194440e-4 follow Cephes logf. */
static float cephes_logf(float x) {
  const float min_norm = u2f(0x00800000u);
  if (x < min_norm) x = min_norm;
  int32_t exponent = (int32_t)(f2u(x) >> 23) - 0x7f;
  x = u2f((f2u(x) & ~0x7f800000u) | f2u(0.5f));
  float e = (float)exponent;
  e = e + 1.0f;
  float tmp = x < 0.707106781186547524f ? x : 0.0f;
  x = x - 1.0f;
  if (tmp != 0.0f) e = e - 1.0f;
  x = x + tmp;
  float z = x * x;
  float y = 7.0376836292E-2f;
  y = fmaf(y, x, -1.1514610310E-1f);
  y = fmaf(y, x, 1.1676998740E-1f);
  y = fmaf(y, x, -1.2420140846E-1f);
  y = fmaf(y, x, 1.4249322787E-1f);
  y = fmaf(y, x, -1.6668057665E-1f);
  y = fmaf(y, x, 2.0000714765E-1f);
  y = fmaf(y, x, -2.4999993993E-1f);
  y = fmaf(y, x, 3.3333331174E-1f);
  y = y * x;
  y = fmaf(y, z, e * -2.12194440e-4f);
  y = fmaf(-z, 0.5f, y);
  x = x + y;
  x = fmaf(e, 0.693359375f, x);
  return x;
}

/* sin and cos of x >= 0 (angles here lie in [0, 2*pi)): octant reduction with
 * the three-part pi/4 of Cephes, then the two minimax polynomials. */
static void cephes_sincosf(float x, float *s, float *c) {
  float y = x * 1.27323954473516f;
  int32_t j = (int32_t)y; /* truncation, as cvttps */
  j = (j + 1) & ~1;
  y = (float)j;
  uint32_t sign_sin = ((uint32_t)j & 4u) << 29;
  int poly_sel = (j & 2) == 0; /* 1: sin uses the sine polynomial */
  uint32_t sign_cos = (~(uint32_t)(j - 2) & 4u) << 29;
  x = fmaf(y, -0.78515625f, x);
  x = fmaf(y, -2.4187564849853515625e-4f, x);
  x = fmaf(y, -3.77489497744594108e-8f, x);
  float z = x * x;
  float pc = 2.443315711809948E-005f;
  pc = fmaf(pc, z, -1.388731625493765E-003f);
  pc = fmaf(pc, z, 4.166664568298827E-002f);
  pc = pc * z;
  pc = fmaf(pc, z, -(z * 0.5f));
  pc = pc + 1.0f;
  float ps = -1.9515295891E-4f;
  ps = fmaf(ps, z, 8.3321608736E-3f);
  ps = fmaf(ps, z, -1.6666654611E-1f);
  ps = ps * z;
  ps = fmaf(ps, x, x);
  float vs = poly_sel ? ps : pc;
  float vc = poly_sel ? pc : ps;
  *s = u2f(f2u(vs) ^ sign_sin);
  *c = u2f(f2u(vc) ^ sign_cos);
}

/* In place on 16 uniforms: data[j], data[j + 8] <- the Box-Muller pair. */
static void normal_fill_16(float *d) {
  const float two_pi = (float)(2.0f * 3.14159265358979323846);
  for (int j = 0; j < 8; j++) {
    float u1 = 1.0f - d[j];
    float radius = sqrtf(-2.0f * cephes_logf(u1));
    float theta = two_pi * d[j + 8];
    float sn, cs;
    cephes_sincosf(theta, &sn, &cs);
    /* mean 0, std 1: fmadd(n, 1, 0) is exactly n. */
    d[j] = radius * cs;
    d[j + 8] = radius * sn;
  }
}

static inline float uniform_f24(sd_rng *g) {
  return (float)(mt_next(g) & 0xffffffu) * (1.0f / 16777216.0f);
}

static void cpu_randn_vectorized(sd_rng *g, float *out, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = uniform_f24(g);
  for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
  if (n % 16 != 0) {
    float *tail = out + n - 16;
    for (int i = 0; i < 16; i++) tail[i] = uniform_f24(g);
    normal_fill_16(tail);
  }
}

/* torch's normal_distribution<double>: uniforms from random64() = (first
 * draw << 32 | second draw), 53 bits. */
static inline double uniform_f53(sd_rng *g) {
  uint64_t hi = mt_next(g);
  uint64_t lo = mt_next(g);
  uint64_t r = (hi << 32) | lo;
  return (double)(r & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

static double cpu_normal_double(sd_rng *g) {
  if (g->has_cached_normal) {
    g->has_cached_normal = 0;
    return g->cached_normal;
  }
  double u1 = uniform_f53(g);
  double u2 = uniform_f53(g);
  double r = sqrt(-2.0 * log1p(-u2));
  double theta = 2.0 * 3.14159265358979323846 * u1;
  g->cached_normal = r * sin(theta);
  g->has_cached_normal = 1;
  return r * cos(theta);
}

/* ---- Philox4x32-10 (curand) ---- */

void sd_philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; round++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * ctr[0];
    uint64_t p1 = (uint64_t)0xCD9E8D57u * ctr[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ ctr[1] ^ k0;
    uint32_t n2 = hi0 ^ ctr[3] ^ k1;
    ctr[0] = n0;
    ctr[1] = lo1;
    ctr[2] = n2;
    ctr[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

/* curand_init(seed, subsequence, offset) with offset a multiple of 4, then
 * curand4: the block of 4 outputs at counter (offset/4, subsequence). */
static void philox_block(uint64_t seed, uint64_t subsequence, uint64_t offset,
                         uint32_t out[4]) {
  uint64_t lo = offset / 4;
  out[0] = (uint32_t)lo;
  out[1] = (uint32_t)(lo >> 32);
  out[2] = (uint32_t)subsequence;
  out[3] = (uint32_t)(subsequence >> 32);
  sd_philox4x32_10(out, (uint32_t)seed, (uint32_t)(seed >> 32));
}

static void cuda_randn(sd_rng *g, float *out, int64_t n) {
  if (n <= 0) return;
  /* torch: 256 threads per block, at most (SMs * 2048/256) blocks; every
   * thread advances its counter by 4 outputs per curand_normal4 call. The
   * H200 of the fixtures has 132 SMs. */
  const uint64_t block = 256, sms = 132, blocks_per_sm = 2048 / 256;
  uint64_t grid = ((uint64_t)n + block - 1) / block;
  if (grid > sms * blocks_per_sm) grid = sms * blocks_per_sm;
  uint64_t stride = grid * block;
  uint64_t calls = ((uint64_t)n - 1) / (stride * 4) + 1;
  uint64_t base_offset = g->philox_offset;
  g->philox_offset += calls * 4;
  for (uint64_t t = 0; t < stride; t++) {
    for (uint64_t k = 0; k < calls; k++) {
      uint32_t r[4];
      philox_block(g->seed, t, base_offset + 4 * k, r);
      /* curand_normal4: (r0, r1) and (r2, r3) through Box-Muller:
       * u in (0, 1] from 2^-32 steps, angle v = r * 2pi*2^-32 (fused), radius
       * sqrtf(-2 logf(u)), (sin v, cos v) * radius. The GPU's __sincosf
       * scales v by 1/(2pi) in float and evaluates the hardware sine of that
       * fraction; this keeps the float scaling and evaluates the sine in
       * double, which is as close as the CPU gets (not bitwise). */
      float v[4];
      const float inv32 = 2.3283064365386963e-10f;
      const float inv32_2pi = 2.3283064365386963e-10f * 6.2831855f;
      for (int p = 0; p < 2; p++) {
        float u = (float)r[2 * p] * inv32 + inv32 * 0.5f;
        float w = fmaf((float)r[2 * p + 1], inv32_2pi, inv32_2pi * 0.5f);
        float s = sqrtf(-2.0f * (float)log((double)u));
        float tq = w * 0.159154936f;
        v[2 * p] = (float)sin(6.283185307179586 * (double)tq) * s;
        v[2 * p + 1] = (float)cos(6.283185307179586 * (double)tq) * s;
      }
      for (int ii = 0; ii < 4; ii++) {
        uint64_t li = t + stride * (ii + 4 * k);
        if (li < (uint64_t)n) out[li] = v[ii];
      }
    }
  }
}

/* ---- public ---- */

sd_rng *sd_rng_new(sd_rng_kind kind, uint64_t seed) {
  sd_rng *g = sd_calloc(1, sizeof *g);
  if (!g) return NULL;
  g->kind = kind;
  g->seed = seed;
  mt_seed(g, (uint32_t)seed);
  return g;
}

void sd_rng_free(sd_rng *g) { sd_free(g); }

void sd_rng_randn(sd_rng *g, float *out, int64_t n) {
  if (n <= 0) return;
  if (g->kind == SD_RNG_CUDA) {
    cuda_randn(g, out, n);
  } else if (n >= 16) {
    cpu_randn_vectorized(g, out, n);
  } else {
    for (int64_t i = 0; i < n; i++) out[i] = (float)cpu_normal_double(g);
  }
}

const char *sd_rng_kind_name(sd_rng_kind k) {
  return k == SD_RNG_CUDA ? "cuda" : "cpu";
}

int sd_rng_kind_parse(const char *name) {
  if (!name) return -1;
  if (strcmp(name, "cpu") == 0) return SD_RNG_CPU;
  if (strcmp(name, "cuda") == 0) return SD_RNG_CUDA;
  return -1;
}
