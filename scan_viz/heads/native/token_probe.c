/* The token screen's probe pass (scan_viz/retrieval/tokens.py, TokenIndex.probe_scores), built into the same
   library as scan_pairs.c.

   For each word w in order, and each of its probed centroids best first (weights[w * probe + j] is the weight of
   the word's j-th best centroid), every image in that centroid's inverted list that word w has not met yet adds the
   weight once. Because a word's centroids come best first, the first entry that meets an image holds the word's
   largest gain for it: the scatter-max of the tensor code without its (words x images) array. The additions run in
   the tensor code's order (word, centroid, list position), so the sums are the same to the bit.

   Which images a word has met is one bit per image (a 1M-image gallery: 125 KB, which stays in the core's L2
   cache; an int32 stamp per image did not, and cost a second cache miss per entry), cleared per word. The entry
   PROBE_AHEAD places on is prefetched: the lists' images lie far apart in out[], so each addition is a cache miss
   the loop otherwise waits for (1M images, 5.2M entries per query: 56-67 ms -> 32 ms on one core, measured).

   With OpenMP threads (more than PROBE_PARALLEL images), thread t owns the images of one share of [0, n_images),
   cut at multiples of 64 so that no two threads write one word of bits, and walks only its part of each list,
   found by binary search: the lists' image rows rise (what load_token_index checks). Each image's sum still runs in
   the same order, on one thread.

   offsets: (C + 1,) int64 list bounds; images: the lists' image rows, int32, rising within each list; centroids:
   (n_words * probe,) int64; bits: ((n_images + 63) / 64,) uint64 scratch; out: (n_images,) float64, added to. */
#include <math.h>
#include <stdint.h>

#define PROBE_AHEAD 32
#define PROBE_PARALLEL 65536

