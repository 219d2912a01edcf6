/* What the kernels share: includes, vector types, the weight description (`Mat`), conversions and loads. */
#ifndef IV_KERNELS_H
#define IV_KERNELS_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#define DOT_BF16 1 /* bf16 x bf16 products with vdpbf16ps, see block_dot_impl */
#endif

/* Floats per vector: the widest registers the build targets. Wider generic vectors than the registers make
 * GCC 12 keep them on the stack (the AVX2 build once ran its bf16 products at 13 GB/s that way, torch's 35). */
#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
#define MAX_M 8
#define MAX_R 8
/* Unaligned vector types: weights and activations come from torch tensors with no alignment promise. */
typedef float vf __attribute__((vector_size(VL * 4), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(VL * 4), aligned(4), may_alias));
typedef uint32_t vu __attribute__((vector_size(VL * 4), aligned(4), may_alias));
typedef uint16_t vu16 __attribute__((vector_size(VL * 2), aligned(2), may_alias));
typedef int16_t vi16 __attribute__((vector_size(VL * 2), aligned(2), may_alias));
typedef int8_t vi8 __attribute__((vector_size(VL), aligned(1), may_alias));
typedef uint8_t vu8 __attribute__((vector_size(VL), aligned(1), may_alias));

enum { W_F32 = 0, W_BF16 = 1, W_I8 = 2, W_I4 = 3 };
#define I4_GROUP 32

/* One weight matrix (n out, k in); mirrored by gemv.py's `Mat`. */
typedef struct {
    int32_t fmt, n, k, pad_;
    const void *w;          /* fp32/bf16/int8: (n, k) row-major; int4: (n, k / 2) bytes, see load_i4 */
    const float *scale;     /* int8: (n,) */
    const uint16_t *gscale; /* int4: (n, k / 32) bf16 */
    const float *bias;      /* (n,) or NULL */
} Mat;

/* ---------------------------------------------------------------- conversions */

static inline float bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, as torch's float -> bfloat16 (NaN stays a quiet NaN). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The sum of a vector's lanes as a tree (halves added in parallel): a chain of 16 dependent scalar adds costs
 * ~50 cycles, as much as streaming a 896-element int8 weight row, and a decode step sums one per output row. */
static inline float hsum(vf v) {
    typedef float vf4 __attribute__((vector_size(16)));
#if VL == 16
    typedef float vf8 __attribute__((vector_size(32)));
    vf8 h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
            __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    vf4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
#elif VL == 8
    vf4 q = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
    vf4 q = v;
#endif
    return (q[0] + q[2]) + (q[1] + q[3]);
}

static inline vf vload(const float *p) { return *(const vf *)p; }

static inline vf load_bf16(const uint16_t *p) {
    vu u = __builtin_convertvector(*(const vu16 *)p, vu) << 16;
    return (vf)u;
}

/* Bytes -> floats. GCC 12 turns a one-step generic conversion into a scalar one per element (and the two-step
 * one into ten instructions per 8 bytes with AVX2), so x86 builds say what they mean: sign-extend, convert. */
static inline vf load_i8(const int8_t *p) {
#if VL == 16 && defined(__AVX512F__)
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif VL == 8 && defined(__AVX2__)
    return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
#else
    vi i = __builtin_convertvector(__builtin_convertvector(*(const vi8 *)p, vi16), vi);
    return __builtin_convertvector(i, vf);
#endif
}

/* int4: a group of 32 in 16 bytes; byte j holds element j in its low nibble and element 16 + j in its high
 * nibble, each stored as q + 8 (0..15). VL bytes from byte c of a group give elements c.. (lo) and 16 + c.. (hi). */
static inline void load_i4(const uint8_t *p, vf *lo, vf *hi) {
    vi b = __builtin_convertvector(__builtin_convertvector(*(const vu8 *)p, vi16), vi);
    *lo = __builtin_convertvector(b & 0x0f, vf);
    *hi = __builtin_convertvector(b >> 4, vf);
}

int iv_gemv(const Mat *W, int M, const void *x, int x_bf16, int ldx, void *y, int y_bf16, int ldy, int nthreads);

#endif
