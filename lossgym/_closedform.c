/* The closed-form modulated cross-entropy of lossgym.losses._FusedModulatedCE, for
 * contiguous CPU float32 / float64 logits, in one call.
 *
 * On small batches (the default task trains on 128 x 10 logits) the cost of the loss is the
 * number of kernels it launches, each a few microseconds, not the arithmetic: this computes the
 * loss, its gradient with respect to the logits and the plain cross-entropy of the logits in a
 * single pass over each row. The Python side (_CompiledModulatedCE in lossgym/losses.py) passes
 * the raw addresses of tensors it checked (device, dtype, contiguity, sizes), so this file needs
 * neither the torch nor the numpy headers.
 *
 * Per row i, with target t, scale s, class shift h_c, target margin u_t and weight w (the
 * target class's, or the sample's; times unit: 1/n for a mean):
 *
 *   z'_c   = s z_c + h_c - [c == t] u_t
 *   logp_c = z'_c - logsumexp(z')          p_c = exp(logp_c),  q = 1 - p_t = sum_{c != t} p_c
 *   b      = -((1 - ls) logp_t + ls mean_c logp_c)
 *   f      = max(q, eps)^gamma   (1 for gamma = 0),   d = max(q, eps)^(gamma - 1)
 *   loss_i = w (f b + poly q)
 *   dloss_i/dz_c = s w [(f + p_t (gamma b d + poly)) (p_c - [c == t]) + ls f ([c == t] - 1/C)]
 *
 * Sums and products are in double precision; the exponentials, logarithms and powers are taken
 * in the logits' precision (torch's are float32 for float32 logits too): for float32 the
 * exponentials are the inline, vectorised exp_nonpositive below, the logarithms and powers
 * libm's logf and powf. Values are stored in the logits' type.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

INLINE double load(const void *base, Py_ssize_t i, int is_double) {
    return is_double ? ((const double *)base)[i] : (double)((const float *)base)[i];
}

INLINE void store(void *base, Py_ssize_t i, double v, int is_double) {
    if (is_double)
        ((double *)base)[i] = v;
    else
        ((float *)base)[i] = (float)v;
}

/* e^x in float32 for x <= 0 (the kernel exponentiates values minus their row's maximum),
 * inline and branch-free so that loops of it vectorise, in the manner of Cephes' expf:
 * x = n ln 2 + r with |r| <= ln(2)/2, e^r by a polynomial of degree 7, 2^n from the exponent
 * bits. Within 1 ulp of e^x on [-87, 0] (tests/test_native.py); 0 below -87 (e^-87 is below
 * 2^-125: nothing beside a softmax term of at least 1) and for NaN, so rows with a non-finite
 * value take libm's exp instead. About a quarter of the cost of a libm call. */
INLINE float exp_nonpositive(float x) {
    const float lowest = -87.0f;
    const float xc = x >= lowest ? x : lowest; /* NaN and below-range values: clamped */
    const float fx = xc * 1.44269504088896341f + 0.5f; /* in [-125.02, 0.5] */
    const int32_t truncated = (int32_t)fx;                /* floor without SSE4.1's roundss */
    const float n = (float)(truncated - ((float)truncated > fx));
    const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f; /* Cody-Waite: ln 2 in two */
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23; /* n in [-126, 0]: a normal power of two */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    const float e = y * two_n;
    return x >= lowest ? e : 0.0f;
}

/* x[i] = e^x[i] for x[i] <= 0: a loop the compiler vectorises (four or eight at a time). */
static void exp_nonpositive_array(float *restrict x, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        x[i] = exp_nonpositive(x[i]);
}

/* The logarithm in the logits' precision. */
INLINE double log_of(double x, int is_double) {
    return is_double ? log(x) : (double)logf((float)x);
}

INLINE double pow_of(double x, double y, int is_double) {
    return is_double ? pow(x, y) : (double)powf((float)x, (float)y);
}

/* What stays fixed while the loss parameters do (a period of training). The rows are M
 * members' blocks of n / M rows (logits [M, B, C]); each member may have its own scalars
 * (member_params: M rows of scale, gamma, label smoothing, poly epsilon) and class terms
 * (class_stride C: rows of [M, C] arrays; 0: one [C] array for all). */
typedef struct {
    int is_double;
    Py_ssize_t C;
    const void *weights; /* per class */
    const void *shift;   /* per class */
    const void *margins; /* per class */
    double scale, gamma, ls, poly, eps;
    int reduction; /* 0 none (per-sample values), 1 mean, 2 sum */
    Py_ssize_t members, class_stride;
    const double *member_params;
} Plan;

