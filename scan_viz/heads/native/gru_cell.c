/* The element-wise part of one GRU time step, forward and backward, for the text encoder's training GRU
 * (scan_viz/model/gru.py, which holds the equations and does the matrix products with torch). One call replaces
 * the dozen or so tensor operations of a step, each of which made a pass over (batch x hidden) numbers: at the
 * bundled model's sizes a training step ran about 1,300 of them.
 *
 * Rows are a step's captions (b of them), h the hidden size; every array is row-major and contiguous.
 *   gi (b, 3h)    the input part W_i x + b_i of the gates, [r | z | n]
 *   gates (b, 3h) on entry W_h h + b_h; the forward writes r and z over its first two thirds (sigmoids), the last
 *                 third (W_hn h + b_hn) stays
 *   hp (b, h)     the hidden state the step starts from; news (b, h) n; out (b, h) the new hidden state
 * Included by scan_pairs_all.c once per precision (T, SUFFIX, EXP as for scan_pairs.c, TANH). tanh is the C
 * library's (its vector variant where glibc has one, 2.35 on): 1 - 2 / (exp(2x) + 1) with the vector exp was tried
 * first and lost relative precision at small x, which moved the trained step's gradients 20 times further from
 * the baseline's (max |diff| 7.4e-3 against 3.7e-4 for the same step in tensor operations; largest gradient 239).
 */

static inline T CAT(sigmoid_, SUFFIX)(T x) { return 1 / (1 + EXP(-x)); }

void CAT(gru_cell_forward_, SUFFIX)(const T *restrict gi, T *restrict gates, const T *restrict hp,
                                    T *restrict news, T *restrict out, long b, long h) {
    for (long i = 0; i < b; i++) {
        const T *gir = gi + i * 3 * h, *hpr = hp + i * h;
        T *g = gates + i * 3 * h, *nr = news + i * h, *outr = out + i * h;
#pragma omp simd
        for (long j = 0; j < h; j++) {
            T r = CAT(sigmoid_, SUFFIX)(gir[j] + g[j]);
            T z = CAT(sigmoid_, SUFFIX)(gir[h + j] + g[h + j]);
            T n = TANH(gir[2 * h + j] + r * g[2 * h + j]);
            g[j] = r;
            g[h + j] = z;
            nr[j] = n;
            outr[j] = n + z * (hpr[j] - n);  /* (1 - z) n + z h */
        }
    }
}

/* From the gradient of the step's output (g_out) and the one carried back from later steps (g_h, rows 0..b-1;
   overwritten with the direct part g_new z of the gradient into hp, to which the caller adds g_gh W_h):
   g_gi (b, 3h) = [g_pre_r | g_pre_z | g_pre_n], g_gh (b, 3h) = [g_pre_r | g_pre_z | g_pre_n r], the gradients of
   the gates' input and hidden parts. */
void CAT(gru_cell_backward_, SUFFIX)(const T *restrict g_out, T *restrict g_h, const T *restrict gates,
                                     const T *restrict news, const T *restrict hp, T *restrict g_gi,
                                     T *restrict g_gh, long b, long h) {
    for (long i = 0; i < b; i++) {
        const T *g = gates + i * 3 * h, *nr = news + i * h, *hpr = hp + i * h, *gor = g_out + i * h;
        T *ghr = g_h + i * h, *gir = g_gi + i * 3 * h, *gg = g_gh + i * 3 * h;
#pragma omp simd
        for (long j = 0; j < h; j++) {
            T r = g[j], z = g[h + j], h_n = g[2 * h + j], n = nr[j];
            T g_new = gor[j] + ghr[j];
            T g_pre_n = g_new * (1 - z) * (1 - n * n);
            T g_pre_z = g_new * (hpr[j] - n) * z * (1 - z);
            T g_pre_r = g_pre_n * h_n * r * (1 - r);
            gir[j] = gg[j] = g_pre_r;
            gir[h + j] = gg[h + j] = g_pre_z;
            gir[2 * h + j] = g_pre_n;
            gg[2 * h + j] = g_pre_n * r;
            ghr[j] = g_new * z;
        }
    }
}
