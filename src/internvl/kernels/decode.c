/* Decode-step matrix-vector products for the CPU: y (M, n) = x (M, k) W^T * scale + bias, M small.
 *
 * A decode step reads every weight once and does two flops per weight per activation row, so it is bound by
 * memory bandwidth. The kernel streams a block of R weight rows once, converts them to fp32 in registers and
 * multiplies them with all M activation rows (M <= 8 per pass), accumulating in fp32. Weights stay in the
 * format the model holds them in: fp32, bf16, int8 with one fp32 scale per row, or int4 in groups of 32 with
 * one bf16 scale per group.
 *
 * Written once with GCC/Clang vector extensions (vectors as wide as the build's registers, see kernels.h);
 * build.py compiles it per instruction set (AVX-512, AVX2+FMA, or the compiler's baseline), so the same source
 * serves every CPU. OpenMP splits the weight rows between threads; build.py links against the OpenMP runtime
 * torch has already loaded, so both share one thread pool.
 */
#include "kernels.h"

/* VL weights from element `off` of an fp32, bf16 or int8 matrix, as floats. */
static inline __attribute__((always_inline)) vf load_w(const Mat *W, const int fmt, size_t off) {
    if (fmt == W_F32) return vload((const float *)W->w + off);
    if (fmt == W_BF16) return load_bf16((const uint16_t *)W->w + off);
    return load_i8((const int8_t *)W->w + off);
}

static inline float weight_at(const Mat *W, size_t row, int kk) {
    switch (W->fmt) {
    case W_F32: return ((const float *)W->w)[row * W->k + kk];
    case W_BF16: return bf16_to_f32(((const uint16_t *)W->w)[row * W->k + kk]);
    default: return (float)((const int8_t *)W->w)[row * W->k + kk];
    }
}

/* ---------------------------------------------------------------- one block of R weight rows
 * out[r][m] = dot(W[n0 + r], x[m]) for r < R, m < M: the R rows are read once for all M activation rows.
 * Inlined with constant (M, R) so that the accumulators live in registers. */

