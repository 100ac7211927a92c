/* Chunked attention vs a double-precision softmax(QK^T)V reference: odd
 * head sizes, strided q/kv rows (packed QKV layouts), causal masks, score
 * bias, and independence of the key chunk size up to float rounding. */
#include <stdio.h>

#include "test_ops_common.h"
#include "test_util.h"
#include "tensor/ops.h"

#define ATTN_TOL 1e-5  /* vs double reference */
#define CHUNK_TOL 1e-6 /* between chunk sizes */

static void ref_attention(double *out, const float *q, const float *k,
                          const float *v, const sd_attn_args *a) {
  int hd = a->head_dim;
  int64_t od = (int64_t)a->heads * hd;
  double *p = sd_alloc((size_t)a->Lk * 8);
  for (int b = 0; b < a->B; b++)
    for (int h = 0; h < a->heads; h++)
      for (int i = 0; i < a->Lq; i++) {
        const float *qr = q + ((int64_t)b * a->Lq + i) * a->q_stride + h * hd;
        double mx = -INFINITY, sum = 0;
        int nk = a->causal ? (i + 1 < a->Lk ? i + 1 : a->Lk) : a->Lk;
        for (int j = 0; j < nk; j++) {
          const float *kr = k + ((int64_t)b * a->Lk + j) * a->kv_stride + h * hd;
          double s = 0;
          for (int d = 0; d < hd; d++) s += (double)qr[d] * kr[d];
          s *= a->scale;
          if (a->bias) s += a->bias[((int64_t)h * a->Lq + i) * a->Lk + j];
          p[j] = s;
          if (s > mx) mx = s;
        }
        for (int j = 0; j < nk; j++) sum += p[j] = exp(p[j] - mx);
        double *o = out + ((int64_t)b * a->Lq + i) * od + h * hd;
        for (int d = 0; d < hd; d++) {
          double acc = 0;
          for (int j = 0; j < nk; j++)
            acc += p[j] * v[((int64_t)b * a->Lk + j) * a->kv_stride + h * hd + d];
          o[d] = acc / sum;
        }
      }
  sd_free(p);
}

static double rel_l2_d(const float *a, const double *ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = a[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void check_case(int B, int heads, int hd, int Lq, int Lk, int causal,
                       int with_bias, int q_extra, int kv_extra) {
  sd_attn_args a = {0};
  a.B = B, a.heads = heads, a.head_dim = hd, a.Lq = Lq, a.Lk = Lk;
  a.q_stride = (int64_t)heads * hd + q_extra;
  a.kv_stride = (int64_t)heads * hd + kv_extra;
  a.scale = 1.0f / sqrtf((float)hd);
  a.causal = causal;
  int64_t qn = (int64_t)B * Lq * a.q_stride, kn = (int64_t)B * Lk * a.kv_stride;
  int64_t on = (int64_t)B * Lq * heads * hd;
  float *q = rnd_buffer(qn, 1.0f), *k = rnd_buffer(kn, 1.0f);
  float *v = rnd_buffer(kn, 1.0f);
  float *bias = with_bias ? rnd_buffer((int64_t)heads * Lq * Lk, 2.0f) : NULL;
  a.bias = bias;
  double *ref = sd_alloc((size_t)on * 8);
  float *out = sd_alloc((size_t)on * 4), *first = sd_alloc((size_t)on * 4);
  ref_attention(ref, q, k, v, &a);
  const int chunks[] = {0, Lk, 1, 5, 16, 33, Lk - 1 > 0 ? Lk - 1 : 1};
  for (int c = 0; c < 7; c++) {
    a.kv_chunk = chunks[c];
    poison(out, on);
    int rc = sd_attention(out, q, k, v, &a);
    double e = rel_l2_d(out, ref, on);
    CHECK_MSG(rc == 0 && !has_nan(out, on) && e <= ATTN_TOL,
              "attention B=%d h=%d hd=%d Lq=%d Lk=%d causal=%d bias=%d "
              "chunk=%d: rc=%d err=%.3g",
              B, heads, hd, Lq, Lk, causal, with_bias, chunks[c], rc, e);
    if (c == 0) {
      memcpy(first, out, (size_t)on * 4);
    } else {
      double d = rel_l2(out, first, on);
      CHECK_MSG(d <= CHUNK_TOL, "attention chunk %d vs default: %.3g",
                chunks[c], d);
    }
  }
  sd_free(q), sd_free(k), sd_free(v), sd_free(bias), sd_free(ref);
  sd_free(out), sd_free(first);
}

/* Tasks do not depend on the thread count, so neither do the bits. */
static void check_thread_independence(void) {
  sd_attn_args a = {0};
  a.B = 2, a.heads = 3, a.head_dim = 24, a.Lq = 300, a.Lk = 300;
  a.q_stride = a.kv_stride = 72;
  a.scale = 0.2f;
  a.causal = 1;
  int64_t n = (int64_t)2 * 300 * 72;
  float *q = rnd_buffer(n, 1.0f), *k = rnd_buffer(n, 1.0f), *v = rnd_buffer(n, 1.0f);
  float *o1 = sd_alloc(n * 4), *o3 = sd_alloc(n * 4);
  int saved = sd_get_threads();
  sd_set_threads(1);
  sd_attention(o1, q, k, v, &a);
  sd_set_threads(3);
  sd_attention(o3, q, k, v, &a);
  sd_set_threads(saved);
  CHECK_MSG(memcmp(o1, o3, n * 4) == 0, "attention differs across thread counts");
  sd_free(q), sd_free(k), sd_free(v), sd_free(o1), sd_free(o3);
}

int main(void) {
  for (int it = 0; it < 10; it++) {
    int causal = it % 3 == 0;
    int Lq = rnd_int(1, 90), Lk = causal ? Lq : rnd_int(1, 90);
    check_case(rnd_int(1, 2), rnd_int(1, 3), rnd_int(1, 70), Lq, Lk, causal,
               it % 4 == 1, it % 2 ? 0 : rnd_int(1, 9), it % 2 ? rnd_int(1, 9) : 0);
  }
  check_case(2, 2, 40, 300, 77, 0, 0, 0, 0);     /* SD cross-attention */
  check_case(1, 3, 64, 77, 77, 1, 0, 64 * 6, 64 * 6); /* CLIP, packed QKV */
  check_case(1, 1, 64, 520, 520, 0, 0, 0, 0);    /* several query blocks */
  check_thread_independence();
  return test_finish();
}
