/* The token screen's probe pass (scan_viz/retrieval/tokens.py, TokenIndex.probe_scores), built into the same
   library as scan_pairs.c.

   For each word w in order, and each of its probed centroids best first (weights[w * probe + j] is the weight of
   the word's j-th best centroid), every image in that centroid's inverted list that word w has not met yet adds the
   weight once. Because a word's centroids come best first, the first entry that meets an image holds the word's
   largest gain for it: the scatter-max of the tensor code without its (words x images) array. The additions run in
   the tensor code's order (word, centroid, list position), so the sums are the same to the bit.

   offsets: (C + 1,) int64 list bounds; images: the lists' image rows, int32; centroids: (n_words * probe,) int64;
   stamp: (n_images,) int32 scratch, all 0 on entry; out: (n_images,) float64, added to. */
#include <stdint.h>

void token_probe_scores(const int64_t *offsets, const int32_t *images, const int64_t *centroids,
                        const double *weights, int64_t n_words, int64_t probe, int32_t *stamp, double *out)
{
    for (int64_t w = 0; w < n_words; w++) {
        const int32_t mark = (int32_t)(w + 1);
        for (int64_t j = 0; j < probe; j++) {
            const int64_t c = centroids[w * probe + j];
            const double weight = weights[w * probe + j];
            const int64_t end = offsets[c + 1];
            for (int64_t e = offsets[c]; e < end; e++) {
                const int32_t image = images[e];
                if (stamp[image] != mark) {
                    stamp[image] = mark;
                    out[image] += weight;
                }
            }
        }
    }
}
