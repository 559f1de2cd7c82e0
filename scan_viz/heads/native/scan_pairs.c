/* SCAN's attention, one (context set, query set) pair at a time: the forward's scores and the backward's gradients.
 *
 * The math is that of scan_viz/heads/attention.py (forward) and scan_viz/heads/attention_grad.py (backward, with the
 * derivation in its module doc); this file only changes where the numbers live. A pair's (k x n) tile of cosines
 * and every intermediate of that pair stay in a few KB of stack, so each pair is read once and written once,
 * instead of ~20 element-wise passes over (C x k x Q x n) tensors. Tiles are padded to a multiple of L = 16 query
 * items (zeros, invalid), so every inner loop is a fixed-width vector loop.
 *
 * Layout (all contiguous, row-major): sims (C, k, Q, n): context item r of set c against query item w of set q;
 * gram (C, k, k) the context sets' Gram matrices; qnorm (Q, n) |query item| (1 at padded items); qvalid (Q, n) and
 * cvalid (C, k) 1/0; grad (C, Q); out: scores (C, Q), g_sims (C, k, Q, n), g_gram (C, k, k) (accumulated),
 * g_qnorm (Q, n) (accumulated). Built with -fopenmp, a call splits its pairs over the calling thread's OpenMP team
 * (see the entry points at the end); each thread has its own tile.
 * norm: 0 l2norm, 1 clipped_l2norm (LeakyReLU 0.1 first). agg: 0 LogSumExp, 1 Mean, 2 Max, 3 Sum.
 * Included twice by scan_pairs_all.c, for float (SUFFIX f32) and double (f64).
 */
#ifndef SCAN_PAIRS_ONCE
#define SCAN_PAIRS_ONCE
#include <stdlib.h>
#include <string.h>
#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#else /* built without -fopenmp: one thread */
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_max_threads(void) { return 1; }
#endif
/* the threads a call may use: the calling thread's OpenMP team size (0: built without OpenMP) */
int scan_pairs_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
}
/* fewer pairs than this run on the calling thread (waking the team costs more than they take) */
#define PARALLEL_PAIRS 256
/* [lo, hi) of n items for thread id of nth: contiguous, in thread order */
static inline void share(long n, int id, int nth, long *lo, long *hi) { *lo = n * id / nth; *hi = n * (id + 1) / nth; }
/* per-thread accumulators of g_qnorm (Q x n each; thread 0 adds into out directly), summed in thread order after
   the parallel region so a result does not depend on which thread finished first */
static int partial_new(int nth, long size, size_t item, void **parts) {
    for (int i = 0; i < nth; i++) parts[i] = NULL;
    for (int i = 1; i < nth; i++) {
        parts[i] = calloc((size_t)size, item);
        if (parts[i] == NULL) return 1;
    }
    return 0;
}
#define EPS 1e-8
#define SLOPE 0.1
#define L 16
#define RB 6 /* rows of a two-vector register block */
#define MAXK 1024
#define MAXN 1024
#define MAXTHREADS 256
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define PAD(v) (((v) + L - 1) / L * L)
/* Where query set q's items lie: from offset q * n, n of them (uniform), or from qoff[q], qlen[q] of them (ragged:
   the sets packed one after the other, no padding). Returns 0 for a set outside [1, n] items or the row. */
static inline int query_span(const long *qoff, const int *qlen, long q, int n, long width, long *off, int *len) {
    if (qoff == NULL) { *off = q * n; *len = n; return 1; }
    *off = qoff[q];
    *len = qlen[q];
    return *len >= 1 && *len <= n && *off >= 0 && *off + *len <= width;
}
#endif

/* a block of VL lanes, one machine vector register (GCC/Clang vector extension), loaded and stored unaligned. A
   vector wider than the machine's registers (16 floats on an AVX2 CPU) made GCC 12 spill the register blocks below
   to the stack: the backward's Gram-gradient block took 2/3 of its time on an AVX2 CPU (measured with perf). */
#if defined(__AVX512F__)
#define VBYTES 64
#else
#define VBYTES 32
#endif
#define VL ((int)(VBYTES / sizeof(T)))
typedef T CAT(Lanes_, SUFFIX) __attribute__((vector_size(VBYTES)));
#define Lanes CAT(Lanes_, SUFFIX)
typedef IT CAT(Bits_, SUFFIX) __attribute__((vector_size(VBYTES)));  /* the same lanes as integers, for masks */
#define Bits CAT(Bits_, SUFFIX)
static inline Lanes CAT(load_, SUFFIX)(const T *p) { Lanes v; memcpy(&v, p, sizeof v); return v; }
static inline void CAT(store_, SUFFIX)(T *p, Lanes v) { memcpy(p, &v, sizeof v); }
/* a where m is all ones, b where it is 0, lane by lane (m from a vector comparison) */
static inline Lanes CAT(select_, SUFFIX)(Bits m, Lanes a, Lanes b) {
    Bits ia, ib;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    ia = (ia & m) | (ib & ~m);
    memcpy(&a, &ia, sizeof a);
    return a;
}
#define LOAD CAT(load_, SUFFIX)
#define STORE CAT(store_, SUFFIX)
#define SELECT CAT(select_, SUFFIX)

