/* One-pass masked sum and count over a (possibly strided) array, for activestorage.fused.
 *
 * NumPy needs several passes over a chunk to reduce it the netCDF way: compare with each missing
 * value (writing a boolean mask), test the mask, then sum where valid. On memory-bound machines
 * each pass costs about as much as reading the chunk, so this module does it in one: every
 * element is loaded once, tested against the missing-data rules and, if valid, added and counted.
 *
 * reduce(array, want_sum, values, nan, vmin, vmax) -> (sum, count)
 *   array     anything exporting a strided buffer of native-order integers or float32/float64
 *   want_sum  false: count only (cheaper)
 *   values    missing values, already converted to the array's dtype (at most MAX_VALUES)
 *   nan       NaN elements are missing too
 *   vmin/vmax elements below/above are missing (None: no bound)
 * The sum is a float for float arrays, an int for integer arrays (wrapping like NumPy's int64 /
 * uint64 accumulators); count is the number of elements not missing.
 *
 * Float sums: each innermost row is cut into groups of GROUP elements summed in 8 lanes of the
 * data's type (element k of a group in lane k % 8, like NumPy's pairwise base case); the lanes of a
 * group are added in double, group sums into block sums, block sums into the total. The order is
 * fixed by the array's shape and strides alone, so the SSE2 and the portable code paths give the
 * same bits.
 *
 * reduce_leading(array, nreduced, out, miss, want_sum, values, nan, vmin, vmax) -> missing
 *   The same along the first `nreduced` axes (an axis reduction, axes moved to the front by the
 *   caller): each element not missing is added into `out` (C order over the kept axes; float32
 *   for float32 data, as NumPy's axis sums accumulate, else float64 / 8-byte integers), each
 *   missing one counted into `miss` (int64). Returns the number of missing elements, so a caller
 *   whose data has none knows every count without reading `miss`.
 *
 * deviations(array, mean, values, nan, vmin, vmax) -> (sum_d, sum_d2, count)
 *   Sums of x - mean and (x - mean)**2 in double over the elements not missing (the second pass
 *   of the kernel's two-pass moments); sixteen chains per sum in a fixed order.
 *
 * moments_cells(array, ncell, out, counts, values, nan, vmin, vmax)
 *   Unweighted (n, mean, m2) of each cell of the first `ncell` axes over the remaining axes: the
 *   two passes above per cell, while the cell is in cache (the groups of the kernel's separable
 *   weighted moments).
 *
 * The GIL is released while the loops run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define HAVE_SSE2 1
#else
#define HAVE_SSE2 0
#endif

/* AVX2 versions of the SSE2 loops, compiled for that target and chosen at run time */
#if HAVE_SSE2 && (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define HAVE_AVX2 1
#define TARGET_AVX2 __attribute__((target("avx2")))
#else
#define HAVE_AVX2 0
#endif

/* the widest vector code the CPU runs: 0 portable, 1 SSE2, 2 AVX2 (set at import; tests lower
 * it to compare the paths, which add in the same order) */
static int simd_level = 0;

#if defined(_MSC_VER)
#define ALWAYS_INLINE __forceinline
#else
#define ALWAYS_INLINE inline __attribute__((always_inline))
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define PRAGMA(x) _Pragma(#x)
#define UNROLL(n) PRAGMA(GCC unroll n)
#elif defined(__clang__)
#define PRAGMA(x) _Pragma(#x)
#define UNROLL(n) PRAGMA(clang loop unroll_count(n))
#else
#define UNROLL(n)
#endif

#define MAX_VALUES 16
#define MAX_DIMS 64
#define GROUP 128      /* elements summed in 8 lanes of the data's own type (as NumPy's pairwise
                          base case), whose sum is then taken in double */
#define BLOCK_GROUPS 64 /* group sums added into one block sum before it joins the total */

typedef enum { K_F32, K_F64, K_INT, K_UINT } kind_t;

typedef struct {
    int nvalues;
    int nan;
    int has_min, has_max;
    double fval[MAX_VALUES], fmin, fmax;          /* float kinds */
    int64_t ival[MAX_VALUES], imin, imax;         /* signed kinds */
    uint64_t uval[MAX_VALUES], umin, umax;        /* unsigned kinds */
} spec_t;

typedef struct {
    double total, block; /* float kinds: finished blocks, and the block being filled */
    int groups;          /* group sums in `block` */
    uint64_t isum;       /* integer kinds, wrapping (two's complement for signed) */
    Py_ssize_t good;
} acc_t;

/* ------------------------------------------------------------------------------ walking rows */

/* Every walk over an array's rows: the axes before the last are an odometer `idx` (first axis
 * slowest, so rows come in C order) and the last axis is one row, handed whole to a row function:
 *
 *     memset(idx, 0, sizeof(idx));
 *     do row(row_at(base, idx, nd - 1, strides), shape[nd - 1], strides[nd - 1], ...);
 *     while (odometer_next(idx, nd - 1, shape));
 *
 * The order of the rows (and so of every sum across them) is the same as before these helpers. */

/* the first element of the row at odometer position idx over `nouter` axes */
static ALWAYS_INLINE const char *row_at(const char *base, const Py_ssize_t *idx, int nouter,
                                        const Py_ssize_t *strides) {
    for (int d = 0; d < nouter; d++) base += idx[d] * strides[d];
    return base;
}

/* idx one step on over `nouter` axes (last axis fastest); 0 once it has wrapped back to zeros */
static ALWAYS_INLINE int odometer_next(Py_ssize_t *idx, int nouter, const Py_ssize_t *shape) {
    int d = nouter - 1;
    while (d >= 0 && ++idx[d] == shape[d]) idx[d--] = 0;
    return d >= 0;
}

/* ------------------------------------------------------------------------------------ floats */

static inline void add_group(acc_t *acc, double g) {
    acc->block += g;
    if (++acc->groups == BLOCK_GROUPS) {
        acc->total += acc->block;
        acc->block = 0.0;
        acc->groups = 0;
    }
}

static inline double lanes_f32(const float *l) {
    return (((double)l[0] + l[1]) + ((double)l[2] + l[3])) +
           (((double)l[4] + l[5]) + ((double)l[6] + l[7]));
}

