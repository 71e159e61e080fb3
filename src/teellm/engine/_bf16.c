/* Native kernels for bfloat16 decode steps (a handful of rows, one per sequence):
 * few-row matrix products y = x W^T + b, decode attention over the KV cache, RMS norm
 * with the residual add, silu(gate) * up, and the rotary embedding with the cache write.
 *
 * Why by hand: for a decode step PyTorch either reorders the whole weight matrix into
 * oneDNN's blocked layout on every call or runs a matrix-vector kernel one row at a
 * time, and keeping oneDNN's packed copy instead puts a second plaintext copy of the
 * weights outside protected memory; the rest of a step is a few thousand values per
 * row, where each torch operation costs more in dispatch than in arithmetic. The
 * matrix kernel reads each weight row once per call, in place, for all the rows of x
 * together, with AVX-512 BF16 dot products (VDPBF16PS) accumulating in float32.
 *
 * Every output y[m][n] is computed the same way whatever M, the tile sizes or the
 * thread count: one float32 accumulator per (m, n) fed 32 products at a time in k
 * order, then one horizontal sum; attention and the element-wise kernels work row by
 * row. So a row's result never depends on the batch it is in (greedy decoding is the
 * same alone or batched).
 *
 * Called only through teellm.engine.kernels, which checks shapes, dtypes and
 * contiguity; cache slots, positions and lengths are checked here before any access.
 * Elsewhere this module trusts the addresses it is given. Without x86-64 and GCC or
 * Clang it builds with available() False.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_KERNEL 1
#include <immintrin.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#else
#define HAVE_KERNEL 0
#endif

#define MAX_PARTS 4
#define ROWS 4 /* weight rows per tile */
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 512 /* elements (1 KiB) */
#endif

typedef struct {
    const uint16_t *w; /* [n, k] */
    const uint16_t *b; /* [n] or NULL */
    uint16_t *y;       /* [m, n] */
    long n;
    long blocks; /* ceil(n / ROWS) */
} Part;

static int cpu_supported(void) {
#if HAVE_KERNEL
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

#if HAVE_KERNEL

static inline uint16_t to_bf16(float f) {
    /* Round to nearest even, as torch converts float32 to bfloat16. */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* tile_R_MT: R weight rows (starting at w, row stride k) against MT rows of x; sums go
 * to out[m * R + r]. pf: what to prefetch as this tile streams, into L2 (into L1 it
 * evicted the rows of x: 8-row steps ran about 1.5x slower). */
#define DEFINE_TILE(R, MT)                                                                  \
    TARGET static void tile_##R##_##MT(const uint16_t *x, long k, const uint16_t *w,        \
                                       const uint16_t *pf, float *out) {                    \
        __m512 acc[MT][R];                                                                  \
        for (int m = 0; m < MT; m++)                                                        \
            for (int r = 0; r < R; r++) acc[m][r] = _mm512_setzero_ps();                    \
        long i = 0;                                                                         \
        for (; i + 32 <= k; i += 32) {                                                      \
            __m512bh wv[R];                                                                 \
            for (int r = 0; r < R; r++) {                                                   \
                _mm_prefetch((const char *)(pf + r * k + i), _MM_HINT_T1);                  \
                wv[r] = (__m512bh)_mm512_loadu_si512(w + r * k + i);                        \
            }                                                                               \
            for (int m = 0; m < MT; m++) {                                                  \
                __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * k + i);                  \
                for (int r = 0; r < R; r++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]); \
            }                                                                               \
        }                                                                                   \
        if (i < k) {                                                                        \
            __mmask32 mask = (__mmask32)((1ull << (k - i)) - 1);                            \
            __m512bh wv[R];                                                                 \
            for (int r = 0; r < R; r++)                                                     \
                wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + r * k + i);            \
            for (int m = 0; m < MT; m++) {                                                  \
                __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * k + i);      \
                for (int r = 0; r < R; r++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]); \
            }                                                                               \
        }                                                                                   \
        for (int m = 0; m < MT; m++)                                                        \
            for (int r = 0; r < R; r++) out[m * R + r] = _mm512_reduce_add_ps(acc[m][r]);   \
    }