/* out[r * os + j] = sum_u a[r * as + u * aus] * b[u * bs + j] for r < rows, j < lanes (a multiple of VL), in register
   blocks of RB rows x two vectors of lanes (12 independent accumulators hide the multiply-add latency; 4 one-vector
   accumulators ran at half the rate), or 2 RB rows x one vector when lanes is an odd number of vectors */
/* always inlined, so each caller's constant strides are folded in: called out of line with aus a variable, the
   direct path's long products ran slower (1M search, K = 2,000: p50 186-187 ms against 148.5 ms before it) */
static inline __attribute__((always_inline)) void CAT(block_mul_, SUFFIX)(
    T *restrict out, long os, const T *restrict a, long as, long aus, const T *restrict b, long bs, int rows,
    int inner, int lanes) {
    if (lanes % (2 * VL) == 0) {
        for (int wb = 0; wb < lanes; wb += 2 * VL)
            for (int r0 = 0; r0 < rows; r0 += RB) {
                int m = rows - r0 < RB ? rows - r0 : RB;
                Lanes acc0[RB], acc1[RB];
                for (int i = 0; i < RB; i++) acc0[i] = acc1[i] = (Lanes){0};
                for (int u = 0; u < inner; u++) {
                    Lanes b0 = LOAD(b + u * bs + wb), b1 = LOAD(b + u * bs + wb + VL);
                    for (int i = 0; i < RB; i++) {
                        T av = a[(r0 + (i < m ? i : 0)) * as + u * aus];
                        acc0[i] += av * b0;
                        acc1[i] += av * b1;
                    }
                }
                for (int i = 0; i < m; i++) {
                    STORE(out + (r0 + i) * os + wb, acc0[i]);
                    STORE(out + (r0 + i) * os + wb + VL, acc1[i]);
                }
            }
    } else {
        for (int wb = 0; wb < lanes; wb += VL)
            for (int r0 = 0; r0 < rows; r0 += 2 * RB) {
                int m = rows - r0 < 2 * RB ? rows - r0 : 2 * RB;
                Lanes acc[2 * RB];
                for (int i = 0; i < 2 * RB; i++) acc[i] = (Lanes){0};
                for (int u = 0; u < inner; u++) {
                    Lanes bv = LOAD(b + u * bs + wb);
                    for (int i = 0; i < 2 * RB; i++) acc[i] += a[(r0 + (i < m ? i : 0)) * as + u * aus] * bv;
                }
                for (int i = 0; i < m; i++) STORE(out + (r0 + i) * os + wb, acc[i]);
            }
    }
}
#define BLOCK_MUL CAT(block_mul_, SUFFIX)

typedef struct {
    int k, n, np, kp, norm, agg;
    int wide;                    /* set per pair: whether np items may be read from each of its rows (see below) */
    T lam, lse;
    IT *lanes;                   /* (np) all bits set at items < n, 0 after */
    T *s, *x, *attn, *ga;        /* (k, np) */
    T *at, *bt;                  /* (np, kp): attn and g_sq-weighted attn, transposed (backward) */
    T *gg;                       /* (k, kp): a pair's Gram gradient (backward) */
    T *xnorm;                    /* (k) */
    T *qn, *qv;                  /* (np) the pair's query norms and validity, padded */
    T *dot, *sq, *den, *rel, *g_rel, *g_dot, *g_sq, *shift;  /* (np) */
} CAT(Tile_, SUFFIX);
#define Tile CAT(Tile_, SUFFIX)

static Tile *CAT(tile_new_, SUFFIX)(int k, int n, int norm, int agg, T lam, T lse) {
    Tile *t = (Tile *)calloc(1, sizeof(Tile));
    if (t == NULL) return NULL;
    int kstep = 2 * VL > L ? 2 * VL : L;  /* kp: whole two-vector blocks (the backward's Gram gradient) */
    int np = PAD(n), kp = (k + kstep - 1) / kstep * kstep;
    size_t total = (size_t)4 * k * np + (size_t)2 * np * kp + (size_t)k * kp + k + 11 * (size_t)np;
    T *buf = (T *)aligned_alloc(64, PAD(total) * sizeof(T));
    if (buf == NULL) { free(t); return NULL; }
    memset(buf, 0, PAD(total) * sizeof(T));
    t->k = k; t->n = n; t->np = np; t->kp = kp; t->norm = norm; t->agg = agg; t->lam = lam; t->lse = lse;
    t->s = buf; t->x = t->s + k * np; t->attn = t->x + k * np; t->ga = t->attn + k * np;
    t->at = t->ga + k * np; t->bt = t->at + np * kp;
    t->gg = t->bt + np * kp; t->qn = t->gg + k * kp; t->qv = t->qn + np; t->dot = t->qv + np; t->sq = t->dot + np; t->den = t->sq + np;
    t->rel = t->den + np; t->g_rel = t->rel + np; t->g_dot = t->g_rel + np; t->g_sq = t->g_dot + np;
    t->shift = t->g_sq + np; t->xnorm = t->shift + np; t->lanes = (IT *)(t->xnorm + k);
    for (int w = 0; w < n; w++) t->lanes[w] = ~(IT)0;
    return t;
}