static inline double lanes_f64(const double *l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

static inline int bad_double(double v, const spec_t *s) {
    if (v != v) return s->nan;
    for (int j = 0; j < s->nvalues; j++)
        if (v == s->fval[j]) return 1;
    return (s->has_min && v < s->fmin) || (s->has_max && v > s->fmax);
}

/* The reference order, for any stride: a row is cut into groups of GROUP elements; element k of
 * a group goes to lane k % 8, lanes add in the data's type (float or double). */
static void row_float_scalar(const char *p, Py_ssize_t n, Py_ssize_t stride, int f32,
                             const spec_t *s, int want_sum, acc_t *acc) {
    for (Py_ssize_t g0 = 0; g0 < n; g0 += GROUP) {
        Py_ssize_t gend = g0 + GROUP < n ? g0 + GROUP : n;
        float lf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        double ld[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (Py_ssize_t k = g0; k < gend; k++) {
            const char *q = p + k * stride;
            double v = f32 ? (double)*(const float *)q : *(const double *)q;
            if (bad_double(v, s)) continue;
            acc->good++;
            if (f32)
                lf[(k - g0) & 7] += (float)v;
            else
                ld[(k - g0) & 7] += v;
        }
        if (want_sum) add_group(acc, f32 ? lanes_f32(lf) : lanes_f64(ld));
    }
}

#if HAVE_SSE2
/* Missing-data tests specialised by `mode` (a constant where these are inlined), so the common
 * cases (nothing to test; one or two missing values) cost one or two compares per vector. */
enum { MODE_NONE, MODE_EQ1, MODE_EQ2, MODE_ANY };

typedef struct {
    __m128 ef[MAX_VALUES], lof, hif, nanf;
    __m128d ed[MAX_VALUES], lod, hid, nand;
} vspec_t;

static void vspec_init(vspec_t *m, const spec_t *s) {
    for (int j = 0; j < s->nvalues; j++) {
        m->ef[j] = _mm_set1_ps((float)s->fval[j]);
        m->ed[j] = _mm_set1_pd(s->fval[j]);
    }
    /* absent bounds become infinities, which no comparison crosses */
    double lo = s->has_min ? s->fmin : -HUGE_VAL, hi = s->has_max ? s->fmax : HUGE_VAL;
    m->lof = _mm_set1_ps((float)lo);
    m->hif = _mm_set1_ps((float)hi);
    m->lod = _mm_set1_pd(lo);
    m->hid = _mm_set1_pd(hi);
    m->nanf = _mm_castsi128_ps(_mm_set1_epi32(s->nan ? -1 : 0));
    m->nand = _mm_castsi128_pd(_mm_set1_epi32(s->nan ? -1 : 0));
}

static int vspec_mode(const spec_t *s) {
    if (s->nan || s->has_min || s->has_max || s->nvalues > 2) return MODE_ANY;
    return s->nvalues; /* MODE_NONE, MODE_EQ1 or MODE_EQ2 */
}

static ALWAYS_INLINE __m128 bad_ps(int mode, __m128 v, const vspec_t *m, int nvalues) {
    switch (mode) {
    case MODE_NONE: return _mm_setzero_ps();
    case MODE_EQ1: return _mm_cmpeq_ps(v, m->ef[0]);
    case MODE_EQ2: return _mm_or_ps(_mm_cmpeq_ps(v, m->ef[0]), _mm_cmpeq_ps(v, m->ef[1]));
    }
    __m128 b = _mm_and_ps(_mm_cmpunord_ps(v, v), m->nanf);
    b = _mm_or_ps(b, _mm_or_ps(_mm_cmplt_ps(v, m->lof), _mm_cmpgt_ps(v, m->hif)));
    for (int j = 0; j < nvalues; j++) b = _mm_or_ps(b, _mm_cmpeq_ps(v, m->ef[j]));
    return b;
}

static ALWAYS_INLINE __m128d bad_pd(int mode, __m128d v, const vspec_t *m, int nvalues) {
    switch (mode) {
    case MODE_NONE: return _mm_setzero_pd();
    case MODE_EQ1: return _mm_cmpeq_pd(v, m->ed[0]);
    case MODE_EQ2: return _mm_or_pd(_mm_cmpeq_pd(v, m->ed[0]), _mm_cmpeq_pd(v, m->ed[1]));
    }
    __m128d b = _mm_and_pd(_mm_cmpunord_pd(v, v), m->nand);
    b = _mm_or_pd(b, _mm_or_pd(_mm_cmplt_pd(v, m->lod), _mm_cmpgt_pd(v, m->hid)));
    for (int j = 0; j < nvalues; j++) b = _mm_or_pd(b, _mm_cmpeq_pd(v, m->ed[j]));
    return b;
}

static const int POP4[16] = {0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4};

/* row_float_scalar's order on a contiguous float32 row, 8 elements per step; masked elements
 * add +0.0, which leaves a lane as it was (a lane that starts at +0.0 is never -0.0). */
static ALWAYS_INLINE void row_f32_sse2(int mode, int want_sum, const float *x, Py_ssize_t n,
                                       const vspec_t *m, const spec_t *s, acc_t *acc) {
    Py_ssize_t bad = 0;
    for (Py_ssize_t g0 = 0; g0 < n; g0 += GROUP) {
        Py_ssize_t gend = g0 + GROUP < n ? g0 + GROUP : n;
        Py_ssize_t vend = g0 + ((gend - g0) & ~(Py_ssize_t)7);
        __m128 s0 = _mm_setzero_ps(), s1 = s0;
        for (Py_ssize_t k = g0; k < vend; k += 8) {
            __m128 v0 = _mm_loadu_ps(x + k), v1 = _mm_loadu_ps(x + k + 4);
            __m128 b0 = bad_ps(mode, v0, m, s->nvalues), b1 = bad_ps(mode, v1, m, s->nvalues);
            if (mode != MODE_NONE && _mm_movemask_ps(_mm_or_ps(b0, b1)))
                bad += POP4[_mm_movemask_ps(b0)] + POP4[_mm_movemask_ps(b1)];
            if (want_sum) {
                s0 = _mm_add_ps(s0, _mm_andnot_ps(b0, v0));
                s1 = _mm_add_ps(s1, _mm_andnot_ps(b1, v1));
            }
        }
        float lane[8];
        _mm_storeu_ps(lane, s0);
        _mm_storeu_ps(lane + 4, s1);
        for (Py_ssize_t k = vend; k < gend; k++) { /* a row's last < 8 elements */
            if (bad_double(x[k], s)) {
                bad++;
                continue;
            }
            lane[(k - g0) & 7] += x[k];
        }
        if (want_sum) add_group(acc, lanes_f32(lane));
    }
    acc->good += n - bad;
}

static ALWAYS_INLINE void row_f64_sse2(int mode, int want_sum, const double *x, Py_ssize_t n,
                                       const vspec_t *m, const spec_t *s, acc_t *acc) {
    Py_ssize_t bad = 0;
    for (Py_ssize_t g0 = 0; g0 < n; g0 += GROUP) {
        Py_ssize_t gend = g0 + GROUP < n ? g0 + GROUP : n;
        Py_ssize_t vend = g0 + ((gend - g0) & ~(Py_ssize_t)7);
        __m128d s0 = _mm_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
        for (Py_ssize_t k = g0; k < vend; k += 8) {
            __m128d v0 = _mm_loadu_pd(x + k), v1 = _mm_loadu_pd(x + k + 2);
            __m128d v2 = _mm_loadu_pd(x + k + 4), v3 = _mm_loadu_pd(x + k + 6);
            __m128d b0 = bad_pd(mode, v0, m, s->nvalues), b1 = bad_pd(mode, v1, m, s->nvalues);
            __m128d b2 = bad_pd(mode, v2, m, s->nvalues), b3 = bad_pd(mode, v3, m, s->nvalues);
            if (mode != MODE_NONE)
                bad += POP4[_mm_movemask_pd(b0) | (_mm_movemask_pd(b1) << 2)] +
                       POP4[_mm_movemask_pd(b2) | (_mm_movemask_pd(b3) << 2)];
            if (want_sum) {
                s0 = _mm_add_pd(s0, _mm_andnot_pd(b0, v0));
                s1 = _mm_add_pd(s1, _mm_andnot_pd(b1, v1));
                s2 = _mm_add_pd(s2, _mm_andnot_pd(b2, v2));
                s3 = _mm_add_pd(s3, _mm_andnot_pd(b3, v3));
            }
        }
        double lane[8];
        _mm_storeu_pd(lane, s0);
        _mm_storeu_pd(lane + 2, s1);
        _mm_storeu_pd(lane + 4, s2);
        _mm_storeu_pd(lane + 6, s3);
        for (Py_ssize_t k = vend; k < gend; k++) {
            if (bad_double(x[k], s)) {
                bad++;
                continue;
            }
            lane[(k - g0) & 7] += x[k];
        }
        if (want_sum) add_group(acc, lanes_f64(lane));
    }
    acc->good += n - bad;
}

#if HAVE_AVX2
typedef struct {
    __m256 ef[MAX_VALUES], lof, hif, nanf;
    __m256d ed[MAX_VALUES], lod, hid, nand;
} vspec8_t;

TARGET_AVX2 static void vspec8_init(vspec8_t *m, const spec_t *s) {
    for (int j = 0; j < s->nvalues; j++) {
        m->ef[j] = _mm256_set1_ps((float)s->fval[j]);
        m->ed[j] = _mm256_set1_pd(s->fval[j]);
    }
    double lo = s->has_min ? s->fmin : -HUGE_VAL, hi = s->has_max ? s->fmax : HUGE_VAL;
    m->lof = _mm256_set1_ps((float)lo);
    m->hif = _mm256_set1_ps((float)hi);
    m->lod = _mm256_set1_pd(lo);
    m->hid = _mm256_set1_pd(hi);
    m->nanf = _mm256_castsi256_ps(_mm256_set1_epi32(s->nan ? -1 : 0));
    m->nand = _mm256_castsi256_pd(_mm256_set1_epi32(s->nan ? -1 : 0));
}

TARGET_AVX2 static ALWAYS_INLINE __m256 bad_ps8(int mode, __m256 v, const vspec8_t *m,
                                                int nvalues) {
    switch (mode) {
    case MODE_NONE: return _mm256_setzero_ps();
    case MODE_EQ1: return _mm256_cmp_ps(v, m->ef[0], _CMP_EQ_OQ);
    case MODE_EQ2:
        return _mm256_or_ps(_mm256_cmp_ps(v, m->ef[0], _CMP_EQ_OQ),
                            _mm256_cmp_ps(v, m->ef[1], _CMP_EQ_OQ));
    }
    __m256 b = _mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q), m->nanf);
    b = _mm256_or_ps(b, _mm256_or_ps(_mm256_cmp_ps(v, m->lof, _CMP_LT_OQ),
                                     _mm256_cmp_ps(v, m->hif, _CMP_GT_OQ)));
    for (int j = 0; j < nvalues; j++) b = _mm256_or_ps(b, _mm256_cmp_ps(v, m->ef[j], _CMP_EQ_OQ));
    return b;
}

TARGET_AVX2 static ALWAYS_INLINE __m256d bad_pd4(int mode, __m256d v, const vspec8_t *m,
                                                 int nvalues) {
    switch (mode) {
    case MODE_NONE: return _mm256_setzero_pd();
    case MODE_EQ1: return _mm256_cmp_pd(v, m->ed[0], _CMP_EQ_OQ);
    case MODE_EQ2:
        return _mm256_or_pd(_mm256_cmp_pd(v, m->ed[0], _CMP_EQ_OQ),
                            _mm256_cmp_pd(v, m->ed[1], _CMP_EQ_OQ));
    }
    __m256d b = _mm256_and_pd(_mm256_cmp_pd(v, v, _CMP_UNORD_Q), m->nand);
    b = _mm256_or_pd(b, _mm256_or_pd(_mm256_cmp_pd(v, m->lod, _CMP_LT_OQ),
                                     _mm256_cmp_pd(v, m->hid, _CMP_GT_OQ)));
    for (int j = 0; j < nvalues; j++) b = _mm256_or_pd(b, _mm256_cmp_pd(v, m->ed[j], _CMP_EQ_OQ));
    return b;
}

