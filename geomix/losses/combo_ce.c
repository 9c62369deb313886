/* The Gram path's n x n work for one loss term, fused: build its logits from Gram blocks, take the soft-target
 * cross-entropy along rows and/or columns, and write the gradients of the blocks and coefficients in one pass.
 * Built and loaded by geomix/losses/native.py (docs/losses.md, "The fused Gram kernel").
 *
 *   z[i, j] = sum_k r_k[i] * c_k[j] * B_k[rho_k(i), gam_k(j)]    (then z[i, i] = diag[i] when diag is given)
 *
 * Forward: pass 1 builds z (kept for the backward) and the row and column maxima, pass 2 the two sums of
 * exponentials; lse_r[i] = logsumexp_j(s z[i, j]), lse_c[j] = logsumexp_i(s z[i, j]). Backward, one pass per
 * row: dz = a_i exp(s z - lse_r_i) + b_j exp(s z - lse_c_j) - (the targets, as sparse row corrections), then
 * every part's block gradient (scattered to the gathered rows and columns) and coefficient gradients.
 * float32 storage, as the loss's contract; the dot-product reductions accumulate in float32 per row like
 * torch's own. No OpenMP threads: one call runs on the calling thread (torch keeps its own pool for the
 * products), vectorised with glibc's libmvec expf. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#pragma omp declare simd notinbranch
extern float expf(float);

typedef struct {
    const float *block;      /* [rows, C] row-major */
    const int64_t *rho;      /* row gather (length R) or NULL */
    const int64_t *gam;      /* column gather (length C) or NULL */
    const int64_t *gam_inv;  /* its inverse (gam is a permutation) or NULL */
    const float *r;          /* [R] */
    const float *c;          /* [C] */
    float *dblock;           /* [rows, C], accumulated into, or NULL */
    float *dr;               /* [R], written, or NULL */
    float *dc;               /* [C], accumulated into, or NULL */
} Part;

static inline float maxf(float a, float b) { return a > b ? a : b; }

void combo_forward(const Part *parts, int64_t K, int64_t R, int64_t C, const float *diag, float s,
                   int rows_on, int cols_on, float *z, float *lse_r, float *lse_c, float *csum) {
    float *cmax = lse_c;
    for (int64_t j = 0; j < C; j++) { cmax[j] = -INFINITY; csum[j] = 0.f; }
    for (int64_t i = 0; i < R; i++) {
        float *zi = z + i * C;
        memset(zi, 0, (size_t)C * sizeof(float));
        for (int64_t k = 0; k < K; k++) {
            const Part *p = parts + k;
            const float *b = p->block + (p->rho ? p->rho[i] : i) * C;
            const float rk = p->r[i], *ck = p->c;
            if (p->gam) {
                const int64_t *g = p->gam;
                #pragma omp simd
                for (int64_t j = 0; j < C; j++) zi[j] += rk * ck[j] * b[g[j]];
            } else {
                #pragma omp simd
                for (int64_t j = 0; j < C; j++) zi[j] += rk * ck[j] * b[j];
            }
        }
        if (diag) zi[i] = diag[i];
        float m = zi[0];
        #pragma omp simd reduction(max:m)
        for (int64_t j = 0; j < C; j++) m = maxf(m, zi[j]);
        lse_r[i] = m;
        if (cols_on) {
            #pragma omp simd
            for (int64_t j = 0; j < C; j++) cmax[j] = maxf(cmax[j], zi[j]);
        }
    }
    /* s > 0, so the max of s z is s times the max of z. A NaN or Inf in z reaches the sums (exp(nan) and
     * exp(inf - inf) are NaN), so a non-finite logit always gives a non-finite loss. */
    for (int64_t i = 0; i < R; i++) {
        const float *zi = z + i * C;
        const float sm = s * lse_r[i];
        float acc = 0.f;
        if (rows_on && cols_on) {
            #pragma omp simd reduction(+:acc)
            for (int64_t j = 0; j < C; j++) {
                const float t = s * zi[j];
                acc += expf(t - sm);
                csum[j] += expf(t - s * cmax[j]);
            }
        } else if (rows_on) {
            #pragma omp simd reduction(+:acc)
            for (int64_t j = 0; j < C; j++) acc += expf(s * zi[j] - sm);
        } else {
            #pragma omp simd
            for (int64_t j = 0; j < C; j++) csum[j] += expf(s * zi[j] - s * cmax[j]);
        }
        lse_r[i] = sm + logf(acc);
    }
    for (int64_t j = 0; j < C; j++) lse_c[j] = s * cmax[j] + logf(csum[j]);
}

