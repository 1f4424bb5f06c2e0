/* The fused epilogue of a stochastic binary layer on the CPU (bihm_triton.kernels.cpu).
 *
 * Given logits a (R, M) float32 (the matmul h·Wᵀ + b is done by BLAS through torch), one pass per
 * row group computes the SPEC §5 uniforms (Philox4x32-10 exactly as Triton's tl.rand4x: four rows
 * share one call per column, element (r, j) reads output r % 4 of counter offset + (r/4)·M + j),
 * the sample x = 1[u < σ(a)], the row log-likelihood Σ_j x·a − softplus(a) and, for the backward,
 * d = x − σ(a) (∂ log_prob / ∂a). Score mode takes given targets x instead of drawing.
 *
 * Plain C99 + GCC vector extensions, no Python or torch headers: built once per machine by the
 * launcher (cc -O3 -march=native) and loaded with ctypes. The loops are written so that the
 * compiler vectorizes them: Philox over a block of columns, then per row an elementwise pass with
 * a branch-free exp (Cephes expf polynomial, ≤ 2 ulp); a row's softplus terms are summed as logs of products
 * (a multiply per element; the part of e that 1 + e rounds away summed apart). Compile with
 * -fno-trapping-math (if-conversion of the selects) and -ffp-contract=off (no fused multiply-adds:
 * the same bits from every build of this file), never -ffast-math: NaN and ±inf logits follow the
 * reference (NaN: x = 0 and log_prob NaN; ±inf: certain outcomes cost 0 nats).
 */
#include <stdint.h>
#include <string.h>

#define BLK 256

enum { WANT_LP = 1, WANT_D = 2, X_U8 = 4, LP_ADD = 8 };

static inline float abs_f(float v) { return v < 0.0f ? -v : v; }

/* exp(x) for x <= 0 (and NaN, which propagates); exp(-104) and below give 0. */
static inline float exp_nonpos(float x) {
    float xc = x < -104.0f ? -104.0f : x;
    float n = __builtin_floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float r2 = r * r;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r2 + r + 1.0f;
    float nf = n == n ? n : 0.0f; /* NaN x: p is NaN already; keep the conversion defined */
    int32_t ni = (int32_t)nf; /* in [-150, 0]: two normal scale factors cover the denormal results */
    int32_t n1 = ni / 2, n2 = ni - n1;
    uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, 4);
    memcpy(&s2, &b2, 4);
    return p * s1 * s2;
}

/* log1p(e) for e in [0, 1]: e · P(e), P the degree-9 Chebyshev fit of log1p(e)/e on [0, 1] (float32 Horner:
 * < 2e-7 relative everywhere, without a division). One macro for a float and a vector of floats. */
#define LOG1P_UNIT(T, e)                                                                                   \
    ({                                                                                                     \
        T p_ = (e) * -3.256378480e-03f + 1.990716095e-02f;                                                 \
        p_ = p_ * (e) - 5.706420081e-02f;                                                                  \
        p_ = p_ * (e) + 1.061426469e-01f;                                                                  \
        p_ = p_ * (e) - 1.531186310e-01f;                                                                  \
        p_ = p_ * (e) + 1.967811726e-01f;                                                                  \
        p_ = p_ * (e) - 2.495455887e-01f;                                                                  \
        p_ = p_ * (e) + 3.333000404e-01f;                                                                  \
        p_ = p_ * (e) - 4.999990399e-01f;                                                                  \
        p_ = p_ * (e) + 9.999999954e-01f;                                                                  \
        (e) * p_;                                                                                          \
    })

static inline float uniform_of(uint32_t w) { /* Triton's uint_to_uniform_float */
    int32_t i = (int32_t)w;
    i = i < 0 ? ~i : i;
    return (float)i * 4.6566127342e-10f;
}

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* Philox's rounds on W lanes of 32-bit words (the multiply-high of 32-bit lanes, which x86 lacks, from two
 * 32x32->64 multiplies of the even and the odd lanes). One macro for AVX2 (8 lanes) and AVX-512 (16):
 * the same integer operations as the scalar loop, so the same bits. */