static inline __attribute__((always_inline)) void block_impl(const Mat *W, const int fmt, int n0, const void *xv,
                                                            int ldx, const int M, const int R,
                                                            float out[MAX_R][MAX_M]) {
    const float *x = (const float *)xv;
    const int K = W->k;
    vf acc[MAX_R][MAX_M];
    for (int r = 0; r < R; r++)
        for (int m = 0; m < M; m++) acc[r][m] = (vf){0};
    int k = 0;
    if (fmt == W_I4) {
        const uint8_t *w = (const uint8_t *)W->w;
        const int G = K / I4_GROUP;
        for (int g = 0; g < G; g++, k += I4_GROUP)
            for (int c = 0; c < I4_GROUP / 2; c += VL) { /* one pass with 16 lanes, more with fewer */
                vf lo[MAX_R], hi[MAX_R];
                for (int r = 0; r < R; r++) {
                    float s = bf16_to_f32(W->gscale[(size_t)(n0 + r) * G + g]);
                    load_i4(w + (size_t)(n0 + r) * (K / 2) + g * 16 + c, &lo[r], &hi[r]);
                    lo[r] = (lo[r] - 8.f) * s;
                    hi[r] = (hi[r] - 8.f) * s;
                }
                for (int m = 0; m < M; m++) {
                    const float *xm = x + (size_t)m * ldx + k + c;
                    vf xl = vload(xm), xh = vload(xm + I4_GROUP / 2);
                    for (int r = 0; r < R; r++) acc[r][m] += lo[r] * xl + hi[r] * xh;
                }
            }
    } else if (M == 1 && R == 1) { /* one row, one sequential stream; four accumulators hide the FMA latency */
        const size_t row = (size_t)n0 * K;
        vf a1 = {0}, a2 = {0}, a3 = {0};
        for (; k + 4 * VL <= K; k += 4 * VL) {
            acc[0][0] += load_w(W, fmt, row + k) * vload(x + k);
            a1 += load_w(W, fmt, row + k + VL) * vload(x + k + VL);
            a2 += load_w(W, fmt, row + k + 2 * VL) * vload(x + k + 2 * VL);
            a3 += load_w(W, fmt, row + k + 3 * VL) * vload(x + k + 3 * VL);
        }
        for (; k + VL <= K; k += VL) acc[0][0] += load_w(W, fmt, row + k) * vload(x + k);
        acc[0][0] += (a1 + a2) + a3;
    } else {
        for (; k + VL <= K; k += VL) {
            vf wv[MAX_R];
            for (int r = 0; r < R; r++) wv[r] = load_w(W, fmt, (size_t)(n0 + r) * K + k);
            for (int m = 0; m < M; m++) {
                vf xv = vload(x + (size_t)m * ldx + k);
                for (int r = 0; r < R; r++) acc[r][m] += wv[r] * xv;
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int m = 0; m < M; m++) {
            float s = hsum(acc[r][m]);
            for (int kk = k; kk < K; kk++) s += weight_at(W, (size_t)(n0 + r), kk) * x[(size_t)m * ldx + kk];
            out[r][m] = s;
        }
}

#ifdef DOT_BF16
/* bf16 weights times bf16 activations with AVX512-BF16's dot product (vdpbf16ps: 32 products a vector, each
 * exact in fp32, summed in pairs into 16 fp32 accumulators): no conversions and twice the multiplies of an fp32
 * FMA, which makes several activation rows compute-bound no longer. The tail is a masked (zero-filled) load. */
static inline __m512bh load_bh(const uint16_t *p) { return (__m512bh)_mm512_loadu_si512(p); }
static inline __m512bh load_bh_tail(const uint16_t *p, __mmask32 mask) {
    return (__m512bh)_mm512_maskz_loadu_epi16(mask, p);
}

static inline __attribute__((always_inline)) void block_dot_impl(const Mat *W, const int fmt, int n0, const void *xv,
                                                                int ldx, const int M, const int R,
                                                                float out[MAX_R][MAX_M]) {
    (void)fmt;
    const uint16_t *x = (const uint16_t *)xv, *w = (const uint16_t *)W->w;
    const int K = W->k;
    __m512 acc[MAX_R][MAX_M];
    for (int r = 0; r < R; r++)
        for (int m = 0; m < M; m++) acc[r][m] = _mm512_setzero_ps();
    int k = 0;
    if (M == 1 && R == 1) { /* one row, one stream, four accumulators */
        const uint16_t *wr = w + (size_t)n0 * K;
        __m512 a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        for (; k + 128 <= K; k += 128) {
            acc[0][0] = _mm512_dpbf16_ps(acc[0][0], load_bh(wr + k), load_bh(x + k));
            a1 = _mm512_dpbf16_ps(a1, load_bh(wr + k + 32), load_bh(x + k + 32));
            a2 = _mm512_dpbf16_ps(a2, load_bh(wr + k + 64), load_bh(x + k + 64));
            a3 = _mm512_dpbf16_ps(a3, load_bh(wr + k + 96), load_bh(x + k + 96));
        }
        acc[0][0] = _mm512_add_ps(_mm512_add_ps(acc[0][0], a1), _mm512_add_ps(a2, a3));
    }
    for (; k + 32 <= K; k += 32) {
        __m512bh wv[MAX_R];
        for (int r = 0; r < R; r++) wv[r] = load_bh(w + (size_t)(n0 + r) * K + k);
        for (int m = 0; m < M; m++) {
            __m512bh xm = load_bh(x + (size_t)m * ldx + k);
            for (int r = 0; r < R; r++) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv[r], xm);
        }
    }
    if (k < K) {
        const __mmask32 mask = (__mmask32)((1u << (K - k)) - 1u);
        __m512bh wv[MAX_R];
        for (int r = 0; r < R; r++) wv[r] = load_bh_tail(w + (size_t)(n0 + r) * K + k, mask);
        for (int m = 0; m < M; m++) {
            __m512bh xm = load_bh_tail(x + (size_t)m * ldx + k, mask);
            for (int r = 0; r < R; r++) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv[r], xm);
        }
    }
    for (int r = 0; r < R; r++)
        for (int m = 0; m < M; m++) out[r][m] = _mm512_reduce_add_ps(acc[r][m]);
}
#endif

/* Weight rows per block for M activation rows: one weight load serves M rows, R rows give independent
 * accumulators, and R weight vectors + R*M accumulators must fit the vector registers. */