/* a: [R] (g s w_r) or NULL; b: [C] (g s w_c) or NULL; corrections: row i subtracts cval[p] at column ccol[p]
 * for p in cptr[i] .. cptr[i+1]. ddiag (when diag was given): [R], written. Returns sum(dz * z). */
double combo_backward(const Part *parts, int64_t K, int64_t R, int64_t C, float s, const float *z,
                      const float *lse_r, const float *a, const float *lse_c, const float *b,
                      const int64_t *cptr, const int64_t *ccol, const float *cval, float *ddiag,
                      float *work) {
    float *dz = work;            /* [C]: this row's dz */
    float *tmp = work + C;       /* [C]: a part's row contribution, before its column scatter */
    double zdz = 0.0;
    for (int64_t i = 0; i < R; i++) {
        const float *zi = z + i * C;
        if (a && b) {
            const float ai = a[i], li = lse_r[i];
            #pragma omp simd
            for (int64_t j = 0; j < C; j++) {
                const float t = s * zi[j];
                dz[j] = ai * expf(t - li) + b[j] * expf(t - lse_c[j]);
            }
        } else if (a) {
            const float ai = a[i], li = lse_r[i];
            #pragma omp simd
            for (int64_t j = 0; j < C; j++) dz[j] = ai * expf(s * zi[j] - li);
        } else {
            #pragma omp simd
            for (int64_t j = 0; j < C; j++) dz[j] = b[j] * expf(s * zi[j] - lse_c[j]);
        }
        for (int64_t q = cptr[i]; q < cptr[i + 1]; q++) dz[ccol[q]] -= cval[q];
        float acc = 0.f;
        #pragma omp simd reduction(+:acc)
        for (int64_t j = 0; j < C; j++) acc += dz[j] * zi[j];
        zdz += acc;
        if (ddiag) { ddiag[i] = dz[i]; dz[i] = 0.f; }
        for (int64_t k = 0; k < K; k++) {
            const Part *p = parts + k;
            const int64_t row = p->rho ? p->rho[i] : i;
            const float *bi = p->block + row * C;
            const float rk = p->r[i], *ck = p->c;
            if (p->gam) {
                const int64_t *g = p->gam, *gi = p->gam_inv;
                if (p->dr) {
                    float t = 0.f;
                    #pragma omp simd reduction(+:t)
                    for (int64_t j = 0; j < C; j++) t += ck[j] * bi[g[j]] * dz[j];
                    p->dr[i] = t;
                }
                if (p->dc) {
                    float *dc = p->dc;
                    #pragma omp simd
                    for (int64_t j = 0; j < C; j++) dc[j] += rk * bi[g[j]] * dz[j];
                }
                if (p->dblock) {  /* d B[row, g[j]] += rk c[j] dz[j], i.e. at column m, j = g_inv[m] */
                    float *db = p->dblock + row * C;
                    #pragma omp simd
                    for (int64_t j = 0; j < C; j++) tmp[j] = rk * ck[j] * dz[j];
                    #pragma omp simd
                    for (int64_t m = 0; m < C; m++) db[m] += tmp[gi[m]];
                }
            } else {
                if (p->dr) {
                    float t = 0.f;
                    #pragma omp simd reduction(+:t)
                    for (int64_t j = 0; j < C; j++) t += ck[j] * bi[j] * dz[j];
                    p->dr[i] = t;
                }
                if (p->dc) {
                    float *dc = p->dc;
                    #pragma omp simd
                    for (int64_t j = 0; j < C; j++) dc[j] += rk * bi[j] * dz[j];
                }
                if (p->dblock) {
                    float *db = p->dblock + row * C;
                    #pragma omp simd
                    for (int64_t j = 0; j < C; j++) db[j] += rk * ck[j] * dz[j];
                }
            }
        }
    }
    return zdz;
}
