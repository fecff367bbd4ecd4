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
 * same bits. The GIL is released while the loop runs.
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

#if defined(_MSC_VER)
#define ALWAYS_INLINE __forceinline
#else
#define ALWAYS_INLINE inline __attribute__((always_inline))
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

/* one specialised copy per (mode, want_sum) */
static void row_float_sse2(const char *p, Py_ssize_t n, int f32, const vspec_t *m,
                           const spec_t *s, int want_sum, acc_t *acc) {
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
    for (;;) {
        const char *p = base;
        for (int d = 0; d < ndim - 1; d++) p += idx[d] * strides[d];
        if (t->kind == K_F32 || t->kind == K_F64) {
#if HAVE_SSE2
            if (stride == t->itemsize)
                row_float_sse2(p, n, t->f32, &m, s, want_sum, acc);
            else
#endif
                row_float_scalar(p, n, stride, t->f32, s, want_sum, acc);
        } else {
            t->int_row(p, n, stride, s, want_sum, acc);
        }
        int d = ndim - 2;
        while (d >= 0 && ++idx[d] == shape[d]) idx[d--] = 0;
        if (d < 0) break;
    }
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

static PyObject *fused_reduce(PyObject *self, PyObject *args) {
    PyObject *obj, *values, *vmin, *vmax;
    int want_sum, nan;
    if (!PyArg_ParseTuple(args, "OpOpOO", &obj, &want_sum, &values, &nan, &vmin, &vmax))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_RECORDS_RO) < 0) return NULL;
    PyObject *result = NULL, *seq = NULL;
    type_t t;
    spec_t s;
    memset(&s, 0, sizeof(s));
    if (view.format == NULL || parse_type(view.format, view.itemsize, &t) < 0) {
        PyErr_Format(PyExc_TypeError, "unsupported element format %s",
                     view.format ? view.format : "(none)");
        goto done;
    }
    if (view.ndim > MAX_DIMS) {
        PyErr_SetString(PyExc_TypeError, "too many dimensions");
        goto done;
    }
    seq = PySequence_Fast(values, "values must be a sequence");
    if (seq == NULL) goto done;
    s.nvalues = (int)PySequence_Fast_GET_SIZE(seq);
    if (s.nvalues > MAX_VALUES) {
        PyErr_SetString(PyExc_TypeError, "too many missing values");
        goto done;
    }
    for (int j = 0; j < s.nvalues; j++)
        if (spec_number(PySequence_Fast_GET_ITEM(seq, j), t.kind, &s.fval[j], &s.ival[j],
                        &s.uval[j]) < 0)
            goto done;
    s.nan = nan && (t.kind == K_F32 || t.kind == K_F64);
    s.has_min = vmin != Py_None;
    s.has_max = vmax != Py_None;
    if ((s.has_min && spec_number(vmin, t.kind, &s.fmin, &s.imin, &s.umin) < 0) ||
        (s.has_max && spec_number(vmax, t.kind, &s.fmax, &s.imax, &s.umax) < 0))
        goto done;

    /* drop length-1 axes and merge axes that are contiguous with the next one */
    Py_ssize_t shape[MAX_DIMS], strides[MAX_DIMS], total = 1;
    int nd = 0;
    for (int d = 0; d < view.ndim; d++) {
        Py_ssize_t len = view.shape[d];
        total *= len;
        if (len == 1) continue;
        shape[nd] = len;
        strides[nd] = view.strides[d]; /* PyBUF_RECORDS_RO: strides are always given */
        nd++;
    }
    if (nd == 0) { /* a single element */
        shape[0] = 1;
        strides[0] = view.itemsize;
        nd = 1;
    }
    int m = 0;
    for (int d = 1; d < nd; d++) {
        if (strides[m] == strides[d] * shape[d]) {
            shape[m] *= shape[d];
            strides[m] = strides[d];
        } else {
            m++;
            shape[m] = shape[d];
            strides[m] = strides[d];
        }
    }
    nd = m + 1;

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
    Py_XDECREF(seq);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"reduce", fused_reduce, METH_VARARGS,
     "reduce(array, want_sum, values, nan, vmin, vmax) -> (sum, count): one-pass masked sum "
     "and count of the elements that are not missing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused",
                                    "One-pass masked sums and counts (see activestorage.fused).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
