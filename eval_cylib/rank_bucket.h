/* Distance buckets for rank_cy.pyx: one expression, used for the true matches and for the whole row. */
#include <stdint.h>

/* Monotone bucket of distance d for a query whose matches span [lo, hi]:
 * trunc(clamp((d - lo) * scale + 1, 0, top + 1)) if d <= hi, else (and for NaN) top + 1. */
static inline int32_t rank_bucket(float d, float lo, float scale, float hi, int32_t top)
{
    float x = (d - lo) * scale + 1.0f;
    float cap = (float)(top + 1);
    x = x > 0.0f ? x : 0.0f;
    x = x < cap ? x : cap;
    return d <= hi ? (int32_t)x : top + 1;
}

/* rank_bucket of d[0:n] into out[0:n]; a plain loop the compiler vectorises. */
static void rank_bucket_block(const float *d, int64_t n, float lo, float scale, float hi, int32_t top,
                              int32_t *out)
{
    float cap = (float)(top + 1);
    for (int64_t i = 0; i < n; i++) {
        float x = (d[i] - lo) * scale + 1.0f;
        x = x > 0.0f ? x : 0.0f;
        x = x < cap ? x : cap;
        out[i] = d[i] <= hi ? (int32_t)x : top + 1;
    }
}