/* Returns -1 - row for a target out of [0, C), else 0. Inlined twice, for a constant dbl. */
INLINE Py_ssize_t run_typed(const Plan *P, Py_ssize_t n, const void *logits,
                            const int64_t *targets, void *grad, void *out, int want_ce,
                            double *zbuf, double *ce_sum, const int dbl) {
    const Py_ssize_t C = P->C, rows_per_member = n / P->members;
    float *const fbuf = (float *)(zbuf + C); /* the caller's buffer: C doubles, then C floats */
    const void *const shift = P->shift, *const margins = P->margins;
    const double inv_c = 1.0 / (double)C, unit = P->reduction == 1 ? 1.0 / (double)n : 1.0;
    double total = 0.0, ce_total = 0.0;
    for (Py_ssize_t m = 0; m < P->members; m++) {
        const double *const mp = P->member_params ? P->member_params + 4 * m : NULL;
        const double scale = mp ? mp[0] : P->scale, gamma = mp ? mp[1] : P->gamma;
        const double ls = mp ? mp[2] : P->ls, poly = mp ? mp[3] : P->poly;
        const Py_ssize_t k = m * P->class_stride; /* this member's class terms */
        const int plain_logits = scale == 1.0 && !shift && !margins;
        for (Py_ssize_t i = m * rows_per_member; i < (m + 1) * rows_per_member; i++) {
            const Py_ssize_t row = i * C;
            const int64_t t = targets[i];
            if (t < 0 || t >= C)
                return -1 - i;
            double zmax = -INFINITY, raw_max = -INFINITY, zsum = 0.0;
            for (Py_ssize_t c = 0; c < C; c++) {
                const double raw = load(logits, row + c, dbl);
                double z = scale * raw;
                if (shift)
                    z += load(shift, k + c, dbl);
                if (margins && c == t)
                    z -= load(margins, k + t, dbl);
                zbuf[c] = z;
                zsum += z;
                if (z > zmax)
                    zmax = z;
                if (raw > raw_max)
                    raw_max = raw;
            }
            const double z_t = zbuf[t];
            double others = 0.0; /* the sum over the classes other than t, for q */
            /* NaN, or an infinite logit: libm's exponentials, which propagate them as torch does */
            const int finite = zmax > -INFINITY && zmax < INFINITY && zsum == zsum;
            if (dbl) {
                for (Py_ssize_t c = 0; c < C; c++)
                    zbuf[c] = exp(zbuf[c] - zmax); /* unnormalised p_c */
            } else if (!finite) {
                for (Py_ssize_t c = 0; c < C; c++)
                    zbuf[c] = expf((float)(zbuf[c] - zmax));
            } else {
                for (Py_ssize_t c = 0; c < C; c++)
                    fbuf[c] = (float)(zbuf[c] - zmax);
                exp_nonpositive_array(fbuf, C);
                for (Py_ssize_t c = 0; c < C; c++)
                    zbuf[c] = fbuf[c];
            }
            for (Py_ssize_t c = 0; c < C; c++)
                others += c == t ? 0.0 : zbuf[c];
            const double sumexp = others + zbuf[t];
            const double lse = zmax + log_of(sumexp, dbl);
            const double logp_t = z_t - lse;
            /* 1 - p_t as the other classes' share: accurate where p_t is close to 1 */
            const double q = others / sumexp;
            const double p_t = zbuf[t] / sumexp;
            const double base =
                ls == 0.0 ? -logp_t : -((1.0 - ls) * logp_t + ls * (zsum * inv_c - lse));
            double f = 1.0, d = 0.0;
            if (gamma != 0.0) {
                const double qf = q > P->eps ? q : P->eps;
                d = pow_of(qf, gamma - 1.0, dbl);
                f = d * qf;
            }
            double w = unit;
            if (P->weights)
                w *= load(P->weights, k + t, dbl);
            const double loss = w * (f * base + poly * q);
            total += loss;
            if (P->reduction == 0)
                store(out, i, loss, dbl);
            if (want_ce) {
                if (plain_logits) {
                    ce_total -= logp_t;
                } else {
                    double raw_sum = 0.0;
                    if (dbl || !finite || !(raw_max > -INFINITY && raw_max < INFINITY)) {
                        for (Py_ssize_t c = 0; c < C; c++)
                            raw_sum += exp(load(logits, row + c, dbl) - raw_max);
                    } else {
                        for (Py_ssize_t c = 0; c < C; c++)
                            fbuf[c] = (float)(load(logits, row + c, dbl) - raw_max);
                        exp_nonpositive_array(fbuf, C);
                        for (Py_ssize_t c = 0; c < C; c++)
                            raw_sum += fbuf[c];
                    }
                    ce_total += raw_max + log_of(raw_sum, dbl) - load(logits, row + t, dbl);
                }
            }
            if (grad) {
                const double coef = scale * w * (f + p_t * (gamma * base * d + poly));
                const double smooth = scale * w * ls * f;
                const double norm = coef / sumexp, flat = smooth * inv_c;
                for (Py_ssize_t c = 0; c < C; c++) {
                    double g = norm * zbuf[c] - flat;
                    if (c == t)
                        g += smooth - coef;
                    store(grad, row + c, g, dbl);
                }
            }
        }
    }
    if (P->reduction != 0)
        store(out, 0, total, dbl);
    *ce_sum = ce_total;
    return 0;
}