static inline int rows_per_block(int M, int K) {
#if defined(__AVX512F__)
    /* One activation row: short rows (k = 896) stream fastest one at a time, long ones (k = 4864) eight at a
     * time (measured on Zen 4/5, bf16 and int8: 1.4-2x either way). */
    if (M <= 1) return K < 2048 ? 1 : 8;
    return M <= 2 ? 6 : M <= 4 ? 4 : 2;
#else
    if (M <= 1) return K < 2048 ? 1 : 4;
    return M <= 2 ? 3 : M <= 4 ? 2 : 1;
#endif
}

#define DEFINE_BLOCK(NAME, IMPL, FMT)                                                                            \
    static void NAME(const Mat *W, int n0, const void *x, int ldx, int M, int R, float out[MAX_R][MAX_M]) {  \
        switch (M * 16 + R) {                                                                                \
        case 16 + 1: IMPL(W, FMT, n0, x, ldx, 1, 1, out); break;                                             \
        case 16 + 8: IMPL(W, FMT, n0, x, ldx, 1, 8, out); break;                                             \
        case 16 + 4: IMPL(W, FMT, n0, x, ldx, 1, 4, out); break;                                             \
        case 32 + 6: IMPL(W, FMT, n0, x, ldx, 2, 6, out); break;                                             \
        case 32 + 3: IMPL(W, FMT, n0, x, ldx, 2, 3, out); break;                                             \
        case 48 + 4: IMPL(W, FMT, n0, x, ldx, 3, 4, out); break;                                             \
        case 48 + 2: IMPL(W, FMT, n0, x, ldx, 3, 2, out); break;                                             \
        case 64 + 4: IMPL(W, FMT, n0, x, ldx, 4, 4, out); break;                                             \
        case 64 + 2: IMPL(W, FMT, n0, x, ldx, 4, 2, out); break;                                             \
        case 80 + 2: IMPL(W, FMT, n0, x, ldx, 5, 2, out); break;                                             \
        case 96 + 2: IMPL(W, FMT, n0, x, ldx, 6, 2, out); break;                                             \
        case 112 + 2: IMPL(W, FMT, n0, x, ldx, 7, 2, out); break;                                            \
        case 128 + 2: IMPL(W, FMT, n0, x, ldx, 8, 2, out); break;                                            \
        case 80 + 1: IMPL(W, FMT, n0, x, ldx, 5, 1, out); break;                                             \
        case 96 + 1: IMPL(W, FMT, n0, x, ldx, 6, 1, out); break;                                             \
        case 112 + 1: IMPL(W, FMT, n0, x, ldx, 7, 1, out); break;                                            \
        case 128 + 1: IMPL(W, FMT, n0, x, ldx, 8, 1, out); break;                                            \
        default: IMPL(W, FMT, n0, x, ldx, M, R, out); break; /* the last, partial block */                  \
        }                                                                                                    \
    }

DEFINE_BLOCK(block_f32, block_impl, W_F32)
DEFINE_BLOCK(block_bf16, block_impl, W_BF16)
DEFINE_BLOCK(block_i8, block_impl, W_I8)
DEFINE_BLOCK(block_i4, block_impl, W_I4)
#ifdef DOT_BF16
DEFINE_BLOCK(block_dot_bf16, block_dot_impl, W_BF16)
#endif

/* Output rows [r0, r1) for M <= 8 activation rows (fp32, row stride ldx), written to y (fp32 or bf16). */
static void gemv_rows(const Mat *W, int r0, int r1, const void *x, int dot, int ldx, int M, void *y, int y_bf16,
                      int ldy) {
    const int R = rows_per_block(M, W->k);
    float out[MAX_R][MAX_M];
    for (int n = r0; n < r1; n += R) {
        int rr = r1 - n < R ? r1 - n : R;
#ifdef DOT_BF16
        if (dot) block_dot_bf16(W, n, x, ldx, M, rr, out);
        else
#endif
        switch (W->fmt) {
        case W_F32: block_f32(W, n, x, ldx, M, rr, out); break;
        case W_BF16: block_bf16(W, n, x, ldx, M, rr, out); break;
        case W_I8: block_i8(W, n, x, ldx, M, rr, out); break;
        default: block_i4(W, n, x, ldx, M, rr, out); break;
        }
        for (int r = 0; r < rr; r++) {
            float sc = W->fmt == W_I8 ? W->scale[n + r] : 1.f;
            float b = W->bias ? W->bias[n + r] : 0.f;
            for (int m = 0; m < M; m++) {
                float v = out[r][m] * sc + b;
                size_t i = (size_t)m * ldy + n + r;
                if (y_bf16) ((uint16_t *)y)[i] = f32_to_bf16(v);
                else ((float *)y)[i] = v;
            }
        }
    }
}