DEFINE_TILE(4, 1)
DEFINE_TILE(4, 2)
DEFINE_TILE(4, 3)
DEFINE_TILE(4, 4)
DEFINE_TILE(1, 1)
DEFINE_TILE(1, 2)
DEFINE_TILE(1, 3)
DEFINE_TILE(1, 4)

typedef void (*tile_fn)(const uint16_t *, long, const uint16_t *, const uint16_t *, float *);
static const tile_fn TILES4[4] = {tile_4_1, tile_4_2, tile_4_3, tile_4_4};
static const tile_fn TILES1[4] = {tile_1_1, tile_1_2, tile_1_3, tile_1_4};

/* Rows [n0, n0 + rows) of one part (rows is ROWS, or fewer at the end). One row of x
 * streams the weights a row at a time (one sequential stream, what the hardware
 * prefetcher follows best, measured faster here); several rows of x go ROWS weight rows
 * at a time so each loaded x vector feeds ROWS dot products. */
TARGET static void run_block(const uint16_t *x, long m, long k, const Part *p, long n0,
                             long rows) {
    float out[4 * ROWS];
    const uint16_t *w = p->w + n0 * k;
    long width = rows == ROWS && m > 1 ? ROWS : 1;
    for (long r0 = 0; r0 < rows; r0 += width) {
        const uint16_t *wr = w + r0 * k;
        /* Prefetch: a row at a time, PREFETCH_AHEAD elements ahead in the stream (past
         * the end of the matrix a prefetch is only a dropped hint); otherwise the tile
         * after next, or this one again near the end of the matrix (a no-op). */
        const uint16_t *pf = width == 1                          ? wr + PREFETCH_AHEAD
                             : n0 + r0 + 3 * width <= p->n ? wr + 2 * width * k
                                                           : wr;
        for (long m0 = 0; m0 < m; m0 += 4) {
            long mt = m - m0 < 4 ? m - m0 : 4;
            (width == ROWS ? TILES4 : TILES1)[mt - 1](x + m0 * k, k, wr, pf, out);
            for (long i = 0; i < mt; i++) {
                for (long r = 0; r < width; r++) {
                    long n = n0 + r0 + r;
                    float v = out[i * width + r];
                    if (p->b) v += from_bf16(p->b[n]);
                    p->y[(m0 + i) * p->n + n] = to_bf16(v);
                }
            }
        }
    }
}

TARGET static void run(const uint16_t *x, long m, long k, const Part *parts, int nparts,
                       int threads) {
    long total = 0;
    for (int j = 0; j < nparts; j++) total += parts[j].blocks;
    /* One parallel region over the blocks of every part: q, k and v (or gate and up)
     * share one fork and join, and the threads split their rows evenly. */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long b = 0; b < total; b++) {
        long local = b;
        int j = 0;
        while (local >= parts[j].blocks) local -= parts[j++].blocks;
        long n0 = local * ROWS;
        long rows = parts[j].n - n0 < ROWS ? parts[j].n - n0 : ROWS;
        run_block(x, m, k, &parts[j], n0, rows);
    }
}


/* ---- sixteen bfloat16 values at a time (the tail masked) ---------------------------- */

TARGET static inline __m512 load_bf16_masked(const uint16_t *p, __mmask16 mask) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

