/* One whole decoder layer of a decode step (each row one new token) in one call: the step's Python and
 * small-op overhead (~60 torch ops a layer, 1,700 a step) becomes one C call a layer.
 *
 *   h = rmsnorm(x); q, k, v = h Wq, h Wk, h Wv (+ optional per-head rmsnorm of q and k); rotary(q, k);
 *   k, v -> the cache at the row's position; a = softmax(q K^T / sqrt(d)) V over positions 0..pos;
 *   x += a Wo; x += down(silu(gate(rmsnorm(x))) * up(rmsnorm(x)))
 *
 * Activations are fp32 or bf16 (`bf16`). Each intermediate is rounded where PyTorch's bf16 path rounds it (every
 * op's output), so the result follows models/decoder.py's within the order of fp32 sums; attention scores and
 * the softmax stay fp32, like the engine's widened decode attention (models/layers.attention). The products go
 * through iv_gemv (decode.c), so every weight format it reads works here too.
 */
#include "kernels.h"

/* A LLaMA-style layer as the decoder holds it; mirrored by layer.py's `Layer`. */
typedef struct {
    const Mat *q, *k, *v, *o, *gate, *up, *down;
    const void *in_norm, *post_norm; /* (hidden,), activation dtype */
    const void *q_norm, *k_norm;     /* (head_dim,) or NULL: Qwen3's per-head norm */
    float eps;
    int32_t n_heads, n_kv, head_dim, hidden, inter;
} Layer;

static inline float ld(const void *p, size_t i, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void st(void *p, size_t i, float v, int bf16) {
    if (bf16) ((uint16_t *)p)[i] = f32_to_bf16(v);
    else ((float *)p)[i] = v;
}

/* What a bf16 op's output holds: v rounded to bf16 (fp32 passes through). */
static inline float rd(float v, int bf16) { return bf16 ? bf16_to_f32(f32_to_bf16(v)) : v; }

/* out[i] = w[i] * (x[i] / rms(x)), rounded as RMSNorm's bf16 path: the fp32 norm is cast, then weighted. */
static void rmsnorm(const void *x, const void *w, int n, float eps, void *out, int bf16) {
    double ss = 0;
    for (int i = 0; i < n; i++) {
        float v = ld(x, i, bf16);
        ss += (double)v * v;
    }
    const float inv = 1.f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) st(out, i, ld(w, i, bf16) * rd(ld(x, i, bf16) * inv, bf16), bf16);
}

/* x * cos + rotate_half(x) * sin for one head (rotate_half: [-x2, x1]), each product rounded like torch's. */
static void rotary(void *x, const void *cos, const void *sin, int d, int bf16) {
    float tmp[1024];
    const int half = d / 2;
    for (int i = 0; i < d; i++) {
        float rot = i < half ? -ld(x, i + half, bf16) : ld(x, i - half, bf16);
        tmp[i] = rd(rd(ld(x, i, bf16) * ld(cos, i, bf16), bf16) + rd(rot * ld(sin, i, bf16), bf16), bf16);
    }
    for (int i = 0; i < d; i++) st(x, i, tmp[i], bf16);
}

static inline vf load_act(const void *p, int bf16) {
    return bf16 ? load_bf16((const uint16_t *)p) : vload((const float *)p);
}

/* dot of d elements of two activation-dtype vectors, in fp32 */
static inline float dot(const void *a, const void *b, int d, int bf16) {
    const size_t es = bf16 ? 2 : 4;
    vf acc = {0};
    int i = 0;
    for (; i + VL <= d; i += VL)
        acc += load_act((const char *)a + i * es, bf16) * load_act((const char *)b + i * es, bf16);
    float s = hsum(acc);
    for (; i < d; i++) s += ld(a, i, bf16) * ld(b, i, bf16);
    return s;
}

/* One query head over keys/values 0..len-1 (rows `d` apart in the cache), fp32 softmax; out rounded once. */
static void attend(const void *q, const void *keys, const void *values, int len, int d, float *scores, void *out,
                   int bf16) {
    const size_t es = bf16 ? 2 : 4;
    const float scale = 1.f / sqrtf((float)d);
    float mx = -INFINITY;
    for (int j = 0; j < len; j++) {
        scores[j] = dot(q, (const char *)keys + (size_t)j * d * es, d, bf16) * scale;
        if (scores[j] > mx) mx = scores[j];
    }
    float acc[1024] = {0}, total = 0;
    for (int j = 0; j < len; j++) {
        const float p = expf(scores[j] - mx);
        total += p;
        const char *vr = (const char *)values + (size_t)j * d * es;
        int i = 0;
        for (; i + VL <= d; i += VL) *(vf *)(acc + i) += p * load_act(vr + i * es, bf16);
        for (; i < d; i++) acc[i] += p * ld(vr, i, bf16);
    }
    for (int i = 0; i < d; i++) st(out, i, acc[i] / total, bf16);
}

/* x (M, hidden), updated in place: one decode step of one layer for M rows; row m is cache slot slots[m] at
 * position pos[m] (its keys 0..pos[m]-1 already cached). cos, sin: (M, head_dim) rotary tables of the rows.
 * Cache: (slots, n_kv, capacity, head_dim) in the activation dtype. Returns 0; -1 with nothing written for
 * arguments it cannot take; -1 after a product failed (out of memory), with x and this step's cache entries
 * undefined. */