static void CAT(tile_free_, SUFFIX)(Tile *t) { free(t->s); free(t); }

/* The tile for a query set of n items (n at most the n it was made for; ragged layouts): n, its padded width and
   the lane mask. The (k, np) blocks are then laid out with the smaller np inside the same buffers. */
static inline void CAT(tile_set_n_, SUFFIX)(Tile *t, int n) {
    if (n == t->n) return;
    t->n = n;
    t->np = PAD(n);
    for (int w = 0; w < t->np; w++) t->lanes[w] = w < n ? ~(IT)0 : 0;
}

/* Asks for the cache line after the start of the next pair's items (next_items) in each of its k rows. A pair's
   k rows are k streams through memory (the cosines of a batch, tens of MB, come from DRAM), more than the hardware
   prefetcher follows: measured on a 2-core AMD EPYC (AVX2), batch 128 x 128, captions of 8-16 words packed, cache
   flushed first, alternated: forward 30-31 -> 24-25 ms, backward 75-94 -> 66-85 ms; lines 2 or 4 ahead, the same. */
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 16
#endif
static inline void CAT(prefetch_next_, SUFFIX)(const T *next_items, long row_stride, int k) {
    for (int r = 0; r < k; r++) __builtin_prefetch(next_items + r * row_stride + PREFETCH_AHEAD);
}

/* A pair's cosines into the tile: k rows of n from sims (row stride row_stride); lanes n.. of the tile are 0. */
static void CAT(pair_load_, SUFFIX)(Tile *restrict t, const T *restrict sims, long row_stride) {
    const int k = t->k, n = t->n, np = t->np;
    T *restrict s = t->s;
    for (int r = 0; r < k; r++) {
        const T *row = sims + r * row_stride;
        T *sr = s + r * np;
        if (t->wide) { /* whole vectors, the items after n (the next set's) masked to 0 */
            for (int wb = 0; wb < np; wb += VL) {
                Lanes v = LOAD(row + wb);
                Bits bits, keep;
                memcpy(&bits, &v, sizeof bits);
                memcpy(&keep, t->lanes + wb, sizeof keep);
                bits &= keep;
                memcpy(&v, &bits, sizeof v);
                STORE(sr + wb, v);
            }
        } else { /* lanes n.. of the tile are 0 (a previous pair's set may have been longer) */
            for (int w = 0; w < n; w++) sr[w] = row[w];
            for (int w = n; w < np; w++) sr[w] = 0;
        }
    }
}

/* From the tile's cosines: the normalisation, the attention (softmax over the context items) and each query item's
   dot product with its attended vector (the tile's attn and dot); the caller fills sq, |attended|^2. */
static void CAT(pair_attend_, SUFFIX)(Tile *restrict t, const T *restrict qnorm, const T *restrict qvalid,
                                      const T *restrict cvalid) {
    const int k = t->k, n = t->n, np = t->np;
    const T lam = t->lam;
    T *restrict s = t->s, *restrict x = t->x, *restrict attn = t->attn;
    T *restrict qn = t->qn, *restrict qv = t->qv;
    for (int w = 0; w < np; w++) { qn[w] = w < n ? qnorm[w] : 1; qv[w] = w < n ? qvalid[w] : 0; }
    T top[MAXN];
    /* three passes over the rows, so no row waits on the previous one's square root and division */
    T rowsq[MAXK], scale[MAXK];
    for (int r = 0; r < k; r++) {
        T *sr = s + r * np, *xr = x + r * np;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int w = 0; w < np; w++) {
            T v = sr[w];
            T xv = (t->norm == 1 && v < 0) ? (T)SLOPE * v : v;
            xr[w] = xv;
            acc += xv * xv;
        }
        rowsq[r] = acc;
    }
#pragma omp simd
    for (int r = 0; r < k; r++) {
        T xn = SQRT(rowsq[r]);
        t->xnorm[r] = xn;
        scale[r] = lam / (xn + (T)EPS);
    }
    /* the logits, and their maximum over the real context items: lanes outer, rows inner, so the running maximum
       (and below, the softmax's sum and the dot products) stays in a register */
    const Lanes zero = (Lanes){0};
    for (int wb = 0; wb < np; wb += VL) {
        Lanes tp = zero - (T)INFINITY;
        for (int r = 0; r < k; r++) {
            Lanes l = LOAD(x + r * np + wb) * scale[r];
            STORE(attn + r * np + wb, l);
            if (cvalid[r] != 0) tp = SELECT((Bits)(l > tp), l, tp);
        }
        /* softmax over the context items, its maximum subtracted first: exp(lambda) overflows float32 for
           lambda > 88 and its square (in |attended|^2 / z^2 of the tensor code) far sooner */
        STORE(top + wb, SELECT((Bits)(tp == -(T)INFINITY), zero, tp));
    }
    for (int r = 0; r < k; r++) {
        T *ar = attn + r * np;
        int real = cvalid[r] != 0;
#pragma omp simd
        for (int w = 0; w < np; w++)
            ar[w] = real ? EXP(ar[w] - top[w]) : 0;  /* a select: exp() of a padded item may overflow, inf * 0 */
    }
    T *restrict dot = t->dot;
    for (int wb = 0; wb < np; wb += VL) {
        Lanes z = zero, d = zero;
        for (int r = 0; r < k; r++) z += LOAD(attn + r * np + wb);
        z = 1 / z;
        for (int r = 0; r < k; r++) {
            Lanes a = LOAD(attn + r * np + wb) * z;
            STORE(attn + r * np + wb, a);
            d += a * LOAD(s + r * np + wb);
        }
        STORE(dot + wb, d);
    }
}