#define PHILOX_LANES(V, MUL, SRLI64, SLLI64, BLEND_ODD, XOR, SET1, ADD, SRAI, CVT, MULPS, SET1PS, STORE, SETR)   \
    {                                                                                                      \
        const V m0 = SET1((int)0xD2511F53u), m1 = SET1((int)0xCD9E8D57u);                                   \
        V c0 = ADD(SET1((int)(lo + (uint32_t)j)), SETR), c1 = SET1((int)hi), c2 = SET1(0), c3 = SET1(0);     \
        uint32_t a0 = k0, a1 = k1;                                                                         \
        for (int r = 0; r < 10; r++) {                                                                     \
            V pe0 = MUL(c0, m0), po0 = MUL(SRLI64(c0, 32), m0);                                            \
            V pe1 = MUL(c2, m1), po1 = MUL(SRLI64(c2, 32), m1);                                            \
            V hi0 = BLEND_ODD(SRLI64(pe0, 32), po0), lo0 = BLEND_ODD(pe0, SLLI64(po0, 32));                \
            V hi1 = BLEND_ODD(SRLI64(pe1, 32), po1), lo1 = BLEND_ODD(pe1, SLLI64(po1, 32));                \
            V n0 = XOR(XOR(hi1, c1), SET1((int)a0));                                                       \
            V n2 = XOR(XOR(hi0, c3), SET1((int)a1));                                                       \
            c1 = lo1;                                                                                      \
            c3 = lo0;                                                                                      \
            c0 = n0;                                                                                       \
            c2 = n2;                                                                                       \
            a0 += 0x9E3779B9u;                                                                             \
            a1 += 0xBB67AE85u;                                                                             \
        }                                                                                                  \
        const float scale = 4.6566127342e-10f;                                                             \
        STORE(u0 + j, MULPS(CVT(XOR(c0, SRAI(c0, 31))), SET1PS(scale)));                                   \
        STORE(u1 + j, MULPS(CVT(XOR(c1, SRAI(c1, 31))), SET1PS(scale)));                                   \
        STORE(u2 + j, MULPS(CVT(XOR(c2, SRAI(c2, 31))), SET1PS(scale)));                                   \
        STORE(u3 + j, MULPS(CVT(XOR(c3, SRAI(c3, 31))), SET1PS(scale)));                                   \
    }

#if defined(__AVX512F__)
#define BLEND512(a, b) _mm512_mask_blend_epi32((__mmask16)0xAAAA, (a), (b))
#define SETR512 _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#endif
#if defined(__AVX2__)
#define BLEND256(a, b) _mm256_blend_epi32((a), (b), 0xAA)
#define SETR256 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
#endif

/* Philox4x32-10 at counters base + j, j < n (64-bit counters: c0 low word, c1 high word, c2 = c3 = 0). */
static void philox_block(uint64_t base, int n, uint32_t k0, uint32_t k1, float *restrict u0, float *restrict u1,
                         float *restrict u2, float *restrict u3) {
    int j = 0;
    uint32_t lo = (uint32_t)base, hi = (uint32_t)(base >> 32);
    if (n > 0 && (uint64_t)lo + (uint64_t)(n - 1) <= 0xFFFFFFFFull) { /* no carry into the high word here */
#if defined(__AVX512F__)
        for (; j + 16 <= n; j += 16)
            PHILOX_LANES(__m512i, _mm512_mul_epu32, _mm512_srli_epi64, _mm512_slli_epi64, BLEND512, _mm512_xor_si512,
                         _mm512_set1_epi32, _mm512_add_epi32, _mm512_srai_epi32, _mm512_cvtepi32_ps, _mm512_mul_ps,
                         _mm512_set1_ps, _mm512_storeu_ps, SETR512)
#endif
#if defined(__AVX2__)
        for (; j + 8 <= n; j += 8)
            PHILOX_LANES(__m256i, _mm256_mul_epu32, _mm256_srli_epi64, _mm256_slli_epi64, BLEND256, _mm256_xor_si256,
                         _mm256_set1_epi32, _mm256_add_epi32, _mm256_srai_epi32, _mm256_cvtepi32_ps, _mm256_mul_ps,
                         _mm256_set1_ps, _mm256_storeu_ps, SETR256)
#endif
    }
    for (; j < n; j++) {
        uint64_t ctr = base + (uint64_t)j;
        uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = 0, c3 = 0;
        uint32_t a0 = k0, a1 = k1;
        for (int r = 0; r < 10; r++) {
            uint64_t p0 = (uint64_t)0xD2511F53u * c0;
            uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ a0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ a1;
            c1 = (uint32_t)p1;
            c3 = (uint32_t)p0;
            c0 = n0;
            c2 = n2;
            a0 += 0x9E3779B9u;
            a1 += 0xBB67AE85u;
        }
        u0[j] = uniform_of(c0);
        u1[j] = uniform_of(c1);
        u2[j] = uniform_of(c2);
        u3[j] = uniform_of(c3);
    }
}

typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

/* log of 16 lanes in [1, 2^127) (exponent · ln 2 + log1p of the mantissa, < 2e-7 relative); NaN stays NaN. */
static inline v16f log_v16(v16f acc) {
    v16i bits;
    memcpy(&bits, &acc, 64);
    v16i ex = (bits >> 23) - 127;
    v16i mb = (bits & 0x007FFFFF) | 0x3F800000;
    v16f m;
    memcpy(&m, &mb, 64);
    m -= 1.0f;
    v16f lg = __builtin_convertvector(ex, v16f) * 0.693147180559945309f + LOG1P_UNIT(v16f, m);
    v16i keep = acc == acc; /* NaN factors: the lane keeps its NaN */
    lg = (v16f)((keep & (v16i)lg) | (~keep & (v16i)acc));
    return lg;
}

static inline float hsum16(v16f v) {
    v8f lo, hi;
    memcpy(&lo, &v, 32);
    memcpy(&hi, (char *)&v + 32, 32);
    lo += hi;
    return ((lo[0] + lo[4]) + (lo[1] + lo[5])) + ((lo[2] + lo[6]) + (lo[3] + lo[7]));
}

static inline float hprod16(v16f v) {
    v8f lo, hi;
    memcpy(&lo, &v, 32);
    memcpy(&hi, (char *)&v + 32, 32);
    lo *= hi;
    return ((lo[0] * lo[4]) * (lo[1] * lo[5])) * ((lo[2] * lo[6]) * (lo[3] * lo[7]));
}

/* Over one row's n terms: Σ z (returned) and the 16 lane products of p (*prod). A row's last partial vector is read
 * whole (the buffers carry 16 floats of padding past their end) and its lanes past n replaced by 0 and 1. */
static inline float row_sums(const float *z, const float *p, int n, v16f *prod) {
    const v16f zero = {0}, one = zero + 1.0f;
    const v16i iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    v16f zs = zero, pr = one, t, u;
    int j = 0;
    for (; j + 16 <= n; j += 16) {
        memcpy(&t, z + j, 64);
        memcpy(&u, p + j, 64);
        zs += t;
        pr *= u;
    }
    if (j < n) {
        memcpy(&t, z + j, 64);
        memcpy(&u, p + j, 64);
        v16i in = iota < (n - j);
        zs += (v16f)(in & (v16i)t);
        pr *= (v16f)((in & (v16i)u) | (~in & (v16i)one));
    }
    *prod = pr;
    return hsum16(zs);
}

/* One row segment: x from u (draw) or from xin (score), its log-likelihood's terms into lpbuf and pbuf
 * (log σ(±a) = −(max(∓a, 0) + log1p(e)), e = exp(−|a|): u1 = fl(1 + e) into pbuf, whose logs the caller sums as
 * logs of products, and max(∓a, 0) + (e − (u1 − 1)) into lpbuf, the part of e that 1 + e rounded away: log1p(e) =
 * log(u1) + (e − (u1 − 1)) within 1.5 ulp of log1p(e), also where 1 + e rounds to 1), d = x − σ(a).
 * The variants are separate loops so that each vectorizes without a branch inside. */
#define ROW_LOOP(NAME, XIN_T, XOUT_T, GET_X, PUT_X, DO_LP, DO_D)                                             \
    static void NAME(const float *restrict a, const float *restrict u, const void *restrict xin_,          \
                     void *restrict xout_, float *restrict lpbuf, float *restrict pbuf, float *restrict d,      \
                     int n) {              \
        const XIN_T *restrict xin = (const XIN_T *)xin_;                                                   \
        XOUT_T *restrict xout = (XOUT_T *)xout_;                                                           \
        (void)u; (void)xin; (void)xout; (void)lpbuf; (void)pbuf; (void)d;                                \
        for (int j = 0; j < n; j++) {                                                                      \
            float aj = a[j];                                                                               \
            float e = exp_nonpos(-abs_f(aj));                                                              \
            float sig = (aj >= 0.0f ? 1.0f : e) / (1.0f + e);                                              \
            int xi = GET_X;                                                                                \
            PUT_X;                                                                                         \
            if (DO_LP) {                                                                                   \
                float z = xi ? -aj : aj;                                                                   \
                float u1 = 1.0f + e; /* log1p(e) = log(u1) + (e − (u1 − 1)) to float accuracy (u1 − 1 is   \
                                        exact): the product keeps log(u1), the sum the part 1 + e lost */  \
                lpbuf[j] = (z > 0.0f ? z : 0.0f) + (e - (u1 - 1.0f));                                      \
                pbuf[j] = u1;                                                                              \
            }                                                                                              \
            if (DO_D) d[j] = (xi ? 1.0f : 0.0f) - sig;                                                     \
        }                                                                                                  \
    }