int iv_decode_layer(const Layer *L, int M, void *x, int bf16, const int32_t *slots, const int32_t *pos,
                    const void *cos, const void *sin, void *kcache, void *vcache, int capacity, int nthreads) {
    const int H = L->n_heads, KV = L->n_kv, D = L->head_dim, E = L->hidden, I = L->inter;
    if (M < 1 || M > MAX_M || D > 1024 || H % KV || L->q->n != H * D || L->k->n != KV * D || L->v->n != KV * D ||
        L->o->k != H * D || L->o->n != E || L->q->k != E || L->k->k != E || L->v->k != E ||
        L->gate->k != E || L->up->k != E || L->gate->n != I || L->up->n != I || L->down->k != I ||
        L->down->n != E)
        return -1;
    int longest = 0;
    for (int m = 0; m < M; m++) {
        if (pos[m] < 0 || pos[m] >= capacity) return -1;
        if (pos[m] + 1 > longest) longest = pos[m] + 1;
    }
    const size_t es = bf16 ? 2 : 4;
    /* one buffer for every intermediate: h, q, k, v, attention out, o / down out, gate, up, scores */
    const size_t nh = (size_t)M * E, nq = (size_t)M * H * D, nk = (size_t)M * KV * D, ni = (size_t)M * I;
    char *buf = malloc(es * (nh * 2 + nq * 2 + nk * 2 + ni * 2) + sizeof(float) * ((size_t)M * H * longest + 16));
    if (!buf) return -1;
    char *h = buf, *q = h + nh * es, *k = q + nq * es, *v = k + nk * es, *a = v + nk * es, *o = a + nq * es;
    char *g = o + nh * es, *u = g + ni * es;
    float *scores = (float *)(u + ni * es);

    /* attention half */
    for (int m = 0; m < M; m++) rmsnorm((char *)x + m * E * es, L->in_norm, E, L->eps, h + m * E * es, bf16);
    if (iv_gemv(L->q, M, h, bf16, E, q, bf16, H * D, nthreads)) goto fail;
    if (iv_gemv(L->k, M, h, bf16, E, k, bf16, KV * D, nthreads)) goto fail;
    if (iv_gemv(L->v, M, h, bf16, E, v, bf16, KV * D, nthreads)) goto fail;
    const size_t head_stride = (size_t)capacity * D, slot_stride = (size_t)KV * head_stride;
    for (int m = 0; m < M; m++) {
        for (int hd = 0; hd < H + KV; hd++) {
            char *vec = hd < H ? q + ((size_t)m * H + hd) * D * es : k + ((size_t)m * KV + hd - H) * D * es;
            const void *norm = hd < H ? L->q_norm : L->k_norm;
            if (norm) rmsnorm(vec, norm, D, L->eps, vec, bf16);
            rotary(vec, (const char *)cos + (size_t)m * D * es, (const char *)sin + (size_t)m * D * es, D, bf16);
        }
        for (int j = 0; j < KV; j++) {
            const size_t at = (size_t)slots[m] * slot_stride + j * head_stride + (size_t)pos[m] * D;
            memcpy((char *)kcache + at * es, k + ((size_t)m * KV + j) * D * es, D * es);
            memcpy((char *)vcache + at * es, v + ((size_t)m * KV + j) * D * es, D * es);
        }
    }
    const int group = H / KV;
    const int64_t work = (int64_t)M * H * longest * D;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && work >= 65536)
    for (int task = 0; task < M * H; task++) {
        const int m = task / H, hd = task % H;
        const size_t base = ((size_t)slots[m] * slot_stride + (size_t)(hd / group) * head_stride) * es;
        attend(q + (size_t)task * D * es, (char *)kcache + base, (char *)vcache + base, pos[m] + 1, D,
               scores + (size_t)task * longest, a + (size_t)task * D * es, bf16);
    }
    if (iv_gemv(L->o, M, a, bf16, H * D, o, bf16, E, nthreads)) goto fail;
    for (size_t i = 0; i < nh; i++) st(x, i, ld(x, i, bf16) + ld(o, i, bf16), bf16);

    /* feed-forward half */
    for (int m = 0; m < M; m++) rmsnorm((char *)x + m * E * es, L->post_norm, E, L->eps, h + m * E * es, bf16);
    if (iv_gemv(L->gate, M, h, bf16, E, g, bf16, I, nthreads)) goto fail;
    if (iv_gemv(L->up, M, h, bf16, E, u, bf16, I, nthreads)) goto fail;
    for (size_t i = 0; i < ni; i++) {
        const float gv = ld(g, i, bf16);
        st(g, i, rd(gv / (1.f + expf(-gv)), bf16) * ld(u, i, bf16), bf16);
    }
    if (iv_gemv(L->down, M, g, bf16, I, o, bf16, E, nthreads)) goto fail;
    for (size_t i = 0; i < nh; i++) st(x, i, ld(x, i, bf16) + ld(o, i, bf16), bf16);
    free(buf);
    return 0;
fail: /* a product refused (it could not allocate): x may be half updated, so the caller must not use it */
    free(buf);
    return -1;
}

/* For the loader's check of the struct layer.py mirrors. */
int iv_sizeof_layer(void) { return (int)sizeof(Layer); }