/* the number of set lanes of a compare mask (each -1) accumulated by _mm256_add_epi32 */
TARGET_AVX2 static ALWAYS_INLINE Py_ssize_t set_lanes(__m256i neg) {
    __m128i v = _mm_add_epi32(_mm256_castsi256_si128(neg), _mm256_extracti128_si256(neg, 1));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
    return -(Py_ssize_t)_mm_cvtsi128_si32(v);
}

/* row_f32_sse2 with one 8-lane register per group: element k of a group lands in lane k % 8 as
 * before. Whole groups go two at a time: their add chains are independent, so the CPU overlaps
 * them (one chain waits on the add latency), and the order within each, so the bits, is the
 * reference order. Missing elements are counted in vector lanes, without a branch. */
TARGET_AVX2 static ALWAYS_INLINE void row_f32_avx2(int mode, int want_sum, const float *x,
                                                   Py_ssize_t n, const vspec8_t *m,
                                                   const spec_t *s, acc_t *acc) {
    Py_ssize_t bad = 0;
    Py_ssize_t g0 = 0;
    for (; g0 + 2 * GROUP <= n; g0 += 2 * GROUP) {
        __m256 sa = _mm256_setzero_ps(), sb = sa;
        __m256i neg = _mm256_setzero_si256(); /* -1 per missing element, per lane */
        /* unrolled fully, GCC computes every masked vector first and spills them to the stack */
        UNROLL(4)
        for (Py_ssize_t k = g0; k < g0 + GROUP; k += 8) {
            __m256 va = _mm256_loadu_ps(x + k), vb = _mm256_loadu_ps(x + k + GROUP);
            __m256 ba = bad_ps8(mode, va, m, s->nvalues), bb = bad_ps8(mode, vb, m, s->nvalues);
            if (mode != MODE_NONE)
                neg = _mm256_add_epi32(neg, _mm256_add_epi32(_mm256_castps_si256(ba),
                                                              _mm256_castps_si256(bb)));
            if (want_sum) {
                sa = _mm256_add_ps(sa, _mm256_andnot_ps(ba, va));
                sb = _mm256_add_ps(sb, _mm256_andnot_ps(bb, vb));
            }
        }
        if (mode != MODE_NONE) bad += set_lanes(neg);
        if (want_sum) {
            float lane[8];
            _mm256_storeu_ps(lane, sa);
            add_group(acc, lanes_f32(lane));
            _mm256_storeu_ps(lane, sb);
            add_group(acc, lanes_f32(lane));
        }
    }
    for (; g0 < n; g0 += GROUP) { /* the last one or two groups, the last maybe partial */
        Py_ssize_t gend = g0 + GROUP < n ? g0 + GROUP : n;
        Py_ssize_t vend = g0 + ((gend - g0) & ~(Py_ssize_t)7);
        __m256 sum = _mm256_setzero_ps();
        for (Py_ssize_t k = g0; k < vend; k += 8) {
            __m256 v = _mm256_loadu_ps(x + k);
            __m256 b = bad_ps8(mode, v, m, s->nvalues);
            if (mode != MODE_NONE) {
                int bits = _mm256_movemask_ps(b);
                if (bits) bad += POP4[bits & 15] + POP4[bits >> 4];
            }
            if (want_sum) sum = _mm256_add_ps(sum, _mm256_andnot_ps(b, v));
        }
        float lane[8];
        _mm256_storeu_ps(lane, sum);
        for (Py_ssize_t k = vend; k < gend; k++) {
            if (bad_double(x[k], s)) {
                bad++;
                continue;
            }
            lane[(k - g0) & 7] += x[k];
        }
        if (want_sum) add_group(acc, lanes_f32(lane));
    }
    acc->good += n - bad;
}

TARGET_AVX2 static ALWAYS_INLINE void row_f64_avx2(int mode, int want_sum, const double *x,
                                                   Py_ssize_t n, const vspec8_t *m,
                                                   const spec_t *s, acc_t *acc) {
    Py_ssize_t bad = 0;
    for (Py_ssize_t g0 = 0; g0 < n; g0 += GROUP) {
        Py_ssize_t gend = g0 + GROUP < n ? g0 + GROUP : n;
        Py_ssize_t vend = g0 + ((gend - g0) & ~(Py_ssize_t)7);
        __m256d s0 = _mm256_setzero_pd(), s1 = s0;
        for (Py_ssize_t k = g0; k < vend; k += 8) {
            __m256d v0 = _mm256_loadu_pd(x + k), v1 = _mm256_loadu_pd(x + k + 4);
            __m256d b0 = bad_pd4(mode, v0, m, s->nvalues), b1 = bad_pd4(mode, v1, m, s->nvalues);
            if (mode != MODE_NONE)
                bad += POP4[_mm256_movemask_pd(b0)] + POP4[_mm256_movemask_pd(b1)];
            if (want_sum) {
                s0 = _mm256_add_pd(s0, _mm256_andnot_pd(b0, v0));
                s1 = _mm256_add_pd(s1, _mm256_andnot_pd(b1, v1));
            }
        }
        double lane[8];
        _mm256_storeu_pd(lane, s0);
        _mm256_storeu_pd(lane + 4, s1);
        for (Py_ssize_t k = vend; k < gend; k++) {
            if (bad_double(x[k], s)) {
                bad++;
                continue;
            }
            lane[(k - g0) & 7] += x[k];
        }
        if (want_sum) add_group(acc, lanes_f64(lane));
    }
    acc->good += n - bad;
}

TARGET_AVX2 static void row_float_avx2(const char *p, Py_ssize_t n, int f32, const spec_t *s,
                                       int want_sum, acc_t *acc) {
    vspec8_t m;
    vspec8_init(&m, s);
#define CASE(MODE)                                                                             \
    case MODE:                                                                                 \
        if (f32)                                                                               \
            want_sum ? row_f32_avx2(MODE, 1, (const float *)p, n, &m, s, acc)                  \
                     : row_f32_avx2(MODE, 0, (const float *)p, n, &m, s, acc);                 \
        else                                                                                   \
            want_sum ? row_f64_avx2(MODE, 1, (const double *)p, n, &m, s, acc)                 \
                     : row_f64_avx2(MODE, 0, (const double *)p, n, &m, s, acc);                \
        break;
    switch (vspec_mode(s)) {
        CASE(MODE_NONE)
        CASE(MODE_EQ1)
        CASE(MODE_EQ2)
        CASE(MODE_ANY)
    }
#undef CASE
}
#endif

/* a contiguous float row on the widest vector code available; one specialised copy per
 * (mode, want_sum) */
static void row_float_simd(const char *p, Py_ssize_t n, int f32, const vspec_t *m,
                           const spec_t *s, int want_sum, acc_t *acc) {
#if HAVE_AVX2
    if (simd_level >= 2) {
        row_float_avx2(p, n, f32, s, want_sum, acc);
        return;
    }
#endif
    int mode = vspec_mode(s);
#define CASE(MODE)                                                                             \
    case MODE:                                                                                 \
        if (f32)                                                                               \
            want_sum ? row_f32_sse2(MODE, 1, (const float *)p, n, m, s, acc)                   \
                     : row_f32_sse2(MODE, 0, (const float *)p, n, m, s, acc);                  \
        else                                                                                   \
            want_sum ? row_f64_sse2(MODE, 1, (const double *)p, n, m, s, acc)                  \
                     : row_f64_sse2(MODE, 0, (const double *)p, n, m, s, acc);                 \
        break;
    switch (mode) {
        CASE(MODE_NONE)
        CASE(MODE_EQ1)
        CASE(MODE_EQ2)
        CASE(MODE_ANY)
    }
#undef CASE
}
#endif

/* -------------------------------------------------------------------------------- integers */

#define INT_ROW(NAME, T, WIDE, VAL, LO, HI)                                                   \
    static void NAME(const char *p, Py_ssize_t n, Py_ssize_t stride, const spec_t *s,        \
                     int want_sum, acc_t *acc) {                                              \
        uint64_t sum = 0;                                                                     \
        Py_ssize_t good = 0;                                                                  \
        for (Py_ssize_t k = 0; k < n; k++) {                                                  \
            WIDE v = (WIDE) * (const T *)(p + k * stride);                                    \
            int bad = (s->has_min && v < s->LO) || (s->has_max && v > s->HI);                 \
            for (int j = 0; j < s->nvalues && !bad; j++) bad = v == s->VAL[j];                \
            if (bad) continue;                                                                \
            good++;                                                                           \
            sum += (uint64_t)v;                                                               \
        }                                                                                     \
        acc->good += good;                                                                    \
        if (want_sum) acc->isum += sum;                                                       \
    }