/* sq = a . G a for every query item, from the context set's Gram matrix (and ga = G a, kept for the backward) */
static void CAT(pair_gram_sq_, SUFFIX)(Tile *restrict t, const T *restrict gram) {
    const int k = t->k, np = t->np;
    T *restrict ga = t->ga, *restrict sq = t->sq;
    const T *restrict attn = t->attn;
    BLOCK_MUL(ga, np, gram, k, 1, attn, np, k, k, np);
    for (int wb = 0; wb < np; wb += VL) {
        Lanes acc = (Lanes){0};
        for (int r = 0; r < k; r++) acc += LOAD(ga + r * np + wb) * LOAD(attn + r * np + wb);
        STORE(sq + wb, acc);
    }
}

/* The attention transposed into the tile's at (n rows of kp; columns k.. stay 0): row w holds query item w's weights. */
static void CAT(pair_attn_t_, SUFFIX)(Tile *restrict t) {
    const int k = t->k, n = t->n, np = t->np, kp = t->kp;
    for (int w = 0; w < n; w++)
        for (int r = 0; r < k; r++) t->at[w * kp + r] = t->attn[r * np + w];  /* contiguous stores, loads from L1 */
}

/* The relevances R and the pooled score, from the tile's dot and sq. */
static T CAT(pair_pool_, SUFFIX)(Tile *restrict t) {
    const int np = t->np;
    T *restrict qn = t->qn, *restrict qv = t->qv, *restrict dot = t->dot, *restrict sq = t->sq;
    T *restrict den = t->den, *restrict rel = t->rel;
    for (int w = 0; w < np; w++) {
        if (sq[w] < 0) sq[w] = 0;
        den[w] = qn[w] * SQRT(sq[w]);
        rel[w] = dot[w] / (den[w] > (T)EPS ? den[w] : (T)EPS);
    }
    if (t->agg == 0) {
        T acc = 0;
        for (int w = 0; w < np; w++) acc += EXP(rel[w] * t->lse) * qv[w];
        return LOG(acc) / t->lse;
    }
    if (t->agg == 1 || t->agg == 3) {
        T acc = 0, m = 0;
        for (int w = 0; w < np; w++) { acc += rel[w] * qv[w]; m += qv[w]; }
        return t->agg == 3 ? acc : acc / (m > 0 ? m : 1);
    }
    T best = -INFINITY;
    for (int w = 0; w < np; w++)
        if (qv[w] != 0 && rel[w] > best) best = rel[w];
    return best;
}

/* The forward of one pair; leaves its intermediates in the tile and returns the pooled score. */
static T CAT(pair_forward_, SUFFIX)(Tile *restrict t, const T *restrict sims, long row_stride,
                                    const T *restrict gram, const T *restrict qnorm, const T *restrict qvalid,
                                    const T *restrict cvalid) {
    CAT(pair_load_, SUFFIX)(t, sims, row_stride);
    CAT(pair_attend_, SUFFIX)(t, qnorm, qvalid, cvalid);
    CAT(pair_gram_sq_, SUFFIX)(t, gram);
    return CAT(pair_pool_, SUFFIX)(t);
}

/* Every pair's score. Threads (OpenMP, the team of the library torch runs its own threads on, so no second set of
   workers competes with torch's) take contiguous runs of pairs. */
/* Every pair's score. sims (C, k, Q, n) as in the file's doc; or, ragged (qoff != NULL): sims (C, k, width) with query
   set q's items at [qoff[q], qoff[q] + qlen[q]) of each row (no padding; qnorm, qvalid (width)), n the longest set. */