#define SAMPLE_VARIANTS(SUFFIX, XOUT_T, ONE, ZERO)                                                         \
    ROW_LOOP(draw_##SUFFIX, float, XOUT_T, u[j] < sig, xout[j] = xi ? ONE : ZERO, 0, 0)                    \
    ROW_LOOP(draw_lp_##SUFFIX, float, XOUT_T, u[j] < sig, xout[j] = xi ? ONE : ZERO, 1, 0)                 \
    ROW_LOOP(draw_d_##SUFFIX, float, XOUT_T, u[j] < sig, xout[j] = xi ? ONE : ZERO, 0, 1)                  \
    ROW_LOOP(draw_lp_d_##SUFFIX, float, XOUT_T, u[j] < sig, xout[j] = xi ? ONE : ZERO, 1, 1)

SAMPLE_VARIANTS(f32, float, 1.0f, 0.0f)
SAMPLE_VARIANTS(u8, uint8_t, 1, 0)

#define SCORE_VARIANTS(SUFFIX, XIN_T)                                                                      \
    ROW_LOOP(score_lp_##SUFFIX, XIN_T, float, xin[j] != 0, (void)0, 1, 0)                                  \
    ROW_LOOP(score_lp_d_##SUFFIX, XIN_T, float, xin[j] != 0, (void)0, 1, 1)

SCORE_VARIANTS(f32, float)
SCORE_VARIANTS(u8, uint8_t)

typedef void (*row_fn)(const float *, const float *, const void *, void *, float *, float *, float *, int);

/* The row log-likelihoods of `rows` rows of width M laid out one after another in zbuf (max(∓a, 0)) and pbuf
 * (1 + e, in [1, 2]): lp[i] = −(Σ z + Σ log(1 + e)), the second as logs of products (a multiply per element instead of
 * a log1p polynomial; float32-accurate). Rows of up to 126 terms: one product a row (below 2^127), one log per row,
 * 16 rows at a time; wider rows (at most 2032): a log per lane. With add, lp[i] += the value (a running sum). */
#define ROW_PROD_MAX 126
static void rows_lp(const float *zbuf, const float *pbuf, int64_t rows, int64_t M, float *lp, int add) {
    v16f pr;
    if (M > ROW_PROD_MAX) {
        for (int64_t i = 0; i < rows; i++) {
            float zs = row_sums(zbuf + i * M, pbuf + i * M, (int)M, &pr);
            float v = -(zs + hsum16(log_v16(pr)));
            lp[i] = add ? lp[i] + v : v;
        }
        return;
    }
    for (int64_t i0 = 0; i0 < rows; i0 += 16) {
        float zs[16], pp[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
        int n = (int)((rows - i0) < 16 ? (rows - i0) : 16);
        for (int i = 0; i < n; i++) {
            zs[i] = row_sums(zbuf + (i0 + i) * M, pbuf + (i0 + i) * M, (int)M, &pr);
            pp[i] = hprod16(pr);
        }
        v16f pv;
        memcpy(&pv, pp, 64);
        v16f lg = log_v16(pv);
        for (int i = 0; i < n; i++) {
            float v = -(zs[i] + lg[i]);
            lp[i0 + i] = add ? lp[i0 + i] + v : v;
        }
    }
}

/* The logits a + bias of `rows` rows of n columns (row stride M, columns j0 … j0 + n − 1) into tmp (stride n), or a
 * itself without a bias: the matmul's bias added here costs an add in L1 instead of BLAS's copy of the broadcast
 * bias into the whole output before a beta = 1 product. fl(a + b), the bits of torch.mm(h, Wᵀ) + b. */
static inline const float *biased(const float *a, const float *bias, float *tmp, int64_t rows, int64_t M, int64_t j0,
                                  int n) {
    if (!bias) return a;
    for (int64_t i = 0; i < rows; i++)
        for (int k = 0; k < n; k++) tmp[i * n + k] = a[i * M + k] + bias[j0 + k];
    return tmp;
}

/* Draw rows [4·g0, min(R, 4·g1)) of an (R, M) layer: x (R, M) float32 or uint8 (flags & X_U8), lp (R,)
 * (flags & WANT_LP; added to lp with flags & LP_ADD), d (R, M) (flags & WANT_D); a, x, d contiguous; bias (M,) or
 * NULL is added to the logits.
 * Wide layers (M >= BLK) go group by group in column blocks. Narrow layers take several row groups at once:
 * their counters are contiguous (group g, column j reads counter offset + g·M + j), so one Philox block covers
 * them, its four outputs are laid out row by row, and the elementwise pass runs over the rows as one long,
 * vectorized range (a 10-unit layer would otherwise run its loops 10 elements at a time). Same bits either way. */
void bihm_sample(const float *a, const float *bias, void *x, float *lp, float *d, int64_t R, int64_t M, uint64_t seed,
                 uint64_t offset, int flags, int64_t g0, int64_t g1) {
    static const row_fn fns[2][4] = {{draw_f32, draw_lp_f32, draw_d_f32, draw_lp_d_f32},
                                     {draw_u8, draw_lp_u8, draw_d_u8, draw_lp_d_u8}};
    row_fn fn = fns[(flags & X_U8) ? 1 : 0][flags & (WANT_LP | WANT_D)];
    size_t xsize = (flags & X_U8) ? 1 : 4;
    float u[4][BLK], buf[4 * BLK + 16] = {0}, pbuf[4 * BLK + 16] = {0}, rows_u[4 * BLK], tmp[4 * BLK];
    int add = (flags & LP_ADD) != 0;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    if (M < BLK) {
        int64_t per = BLK / M; /* row groups per Philox block */
        for (int64_t g = g0; g < g1; g += per) {
            int64_t G = (g1 - g) < per ? (g1 - g) : per;
            int64_t rows = (R - 4 * g) < 4 * G ? (R - 4 * g) : 4 * G;
            philox_block(offset + (uint64_t)(g * M), (int)(G * M), k0, k1, u[0], u[1], u[2], u[3]);
            for (int64_t i = 0; i < rows; i++) memcpy(rows_u + i * M, u[i % 4] + (i / 4) * M, (size_t)M * 4);
            int64_t o = 4 * g * M;
            fn(biased(a + o, bias, tmp, rows, M, 0, (int)M), rows_u, NULL, (char *)x + o * xsize, buf, pbuf,
               d ? d + o : NULL, (int)(rows * M));
            if (flags & WANT_LP)
                rows_lp(buf, pbuf, rows, M, lp + 4 * g, add);
        }
        return;
    }
    for (int64_t g = g0; g < g1; g++) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t j0 = 0; j0 < M; j0 += BLK) {
            int n = (int)((M - j0) < BLK ? (M - j0) : BLK);
            philox_block(offset + (uint64_t)(g * M + j0), n, k0, k1, u[0], u[1], u[2], u[3]);
            for (int l = 0; l < 4; l++) {
                int64_t r = 4 * g + l;
                if (r >= R) break;
                int64_t o = r * M + j0;
                fn(biased(a + o, bias, tmp, 1, M, j0, n), u[l], NULL, (char *)x + o * xsize, buf, pbuf, d ? d + o : NULL, n);
                if (flags & WANT_LP) rows_lp(buf, pbuf, 1, n, &acc[l], 1);
            }
        }
        if (flags & WANT_LP)
            for (int l = 0; l < 4 && 4 * g + l < R; l++) lp[4 * g + l] = add ? lp[4 * g + l] + acc[l] : acc[l];
    }
}

/* Score rows [r0, r1) given targets x (float32, or uint8/bool with flags & X_U8): lp (R,) (added with flags & LP_ADD),
 * d (flags & WANT_D); bias (M,) or NULL added to the logits.
 * Narrow layers run several rows as one elementwise range (as in bihm_sample). */
void bihm_score(const float *a, const float *bias, const void *x, float *lp, float *d, int64_t R, int64_t M, int flags,
                int64_t r0, int64_t r1) {
    static const row_fn fns[2][2] = {{score_lp_f32, score_lp_d_f32}, {score_lp_u8, score_lp_d_u8}};
    row_fn fn = fns[(flags & X_U8) ? 1 : 0][(flags & WANT_D) ? 1 : 0];
    size_t xsize = (flags & X_U8) ? 1 : 4;
    float buf[4 * BLK + 16] = {0}, pbuf[4 * BLK + 16] = {0}, tmp[4 * BLK];
    int add = (flags & LP_ADD) != 0;
    (void)R;
    if (M < BLK) {
        int64_t per = 4 * BLK / M;
        for (int64_t r = r0; r < r1; r += per) {
            int64_t rows = (r1 - r) < per ? (r1 - r) : per;
            int64_t o = r * M;
            fn(biased(a + o, bias, tmp, rows, M, 0, (int)M), NULL, (const char *)x + o * xsize, NULL, buf, pbuf,
               d ? d + o : NULL, (int)(rows * M));
            rows_lp(buf, pbuf, rows, M, lp + r, add);
        }
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        float acc = 0.0f;
        for (int64_t j0 = 0; j0 < M; j0 += BLK) {
            int n = (int)((M - j0) < BLK ? (M - j0) : BLK);
            int64_t o = r * M + j0;
            fn(biased(a + o, bias, tmp, 1, M, j0, n), NULL, (const char *)x + o * xsize, NULL, buf, pbuf, d ? d + o : NULL, n);
            rows_lp(buf, pbuf, 1, n, &acc, 1);
        }
        lp[r] = add ? lp[r] + acc : acc;
    }
}

/* The uniforms of rows [4·g0, min(R, 4·g1)) of an (R, M) draw (the stream itself: tests, samplers). */
void bihm_uniform(float *out, int64_t R, int64_t M, uint64_t seed, uint64_t offset, int64_t g0, int64_t g1) {
    float u[4][BLK];
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int64_t g = g0; g < g1; g++) {
        for (int64_t j0 = 0; j0 < M; j0 += BLK) {
            int n = (int)((M - j0) < BLK ? (M - j0) : BLK);
            philox_block(offset + (uint64_t)(g * M + j0), n, k0, k1, u[0], u[1], u[2], u[3]);
            for (int l = 0; l < 4 && 4 * g + l < R; l++) memcpy(out + (4 * g + l) * M + j0, u[l], (size_t)n * 4);
        }
    }
}

/* The same passes split over OpenMP threads (built with -fopenmp; the launcher uses them only when the
 * OpenMP runtime is the one torch already loaded, so they run on torch's own intra-op threads instead of
 * fighting them). Each row's draws come from its own counters, so any split gives the same bits. */
#ifdef _OPENMP
#include <omp.h>
#define SPLIT(N, BODY)                                                                                     \
    _Pragma("omp parallel num_threads(nthreads)") {                                                        \
        int64_t t_ = omp_get_thread_num(), n_ = omp_get_num_threads();                                     \
        int64_t lo = (N) * t_ / n_, hi = (N) * (t_ + 1) / n_;                                              \
        if (hi > lo) BODY;                                                                                 \
    }
int bihm_openmp(void) { return 1; }
#else
#define SPLIT(N, BODY)                                                                                     \
    {                                                                                                      \
        int64_t lo = 0, hi = (N);                                                                          \
        (void)nthreads;                                                                                    \
        if (hi > lo) BODY;                                                                                 \
    }
int bihm_openmp(void) { return 0; }
#endif

void bihm_sample_mt(const float *a, const float *bias, void *x, float *lp, float *d, int64_t R, int64_t M, uint64_t seed,
                    uint64_t offset, int flags, int nthreads) {
    SPLIT((R + 3) / 4, bihm_sample(a, bias, x, lp, d, R, M, seed, offset, flags, lo, hi))
}

void bihm_score_mt(const float *a, const float *bias, const void *x, float *lp, float *d, int64_t R, int64_t M, int flags,
                   int nthreads) {
    SPLIT(R, bihm_score(a, bias, x, lp, d, R, M, flags, lo, hi))
}

void bihm_uniform_mt(float *out, int64_t R, int64_t M, uint64_t seed, uint64_t offset, int nthreads) {
    SPLIT((R + 3) / 4, bihm_uniform(out, R, M, seed, offset, lo, hi))
}

/* The build's own check: the library and the launcher agree on the ABI. */
int bihm_abi_version(void) { return 3; }