/* float32 -> bfloat16 -> float32: round to nearest even, as torch does. */
TARGET static inline __m512 round_bf16(__m512 v) {
    __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

TARGET static inline void store_bf16_masked(uint16_t *p, __m512 v, __mmask16 mask) {
    _mm256_mask_storeu_epi16(p, mask, (__m256i)_mm512_cvtneps_pbh(v));
}

static inline __mmask16 tail_mask(long left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

/* ---- decode attention -------------------------------------------------------------
 * One new query token per row against that row's cached keys and values, grouped-query:
 * query head h reads KV head h / group. Row b attends cache positions [lo_b, len_b) with
 * lo_b = max(0, len_b - window) (window 0: no window). Scores, softmax and the weighted
 * sum are float32; the output is rounded to bfloat16 once. Replaces, for decode steps,
 * SDPA with a mask, which costs several times more when rows have different lengths. */

#define MAX_HEAD_DIM 256

/* exp(x) for x <= 0 (softmax after subtracting the maximum): 2^(x log2 e) split into an
 * integer power (scalef) and 2^f on [-0.5, 0.5] by its Taylor polynomial (degree 6,
 * relative error about 1e-7, far below bfloat16's 4e-3). */
TARGET static inline __m512 exp_neg(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.5403530e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* One query head: q [d], keys/values rows [lo, hi) of one (slot, KV head) plane. */
TARGET static void attend_one(const uint16_t *q, const uint16_t *keys, const uint16_t *values,
                              long lo, long hi, long d, float scale, float *scores,
                              uint16_t *out) {
    long n = hi - lo;
    float best = -INFINITY;
    for (long t = 0; t < n; t++) {
        const uint16_t *kt = keys + (lo + t) * d;
        __m512 acc = _mm512_setzero_ps();
        for (long i = 0; i < d; i += 32)
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(q + i),
                                   (__m512bh)_mm512_loadu_si512(kt + i));
        float s = _mm512_reduce_add_ps(acc) * scale;
        scores[t] = s;
        if (s > best) best = s;
    }
    __m512 vbest = _mm512_set1_ps(best), vsum = _mm512_setzero_ps();
    for (long t = 0; t < n; t += 16) {
        __mmask16 mask = tail_mask(n - t);
        __m512 e = exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, scores + t), vbest));
        e = _mm512_maskz_mov_ps(mask, e);
        _mm512_mask_storeu_ps(scores + t, mask, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    float inv = 1.0f / _mm512_reduce_add_ps(vsum);
    __m512 acc[MAX_HEAD_DIM / 16];
    long chunks = d / 16;
    for (long c = 0; c < chunks; c++) acc[c] = _mm512_setzero_ps();
    for (long t = 0; t < n; t++) {
        __m512 w = _mm512_set1_ps(scores[t]);
        const uint16_t *vt = values + (lo + t) * d;
        for (long c = 0; c < chunks; c++)
            acc[c] = _mm512_fmadd_ps(w, load_bf16_masked(vt + c * 16, 0xffff), acc[c]);
    }
    for (long c = 0; c < chunks; c++)
        store_bf16_masked(out + c * 16, _mm512_mul_ps(acc[c], _mm512_set1_ps(inv)), 0xffff);
}

TARGET static void attend(const uint16_t *q, const uint16_t *kc, const uint16_t *vc,
                          const int64_t *slots, const int64_t *lengths, uint16_t *out, long b,
                          long h, long kvh, long t_max, long d, long window, float scale,
                          int threads, float *scratch) {
    long group = h / kvh;
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        float *scores = scratch + (size_t)omp_get_thread_num() * (size_t)(t_max + 16);
#else
        float *scores = scratch;
#endif
#pragma omp for schedule(static)
        for (long task = 0; task < b * kvh; task++) {
            long row = task / kvh, j = task % kvh;
            long hi = lengths[row], lo = window > 0 && hi > window ? hi - window : 0;
            long plane = (slots[row] * kvh + j) * t_max * d;
            for (long g = 0; g < group; g++) {
                long head = j * group + g;
                attend_one(q + (row * h + head) * d, kc + plane, vc + plane, lo, hi, d, scale,
                           scores, out + (row * h + head) * d);
            }
        }
    }
}

/* ---- element-wise steps of a decode step --------------------------------------------
 * A decode step's element-wise work is a few thousand values per row; as torch ops each
 * costs one dispatch and one parallel region (about 20 us), more than the arithmetic.
 * These run on the calling thread and round where the reference model rounds. */

/* Per row: s = x (+ delta, rounded, written to x_out); h = w * (s / rms(s)), rounded
 * after the normalisation and after the scaling, as weight * rms_norm(s.float()).to(bf16). */
TARGET static void norm_rows(const uint16_t *x, const uint16_t *delta, const uint16_t *w,
                             uint16_t *x_out, uint16_t *h_out, long rows, long n, float eps) {
    for (long r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * n;
        __m512 sq = _mm512_setzero_ps();
        for (long i = 0; i < n; i += 16) {
            __mmask16 mask = tail_mask(n - i);
            __m512 v = load_bf16_masked(xr + i, mask);
            if (delta) {
                v = round_bf16(_mm512_add_ps(v, load_bf16_masked(delta + r * n + i, mask)));
                store_bf16_masked(x_out + r * n + i, v, mask);
            }
            sq = _mm512_fmadd_ps(v, v, sq);
        }
        float scale = 1.0f / sqrtf(_mm512_reduce_add_ps(sq) / (float)n + eps);
        const uint16_t *sr = delta ? x_out + r * n : xr;
        __m512 vs = _mm512_set1_ps(scale);
        for (long i = 0; i < n; i += 16) {
            __mmask16 mask = tail_mask(n - i);
            __m512 y = round_bf16(_mm512_mul_ps(load_bf16_masked(sr + i, mask), vs));
            store_bf16_masked(h_out + r * n + i, _mm512_mul_ps(y, load_bf16_masked(w + i, mask)),
                              mask);
        }
    }
}