/* The share [lo, hi) of n rows that thread t of nt computes (multiples of 8 rows, so blocks stay whole). */
static inline void share(int n, int t, int nt, int *lo, int *hi) {
    int64_t blocks = (n + 7) / 8;
    *lo = (int)(blocks * t / nt) * 8;
    *hi = (int)(blocks * (t + 1) / nt) * 8;
    if (*hi > n) *hi = n;
    if (*lo > n) *lo = n;
}

/* ---------------------------------------------------------------- entry points */

/* y (M, n) = x (M, k) W^T * scale + bias for any M (passes of 8 rows).
 * x: fp32 or bf16 (x_bf16), rows ldx elements apart, last dimension contiguous; y likewise (y_bf16, ldy).
 * Returns 0, or -1 for arguments it cannot take (then y is untouched). */
int iv_gemv(const Mat *W, int M, const void *x, int x_bf16, int ldx, void *y, int y_bf16, int ldy, int nthreads) {
    if (W->fmt < W_F32 || W->fmt > W_I4 || M < 0 || W->n < 0 || W->k < 0 || ldx < W->k || ldy < W->n) return -1;
    if (W->fmt == W_I4 && W->k % I4_GROUP) return -1;
#ifdef DOT_BF16
    const int dot = W->fmt == W_BF16 && x_bf16; /* bf16 x bf16: the activations stay bf16 */
#else
    const int dot = 0;
#endif
    const void *xf = x;
    float *tmp = NULL;
    if (x_bf16 && !dot) { /* activations to fp32 once, so the inner loop converts only weights */
        tmp = (float *)malloc(sizeof(float) * ((size_t)M * W->k + 1));
        if (!tmp) return -1;
        for (int m = 0; m < M; m++)
            for (int kk = 0; kk < W->k; kk++)
                tmp[(size_t)m * W->k + kk] = bf16_to_f32(((const uint16_t *)x)[(size_t)m * ldx + kk]);
        xf = tmp;
        ldx = W->k;
    }
    const size_t yb = y_bf16 ? 2 : 4;
    /* a fork/join costs microseconds: small products stay on the calling thread */
    const int parallel = nthreads > 1 && (int64_t)W->n * W->k >= 65536;
#pragma omp parallel num_threads(nthreads) if (parallel)
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        int lo, hi;
        share(W->n, t, nt, &lo, &hi);
        for (int m0 = 0; m0 < M; m0 += MAX_M) {
            int mm = M - m0 < MAX_M ? M - m0 : MAX_M;
            const char *xm = (const char *)xf + (size_t)m0 * ldx * (dot ? 2 : 4);
            gemv_rows(W, lo, hi, xm, dot, ldx, mm, (char *)y + (size_t)m0 * ldy * yb, y_bf16, ldy);
        }
    }
    free(tmp);
    return 0;
}

/* For the loader's checks: the struct layout it mirrors, and the threads a parallel region really gets. */
int iv_sizeof_mat(void) { return (int)sizeof(Mat); }

int iv_team_size(int nthreads) {
    int got = 1;
#pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
#pragma omp single
        got = omp_get_num_threads();
#endif
    }
    return got;
}

/* An OpenMP runtime function as this library resolved it (NULL without OpenMP): the loader maps it to the
 * file it lives in, to check that the kernels share torch's runtime. */
void *iv_openmp_entry(void) {
#ifdef _OPENMP
    return (void *)&omp_get_num_threads;
#else
    return 0;
#endif
}

/* Which instruction set this build was compiled for (the loader records it). */
const char *iv_isa(void) {
#if defined(DOT_BF16)
    return "avx512bf16";
#elif defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#else
    return "generic";
#endif
}