INT_ROW(row_i8, int8_t, int64_t, ival, imin, imax)
INT_ROW(row_i16, int16_t, int64_t, ival, imin, imax)
INT_ROW(row_i32, int32_t, int64_t, ival, imin, imax)
INT_ROW(row_i64, int64_t, int64_t, ival, imin, imax)
INT_ROW(row_u8, uint8_t, uint64_t, uval, umin, umax)
INT_ROW(row_u16, uint16_t, uint64_t, uval, umin, umax)
INT_ROW(row_u32, uint32_t, uint64_t, uval, umin, umax)
INT_ROW(row_u64, uint64_t, uint64_t, uval, umin, umax)

typedef void (*int_row_t)(const char *, Py_ssize_t, Py_ssize_t, const spec_t *, int, acc_t *);

/* ------------------------------------------------------------------------- the whole array */

typedef struct {
    kind_t kind;
    int f32;
    int_row_t int_row;
    Py_ssize_t itemsize;
} type_t;

static void reduce_rows(const char *base, int ndim, const Py_ssize_t *shape,
                        const Py_ssize_t *strides, const type_t *t, const spec_t *s,
                        int want_sum, acc_t *acc) {
    /* odometer over every axis but the last; the last is one row */
    Py_ssize_t idx[MAX_DIMS];
    memset(idx, 0, sizeof(idx));
    Py_ssize_t n = shape[ndim - 1], stride = strides[ndim - 1];
#if HAVE_SSE2
    vspec_t m;
    if (t->kind == K_F32 || t->kind == K_F64) vspec_init(&m, s);
#endif
    do {
        const char *p = row_at(base, idx, ndim - 1, strides);
        if (t->kind == K_F32 || t->kind == K_F64) {
#if HAVE_SSE2
            if (stride == t->itemsize && simd_level >= 1)
                row_float_simd(p, n, t->f32, &m, s, want_sum, acc);
            else
#endif
                row_float_scalar(p, n, stride, t->f32, s, want_sum, acc);
        } else {
            t->int_row(p, n, stride, s, want_sum, acc);
        }
    } while (odometer_next(idx, ndim - 1, shape));
}

static int parse_type(const char *fmt, Py_ssize_t itemsize, type_t *t) {
    const uint16_t probe = 1;
    const int little = *(const char *)&probe == 1;
    if (*fmt == '@' || *fmt == '=' || (*fmt == '<' && little) || (*fmt == '>' && !little)) fmt++;
    if (fmt[0] == '\0' || fmt[1] != '\0') return -1;
    t->itemsize = itemsize;
    t->f32 = 0;
    t->int_row = NULL;
    switch (fmt[0]) {
    case 'f': t->kind = K_F32; t->f32 = 1; return itemsize == 4 ? 0 : -1;
    case 'd': t->kind = K_F64; return itemsize == 8 ? 0 : -1;
    case 'b': case 'h': case 'i': case 'l': case 'q':
        t->kind = K_INT;
        t->int_row = itemsize == 1 ? row_i8 : itemsize == 2 ? row_i16 : itemsize == 4 ? row_i32
                   : itemsize == 8 ? row_i64 : NULL;
        return t->int_row ? 0 : -1;
    case 'B': case 'H': case 'I': case 'L': case 'Q':
        t->kind = K_UINT;
        t->int_row = itemsize == 1 ? row_u8 : itemsize == 2 ? row_u16 : itemsize == 4 ? row_u32
                   : itemsize == 8 ? row_u64 : NULL;
        return t->int_row ? 0 : -1;
    }
    return -1;
}

/* A number as the spec's type for `kind`; -1 with an exception set if it is not one. */
static int spec_number(PyObject *o, kind_t kind, double *f, int64_t *i, uint64_t *u) {
    if (kind == K_F32 || kind == K_F64) {
        *f = PyFloat_AsDouble(o);
    } else if (kind == K_INT) {
        *i = PyLong_AsLongLong(o);
    } else {
        *u = PyLong_AsUnsignedLongLong(o);
    }
    return PyErr_Occurred() ? -1 : 0;
}

/* Parse the missing-data arguments into `s` for elements of kind `t`; -1 with an exception. */
static int parse_spec(const type_t *t, PyObject *values, int nan, PyObject *vmin, PyObject *vmax,
                      spec_t *s) {
    memset(s, 0, sizeof(*s));
    PyObject *seq = PySequence_Fast(values, "values must be a sequence");
    if (seq == NULL) return -1;
    int rc = -1;
    s->nvalues = (int)PySequence_Fast_GET_SIZE(seq);
    if (s->nvalues > MAX_VALUES) {
        PyErr_SetString(PyExc_TypeError, "too many missing values");
        goto done;
    }
    for (int j = 0; j < s->nvalues; j++)
        if (spec_number(PySequence_Fast_GET_ITEM(seq, j), t->kind, &s->fval[j], &s->ival[j],
                        &s->uval[j]) < 0)
            goto done;
    s->nan = nan && (t->kind == K_F32 || t->kind == K_F64);
    s->has_min = vmin != Py_None;
    s->has_max = vmax != Py_None;
    if ((s->has_min && spec_number(vmin, t->kind, &s->fmin, &s->imin, &s->umin) < 0) ||
        (s->has_max && spec_number(vmax, t->kind, &s->fmax, &s->imax, &s->umax) < 0))
        goto done;
    rc = 0;
done:
    Py_DECREF(seq);
    return rc;
}

/* Axes [from, to) of a buffer without their length-1 axes, merged where an axis is contiguous
 * with the next; at least one axis (of length 1) is left. Returns the number of axes. */
static int simplify(const Py_buffer *v, int from, int to, Py_ssize_t *shape, Py_ssize_t *strides) {
    int nd = 0;
    for (int d = from; d < to; d++) {
        if (v->shape[d] == 1) continue;
        if (nd && strides[nd - 1] == v->strides[d] * v->shape[d]) {
            shape[nd - 1] *= v->shape[d];
            strides[nd - 1] = v->strides[d];
        } else {
            shape[nd] = v->shape[d];
            strides[nd] = v->strides[d]; /* PyBUF_RECORDS_RO: strides are always given */
            nd++;
        }
    }
    if (nd == 0) {
        shape[0] = 1;
        strides[0] = v->itemsize;
        nd = 1;
    }
    return nd;
}