/* exp for the whole float range (see exp_neg); large arguments saturate to 0 or inf. */
TARGET static inline __m512 exp_any(__m512 x) {
    return exp_neg(_mm512_min_ps(x, _mm512_set1_ps(88.0f)));
}

/* out = silu(gate) * up, rounding after the activation and after the product. */
TARGET static void silu_mul(const uint16_t *gate, const uint16_t *up, uint16_t *out, long n) {
    __m512 one = _mm512_set1_ps(1.0f);
    for (long i = 0; i < n; i += 16) {
        __mmask16 mask = tail_mask(n - i);
        __m512 g = load_bf16_masked(gate + i, mask);
        __m512 act = _mm512_div_ps(g, _mm512_add_ps(one, exp_any(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        store_bf16_masked(out + i, _mm512_mul_ps(round_bf16(act), load_bf16_masked(up + i, mask)),
                          mask);
    }
}

/* One head vector rotated by the rotary tables at one position, rounding like
 * x * cos + rotate_half(x) * sin in bfloat16 (rotate_half(x) = [-x2, x1]). */
TARGET static void rotate_head(const uint16_t *x, const uint16_t *c, const uint16_t *s,
                               uint16_t *out, long d) {
    long half = d / 2;
    for (int part = 0; part < 2; part++) {
        long base = part * half, other = part ? 0 : half;
        __m512 sign = _mm512_set1_ps(part ? 1.0f : -1.0f);
        for (long i = 0; i < half; i += 16) {
            __mmask16 mask = tail_mask(half - i);
            __m512 xv = load_bf16_masked(x + base + i, mask);
            __m512 rh = _mm512_mul_ps(sign, load_bf16_masked(x + other + i, mask));
            __m512 a = round_bf16(_mm512_mul_ps(xv, load_bf16_masked(c + base + i, mask)));
            __m512 b = round_bf16(_mm512_mul_ps(rh, load_bf16_masked(s + base + i, mask)));
            store_bf16_masked(out + base + i, _mm512_add_ps(a, b), mask);
        }
    }
}

/* Decode step: rotate q into q_out; rotate k and copy v into the caches at each row's
 * slot and position. */
TARGET static void rope_cache(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                              const uint16_t *cos, const uint16_t *sin, const int64_t *pos,
                              const int64_t *slots, uint16_t *kc, uint16_t *vc, uint16_t *q_out,
                              long b, long h, long kvh, long d, long t_max) {
    for (long r = 0; r < b; r++) {
        const uint16_t *c = cos + pos[r] * d, *s = sin + pos[r] * d;
        for (long head = 0; head < h; head++)
            rotate_head(q + (r * h + head) * d, c, s, q_out + (r * h + head) * d, d);
        for (long j = 0; j < kvh; j++) {
            long at = ((slots[r] * kvh + j) * t_max + pos[r]) * d;
            rotate_head(k + (r * kvh + j) * d, c, s, kc + at, d);
            memcpy(vc + at, v + (r * kvh + j) * d, (size_t)d * sizeof(uint16_t));
        }
    }
}

#endif /* HAVE_KERNEL */

static int kernel_ok = -1;

static int kernel_supported(void) {
    if (kernel_ok < 0) kernel_ok = cpu_supported();
    return kernel_ok;
}

static PyObject *available(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyBool_FromLong(kernel_supported());
}

static int kernel_ready(void) {
    if (!kernel_supported()) PyErr_SetString(PyExc_RuntimeError, "the native kernels need x86-64 with AVX-512 BF16");
    return kernel_ok;
}

static int address(PyObject *obj, const void **out, int allow_null) {
    void *p = PyLong_AsVoidPtr(obj);
    if (p == NULL && PyErr_Occurred()) return -1;
    if (p == NULL && !allow_null) {
        PyErr_SetString(PyExc_ValueError, "null address");
        return -1;
    }
    *out = p;
    return 0;
}

/* n addresses from objs into ptr; nullable[i] (or all, if nullable is NULL) may be 0. */
__attribute__((unused)) static int addresses(PyObject **objs, const void **ptr, int n, const int *nullable) {
    for (int i = 0; i < n; i++)
        if (address(objs[i], &ptr[i], nullable ? nullable[i] : 0) < 0) return -1;
    return 0;
}

/* linear(x, m, k, parts, threads): parts is a tuple of (w, b, y, n) addresses/sizes;
 * b may be 0 (no bias). Releases the GIL while it computes. */
static PyObject *linear(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *x_obj, *parts_obj;
    Py_ssize_t m, k;
    int threads;
    if (!PyArg_ParseTuple(args, "OnnO!i", &x_obj, &m, &k, &PyTuple_Type, &parts_obj, &threads))
        return NULL;
    if (!kernel_ready()) return NULL;
    Py_ssize_t nparts = PyTuple_GET_SIZE(parts_obj);
    if (m < 1 || k < 1 || threads < 1 || nparts < 1 || nparts > MAX_PARTS) {
        PyErr_SetString(PyExc_ValueError, "invalid sizes");
        return NULL;
    }
#if HAVE_KERNEL
    const void *x;
    if (address(x_obj, &x, 0) < 0) return NULL;
    Part parts[MAX_PARTS];
    for (Py_ssize_t j = 0; j < nparts; j++) {
        PyObject *t = PyTuple_GET_ITEM(parts_obj, j);
        PyObject *w, *b, *y;
        Py_ssize_t n;
        if (!PyArg_ParseTuple(t, "OOOn", &w, &b, &y, &n)) return NULL;
        const void *wp, *bp, *yp;
        if (address(w, &wp, 0) < 0 || address(b, &bp, 1) < 0 || address(y, &yp, 0) < 0)
            return NULL;
        if (n < 1) {
            PyErr_SetString(PyExc_ValueError, "invalid sizes");
            return NULL;
        }
        parts[j] = (Part){wp, bp, (uint16_t *)yp, n, (n + ROWS - 1) / ROWS};
    }
    Py_BEGIN_ALLOW_THREADS
    run(x, m, k, parts, (int)nparts, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    return NULL;
#endif
}


/* attention(q, k_cache, v_cache, slots, lengths, out, b, h, kvh, s, t, d, window, scale,
 * threads): addresses and sizes as checked by teellm.engine.kernels; the slot and length
 * of every row are checked here, before anything is read. */
static PyObject *attention(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[6];
    Py_ssize_t b, h, kvh, n_slots, t_max, d, window;
    float scale;
    int threads;
    if (!PyArg_ParseTuple(args, "OOOOOOnnnnnnnfi", &objs[0], &objs[1], &objs[2], &objs[3],
                          &objs[4], &objs[5], &b, &h, &kvh, &n_slots, &t_max, &d, &window,
                          &scale, &threads))
        return NULL;
    if (!kernel_ready()) return NULL;
    if (b < 1 || h < 1 || kvh < 1 || h % kvh || n_slots < 1 || t_max < 1 || d < 32 ||
        d % 32 || d > 256 || window < 0 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "invalid sizes");
        return NULL;
    }
#if HAVE_KERNEL
    const void *ptr[6];
    if (addresses(objs, ptr, 6, NULL) < 0) return NULL;
    const int64_t *slots = ptr[3], *lengths = ptr[4];
    for (Py_ssize_t i = 0; i < b; i++) {
        if (slots[i] < 0 || slots[i] >= n_slots || lengths[i] < 1 || lengths[i] > t_max) {
            PyErr_SetString(PyExc_ValueError, "a row's cache slot or length is out of range");
            return NULL;
        }
    }
    /* One query head's scores per thread; they derive from the prompt, so wiped after. */
    size_t scratch_len = (size_t)threads * (size_t)(t_max + 16);
    float *scratch = (float *)calloc(scratch_len, sizeof(float));
    if (scratch == NULL) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    attend(ptr[0], ptr[1], ptr[2], slots, lengths, (uint16_t *)ptr[5], b, h, kvh, t_max, d,
           window, scale, threads, scratch);
    Py_END_ALLOW_THREADS
    explicit_bzero(scratch, scratch_len * sizeof(float));
    free(scratch);
    Py_RETURN_NONE;
#else
    return NULL;
#endif
}

/* norm(x, delta, w, x_out, h_out, rows, n, eps): delta and x_out may be 0 (no residual). */
static PyObject *norm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[5];
    Py_ssize_t rows, n;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOOOnnf", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4],
                          &rows, &n, &eps))
        return NULL;
    if (!kernel_ready()) return NULL;
    if (rows < 1 || n < 1) {
        PyErr_SetString(PyExc_ValueError, "invalid sizes");
        return NULL;
    }
#if HAVE_KERNEL
    const void *ptr[5];
    static const int nullable[5] = {0, 1, 0, 1, 0};
    if (addresses(objs, ptr, 5, nullable) < 0) return NULL;
    if ((ptr[1] == NULL) != (ptr[3] == NULL)) {
        PyErr_SetString(PyExc_ValueError, "a residual needs an output for the sum");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    norm_rows(ptr[0], ptr[1], ptr[2], (uint16_t *)ptr[3], (uint16_t *)ptr[4], rows, n, eps);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    return NULL;
#endif
}

/* silu_mul(gate, up, out, n) */
static PyObject *silu_mul_py(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[3];
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OOOn", &objs[0], &objs[1], &objs[2], &n)) return NULL;
    if (!kernel_ready()) return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "invalid sizes");
        return NULL;
    }