static int64_t probe_first_at_least(const int32_t *images, int64_t lo, int64_t hi, int64_t image)
{
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (images[mid] < image)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void token_probe_scores(const int64_t *offsets, const int32_t *images, const int64_t *centroids,
                        const double *weights, int64_t n_words, int64_t probe, int64_t n_images, uint64_t *bits,
                        double *out)
{
    const int64_t n_bits = (n_images + 63) / 64;
#pragma omp parallel if (n_images >= PROBE_PARALLEL)
    {
        const int64_t n_threads = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t b_lo = n_bits * t / n_threads, b_hi = n_bits * (t + 1) / n_threads;
        const int64_t lo = b_lo * 64, hi = b_hi * 64 < n_images ? b_hi * 64 : n_images;
        for (int64_t w = 0; w < n_words; w++) {
            memset(bits + b_lo, 0, (size_t)(b_hi - b_lo) * sizeof(uint64_t));
            for (int64_t j = 0; j < probe; j++) {
                const int64_t c = centroids[w * probe + j];
                const double weight = weights[w * probe + j];
                int64_t start = offsets[c], end = offsets[c + 1];
                if (n_threads > 1) {
                    start = probe_first_at_least(images, start, end, lo);
                    end = probe_first_at_least(images, start, end, hi);
                }
                for (int64_t e = start; e < end; e++) {
                    if (e + PROBE_AHEAD < end)
                        __builtin_prefetch(out + images[e + PROBE_AHEAD], 1, 3);
                    const int32_t image = images[e];
                    const uint64_t bit = (uint64_t)1 << (image & 63);
                    if (!(bits[image >> 6] & bit)) {
                        bits[image >> 6] |= bit;
                        out[image] += weight;
                    }
                }
            }
        }
    }
}

/* The token screen's exact code scoring (TokenIndex.code_scores) with int8 residual codes: for each listed image and
   each word, the best over the image's regions of

       table[code, w] + (sum_k z[k] basis_w[k, w]) + mean_w[w]

   (the cosine of the word with the region's centroid plus the one with its decoded residual; the tensor code adds
   them in this order). A padded region (code >= n_centroids) is skipped, so an image with none gets -inf, as the
   tensor code's -inf row gives. The tensor code forms (images x regions x words) arrays in memory; this keeps one
   region's sums and the image's running maxima in vector registers, words along the lanes. The residual sum runs
   over k in TOKEN_CHAINS interleaved partial sums, added at the end; the tensor code's matrix product may sum in
   another order (float rounding).

   rows: (n_rows,) int64 image rows; codes: (n_images, n_reg) uint16; residuals: (n_images, n_reg, r) int8;
   table: (n_centroids, n_lanes) float32; basis_w: (r, n_lanes) float32 (the int8 step sizes folded in);
   mean_w: (n_lanes,) float32; out: (n_rows, n_lanes) float32. The words are padded to n_lanes, a multiple of 8
   (the caller's padding lanes are 0 and its results there are ignored). Returns 1 when n_lanes is not a multiple
   of 8 or exceeds the kernel's limit, or r exceeds TOKEN_MAX_R. */
#define TOKEN_MAX_LANES 1024

typedef float tok_v8 __attribute__((vector_size(32)));
typedef float tok_v8u __attribute__((vector_size(32), aligned(4)));  /* for loads and stores at any float */
typedef int tok_i8 __attribute__((vector_size(32)));

/* residual directions a region may have (the index's N_RESIDUAL is 32) */
#define TOKEN_MAX_R 1024
/* independent partial sums per lane block: a residual sum is one chain of r multiply-adds per block, and with one
   accumulator each step waited for the last (4 cycles), so 2 blocks of 16 words ran at a quarter of the core's
   multiply-add rate: 1.4 us per image of 36 regions (r = 32), measured */
#define TOKEN_CHAINS 4

static inline __attribute__((always_inline)) void token_code_image(
    const uint16_t *code, const int8_t *z, int64_t n_reg, int64_t r, const float *table, int64_t n_centroids,
    const float *basis_w, const float *mean_w, int64_t nv, float *out)
{
    tok_v8 best[TOKEN_MAX_LANES / 8], acc[TOKEN_CHAINS][TOKEN_MAX_LANES / 8];
    float zf[TOKEN_MAX_R];
    const tok_v8 minus_inf = (tok_v8){0} - INFINITY;
    for (int64_t v = 0; v < nv; v++)
        best[v] = minus_inf;
    for (int64_t j = 0; j < n_reg; j++, z += r) {
        if ((int64_t)code[j] >= n_centroids)
            continue;
        for (int64_t k = 0; k < r; k++)  /* widened once, in vector registers */
            zf[k] = (float)z[k];
        for (int c = 0; c < TOKEN_CHAINS; c++)
            for (int64_t v = 0; v < nv; v++)
                acc[c][v] = (tok_v8){0};
        int64_t k = 0;
        for (; k + TOKEN_CHAINS <= r; k += TOKEN_CHAINS)
            for (int c = 0; c < TOKEN_CHAINS; c++) {
                const tok_v8 zk = (tok_v8){0} + zf[k + c];
                const tok_v8u *bw = (const tok_v8u *)(basis_w + (k + c) * nv * 8);
                for (int64_t v = 0; v < nv; v++)
                    acc[c][v] += zk * bw[v];
            }
        for (; k < r; k++) {
            const tok_v8 zk = (tok_v8){0} + zf[k];
            const tok_v8u *bw = (const tok_v8u *)(basis_w + k * nv * 8);
            for (int64_t v = 0; v < nv; v++)
                acc[0][v] += zk * bw[v];
        }
        const tok_v8u *t = (const tok_v8u *)(table + (int64_t)code[j] * nv * 8);
        const tok_v8u *m = (const tok_v8u *)mean_w;
        for (int64_t v = 0; v < nv; v++) {
            const tok_v8 sum = (acc[0][v] + acc[1][v]) + (acc[2][v] + acc[3][v]);
            const tok_v8 value = (t[v] + sum) + m[v];
            const tok_i8 more = value > best[v];
            best[v] = (tok_v8)(((tok_i8)value & more) | ((tok_i8)best[v] & ~more));
        }
    }
    tok_v8u *o = (tok_v8u *)out;
    for (int64_t v = 0; v < nv; v++)
        o[v] = best[v];
}

int token_code_best(const int64_t *rows, int64_t n_rows, const uint16_t *codes, const int8_t *residuals,
                    int64_t n_reg, int64_t r, const float *table, int64_t n_centroids, const float *basis_w,
                    const float *mean_w, int64_t n_lanes, float *out)
{
    if (n_lanes < 8 || n_lanes > TOKEN_MAX_LANES || n_lanes % 8 || r < 0 || r > TOKEN_MAX_R)
        return 1;
    const int64_t nv = n_lanes / 8;
#pragma omp parallel for schedule(static) if (n_rows >= 2048)
    for (int64_t i = 0; i < n_rows; i++) {
        const uint16_t *code = codes + rows[i] * n_reg;
        const int8_t *z = residuals + rows[i] * n_reg * r;
        float *o = out + i * n_lanes;
        if (i + 2 < n_rows) { /* rows lie anywhere in the index: ask for the one after next now */
            const char *next = (const char *)(residuals + rows[i + 2] * n_reg * r);
            for (int64_t b = 0; b < n_reg * r; b += 64)
                __builtin_prefetch(next + b, 0, 0);
            __builtin_prefetch(codes + rows[i + 2] * n_reg, 0, 0);
        }
        /* a constant lane count lets the compiler keep acc and best in registers (captions of up to 32 words) */
        switch (nv) {
        case 1: token_code_image(code, z, n_reg, r, table, n_centroids, basis_w, mean_w, 1, o); break;
        case 2: token_code_image(code, z, n_reg, r, table, n_centroids, basis_w, mean_w, 2, o); break;
        case 3: token_code_image(code, z, n_reg, r, table, n_centroids, basis_w, mean_w, 3, o); break;
        case 4: token_code_image(code, z, n_reg, r, table, n_centroids, basis_w, mean_w, 4, o); break;
        default: token_code_image(code, z, n_reg, r, table, n_centroids, basis_w, mean_w, nv, o);
        }
    }
    return 0;
}