static Py_ssize_t run(const Plan *P, Py_ssize_t n, const void *logits, const int64_t *targets,
                      void *grad, void *out, int want_ce, double *zbuf, double *ce_sum) {
    return P->is_double ? run_typed(P, n, logits, targets, grad, out, want_ce, zbuf, ce_sum, 1)
                        : run_typed(P, n, logits, targets, grad, out, want_ce, zbuf, ce_sum, 0);
}

/* A buffer the caller passes as (address, number of values); 0 values for none. */
typedef struct {
    Py_ssize_t address, len;
} Buffer;

static int check_buffer(const char *name, Buffer b, Py_ssize_t expected, int optional) {
    if ((optional && b.address == 0 && b.len == 0) || (b.address != 0 && b.len == expected))
        return 1;
    PyErr_Format(PyExc_ValueError,
                 "modulated_ce: the %s buffer holds %zd values at address %zd, but the plan "
                 "needs %zd%s", name, b.len, b.address, expected, optional ? " (or none)" : "");
    return 0;
}

static PyObject *modulated_ce(PyObject *self, PyObject *args) {
    PyObject *plan;
    Plan P;
    Py_ssize_t n;
    Buffer logits, targets, grad, out, weights, shift, margins, member_params;
    int want_ce;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!n(nn)(nn)(nn)(nn)p", &PyTuple_Type, &plan, &n,
                          &logits.address, &logits.len, &targets.address, &targets.len,
                          &grad.address, &grad.len, &out.address, &out.len, &want_ce))
        return NULL;
    if (!PyArg_ParseTuple(plan, "pn(nn)(nn)(nn)dddddinn(nn)", &P.is_double, &P.C,
                          &weights.address, &weights.len, &shift.address, &shift.len,
                          &margins.address, &margins.len, &P.scale, &P.gamma, &P.ls, &P.poly,
                          &P.eps, &P.reduction, &P.members, &P.class_stride,
                          &member_params.address, &member_params.len))
        return NULL;
    if (n < 1 || P.C < 1 || P.reduction < 0 || P.reduction > 2 || P.members < 1
        || n % P.members != 0 || (P.class_stride != 0 && P.class_stride != P.C)) {
        PyErr_Format(PyExc_ValueError, "modulated_ce: bad sizes (n=%zd, C=%zd, members=%zd)",
                     n, P.C, P.members);
        return NULL;
    }
    const Py_ssize_t class_len = P.class_stride ? P.members * P.C : P.C;
    if (!check_buffer("logits", logits, n * P.C, 0) || !check_buffer("targets", targets, n, 0)
        || !check_buffer("grad", grad, n * P.C, 1)
        || !check_buffer("out", out, P.reduction == 0 ? n : 1, 0)
        || !check_buffer("weights", weights, class_len, 1)
        || !check_buffer("shift", shift, class_len, 1)
        || !check_buffer("margins", margins, class_len, 1)
        || !check_buffer("member_params", member_params, 4 * P.members, 1))
        return NULL;
    P.member_params = (const double *)member_params.address;
    P.weights = (const void *)weights.address;
    P.shift = (const void *)shift.address;
    P.margins = (const void *)margins.address;
    double stack[96]; /* room for C <= 64: C doubles, then C floats */
    double *zbuf = P.C <= 64 ? stack
                             : (double *)malloc((size_t)P.C * (sizeof(double) + sizeof(float)));
    if (!zbuf)
        return PyErr_NoMemory();
    double ce_sum = 0.0;
    Py_ssize_t status;
    Py_BEGIN_ALLOW_THREADS
    status = run(&P, n, (const void *)logits.address, (const int64_t *)targets.address,
                 (void *)grad.address, (void *)out.address, want_ce, zbuf, &ce_sum);
    Py_END_ALLOW_THREADS
    if (zbuf != stack)
        free(zbuf);
    if (status < 0) {
        const Py_ssize_t row = -1 - status;
        PyErr_Format(PyExc_IndexError, "Target %lld is out of bounds [0, %zd) (sample %zd)",
                     (long long)((const int64_t *)targets.address)[row], P.C, row);
        return NULL;
    }
    if (!want_ce)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(ce_sum / (double)n);
}