int CAT(scan_pairs_forward_, SUFFIX)(const T *sims, const T *gram, const T *qnorm, const T *qvalid, const T *cvalid,
                                     T *scores, int C, int k, int Q, int n, int norm, int agg, T lam, T lse,
                                     const long *qoff, const int *qlen, long width) {
    if (k > MAXK || n > MAXN || k < 1 || n < 1) return 1;
    long row_stride = qoff == NULL ? (long)Q * n : width, total = (long)C * Q, end = (long)C * k * row_stride;
    for (long q = 0; q < Q; q++) {
        long off;
        int len;
        if (!query_span(qoff, qlen, q, n, row_stride, &off, &len)) return 1;
    }
    int failed = 0;
#pragma omp parallel if (total >= PARALLEL_PAIRS) reduction(| : failed)
    {
        long lo, hi;
        share(total, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        if (hi > lo) {
            Tile *t = CAT(tile_new_, SUFFIX)(k, n, norm, agg, lam, lse);
            if (t == NULL) {
                failed = 1;
            } else {
                for (long p = lo; p < hi; p++) {
                    long c = p / Q, q = p % Q, off;
                    int len;
                    query_span(qoff, qlen, q, n, row_stride, &off, &len);
                    CAT(tile_set_n_, SUFFIX)(t, len);
                    t->wide = (c * k + k - 1) * row_stride + off + t->np <= end;
                    CAT(prefetch_next_, SUFFIX)(sims + c * k * row_stride + off + len, row_stride, k);
                    scores[p] = CAT(pair_forward_, SUFFIX)(t, sims + c * k * row_stride + off, row_stride,
                                                           gram + c * k * k, qnorm + off, qvalid + off,
                                                           cvalid + c * k);
                }
                CAT(tile_free_, SUFFIX)(t);
            }
        }
    }
    return failed ? 2 : 0;
}

/* The scores of ONE query set (a caption's words, t2i) against C context sets (images' regions) from the embeddings
   themselves, not from precomputed cosines and Gram matrices: a pair's cosines are its (k x d) x (d x n) product,
   and |attended|^2 is the squared norm of attn^T V (n x d), the attended vectors as the official code forms them.
   That costs 2 k n d per pair against k^2 d per context set for its Gram matrix, which pays off only when many
   query sets share it: here one caption meets K candidate images (stage 2 of a search). The rest of the arithmetic
   is pair_attend / pair_pool's. Threads take contiguous runs of context sets.
   Context set c is read from one of two layouts (the caller passes exactly one, and the compiler makes a copy of
   this body for each): context (C, k, d) in T, padding zeroed; or half (any number of sets, k, d) in IEEE float16,
   set c being half's row rows[c], widened here into the padded buffer with the regions whose cvalid is 0 zeroed
   (what the T layout's caller does before the call). */
/* out[j] = (T)h[j] for j < d: eight at a time with the CPU's conversion instruction where the build has it (F16C);
   GCC 12 turns a plain loop over _Float16 into one scalar conversion per value (measured: 2,000 36 x 256 sets
   scored in 27 ms against 17 ms for float32 sets already widened) */
static inline void CAT(widen_, SUFFIX)(T *restrict out, const HALF_T *restrict h, int d) {
    int j = 0;
#if defined(__F16C__) && defined(__AVX__)
    if (sizeof(T) == sizeof(float))
        for (; j + 8 <= d; j += 8) {
            __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + j)));
            memcpy(out + j, &v, sizeof v);
        }
#endif
    for (; j < d; j++) out[j] = (T)h[j];
}