static int get_array(PyObject *obj, Py_buffer *view, type_t *t) {
    if (PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO) < 0) return -1;
    if (view->format == NULL || parse_type(view->format, view->itemsize, t) < 0 ||
        view->ndim > MAX_DIMS) {
        PyErr_Format(PyExc_TypeError, "unsupported array (format %s, %d dimensions)",
                     view->format ? view->format : "none", view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *fused_reduce(PyObject *self, PyObject *args) {
    PyObject *obj, *values, *vmin, *vmax;
    int want_sum, nan;
    if (!PyArg_ParseTuple(args, "OpOpOO", &obj, &want_sum, &values, &nan, &vmin, &vmax))
        return NULL;
    Py_buffer view;
    type_t t;
    if (get_array(obj, &view, &t) < 0) return NULL;
    PyObject *result = NULL;
    spec_t s;
    if (parse_spec(&t, values, nan, vmin, vmax, &s) < 0) goto done;
    Py_ssize_t shape[MAX_DIMS], strides[MAX_DIMS], total = 1;
    for (int d = 0; d < view.ndim; d++) total *= view.shape[d];
    int nd = simplify(&view, 0, view.ndim, shape, strides);
    acc_t acc = {0.0, 0.0, 0, 0, 0};
    if (total > 0) {
        Py_BEGIN_ALLOW_THREADS
        reduce_rows((const char *)view.buf, nd, shape, strides, &t, &s, want_sum, &acc);
        Py_END_ALLOW_THREADS
    }
    if (t.kind == K_F32 || t.kind == K_F64)
        result = Py_BuildValue("(dn)", acc.total + acc.block, acc.good);
    else if (t.kind == K_INT)
        result = Py_BuildValue("(Ln)", (long long)(int64_t)acc.isum, acc.good);
    else
        result = Py_BuildValue("(Kn)", (unsigned long long)acc.isum, acc.good);
done:
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------- reductions along leading axes */

/* One kept row of `n` elements added into out[0..n) (the data's own float type, as NumPy's
 * axis reductions accumulate), missing elements counted into miss[] instead. */
#define LEAD_ROW(NAME, T, OUT, TEST)                                                           \
    static Py_ssize_t NAME(const char *p, Py_ssize_t n, Py_ssize_t stride, const spec_t *s,   \
                           int want_sum, void *out_, int64_t *miss) {                         \
        OUT *out = (OUT *)out_;                                                               \
        Py_ssize_t bad = 0;                                                                   \
        for (Py_ssize_t k = 0; k < n; k++) {                                                  \
            T v = *(const T *)(p + k * stride);                                               \
            if (TEST) {                                                                       \
                miss[k]++;                                                                    \
                bad++;                                                                        \
            } else if (want_sum) {                                                            \
                out[k] += (OUT)v;                                                             \
            }                                                                                 \
        }                                                                                     \
        return bad;                                                                           \
    }

static inline int bad_int(int64_t v, const spec_t *s) {
    if ((s->has_min && v < s->imin) || (s->has_max && v > s->imax)) return 1;
    for (int j = 0; j < s->nvalues; j++)
        if (v == s->ival[j]) return 1;
    return 0;
}

static inline int bad_uint(uint64_t v, const spec_t *s) {
    if ((s->has_min && v < s->umin) || (s->has_max && v > s->umax)) return 1;
    for (int j = 0; j < s->nvalues; j++)
        if (v == s->uval[j]) return 1;
    return 0;
}

LEAD_ROW(lead_f32, float, float, bad_double((double)v, s))
LEAD_ROW(lead_f64, double, double, bad_double(v, s))
LEAD_ROW(lead_i8, int8_t, uint64_t, bad_int(v, s))
LEAD_ROW(lead_i16, int16_t, uint64_t, bad_int(v, s))
LEAD_ROW(lead_i32, int32_t, uint64_t, bad_int(v, s))
LEAD_ROW(lead_i64, int64_t, uint64_t, bad_int(v, s))
LEAD_ROW(lead_u8, uint8_t, uint64_t, bad_uint(v, s))
LEAD_ROW(lead_u16, uint16_t, uint64_t, bad_uint(v, s))
LEAD_ROW(lead_u32, uint32_t, uint64_t, bad_uint(v, s))
LEAD_ROW(lead_u64, uint64_t, uint64_t, bad_uint(v, s))

#if HAVE_SSE2
/* lead_f32 on a contiguous row, 4 elements per step (masked ones add +0.0f: out never holds a
 * -0.0 it did not start with, and it starts at +0.0) */
static ALWAYS_INLINE Py_ssize_t lead_f32_sse2(int mode, const float *x, Py_ssize_t n,
                                              const vspec_t *m, const spec_t *s, int want_sum,
                                              float *out, int64_t *miss) {
    Py_ssize_t bad = 0, k = 0;
    for (; k + 8 <= n; k += 8) {
        __m128 v0 = _mm_loadu_ps(x + k), v1 = _mm_loadu_ps(x + k + 4);
        __m128 b0 = bad_ps(mode, v0, m, s->nvalues), b1 = bad_ps(mode, v1, m, s->nvalues);
        if (mode != MODE_NONE) {
            int bits = _mm_movemask_ps(b0) | _mm_movemask_ps(b1) << 4;
            if (bits) {
                for (int j = 0; j < 8; j++)
                    if (bits >> j & 1) miss[k + j]++;
                bad += POP4[bits & 15] + POP4[bits >> 4];
            }
        }
        if (want_sum) {
            _mm_storeu_ps(out + k, _mm_add_ps(_mm_loadu_ps(out + k), _mm_andnot_ps(b0, v0)));
            _mm_storeu_ps(out + k + 4,
                          _mm_add_ps(_mm_loadu_ps(out + k + 4), _mm_andnot_ps(b1, v1)));
        }
    }
    bad += lead_f32((const char *)(x + k), n - k, sizeof(float), s, want_sum, out + k, miss + k);
    return bad;
}

#if HAVE_AVX2
TARGET_AVX2 static ALWAYS_INLINE Py_ssize_t lead_f32_avx2(int mode, const float *x, Py_ssize_t n,
                                                          const vspec8_t *m, const spec_t *s,
                                                          int want_sum, float *out,
                                                          int64_t *miss) {
    Py_ssize_t bad = 0, k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 v = _mm256_loadu_ps(x + k);
        __m256 b = bad_ps8(mode, v, m, s->nvalues);
        if (mode != MODE_NONE) {
            int bits = _mm256_movemask_ps(b);
            if (bits) {
                for (int j = 0; j < 8; j++)
                    if (bits >> j & 1) miss[k + j]++;
                bad += POP4[bits & 15] + POP4[bits >> 4];
            }
        }
        if (want_sum)
            _mm256_storeu_ps(out + k, _mm256_add_ps(_mm256_loadu_ps(out + k),
                                                    _mm256_andnot_ps(b, v)));
    }
    bad += lead_f32((const char *)(x + k), n - k, sizeof(float), s, want_sum, out + k, miss + k);
    return bad;
}

TARGET_AVX2 static ALWAYS_INLINE Py_ssize_t lead_f64_avx2(int mode, const double *x,
                                                          Py_ssize_t n, const vspec8_t *m,
                                                          const spec_t *s, int want_sum,
                                                          double *out, int64_t *miss) {
    Py_ssize_t bad = 0, k = 0;
    for (; k + 4 <= n; k += 4) {
        __m256d v = _mm256_loadu_pd(x + k);
        __m256d b = bad_pd4(mode, v, m, s->nvalues);
        if (mode != MODE_NONE) {
            int bits = _mm256_movemask_pd(b);
            if (bits) {
                for (int j = 0; j < 4; j++)
                    if (bits >> j & 1) miss[k + j]++;
                bad += POP4[bits];
            }
        }
        if (want_sum)
            _mm256_storeu_pd(out + k, _mm256_add_pd(_mm256_loadu_pd(out + k),
                                                    _mm256_andnot_pd(b, v)));
    }
    bad += lead_f64((const char *)(x + k), n - k, sizeof(double), s, want_sum, out + k, miss + k);
    return bad;
}

/* a contiguous float row on AVX2 (float32 or float64 by `f32`) */
TARGET_AVX2 static Py_ssize_t lead_float_avx2(const char *x, Py_ssize_t n, int f32,
                                              const vspec8_t *m, const spec_t *s, int want_sum,
                                              char *out, int64_t *miss) {
#define CASE(MODE)                                                                             \
    case MODE:                                                                                 \
        return f32 ? lead_f32_avx2(MODE, (const float *)x, n, m, s, want_sum, (float *)out,   \
                                   miss)                                                       \
                   : lead_f64_avx2(MODE, (const double *)x, n, m, s, want_sum, (double *)out, \
                                   miss);
    switch (vspec_mode(s)) {
        CASE(MODE_NONE)
        CASE(MODE_EQ1)
        CASE(MODE_EQ2)
        default:
        CASE(MODE_ANY)
    }
#undef CASE
}
#endif

static Py_ssize_t lead_f32_fast(const float *x, Py_ssize_t n, const vspec_t *m, const spec_t *s,
                                int want_sum, float *out, int64_t *miss) {
    switch (vspec_mode(s)) {
    case MODE_NONE: return lead_f32_sse2(MODE_NONE, x, n, m, s, want_sum, out, miss);
    case MODE_EQ1: return lead_f32_sse2(MODE_EQ1, x, n, m, s, want_sum, out, miss);
    case MODE_EQ2: return lead_f32_sse2(MODE_EQ2, x, n, m, s, want_sum, out, miss);
    default: return lead_f32_sse2(MODE_ANY, x, n, m, s, want_sum, out, miss);
    }
}
#endif

typedef Py_ssize_t (*lead_row_t)(const char *, Py_ssize_t, Py_ssize_t, const spec_t *, int,
                                 void *, int64_t *);

static lead_row_t lead_row_for(const type_t *t) {
    switch (t->kind) {
    case K_F32: return lead_f32;
    case K_F64: return lead_f64;
    case K_INT:
        return t->itemsize == 1 ? lead_i8 : t->itemsize == 2 ? lead_i16
               : t->itemsize == 4 ? lead_i32 : lead_i64;
    default:
        return t->itemsize == 1 ? lead_u8 : t->itemsize == 2 ? lead_u16
               : t->itemsize == 4 ? lead_u32 : lead_u64;
    }
}

/* for every index of the reduced axes (an odometer, first axis slowest), every kept element
 * (another odometer; the last kept axis is one row) is added into out at its C-order index */
static Py_ssize_t reduce_leading_rows(const char *base, int nr, const Py_ssize_t *rshape,
                                      const Py_ssize_t *rstrides, int nk,
                                      const Py_ssize_t *kshape, const Py_ssize_t *kstrides,
                                      const type_t *t, const spec_t *s, int want_sum, char *out,
                                      Py_ssize_t out_itemsize, int64_t *miss) {
    Py_ssize_t ridx[MAX_DIMS], kidx[MAX_DIMS], bad = 0;
    Py_ssize_t n = kshape[nk - 1], stride = kstrides[nk - 1];
    lead_row_t row = lead_row_for(t);
    int is_float = t->kind == K_F32 || t->kind == K_F64;
    int contiguous = stride == t->itemsize;
#if HAVE_SSE2
    vspec_t m;
    if (t->kind == K_F32) vspec_init(&m, s);
#endif
#if HAVE_AVX2
    vspec8_t m8;
    if (is_float && simd_level >= 2) vspec8_init(&m8, s);
#endif
    memset(ridx, 0, sizeof(ridx));
    do {
        /* the reduced axes are all outer (none is a row): the odometer covers all nr of them */
        const char *rp = row_at(base, ridx, nr, rstrides);
        memset(kidx, 0, sizeof(kidx));
        Py_ssize_t o = 0; /* C-order index of the row's first kept element */
        do {
            const char *p = row_at(rp, kidx, nk - 1, kstrides);
#if HAVE_AVX2
            if (is_float && contiguous && simd_level >= 2)
                bad += lead_float_avx2(p, n, t->f32, &m8, s, want_sum, out + o * out_itemsize,
                                       miss + o);
            else
#endif
#if HAVE_SSE2
            if (t->kind == K_F32 && contiguous && simd_level >= 1)
                bad += lead_f32_fast((const float *)p, n, &m, s, want_sum, (float *)out + o,
                                     miss + o);
            else
#endif
                bad += row(p, n, stride, s, want_sum, out + o * out_itemsize, miss + o);
            o += n;
        } while (odometer_next(kidx, nk - 1, kshape));
    } while (odometer_next(ridx, nr, rshape));
    return bad;
}

static PyObject *fused_reduce_leading(PyObject *self, PyObject *args) {
    PyObject *obj, *out_obj, *miss_obj, *values, *vmin, *vmax;
    int nreduced, want_sum, nan;
    if (!PyArg_ParseTuple(args, "OiOOpOpOO", &obj, &nreduced, &out_obj, &miss_obj, &want_sum,
                          &values, &nan, &vmin, &vmax))
        return NULL;
    Py_buffer view, out, miss;
    type_t t;
    if (get_array(obj, &view, &t) < 0) return NULL;
    PyObject *result = NULL;
    int have_out = 0, have_miss = 0;
    if (nreduced < 0 || nreduced > view.ndim) {
        PyErr_SetString(PyExc_ValueError, "nreduced is not a number of leading axes");
        goto done;
    }
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto done;
    have_out = 1;
    if (PyObject_GetBuffer(miss_obj, &miss, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto done;
    have_miss = 1;
    Py_ssize_t kept = 1, total = 1;
    for (int d = 0; d < view.ndim; d++) {
        total *= view.shape[d];
        if (d >= nreduced) kept *= view.shape[d];
    }
    Py_ssize_t out_itemsize = t.kind == K_F32 ? 4 : 8; /* float32 stays float32, others 8 bytes */
    if (out.len != kept * out_itemsize || miss.len != kept * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "out and miss must hold one element per kept element");
        goto done;
    }
    spec_t s;
    if (parse_spec(&t, values, nan, vmin, vmax, &s) < 0) goto done;
    Py_ssize_t rshape[MAX_DIMS], rstrides[MAX_DIMS], kshape[MAX_DIMS], kstrides[MAX_DIMS];
    int nr = simplify(&view, 0, nreduced, rshape, rstrides);
    int nk = simplify(&view, nreduced, view.ndim, kshape, kstrides);
    Py_ssize_t bad = 0;
    if (total > 0) {
        Py_BEGIN_ALLOW_THREADS
        bad = reduce_leading_rows((const char *)view.buf, nr, rshape, rstrides, nk, kshape,
                                  kstrides, &t, &s, want_sum, (char *)out.buf, out_itemsize,
                                  (int64_t *)miss.buf);
        Py_END_ALLOW_THREADS
    }
    result = PyLong_FromSsize_t(bad);
done:
    if (have_out) PyBuffer_Release(&out);
    if (have_miss) PyBuffer_Release(&miss);
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------ deviations from a given mean */

/* Sums of (x - mean) and (x - mean)^2 in double over the elements of one row that are not
 * missing, and their count: the moments pass of the kernel. DCH independent chains per sum
 * (element k of a row in chain k % DCH), added in a fixed order at the end of the call. Sixteen
 * chains keep the adds from waiting on each other (four made the pass latency-bound: about a
 * quarter of the speed of the sum pass), and every code path keeps the same order, so the same
 * bits at every SIMD level. */
#define DCH 16
typedef struct {
    double d[DCH], d2[DCH];
    Py_ssize_t good;
} devacc_t;

/* the missing-data tests of a float32 row in double (exact: the kernel's values are float32
 * numbers, see f32_exact); an unused value is NaN, which equals nothing */
typedef struct {
    double v0, v1, lo, hi;
    int nan;
} devspec_t;

static void devspec_init(devspec_t *m, const spec_t *s) {
    m->v0 = s->nvalues > 0 ? s->fval[0] : __builtin_nan("");
    m->v1 = s->nvalues > 1 ? s->fval[1] : __builtin_nan("");
    m->lo = s->has_min ? s->fmin : -__builtin_inf();
    m->hi = s->has_max ? s->fmax : __builtin_inf();
    m->nan = s->nan;
}

#if HAVE_SSE2
static ALWAYS_INLINE __m128d dev_bad_pd(__m128d a, const devspec_t *m) {
    __m128d b = _mm_or_pd(_mm_cmpeq_pd(a, _mm_set1_pd(m->v0)), _mm_cmpeq_pd(a, _mm_set1_pd(m->v1)));
    b = _mm_or_pd(b, _mm_or_pd(_mm_cmplt_pd(a, _mm_set1_pd(m->lo)),
                               _mm_cmpgt_pd(a, _mm_set1_pd(m->hi))));
    if (m->nan) b = _mm_or_pd(b, _mm_cmpunord_pd(a, a));
    return b;
}

/* DCH elements per step as 8 pairs of doubles, pair i holding chains 2i and 2i+1 */
static ALWAYS_INLINE Py_ssize_t dev_f32_sse2_body(int masked, const float *x, Py_ssize_t n,
                                                  const devspec_t *m, double mean, double *d,
                                                  double *q, Py_ssize_t *good) {
    const __m128d mv = _mm_set1_pd(mean);
    __m128d D[DCH / 2], Q[DCH / 2];
    for (int i = 0; i < DCH / 2; i++) D[i] = Q[i] = _mm_setzero_pd();
    Py_ssize_t k = 0, bad = 0;
    for (; k + DCH <= n; k += DCH) {
        for (int i = 0; i < DCH / 4; i++) {
            __m128 v = _mm_loadu_ps(x + k + 4 * i);
            __m128d a = _mm_cvtps_pd(v), b = _mm_cvtps_pd(_mm_movehl_ps(v, v));
            if (masked) {
                __m128d ba = dev_bad_pd(a, m), bb = dev_bad_pd(b, m);
                bad += POP4[_mm_movemask_pd(ba) | (_mm_movemask_pd(bb) << 2)];
                a = _mm_andnot_pd(ba, _mm_sub_pd(a, mv));
                b = _mm_andnot_pd(bb, _mm_sub_pd(b, mv));
            } else {
                a = _mm_sub_pd(a, mv);
                b = _mm_sub_pd(b, mv);
            }
            D[2 * i] = _mm_add_pd(D[2 * i], a);
            D[2 * i + 1] = _mm_add_pd(D[2 * i + 1], b);
            Q[2 * i] = _mm_add_pd(Q[2 * i], _mm_mul_pd(a, a));
            Q[2 * i + 1] = _mm_add_pd(Q[2 * i + 1], _mm_mul_pd(b, b));
        }
    }
    for (int i = 0; i < DCH / 2; i++) {
        _mm_storeu_pd(d + 2 * i, D[i]);
        _mm_storeu_pd(q + 2 * i, Q[i]);
    }
    *good += k - bad;
    return k;
}

static Py_ssize_t dev_f32_sse2(const float *x, Py_ssize_t n, const spec_t *s, int masked,
                               double mean, double *d, double *q, Py_ssize_t *good) {
    devspec_t m;
    devspec_init(&m, s);
    return masked ? dev_f32_sse2_body(1, x, n, &m, mean, d, q, good)
                  : dev_f32_sse2_body(0, x, n, &m, mean, d, q, good);
}

#if HAVE_AVX2
TARGET_AVX2 static ALWAYS_INLINE __m256d dev_bad_pd4(__m256d a, const devspec_t *m) {
    __m256d b = _mm256_or_pd(_mm256_cmp_pd(a, _mm256_set1_pd(m->v0), _CMP_EQ_OQ),
                             _mm256_cmp_pd(a, _mm256_set1_pd(m->v1), _CMP_EQ_OQ));
    b = _mm256_or_pd(b, _mm256_or_pd(_mm256_cmp_pd(a, _mm256_set1_pd(m->lo), _CMP_LT_OQ),
                                     _mm256_cmp_pd(a, _mm256_set1_pd(m->hi), _CMP_GT_OQ)));
    if (m->nan) b = _mm256_or_pd(b, _mm256_cmp_pd(a, a, _CMP_UNORD_Q));
    return b;
}

/* the SSE2 order with 4 doubles per register: register i holds chains 4i..4i+3 */
TARGET_AVX2 static ALWAYS_INLINE Py_ssize_t dev_f32_avx2_body(int masked, const float *x,
                                                              Py_ssize_t n, const devspec_t *m,
                                                              double mean, double *d, double *q,
                                                              Py_ssize_t *good) {
    const __m256d mv = _mm256_set1_pd(mean);
    __m256d D0 = _mm256_setzero_pd(), D1 = D0, D2 = D0, D3 = D0, Q0 = D0, Q1 = D0, Q2 = D0,
            Q3 = D0;
    __m256i neg = _mm256_setzero_si256(); /* -1 per missing element, per lane */
    Py_ssize_t k = 0;
    for (; k + DCH <= n; k += DCH) {
        __m256 v = _mm256_loadu_ps(x + k), w = _mm256_loadu_ps(x + k + 8);
        __m256d a0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d a1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        __m256d a2 = _mm256_cvtps_pd(_mm256_castps256_ps128(w));
        __m256d a3 = _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1));
        if (masked) {
            __m256d b0 = dev_bad_pd4(a0, m), b1 = dev_bad_pd4(a1, m);
            __m256d b2 = dev_bad_pd4(a2, m), b3 = dev_bad_pd4(a3, m);
            neg = _mm256_add_epi64(neg, _mm256_add_epi64(
                _mm256_add_epi64(_mm256_castpd_si256(b0), _mm256_castpd_si256(b1)),
                _mm256_add_epi64(_mm256_castpd_si256(b2), _mm256_castpd_si256(b3))));
            a0 = _mm256_andnot_pd(b0, _mm256_sub_pd(a0, mv));
            a1 = _mm256_andnot_pd(b1, _mm256_sub_pd(a1, mv));
            a2 = _mm256_andnot_pd(b2, _mm256_sub_pd(a2, mv));
            a3 = _mm256_andnot_pd(b3, _mm256_sub_pd(a3, mv));
        } else {
            a0 = _mm256_sub_pd(a0, mv);
            a1 = _mm256_sub_pd(a1, mv);
            a2 = _mm256_sub_pd(a2, mv);
            a3 = _mm256_sub_pd(a3, mv);
        }
        D0 = _mm256_add_pd(D0, a0);
        D1 = _mm256_add_pd(D1, a1);
        D2 = _mm256_add_pd(D2, a2);
        D3 = _mm256_add_pd(D3, a3);
        Q0 = _mm256_add_pd(Q0, _mm256_mul_pd(a0, a0)); /* no FMA: the same bits as SSE2 */
        Q1 = _mm256_add_pd(Q1, _mm256_mul_pd(a1, a1));
        Q2 = _mm256_add_pd(Q2, _mm256_mul_pd(a2, a2));
        Q3 = _mm256_add_pd(Q3, _mm256_mul_pd(a3, a3));
    }
    _mm256_storeu_pd(d, D0); _mm256_storeu_pd(d + 4, D1);
    _mm256_storeu_pd(d + 8, D2); _mm256_storeu_pd(d + 12, D3);
    _mm256_storeu_pd(q, Q0); _mm256_storeu_pd(q + 4, Q1);
    _mm256_storeu_pd(q + 8, Q2); _mm256_storeu_pd(q + 12, Q3);
    int64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, neg);
    *good += k + (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    return k;
}

TARGET_AVX2 static Py_ssize_t dev_f32_avx2(const float *x, Py_ssize_t n, const spec_t *s,
                                           int masked, double mean, double *d, double *q,
                                           Py_ssize_t *good) {
    devspec_t m;
    devspec_init(&m, s);
    return masked ? dev_f32_avx2_body(1, x, n, &m, mean, d, q, good)
                  : dev_f32_avx2_body(0, x, n, &m, mean, d, q, good);
}
#endif

/* a contiguous float32 row's whole steps of DCH elements, the widest code the CPU runs */
static Py_ssize_t dev_f32_simd(const float *x, Py_ssize_t n, const spec_t *s, int masked,
                               double mean, double *d, double *q, Py_ssize_t *good) {
#if HAVE_AVX2
    if (simd_level >= 2) return dev_f32_avx2(x, n, s, masked, mean, d, q, good);
#endif
    return dev_f32_sse2(x, n, s, masked, mean, d, q, good);
}
#endif

#define DEV_ROW(NAME, T, TEST, FV, LO, HI, FAST, EXACT)                                       \
    static void NAME(const char *p, Py_ssize_t n, Py_ssize_t stride, const spec_t *s,         \
                     int any_missing, double mean, devacc_t *acc) {                           \
        double d[DCH] = {0}, q[DCH] = {0};                                                    \
        Py_ssize_t good = 0, k = 0;                                                           \
        if (FAST) {                                                                           \
            k = dev_f32_simd((const float *)p, n, s, any_missing, mean, d, q, &good);         \
        } else if (!any_missing && stride == (Py_ssize_t)sizeof(T)) {                         \
            const T *x = (const T *)p;                                                        \
            for (; k + DCH <= n; k += DCH)                                                    \
                for (int j = 0; j < DCH; j++) {                                               \
                    double a = (double)x[k + j] - mean;                                       \
                    d[j] += a;                                                                \
                    q[j] += a * a;                                                            \
                }                                                                             \
            good = k;                                                                         \
        } else if (stride == (Py_ssize_t)sizeof(T) && s->nvalues <= 2 && (EXACT)) {           \
            /* branch-free: unused values never match (NaN for floats, a flag for integers) */ \
            const T *x = (const T *)p;                                                        \
            const int n0 = s->nvalues > 0, n1 = s->nvalues > 1, nanf = s->nan;                \
            const int hmin = s->has_min, hmax = s->has_max;                                   \
            const T v0 = (T)(FV(0)), v1 = (T)(FV(1)), lo = (T)(LO), hi = (T)(HI);              \
            for (; k + DCH <= n; k += DCH)                                                    \
                for (int j = 0; j < DCH; j++) {                                               \
                    T v = x[k + j];                                                           \
                    int bad = (n0 & (v == v0)) | (n1 & (v == v1)) | (nanf & (v != v)) |       \
                              (hmin & (v < lo)) | (hmax & (v > hi));                          \
                    double a = bad ? 0.0 : (double)v - mean;                                  \
                    d[j] += a;                                                                \
                    q[j] += a * a;                                                            \
                    good += !bad;                                                             \
                }                                                                             \
        }                                                                                     \
        for (; k < n; k++) { /* the tail, in chain k % DCH as above */                        \
            T v = *(const T *)(p + k * stride);                                               \
            if (any_missing && (TEST)) continue;                                              \
            double a = (double)v - mean;                                                      \
            d[k % DCH] += a;                                                                  \
            q[k % DCH] += a * a;                                                              \
            good++;                                                                           \
        }                                                                                     \
        for (int j = 0; j < DCH; j++) {                                                       \
            acc->d[j] += d[j];                                                                \
            acc->d2[j] += q[j];                                                               \
        }                                                                                     \
        acc->good += good;                                                                    \
    }

/* FV(j): missing value j (only read where it exists), LO/HI: the valid bounds (where set) */
#define FV_F(j) s->fval[j]
#define FV_I(j) s->ival[j]
#define FV_U(j) s->uval[j]
/* whether the spec's numbers are float32 values (as the kernel passes them), so comparing in
 * float32 (the SSE2 code) is comparing in double (the scalar code) */
static int f32_exact(const spec_t *s) {
    for (int j = 0; j < s->nvalues; j++)
        if ((double)(float)s->fval[j] != s->fval[j] && s->fval[j] == s->fval[j]) return 0;
    return (!s->has_min || (double)(float)s->fmin == s->fmin) &&
           (!s->has_max || (double)(float)s->fmax == s->fmax);
}

#if HAVE_SSE2
#define F32_FAST (stride == 4 && s->nvalues <= 2 && simd_level >= 1 && f32_exact(s))
#else
#define F32_FAST 0
#endif
DEV_ROW(dev_f32, float, bad_double((double)v, s), FV_F, s->fmin, s->fmax, F32_FAST, f32_exact(s))
DEV_ROW(dev_f64, double, bad_double(v, s), FV_F, s->fmin, s->fmax, 0, 1)
DEV_ROW(dev_i8, int8_t, bad_int(v, s), FV_I, s->imin, s->imax, 0, 1)
DEV_ROW(dev_i16, int16_t, bad_int(v, s), FV_I, s->imin, s->imax, 0, 1)
DEV_ROW(dev_i32, int32_t, bad_int(v, s), FV_I, s->imin, s->imax, 0, 1)
DEV_ROW(dev_i64, int64_t, bad_int(v, s), FV_I, s->imin, s->imax, 0, 1)
DEV_ROW(dev_u8, uint8_t, bad_uint(v, s), FV_U, s->umin, s->umax, 0, 1)
DEV_ROW(dev_u16, uint16_t, bad_uint(v, s), FV_U, s->umin, s->umax, 0, 1)
DEV_ROW(dev_u32, uint32_t, bad_uint(v, s), FV_U, s->umin, s->umax, 0, 1)
DEV_ROW(dev_u64, uint64_t, bad_uint(v, s), FV_U, s->umin, s->umax, 0, 1)

typedef void (*dev_row_t)(const char *, Py_ssize_t, Py_ssize_t, const spec_t *, int, double,
                          devacc_t *);

static dev_row_t dev_row_for(const type_t *t) {
    Py_ssize_t w = t->itemsize;
    switch (t->kind) {
    case K_F32: return dev_f32;
    case K_F64: return dev_f64;
    case K_INT: return w == 1 ? dev_i8 : w == 2 ? dev_i16 : w == 4 ? dev_i32 : dev_i64;
    case K_UINT: return w == 1 ? dev_u8 : w == 2 ? dev_u16 : w == 4 ? dev_u32 : dev_u64;
    }
    return NULL;
}

/* the deviations from `mean` of every row of an nd-dimensional array (nd >= 1) into acc */
static ALWAYS_INLINE void dev_rows(const char *base, int nd, const Py_ssize_t *shape,
                                    const Py_ssize_t *strides, dev_row_t row, const spec_t *s,
                                    int any, double mean, devacc_t *acc) {
    Py_ssize_t idx[MAX_DIMS];
    memset(idx, 0, (size_t)(nd - 1) * sizeof(idx[0])); /* the odometer reads no more */
    Py_ssize_t n = shape[nd - 1], stride = strides[nd - 1];
    do row(row_at(base, idx, nd - 1, strides), n, stride, s, any, mean, acc);
    while (odometer_next(idx, nd - 1, shape));
}

/* acc's DCH chains added pairwise, in a fixed order, into chain 0 */
static void fold_chains(devacc_t *acc) {
    for (int w = DCH / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) {
            acc->d[j] += acc->d[j + w];
            acc->d2[j] += acc->d2[j + w];
        }
}

static PyObject *fused_deviations(PyObject *self, PyObject *args) {
    PyObject *obj, *values, *vmin, *vmax;
    double mean;
    int nan;
    if (!PyArg_ParseTuple(args, "OdOpOO", &obj, &mean, &values, &nan, &vmin, &vmax))
        return NULL;
    Py_buffer view;
    type_t t;
    if (get_array(obj, &view, &t) < 0) return NULL;
    PyObject *result = NULL;
    spec_t s;
    if (parse_spec(&t, values, nan, vmin, vmax, &s) < 0) goto done;
    Py_ssize_t shape[MAX_DIMS], strides[MAX_DIMS], total = 1;
    for (int d = 0; d < view.ndim; d++) total *= view.shape[d];
    int nd = simplify(&view, 0, view.ndim, shape, strides);
    devacc_t acc;
    memset(&acc, 0, sizeof(acc));
    dev_row_t row = dev_row_for(&t);
    int any = s.nvalues > 0 || s.nan || s.has_min || s.has_max;
    if (total > 0) {
        Py_BEGIN_ALLOW_THREADS
        dev_rows((const char *)view.buf, nd, shape, strides, row, &s, any, mean, &acc);
        Py_END_ALLOW_THREADS
    }
    fold_chains(&acc);
    result = Py_BuildValue("(ddn)", acc.d[0], acc.d2[0], acc.good);
done:
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------- moments of many cells (weighted moments) */

/* Unweighted moments of every cell of an array whose first `ncell` axes are kept and whose other
 * axes are reduced: per cell the masked sum and count (as `reduce`), then the deviations from
 * their mean (as `deviations`) while the cell is still in cache, corrected by their own sum (the
 * corrected two-pass algorithm). out: (cells, 3) doubles (n, mean, m2); counts: (cells,) int64.
 * The kernel's separable weighted moments merge these cells with their weights. */
static PyObject *fused_moments_cells(PyObject *self, PyObject *args) {
    PyObject *obj, *outobj, *cntobj, *values, *vmin, *vmax;
    int ncell, nan;
    if (!PyArg_ParseTuple(args, "OiOOOpOO", &obj, &ncell, &outobj, &cntobj, &values, &nan, &vmin,
                          &vmax))
        return NULL;
    Py_buffer view, outv, cntv;
    type_t t;
    if (get_array(obj, &view, &t) < 0) return NULL;
    PyObject *result = NULL;
    int have_out = 0, have_cnt = 0;
    if (PyObject_GetBuffer(outobj, &outv, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto done;
    have_out = 1;
    if (PyObject_GetBuffer(cntobj, &cntv, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto done;
    have_cnt = 1;
    spec_t s;
    if (parse_spec(&t, values, nan, vmin, vmax, &s) < 0) goto done;
    if (ncell < 0 || ncell >= view.ndim) {
        PyErr_SetString(PyExc_ValueError, "ncell must leave at least one reduced axis");
        goto done;
    }
    Py_ssize_t cells = 1, inner = 1;
    for (int d = 0; d < ncell; d++) cells *= view.shape[d];
    for (int d = ncell; d < view.ndim; d++) inner *= view.shape[d];
    if (outv.len != cells * 3 * (Py_ssize_t)sizeof(double) ||
        cntv.len != cells * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "out must hold 3 doubles and counts 1 int64 per cell");
        goto done;
    }
    double *out = (double *)outv.buf;
    int64_t *cnt = (int64_t *)cntv.buf;
    const int nr = view.ndim - ncell;
    const Py_ssize_t *rshape = view.shape + ncell, *rstrides = view.strides + ncell;
    dev_row_t dev = dev_row_for(&t);
    const int any = s.nvalues > 0 || s.nan || s.has_min || s.has_max;
    if (cells > 0) {
        Py_BEGIN_ALLOW_THREADS
        Py_ssize_t idx[MAX_DIMS];
        memset(idx, 0, sizeof(idx));
        for (Py_ssize_t c = 0; c < cells; c++) {
            const char *base = row_at((const char *)view.buf, idx, ncell, view.strides);
            double n = 0.0, mean = 0.0, m2 = 0.0;
            Py_ssize_t good = 0;
            if (inner > 0) {
                acc_t acc = {0.0, 0.0, 0, 0, 0};
                reduce_rows(base, nr, rshape, rstrides, &t, &s, 1, &acc);
                good = acc.good;
                if (good > 0) {
                    double total = t.kind == K_INT ? (double)(int64_t)acc.isum
                                   : t.kind == K_UINT ? (double)acc.isum
                                                      : acc.total + acc.block;
                    n = (double)good;
                    mean = total / n;
                    devacc_t da;
                    memset(&da, 0, sizeof(da));
                    dev_rows(base, nr, rshape, rstrides, dev, &s, any, mean, &da);
                    fold_chains(&da); /* every chain, pairwise */
                    double sd = da.d[0];
                    double sq = da.d2[0];
                    double shift = sd / n;
                    mean += shift;
                    m2 = sq - sd * shift;
                    if (!(m2 > 0.0)) m2 = m2 != m2 ? m2 : 0.0; /* keep NaN, clip negatives */
                }
            }
            out[3 * c] = n;
            out[3 * c + 1] = mean;
            out[3 * c + 2] = m2;
            cnt[c] = (int64_t)good;
            odometer_next(idx, ncell, view.shape);
        }
        Py_END_ALLOW_THREADS
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    if (have_cnt) PyBuffer_Release(&cntv);
    if (have_out) PyBuffer_Release(&outv);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *fused_simd(PyObject *self, PyObject *args) {
    int level = -1;
    if (!PyArg_ParseTuple(args, "|i", &level)) return NULL;
    int was = simd_level;
    if (level >= 0) {
        int best = HAVE_AVX2 ? 2 : HAVE_SSE2 ? 1 : 0;
#if HAVE_AVX2
        if (!__builtin_cpu_supports("avx2")) best = 1;
#endif
        simd_level = level < best ? level : best;
    }
    return PyLong_FromLong(was);
}

static PyMethodDef methods[] = {
    {"simd", fused_simd, METH_VARARGS,
     "simd([level]) -> level: the vector code in use (0 portable, 1 SSE2, 2 AVX2); with a level, "
     "use at most that (for tests: every level adds in the same order)."},
    {"reduce", fused_reduce, METH_VARARGS,
     "reduce(array, want_sum, values, nan, vmin, vmax) -> (sum, count): one-pass masked sum "
     "and count of the elements that are not missing."},
    {"reduce_leading", fused_reduce_leading, METH_VARARGS,
     "reduce_leading(array, nreduced, out, miss, want_sum, values, nan, vmin, vmax) -> missing: "
     "add the elements that are not missing along the first nreduced axes into out (C order, "
     "the data's float type or 8-byte integers), count the missing ones into miss (int64)."},
    {"deviations", fused_deviations, METH_VARARGS,
     "deviations(array, mean, values, nan, vmin, vmax) -> (sum_d, sum_d2, count): sums of "
     "x - mean and (x - mean)**2 in double over the elements that are not missing."},
    {"moments_cells", fused_moments_cells, METH_VARARGS,
     "moments_cells(array, ncell, out, counts, values, nan, vmin, vmax): unweighted (n, mean, "
     "m2) of each cell of the first ncell axes over the others into out (cells x 3 doubles), "
     "the elements present into counts (int64)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused",
                                    "One-pass masked sums and counts (see activestorage.fused).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fused(void) {
#if HAVE_AVX2
    __builtin_cpu_init();
    simd_level = __builtin_cpu_supports("avx2") ? 2 : 1;
#elif HAVE_SSE2
    simd_level = 1;
#endif
    return PyModule_Create(&module);
}