/* Sum of squares of n floats: 32 float lanes (independent vector additions) per block of 1024,
 * the blocks added in double. */
#define LANES 32
static double sum_squares_float(const float *x, Py_ssize_t n) {
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += 1024) {
        const Py_ssize_t stop = start + 1024 < n ? start + 1024 : n;
        float lane[LANES] = {0};
        Py_ssize_t i = start;
        for (; i + LANES <= stop; i += LANES)
            for (int k = 0; k < LANES; k++)
                lane[k] += x[i + k] * x[i + k];
        double block = 0.0;
        for (int k = 0; k < LANES; k++)
            block += lane[k];
        for (; i < stop; i++)
            block += (double)x[i] * x[i];
        total += block;
    }
    return total;
}

static double sum_squares_double(const double *x, Py_ssize_t n) {
    double lane[4] = {0, 0, 0, 0};
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++)
            lane[k] += x[i + k] * x[i + k];
    double total = lane[0] + lane[1] + lane[2] + lane[3];
    for (; i < n; i++)
        total += x[i] * x[i];
    return total;
}

static PyObject *sum_squares(PyObject *self, PyObject *args) {
    PyObject *addresses, *counts;
    int is_double;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!p", &PyList_Type, &addresses, &PyList_Type, &counts,
                          &is_double))
        return NULL;
    const Py_ssize_t k = PyList_GET_SIZE(addresses);
    if (PyList_GET_SIZE(counts) != k) {
        PyErr_SetString(PyExc_ValueError, "sum_squares: one count per address");
        return NULL;
    }
    double total = 0.0;
    for (Py_ssize_t j = 0; j < k; j++) {
        const Py_ssize_t address = PyLong_AsSsize_t(PyList_GET_ITEM(addresses, j));
        const Py_ssize_t n = PyLong_AsSsize_t(PyList_GET_ITEM(counts, j));
        if (PyErr_Occurred())
            return NULL;
        if (n < 0 || (n > 0 && !address)) {
            PyErr_Format(PyExc_ValueError, "sum_squares: bad tensor %zd (%zd values)", j, n);
            return NULL;
        }
        total += is_double ? sum_squares_double((const double *)address, n)
                           : sum_squares_float((const float *)address, n);
    }
    return PyFloat_FromDouble(total);
}

static PyObject *exp_nonpositive_inplace(PyObject *self, PyObject *args) {
    Py_ssize_t address, n;
    (void)self;
    if (!PyArg_ParseTuple(args, "nn", &address, &n))
        return NULL;
    if (n < 0 || (n > 0 && !address)) {
        PyErr_Format(PyExc_ValueError, "exp_nonpositive: bad array (%zd values)", n);
        return NULL;
    }
    exp_nonpositive_array((float *)address, n);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"exp_nonpositive", exp_nonpositive_inplace, METH_VARARGS,
     "exp_nonpositive(address, n): the kernel's float32 e^x in place on n contiguous floats "
     "<= 0 (for tests)."},
    {"sum_squares", sum_squares, METH_VARARGS,
     "sum_squares(addresses, counts, is_double) -> the sum of the squares of every value of "
     "the contiguous arrays at these addresses (lists of integers), all float32 or all "
     "float64."},
    {"modulated_ce", modulated_ce, METH_VARARGS,
     "modulated_ce(plan, n, logits, targets, grad, out, want_ce) -> mean plain cross-entropy "
     "or None. plan = (is_double, C, weights, shift, margins, scale, gamma, label_smoothing, "
     "poly_epsilon, eps, reduction: 0 none, 1 mean, 2 sum, members, class_stride, "
     "member_params); every buffer is an (address, number of values) pair, (0, 0) for none, "
     "and its size is checked against n, C and members; out holds n values for 'none', "
     "else 1. See lossgym/losses/_kernel.py (NativePlan)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "lossgym._closedform",
    "The closed-form modulated cross-entropy in one call, and gradient norms (see "
    "lossgym/_native.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__closedform(void) { return PyModule_Create(&module); }