static inline __attribute__((always_inline)) int CAT(direct_run_, SUFFIX)(
    const T *context, const HALF_T *half, const long *rows, const T *gram, const T *query, const T *qnorm,
    const T *qvalid, const T *cvalid, T *scores, int C, int k, int n, int d, int norm, int agg, T lam, T lse) {
    if (k > MAXK || n > MAXN || k < 1 || n < 1 || d < 1) return 1;
    const int dp = (d + 2 * VL - 1) / (2 * VL) * (2 * VL);  /* d in whole two-vector blocks, zero-padded */
    int failed = 0;
#pragma omp parallel if (C >= 8) reduction(| : failed)
    {
        long lo, hi;
        share(C, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        if (hi > lo) {
            Tile *t = CAT(tile_new_, SUFFIX)(k, n, norm, agg, lam, lse);
            const int np = t == NULL ? PAD(n) : t->np, kp = t == NULL ? 0 : t->kp;
            /* the query transposed (dp x np), a context set padded to dp (k x dp), the attended vectors (np x dp) */
            T *ut = (T *)calloc((size_t)dp * np, sizeof(T));
            T *vp = dp == d && half == NULL ? NULL : (T *)calloc((size_t)k * dp, sizeof(T));
            T *att = (T *)calloc((size_t)np * dp, sizeof(T));
            if (t == NULL || ut == NULL || att == NULL || ((dp != d || half != NULL) && vp == NULL)) {
                failed = 1;
            } else {
                for (int w = 0; w < n; w++)
                    for (int j = 0; j < d; j++) ut[(long)j * np + w] = query[(long)w * d + j];
                for (long c = lo; c < hi; c++) {
                    const T *v;
                    if (half != NULL) {
                        const HALF_T *h = half + rows[c] * k * d;
                        for (int r = 0; r < k; r++) {
                            T *row = vp + (long)r * dp;
                            if (cvalid[c * k + r] != 0) {
                                CAT(widen_, SUFFIX)(row, h + (long)r * d, d);
                            } else {
                                memset(row, 0, sizeof(T) * d);
                            }
                        }
                        v = vp;
                    } else {
                        v = context + c * k * d;
                        if (vp != NULL) {
                            for (int r = 0; r < k; r++) memcpy(vp + (long)r * dp, v + (long)r * d, sizeof(T) * d);
                            v = vp;
                        }
                    }
                    BLOCK_MUL(t->s, np, v, dp, 1, ut, np, k, dp, np);  /* lanes n.. are 0: ut's columns there are */
                    CAT(pair_attend_, SUFFIX)(t, qnorm, qvalid, cvalid + c * k);
                    if (gram != NULL) {  /* the set's stored Gram matrix: sq = a . G a, k^2 n instead of k n d */
                        CAT(pair_gram_sq_, SUFFIX)(t, gram + (half != NULL ? rows[c] : c) * k * k);
                        scores[c] = CAT(pair_pool_, SUFFIX)(t);
                        continue;
                    }
                    CAT(pair_attn_t_, SUFFIX)(t);
                    BLOCK_MUL(att, dp, t->at, kp, 1, v, dp, n, k, dp);
                    for (int w = 0; w < np; w++) {
                        Lanes acc = (Lanes){0};
                        if (w < n)
                            for (int j = 0; j < dp; j += VL) {
                                Lanes a = LOAD(att + (long)w * dp + j);
                                acc += a * a;
                            }
                        T part[VBYTES / sizeof(T)], sum = 0;
                        STORE(part, acc);
                        for (int i = 0; i < VL; i++) sum += part[i];
                        t->sq[w] = sum;
                    }
                    scores[c] = CAT(pair_pool_, SUFFIX)(t);
                }
            }
            free(ut);
            free(vp);
            free(att);
            if (t != NULL) CAT(tile_free_, SUFFIX)(t);
        }
    }
    return failed ? 2 : 0;
}

/* context (C, k, d) and query (n, d) with padding zeroed; qnorm, qvalid (n); cvalid (C, k); scores (C) */
int CAT(scan_pairs_forward_direct_, SUFFIX)(const T *context, const T *query, const T *qnorm, const T *qvalid,
                                            const T *cvalid, T *scores, int C, int k, int n, int d, int norm,
                                            int agg, T lam, T lse) {
    return CAT(direct_run_, SUFFIX)(context, NULL, NULL, NULL, query, qnorm, qvalid, cvalid, scores, C, k, n, d, norm,
                                    agg, lam, lse);
}

#ifdef HALF_ROWS
/* The same scores with the context sets in float16, as a gallery stores them: set c is half's row rows[c] (rows in
   [0, number of half's sets), checked by the caller), so a search's candidates are scored where they lie, without a
   gather or a float32 copy first; cvalid (C, k) per listed set. */
int CAT(scan_pairs_forward_direct_half_, SUFFIX)(const HALF_T *half, const long *rows, const T *query,
                                                 const T *qnorm, const T *qvalid, const T *cvalid, T *scores, int C,
                                                 int k, int n, int d, int norm, int agg, T lam, T lse) {
    return CAT(direct_run_, SUFFIX)(NULL, half, rows, NULL, query, qnorm, qvalid, cvalid, scores, C, k, n, d, norm, agg,
                                    lam, lse);
}

/* The same with each set's Gram matrix stored beside its rows: gram (any number of sets, k, k) in T, set c's being
   gram's row rows[c] (the Gram matrix of half's row rows[c] as widened, invalid regions zeroed). |attended|^2 is then
   a . G a, k^2 n per pair, instead of the squared norm of attn^T V, k n d: the pair's cosines are the only product
   over d left. */
int CAT(scan_pairs_forward_direct_half_gram_, SUFFIX)(const HALF_T *half, const long *rows, const T *gram,
                                                      const T *query, const T *qnorm, const T *qvalid, const T *cvalid,
                                                      T *scores, int C, int k, int n, int d, int norm, int agg, T lam,
                                                      T lse) {
    return CAT(direct_run_, SUFFIX)(NULL, half, rows, gram, query, qnorm, qvalid, cvalid, scores, C, k, n, d, norm,
                                    agg, lam, lse);
}
#endif

/* The backward of one pair (after its forward): writes the pair's g_sims, adds to g_gram and g_qnorm. */
static void CAT(pair_backward_, SUFFIX)(Tile *restrict t, T score, T g, T *restrict out, long row_stride,
                                        T *restrict gG, T *restrict gq) {
    const int k = t->k, n = t->n, np = t->np, kp = t->kp;
    const T lam = t->lam;
    T *restrict qv = t->qv, *restrict qn = t->qn, *restrict rel = t->rel, *restrict g_rel = t->g_rel;
    T *restrict den = t->den, *restrict sq = t->sq, *restrict dot = t->dot;
    T *restrict g_dot = t->g_dot, *restrict g_sq = t->g_sq, *restrict shift = t->shift;
    if (t->agg == 0) {
        T acc = 0;
        for (int w = 0; w < np; w++) { g_rel[w] = EXP(rel[w] * t->lse) * qv[w]; acc += g_rel[w]; }
        for (int w = 0; w < np; w++) g_rel[w] *= g / acc;
    } else if (t->agg == 1 || t->agg == 3) {
        T m = 0;
        for (int w = 0; w < np; w++) m += qv[w];
        T f = t->agg == 1 ? g / (m > 0 ? m : 1) : g;
        for (int w = 0; w < np; w++) g_rel[w] = f * qv[w];
    } else {
        int best = -1;
        for (int w = 0; w < np; w++)
            if (qv[w] != 0 && rel[w] == score) { best = w; break; }
        for (int w = 0; w < np; w++) g_rel[w] = w == best ? g : 0;
    }
    /* R = dot / (|u| sqrt(sq)); the clamp at EPS stops the denominator's gradient */
    for (int w = 0; w < np; w++) {
        T d = den[w] > (T)EPS ? den[w] : (T)EPS;
        g_dot[w] = g_rel[w] / d;
        T grr = den[w] > (T)EPS ? g_rel[w] * rel[w] : 0;
        g_sq[w] = sq[w] > 0 ? (T)-0.5 * grr / (sq[w] > (T)(EPS * EPS) ? sq[w] : (T)(EPS * EPS)) : 0;
        if (w < n) gq[w] -= grr / qn[w];
        shift[w] = g_dot[w] * dot[w] + 2 * g_sq[w] * sq[w];
    }
    /* g_G += sum_w g_sq[w] a_w a_w^T: the product (bt^T at) of the transposed tiles, then added to g_G */
    T *restrict at = t->at, *restrict bt = t->bt, *restrict gg = t->gg;
    const T *attn = t->attn;
    CAT(pair_attn_t_, SUFFIX)(t);
    for (int w = 0; w < n; w++) {
        const T *atw = at + w * kp;
        T *btw = bt + w * kp, gs = g_sq[w];
#pragma omp simd
        for (int r = 0; r < k; r++) btw[r] = atw[r] * gs;
    }
    BLOCK_MUL(gg, kp, bt, 1, kp, at, kp, k, n, kp);
    for (int r = 0; r < k; r++) {
        T *row = gG + (long)r * k;
        const T *part = gg + (long)r * kp;
#pragma omp simd
        for (int u = 0; u < k; u++) row[u] += part[u];
    }
    /* g_l = a (g_a - shift), g_a = 2 g_sq G a + g_dot s; the normalisation's and LeakyReLU's backward; plus the
       direct path through dot (g_dot a) */
    const T *s = t->s, *x = t->x, *ga = t->ga;
    for (int r = 0; r < k; r++) {
        const T *ar = attn + r * np, *sr = s + r * np, *xr = x + r * np, *gar = ga + r * np;
        T xn = t->xnorm[r];
        T scale = lam / (xn + (T)EPS);
        T gl[MAXN], inner = 0;
#pragma omp simd reduction(+ : inner)
        for (int w = 0; w < np; w++) {
            T v = ar[w] * (2 * g_sq[w] * gar[w] + g_dot[w] * sr[w] - shift[w]);
            gl[w] = v;
            inner += v * xr[w];
        }
        T coef = xn > 0 ? inner * scale / ((xn + (T)EPS) * (xn > (T)EPS ? xn : (T)EPS)) : 0;
        T *orow = out + r * row_stride;
#pragma omp simd
        for (int w = 0; w < np; w++) {
            T gx = gl[w] * scale - xr[w] * coef;
            if (t->norm == 1 && sr[w] <= 0) gx *= (T)SLOPE;
            gl[w] = gx + ar[w] * g_dot[w];
        }
        for (int w = 0; w < n; w++) orow[w] = gl[w];
    }
}

/* Sum the per-thread g_qnorm accumulators into out (thread order) and free them. */
static void CAT(partial_sum_, SUFFIX)(int nth, long size, void **parts, T *out) {
    for (int i = 1; i < nth; i++) {
        T *part = (T *)parts[i];
        if (part != NULL)
            for (long j = 0; j < size; j++) out[j] += part[j];
        free(part);
    }
}

/* sims, qnorm, qvalid and g_sims, g_qnorm in the forward's layout (uniform, or ragged with qoff, qlen, width).
   g_sims may be sims itself: a pair's cosines are read into its tile before its gradient is written over them, and
   no later pair reads them (a pair's reads past its own items are masked to 0). */
int CAT(scan_pairs_backward_, SUFFIX)(const T *sims, const T *gram, const T *qnorm, const T *qvalid,
                                      const T *cvalid, const T *grad, T *g_sims, T *g_gram, T *g_qnorm, int C, int k,
                                      int Q, int n, int norm, int agg, T lam, T lse, const long *qoff,
                                      const int *qlen, long width) {
    if (k > MAXK || n > MAXN || k < 1 || n < 1) return 1;
    long row_stride = qoff == NULL ? (long)Q * n : width;
    for (long q = 0; q < Q; q++) {
        long off;
        int len;
        if (!query_span(qoff, qlen, q, n, row_stride, &off, &len)) return 1;
    }
    /* threads take whole context sets: a set's Gram gradient is written by one thread */
    int nth = (long)C * Q >= PARALLEL_PAIRS ? omp_get_max_threads() : 1;
    nth = nth < C ? nth : C;
    nth = nth < MAXTHREADS ? nth : MAXTHREADS;
    void *parts[MAXTHREADS];
    int failed = partial_new(nth, row_stride, sizeof(T), parts);
    if (!failed) {
#pragma omp parallel num_threads(nth) if (nth > 1) reduction(| : failed)
        {
            int id = omp_get_thread_num();
            long lo, hi;
            share(C, id, omp_get_num_threads(), &lo, &hi);
            T *gq = id == 0 ? g_qnorm : (T *)parts[id];
            Tile *t = hi > lo ? CAT(tile_new_, SUFFIX)(k, n, norm, agg, lam, lse) : NULL;
            if (hi > lo && t == NULL) failed = 1;
            for (long c = lo; t != NULL && c < hi; c++)
                for (int q = 0; q < Q; q++) {
                    long off;
                    int len;
                    query_span(qoff, qlen, q, n, row_stride, &off, &len);
                    long at = c * k * row_stride + off;
                    T g = grad[c * Q + q];
                    if (g == 0) { /* every gradient term is linear in g: nothing to add, a zero tile to write */
                        for (int r = 0; r < k; r++) memset(g_sims + at + r * row_stride, 0, sizeof(T) * len);
                        continue;
                    }
                    CAT(tile_set_n_, SUFFIX)(t, len);
                    /* whole-vector reads stay inside set c's rows: g_sims may be sims itself (the caller's choice),
                       and other threads write other sets' rows */
                    t->wide = at + (long)(k - 1) * row_stride + t->np <= (c + 1) * k * row_stride;
                    CAT(prefetch_next_, SUFFIX)(sims + at + len, row_stride, k);
                    T score = CAT(pair_forward_, SUFFIX)(t, sims + at, row_stride, gram + c * k * k,
                                                         qnorm + off, qvalid + off, cvalid + c * k);
                    CAT(pair_backward_, SUFFIX)(t, score, g, g_sims + at, row_stride, g_gram + c * k * k, gq + off);
                }
            if (t != NULL) CAT(tile_free_, SUFFIX)(t);
        }
    }
    CAT(partial_sum_, SUFFIX)(nth, row_stride, parts, g_qnorm);
    return failed ? 2 : 0;
}

/* The backward of listed pairs only (the others have a zero gradient): pair p is (cs[p], qs[p]) with gradient
   g[p]; its (k x n) gradient tile goes to tiles + p * k * n (row stride n), not into a full g_sims. cs is sorted;
   threads take runs of pairs that start and end at a change of cs (a set's Gram gradient is written by one thread).
   Ragged (qoff != NULL, as in the forward): a pair's tile still has n columns, those past its set's length 0. */
int CAT(scan_pairs_backward_list_, SUFFIX)(const T *sims, const T *gram, const T *qnorm, const T *qvalid,
                                           const T *cvalid, const long *cs, const long *qs, const T *g, T *tiles,
                                           T *g_gram, T *g_qnorm, int P, int k, int Q, int n, int norm, int agg,
                                           T lam, T lse, const long *qoff, const int *qlen, long width) {
    if (k > MAXK || n > MAXN || k < 1 || n < 1) return 1;
    long row_stride = qoff == NULL ? (long)Q * n : width;
    for (long q = 0; q < Q; q++) {
        long off;
        int len;
        if (!query_span(qoff, qlen, q, n, row_stride, &off, &len)) return 1;
    }
    int nth = P >= PARALLEL_PAIRS / 4 ? omp_get_max_threads() : 1;  /* a listed pair costs a forward and a backward */
    nth = nth < MAXTHREADS ? nth : MAXTHREADS;
    void *parts[MAXTHREADS];
    int failed = partial_new(nth, row_stride, sizeof(T), parts);
    if (!failed) {
#pragma omp parallel num_threads(nth) if (nth > 1) reduction(| : failed)
        {
            int id = omp_get_thread_num(), team = omp_get_num_threads();
            long lo, hi;
            share(P, id, team, &lo, &hi);
            while (lo > 0 && lo < P && cs[lo] == cs[lo - 1]) lo++;  /* the same rule moves the previous run's end */
            while (hi > 0 && hi < P && cs[hi] == cs[hi - 1]) hi++;
            T *gq = id == 0 ? g_qnorm : (T *)parts[id];
            Tile *t = hi > lo ? CAT(tile_new_, SUFFIX)(k, n, norm, agg, lam, lse) : NULL;
            if (hi > lo && t == NULL) failed = 1;
            for (long p = lo; t != NULL && p < hi; p++) {
                long c = cs[p], q = qs[p], off;
                int len;
                query_span(qoff, qlen, q, n, row_stride, &off, &len);
                CAT(tile_set_n_, SUFFIX)(t, len);
                T *tile = tiles + p * k * n;
                if (len < n)
                    for (int r = 0; r < k; r++) memset(tile + (long)r * n + len, 0, sizeof(T) * (n - len));
                T score = CAT(pair_forward_, SUFFIX)(t, sims + c * k * row_stride + off, row_stride,
                                                     gram + c * k * k, qnorm + off, qvalid + off, cvalid + c * k);
                CAT(pair_backward_, SUFFIX)(t, score, g[p], tile, n, g_gram + c * k * k, gq + off);
            }
            if (t != NULL) CAT(tile_free_, SUFFIX)(t);
        }
    }
    CAT(partial_sum_, SUFFIX)(nth, row_stride, parts, g_qnorm);
    return failed ? 2 : 0;
}
#undef Tile
#undef Lanes
#undef Bits
#undef SELECT
#undef BLOCK_MUL
#undef LOAD
#undef STORE
#undef VL
#undef VBYTES