#if HAVE_KERNEL
    const void *ptr[3];
    if (addresses(objs, ptr, 3, NULL) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    silu_mul(ptr[0], ptr[1], (uint16_t *)ptr[2], n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    return NULL;
#endif
}

/* rope_cache(q, k, v, cos, sin, pos, slots, k_cache, v_cache, q_out, b, h, kvh, d, n_slots,
 * t_max, rope_len): every row's slot and position are checked before anything is read. */
static PyObject *rope_cache_py(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[10];
    Py_ssize_t b, h, kvh, d, n_slots, t_max, rope_len;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOnnnnnnn", &objs[0], &objs[1], &objs[2], &objs[3],
                          &objs[4], &objs[5], &objs[6], &objs[7], &objs[8], &objs[9], &b, &h,
                          &kvh, &d, &n_slots, &t_max, &rope_len))
        return NULL;
    if (!kernel_ready()) return NULL;
    if (b < 1 || h < 1 || kvh < 1 || d < 2 || d % 2 || n_slots < 1 || t_max < 1 ||
        rope_len < 1) {
        PyErr_SetString(PyExc_ValueError, "invalid sizes");
        return NULL;
    }
#if HAVE_KERNEL
    const void *ptr[10];
    if (addresses(objs, ptr, 10, NULL) < 0) return NULL;
    const int64_t *pos = ptr[5], *slots = ptr[6];
    for (Py_ssize_t i = 0; i < b; i++) {
        if (slots[i] < 0 || slots[i] >= n_slots || pos[i] < 0 || pos[i] >= t_max ||
            pos[i] >= rope_len) {
            PyErr_SetString(PyExc_ValueError, "a row's cache slot or position is out of range");
            return NULL;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    rope_cache(ptr[0], ptr[1], ptr[2], ptr[3], ptr[4], pos, slots, (uint16_t *)ptr[7],
               (uint16_t *)ptr[8], (uint16_t *)ptr[9], b, h, kvh, d, t_max);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    return NULL;
#endif
}

static PyMethodDef methods[] = {
    {"available", available, METH_NOARGS, "Whether this CPU runs the kernel."},
    {"linear", linear, METH_VARARGS, "y = x W^T + b for each part (addresses)."},
    {"attention", attention, METH_VARARGS, "Decode attention over cached keys (addresses)."},
    {"norm", norm, METH_VARARGS, "RMS norm of rows, optionally after a residual add."},
    {"silu_mul", silu_mul_py, METH_VARARGS, "silu(gate) * up."},
    {"rope_cache", rope_cache_py, METH_VARARGS, "Rotary embedding and KV cache write."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_bf16", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__bf16(void) { return PyModule_Create(&module); }
