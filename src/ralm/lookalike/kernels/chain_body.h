/* The body of one lane width of chain.c: included once per width with
   CHAIN_V (lanes) and CHAIN_FN (the exported name) defined. */

typedef float CHAIN_CAT(vf, CHAIN_V) __attribute__((vector_size(4 * CHAIN_V)));
typedef int32_t CHAIN_CAT(vi, CHAIN_V) __attribute__((vector_size(4 * CHAIN_V)));
#define VF CHAIN_CAT(vf, CHAIN_V)
#define VI CHAIN_CAT(vi, CHAIN_V)

static inline VF CHAIN_CAT(sel, CHAIN_V)(VI mask, VF a, VF b) {
    return (VF)(((VI)a & mask) | ((VI)b & ~mask));
}

static inline VF CHAIN_CAT(load, CHAIN_V)(const float *p) {
    VF v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void CHAIN_CAT(store, CHAIN_V)(float *p, VF v) { memcpy(p, &v, sizeof v); }

/* sigmoid(x) = 1 / (1 + 2^y), y = -x log2(e): 2^y from the exponent bits and a degree-6
   minimax polynomial of the fraction (relative error < 2e-7); y is clamped to
   [-126, 127], where the sigmoid is already 1 or < 6e-39 */
static inline VF CHAIN_CAT(sigmoid, CHAIN_V)(VF x) {
    const VF zero = {0};
    const VF lo = zero - 126.0f, hi = zero + 127.0f;
    VF y = x * -1.4426950408889634f;
    y = CHAIN_CAT(sel, CHAIN_V)(y < lo, lo, y);
    y = CHAIN_CAT(sel, CHAIN_V)(y > hi, hi, y);
    y = y + 127.0f; /* in [1, 254]: truncation is floor */
    VI i = __builtin_convertvector(y, VI);
    VF f = y - __builtin_convertvector(i, VF); /* [0, 1) */
    VF p = zero + 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    return 1.0f / (1.0f + p * (VF)(i << 23));
}

/* exp(2 s) for s in [0, 1] (s a sigmoid): e * exp(t), t = 2 s - 1 in [-1, 1], Taylor to
   degree 9 (relative error < 3e-7). exp(1 + tanh(z)) = exp(2 sigmoid(2 z)). */
static inline VF CHAIN_CAT(exp2s, CHAIN_V)(VF s) {
    const VF zero = {0};
    VF t = 2.0f * s - 1.0f;
    VF p = zero + 1.0f / 362880.0f;
    p = p * t + 1.0f / 40320.0f;
    p = p * t + 1.0f / 5040.0f;
    p = p * t + 1.0f / 720.0f;
    p = p * t + 1.0f / 120.0f;
    p = p * t + 1.0f / 24.0f;
    p = p * t + 1.0f / 6.0f;
    p = p * t + 0.5f;
    p = p * t + 1.0f;
    p = p * t + 1.0f;
    return p * 2.718281828459045f;
}

/* u^T G u for one vector of users (columns b..b+V of u (k, nbp)) over the symmetric G:
   the diagonal plus twice the upper triangle, two accumulators per chain (one FMA chain
   would wait on its latency) */
static inline VF CHAIN_CAT(quad, CHAIN_V)(const float *restrict u, int64_t nbp, int64_t b,
                                         const float *restrict g, int64_t k) {
    VF e0 = {0}, e1 = {0};
    for (int64_t a = 0; a < k; a++) {
        const float *ga = g + a * k;
        const VF ua = CHAIN_CAT(load, CHAIN_V)(u + a * nbp + b);
        VF t0 = {0}, t1 = {0};
        int64_t c = a + 1;
        for (; c + 1 < k; c += 2) {
            t0 += ga[c] * CHAIN_CAT(load, CHAIN_V)(u + c * nbp + b);
            t1 += ga[c + 1] * CHAIN_CAT(load, CHAIN_V)(u + (c + 1) * nbp + b);
        }
        if (c < k) t0 += ga[c] * CHAIN_CAT(load, CHAIN_V)(u + c * nbp + b);
        const VF t = ua * (ga[a] * ua + 2.0f * (t0 + t1));
        if (a & 1) e1 += t; else e0 += t;
    }
    return e0 + e1;
}

void CHAIN_FN(const float *restrict res, int64_t m, int64_t k, int64_t nb, int64_t nout,
              const float *restrict weight, const float *restrict gram,
              float *restrict out, int64_t ld, float *restrict scratch, float tiny) {
    const int64_t nbp = nb; /* a multiple of CHAIN_V (the caller pads the matmul) */
    float *restrict u = scratch;               /* (k, nbp) the unnormalised weights */
    float *restrict num = scratch + k * nbp;   /* (nbp) sum_k u d */
    float *restrict el = num + nbp;            /* (nbp) u^T G u */
    for (int64_t i = 0; i < m; i++) {
        const float *r = res + i * k * 2 * nb;
        const float *wi = weight + i * k;
        const float *g = gram + i * k * k;
        for (int64_t b = 0; b < nbp; b++) num[b] = 0.0f;
        for (int64_t a = 0; a < k; a++) {
            const float *x = r + a * 2 * nb, *d = x + nb;
            float *ua = u + a * nbp;
            const float w = wi[a]; /* 0 on a masked slot */
            for (int64_t b = 0; b < nbp; b += CHAIN_V) {
                const VF xv = CHAIN_CAT(load, CHAIN_V)(x + b);
                const VF dv = CHAIN_CAT(load, CHAIN_V)(d + b);
                VF v = w * CHAIN_CAT(exp2s, CHAIN_V)(CHAIN_CAT(sigmoid, CHAIN_V)(xv));
                CHAIN_CAT(store, CHAIN_V)(ua + b, v);
                CHAIN_CAT(store, CHAIN_V)(num + b, CHAIN_CAT(load, CHAIN_V)(num + b) + v * dv);
            }
        }
        /* u^T G u over the symmetric G: the diagonal plus twice the upper triangle; two
           vectors of users at a time (each G entry loaded once for both), a lone last
           vector with two accumulators (one FMA chain would wait on its latency) */
        {
            int64_t b = 0;
            for (; b + 2 * CHAIN_V <= nbp; b += 2 * CHAIN_V) {
                VF e0 = {0}, e1 = {0};
                for (int64_t a = 0; a < k; a++) {
                    const float *ga = g + a * k;
                    const VF ua = CHAIN_CAT(load, CHAIN_V)(u + a * nbp + b);
                    const VF ub = CHAIN_CAT(load, CHAIN_V)(u + a * nbp + b + CHAIN_V);
                    VF t0 = {0}, t1 = {0};
                    for (int64_t c = a + 1; c < k; c++) {
                        const float gc = ga[c];
                        t0 += gc * CHAIN_CAT(load, CHAIN_V)(u + c * nbp + b);
                        t1 += gc * CHAIN_CAT(load, CHAIN_V)(u + c * nbp + b + CHAIN_V);
                    }
                    e0 += ua * (ga[a] * ua + 2.0f * t0);
                    e1 += ub * (ga[a] * ub + 2.0f * t1);
                }
                CHAIN_CAT(store, CHAIN_V)(el + b, e0);
                CHAIN_CAT(store, CHAIN_V)(el + b + CHAIN_V, e1);
            }
            for (; b < nbp; b += CHAIN_V)
                CHAIN_CAT(store, CHAIN_V)(el + b, CHAIN_CAT(quad, CHAIN_V)(u, nbp, b, g, k));
        }
        for (int64_t b = 0; b < nout; b++) {
            const float e = el[b] < tiny ? tiny : el[b];
            out[b * ld + i] = num[b] / sqrtf(e);
        }
    }
}


/* Stage-2 training (ralm.lookalike.train_kernel): the local cosine of every user and item
   of a batch, cos(e, E_local), and its backward. res (m*k, 2 nb) has one row per (item,
   slot): [2 q.c (nb) | e.c (nb)] (nb = B padded with zero users to a multiple of the lane
   width); weight (m*k) = exp(lp - max lp - 2), 0 on a masked slot; un2 (nb) = |e|^2.
   Per item and user, as ralm.lookalike.scorer_math._LocalCos:

       s_a = sigmoid(2 q.c_a), e_a = weight_a exp(2 s_a), z = sum_a e_a
       num = sum_a e_a d_a / z, quad = e^T G e / z^2, dd = sqrt(max(un2 quad, eps))
       out = num / dd   (0 for an item without a valid slot)                          */

/* the per-item terms of one vector of users: e (k, nbp) in u, s in sv (when not NULL),
   G e in ge (when not NULL); returns z, num and quad through the pointers */
static inline void CHAIN_CAT(terms, CHAIN_V)(const float *restrict r, int64_t k, int64_t nb,
                                            int64_t nbp, int64_t b, const float *restrict wi,
                                            const float *restrict g, float *restrict u,
                                            float *restrict sv, float *restrict ge, VF *z,
                                            VF *num, VF *quad) {
    VF zz = {0}, nr = {0}, el = {0};
    for (int64_t a = 0; a < k; a++) {
        const float *x = r + a * 2 * nb;
        const VF s = CHAIN_CAT(sigmoid, CHAIN_V)(CHAIN_CAT(load, CHAIN_V)(x + b));
        const VF v = wi[a] * CHAIN_CAT(exp2s, CHAIN_V)(s);
        CHAIN_CAT(store, CHAIN_V)(u + a * nbp + b, v);
        if (sv) CHAIN_CAT(store, CHAIN_V)(sv + a * nbp + b, s);
        zz += v;
        nr += v * CHAIN_CAT(load, CHAIN_V)(x + nb + b);
    }
    if (ge) { /* the backward needs G e itself: the full product */
        for (int64_t a = 0; a < k; a++) {
            const float *ga = g + a * k;
            VF t0 = {0}, t1 = {0};
            int64_t c = 0;
            for (; c + 1 < k; c += 2) {
                t0 += ga[c] * CHAIN_CAT(load, CHAIN_V)(u + c * nbp + b);
                t1 += ga[c + 1] * CHAIN_CAT(load, CHAIN_V)(u + (c + 1) * nbp + b);
            }
            if (c < k) t0 += ga[c] * CHAIN_CAT(load, CHAIN_V)(u + c * nbp + b);
            const VF t = t0 + t1;
            CHAIN_CAT(store, CHAIN_V)(ge + a * nbp + b, t);
            el += CHAIN_CAT(load, CHAIN_V)(u + a * nbp + b) * t;
        }
    } else {
        el = CHAIN_CAT(quad, CHAIN_V)(u, nbp, b, g, k);
    }
    *z = zz;
    *num = nr / zz;
    *quad = el / (zz * zz);
}

static inline int CHAIN_CAT(valid, CHAIN_V)(const float *wi, int64_t k) {
    for (int64_t a = 0; a < k; a++)
        if (wi[a] > 0.0f) return 1;
    return 0;
}

void CHAIN_CAT(CHAIN_FN, train_fwd)(const float *restrict res, int64_t m, int64_t k,
                                    int64_t nb, int64_t nout, const float *restrict weight,
                                    const float *restrict gram, const float *restrict un2,
                                    float eps, float *restrict out, int64_t ld,
                                    float *restrict scratch) {
    const int64_t nbp = nb;
    float *restrict u = scratch; /* (k, nbp) */
    float tmp[CHAIN_V];
    for (int64_t i = 0; i < m; i++) {
        const float *wi = weight + i * k;
        if (!CHAIN_CAT(valid, CHAIN_V)(wi, k)) {
            for (int64_t b = 0; b < nout; b++) out[b * ld + i] = 0.0f;
            continue;
        }
        const float *r = res + i * k * 2 * nb;
        const float *g = gram + i * k * k;
        for (int64_t b = 0; b < nbp; b += CHAIN_V) {
            VF z, num, quad;
            CHAIN_CAT(terms, CHAIN_V)(r, k, nb, nbp, b, wi, g, u, NULL, NULL, &z, &num, &quad);
            VF prod = CHAIN_CAT(load, CHAIN_V)(un2 + b) * quad;
            CHAIN_CAT(store, CHAIN_V)(tmp, num);
            float pr[CHAIN_V];
            CHAIN_CAT(store, CHAIN_V)(pr, prod);
            for (int64_t j = 0; j < CHAIN_V && b + j < nout; j++)
                out[(b + j) * ld + i] = tmp[j] / sqrtf(pr[j] < eps ? eps : pr[j]);
        }
    }
}

void CHAIN_CAT(CHAIN_FN, train_bwd)(const float *restrict res, int64_t m, int64_t k,
                                    int64_t nb, int64_t nout, const float *restrict weight,
                                    const float *restrict gram, const float *restrict un2,
                                    float eps, const float *restrict grad, int64_t ld,
                                    float *restrict gres, float *restrict gq,
                                    float *restrict scratch) {
    const int64_t nbp = nb;
    float *restrict u = scratch;             /* (k, nbp) e */
    float *restrict sv = scratch + k * nbp;  /* (k, nbp) s */
    float *restrict ge = sv + k * nbp;       /* (k, nbp) G e */
    const VF zero = {0};
    for (int64_t i = 0; i < m; i++) {
        const float *wi = weight + i * k;
        float *gr = gres + i * k * 2 * nb;
        if (!CHAIN_CAT(valid, CHAIN_V)(wi, k)) {
            memset(gr, 0, sizeof(float) * k * 2 * nb);
            for (int64_t b = 0; b < nout; b++) gq[b * ld + i] = 0.0f;
            continue;
        }
        const float *r = res + i * k * 2 * nb;
        const float *g = gram + i * k * k;
        for (int64_t b = 0; b < nbp; b += CHAIN_V) {
            VF z, num, quad;
            CHAIN_CAT(terms, CHAIN_V)(r, k, nb, nbp, b, wi, g, u, sv, ge, &z, &num, &quad);
            float gl[CHAIN_V];
            for (int64_t j = 0; j < CHAIN_V; j++)
                gl[j] = b + j < nout ? grad[(b + j) * ld + i] : 0.0f;
            const VF gv = CHAIN_CAT(load, CHAIN_V)(gl);
            const VF n2 = CHAIN_CAT(load, CHAIN_V)(un2 + b);
            const VF prod = n2 * quad;
            VF pc = CHAIN_CAT(sel, CHAIN_V)(prod < eps, zero + eps, prod);
            float pa[CHAIN_V];
            CHAIN_CAT(store, CHAIN_V)(pa, pc);
            for (int64_t j = 0; j < CHAIN_V; j++) pa[j] = sqrtf(pa[j]);
            const VF dd = CHAIN_CAT(load, CHAIN_V)(pa);
            const VF g_num = gv / dd;
            const VF g_prod = CHAIN_CAT(sel, CHAIN_V)(prod < eps, zero,
                                                       -0.5f * gv * num / (dd * dd * dd));
            const VF gqv = g_prod * quad;
            float go[CHAIN_V];
            CHAIN_CAT(store, CHAIN_V)(go, gqv);
            for (int64_t j = 0; j < CHAIN_V && b + j < nout; j++) gq[(b + j) * ld + i] = go[j];
            const VF g_quad = g_prod * n2;
            const VF c = g_num * num + 2.0f * g_quad * quad;
            const VF ca = -2.0f * c / z, cb = 4.0f * g_quad / (z * z);
            const VF cd = 2.0f * g_num / z, cn = g_num / z;
            for (int64_t a = 0; a < k; a++) {
                const VF ea = CHAIN_CAT(load, CHAIN_V)(u + a * nbp + b);
                const VF sa = CHAIN_CAT(load, CHAIN_V)(sv + a * nbp + b);
                const VF ga = CHAIN_CAT(load, CHAIN_V)(ge + a * nbp + b);
                const VF da = CHAIN_CAT(load, CHAIN_V)(r + a * 2 * nb + nb + b);
                const VF t = ea * (ca + cb * ga + cd * da) * (sa * (1.0f - sa));
                CHAIN_CAT(store, CHAIN_V)(gr + a * 2 * nb + b, t);
                CHAIN_CAT(store, CHAIN_V)(gr + a * 2 * nb + nb + b, ea * cn);
            }
        }
    }
}

#undef VF
#undef VI
