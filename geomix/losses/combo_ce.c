/* The Gram path's n x n work for one loss term, fused: build its logits from Gram blocks, take the soft-target
 * cross-entropy along rows and/or columns, and write the gradients of the blocks and coefficients.
 * Built and loaded by geomix/losses/native.py (docs/losses.md, "The fused Gram kernel").
 *
 *   z[i, j] = sum_k r_k[i] * c_k[j] * B_k[rho_k(i), gam_k(j)]    (then z[i, i] = diag[i] when diag is given)
 *
 * Forward: pass 1 builds z (kept for the backward) with the row and column maxima, pass 2 the two sums of
 * exponentials: lse_r[i] = logsumexp_j(s z[i, j]), lse_c[j] = logsumexp_i(s z[i, j]). Backward: pass 1
 * overwrites z with dz = a_i exp(s z - lse_r_i) + b_j exp(s z - lse_c_j) - (the targets, sparse corrections
 * per row); pass 2 goes over the blocks' rows m and adds every part's share, reading dz at the row that
 * gathers m (rho_inv), so each thread owns the block rows it writes. Rows are split over the threads of an
 * OpenMP team (see run); column sums go to per-thread buffers, then are summed.
 * float32 storage and per-row float32 sums, as torch's ops; vectorised with glibc's libmvec expf. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#pragma omp declare simd notinbranch
extern float expf(float);

typedef struct {
    const float *block;      /* [R, C] row-major */
    const int64_t *rho;      /* row gather or NULL */
    const int64_t *rho_inv;  /* its inverse or NULL */
    const int64_t *gam;      /* column gather or NULL */
    const int64_t *gam_inv;  /* its inverse or NULL */
    const float *r;          /* [R] */
    const float *c;          /* [C] */
    float *dblock;           /* [R, C] or NULL: written by the block's first part, added to by the others */
    float *dr;               /* [R], written, or NULL */
    float *dc;               /* [C], written, or NULL */
    int64_t first;           /* this part is the first on its block (it writes dblock rather than adds) */
} Part;

typedef struct {
    const Part *parts;
    int64_t K, R, C, T;
    const float *diag;
    float s;
    int rows_on, cols_on;
    float *z, *lse_r, *lse_c;
    float *col_t;          /* [T, C]: per-thread column maxima, then sums */
    const float *cmax;     /* [C]: the column maxima, after the first pass */
    const float *a, *b;    /* backward: g s w_r [R] and g s w_c [C], either NULL */
    int64_t Kr;            /* backward: the row direction's targets, [Kr, R] columns and masses (g s v) */
    const int64_t *lab_r;
    const float *val_r;
    float *ddiag;
    double *zdz_t;         /* [T] */
    float *dc_t;           /* [T, K, C] */
} Job;

typedef struct {
    Job *job;
    int64_t t, lo, hi;
} Task;

static inline float maxf(float a, float b) { return a > b ? a : b; }

/* fn over rows split in contiguous chunks, one per thread of the OpenMP team (torch's own runtime: the library
 * is built with -fopenmp only where torch's libgomp is the one loaded, so the team is torch's thread pool).
 * Each fn adds into its thread's buffers, which the caller set up for all T threads. */
static void run(Job *job, void *(*fn)(void *)) {
#ifdef _OPENMP
    #pragma omp parallel num_threads(job->T)
    {
        const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num(), chunk = (job->R + nt - 1) / nt;
        Task task = {job, t, t * chunk < job->R ? t * chunk : job->R,
                     (t + 1) * chunk < job->R ? (t + 1) * chunk : job->R};
        fn(&task);
    }
#else
    Task task = {job, 0, 0, job->R};
    fn(&task);
#endif
}

static void *build_rows(void *arg) {
    Task *task = arg;
    const Job *J = task->job;
    const int64_t C = J->C;
    float *cmax = J->col_t + task->t * C;
    for (int64_t i = task->lo; i < task->hi; i++) {
        float *zi = J->z + i * C;
        memset(zi, 0, (size_t)C * sizeof(float));
        for (int64_t k = 0; k < J->K; k++) {
            const Part *p = J->parts + k;
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
        if (J->diag) zi[i] = J->diag[i];
        float m = zi[0];
        #pragma omp simd reduction(max:m)
        for (int64_t j = 0; j < C; j++) m = maxf(m, zi[j]);
        J->lse_r[i] = m;
        if (J->cols_on) {
            #pragma omp simd
            for (int64_t j = 0; j < C; j++) cmax[j] = maxf(cmax[j], zi[j]);
        }
    }
    return NULL;
}

/* s > 0, so the max of s z is s times the max of z. A NaN or +Inf in z reaches the sums (exp(nan) and
 * exp(inf - inf) are NaN), so such a logit gives a non-finite loss, as torch's log-sum-exp does. */
static void *sum_rows(void *arg) {
    Task *task = arg;
    const Job *J = task->job;
    const int64_t C = J->C;
    const float s = J->s, *cmax = J->cmax;
    float *csum = J->col_t + task->t * C;
    for (int64_t i = task->lo; i < task->hi; i++) {
        const float *zi = J->z + i * C;
        const float sm = s * J->lse_r[i];
        float acc = 0.f;
        if (J->rows_on && J->cols_on) {
            #pragma omp simd reduction(+:acc)
            for (int64_t j = 0; j < C; j++) {
                const float t = s * zi[j];
                acc += expf(t - sm);
                csum[j] += expf(t - s * cmax[j]);
            }
        } else if (J->rows_on) {
            #pragma omp simd reduction(+:acc)
            for (int64_t j = 0; j < C; j++) acc += expf(s * zi[j] - sm);
        } else {
            #pragma omp simd
            for (int64_t j = 0; j < C; j++) csum[j] += expf(s * zi[j] - s * cmax[j]);
        }
        J->lse_r[i] = sm + logf(acc);
    }
    return NULL;
}

static int64_t team(int64_t threads) {
#ifdef _OPENMP
    return threads < 1 ? 1 : (threads > 64 ? 64 : threads);
#else
    (void)threads;
    return 1;
#endif
}

void combo_forward(const Part *parts, int64_t K, int64_t R, int64_t C, const float *diag, float s,
                   int rows_on, int cols_on, float *z, float *lse_r, float *lse_c, int64_t threads) {
    const int64_t T = team(threads);
    float *col_t = malloc((size_t)(T * C) * sizeof(float));
    for (int64_t j = 0; j < T * C; j++) col_t[j] = -INFINITY;
    Job J = {.parts = parts, .K = K, .R = R, .C = C, .T = T, .diag = diag, .s = s, .rows_on = rows_on,
             .cols_on = cols_on, .z = z, .lse_r = lse_r, .lse_c = lse_c, .col_t = col_t, .cmax = lse_c};
    run(&J, build_rows);
    for (int64_t j = 0; j < C; j++) {
        float m = col_t[j];
        for (int64_t t = 1; t < T; t++) m = maxf(m, col_t[t * C + j]);
        lse_c[j] = m;  /* the column maxima, until the sums are in */
    }
    memset(col_t, 0, (size_t)(T * C) * sizeof(float));
    run(&J, sum_rows);
    for (int64_t j = 0; j < C; j++) {
        float acc = 0.f;
        for (int64_t t = 0; t < T; t++) acc += col_t[t * C + j];
        lse_c[j] = s * lse_c[j] + logf(acc);
    }
    free(col_t);
}

static void *grad_rows(void *arg) {
    Task *task = arg;
    const Job *J = task->job;
    const int64_t C = J->C;
    const float s = J->s, *a = J->a, *b = J->b, *lse_c = J->lse_c;
    double zdz = 0.0;
    for (int64_t i = task->lo; i < task->hi; i++) {
        float *zi = J->z + i * C;  /* z in, dz out */
        float acc = 0.f;  /* sum(dz z) of the softmax part: the targets' share is the caller's */
        const float ai = a ? a[i] : 0.f, li = J->lse_r[i];
        if (a && b) {
            #pragma omp simd reduction(+:acc)
            for (int64_t j = 0; j < C; j++) {
                const float t = s * zi[j], d = ai * expf(t - li) + b[j] * expf(t - lse_c[j]);
                acc += d * zi[j];
                zi[j] = d;
            }
        } else if (a) {
            #pragma omp simd reduction(+:acc)
            for (int64_t j = 0; j < C; j++) {
                const float d = ai * expf(s * zi[j] - li);
                acc += d * zi[j];
                zi[j] = d;
            }
        } else {
            #pragma omp simd reduction(+:acc)
            for (int64_t j = 0; j < C; j++) {
                const float d = b[j] * expf(s * zi[j] - lse_c[j]);
                acc += d * zi[j];
                zi[j] = d;
            }
        }
        for (int64_t q = 0; q < J->Kr; q++) zi[J->lab_r[q * J->R + i]] -= J->val_r[q * J->R + i];
        zdz += acc;
    }
    J->zdz_t[task->t] += zdz;
    return NULL;
}

/* Block row m of part p, gathered by row i of z: its dr[i], its share of dc, and dB[m, :] (written by the
 * block's first part, added by the rest). One pass over the row; a column gather adds a scatter pass. */
static void *grad_blocks(void *arg) {
    Task *task = arg;
    const Job *J = task->job;
    const int64_t C = J->C;
    float tmp[C], sink[C];  /* a gathered part's row before its scatter; where an unwanted output goes */
    for (int64_t k = 0; k < J->K; k++) {
        const Part *p = J->parts + k;
        float *dc = p->dc ? J->dc_t + (task->t * J->K + k) * C : sink;
        const int write = p->first || !p->dblock;
        for (int64_t m = task->lo; m < task->hi; m++) {
            const int64_t i = p->rho_inv ? p->rho_inv[m] : m;
            const float *dz = J->z + i * C, *bm = p->block + m * C, *ck = p->c;
            const float rk = p->r[i];
            const int64_t *g = p->gam, *gi = p->gam_inv;
            float *db = p->dblock ? p->dblock + m * C : sink;
            float t = 0.f;
            if (g) {
                #pragma omp simd reduction(+:t)
                for (int64_t j = 0; j < C; j++) {
                    const float v = dz[j] * bm[g[j]];
                    t += ck[j] * v;
                    dc[j] += rk * v;
                    tmp[j] = rk * ck[j] * dz[j];
                }
                if (write) {  /* dB[m, g[j]] += tmp[j]: at column u, j = g_inv[u] */
                    #pragma omp simd
                    for (int64_t u = 0; u < C; u++) db[u] = tmp[gi[u]];
                } else {
                    #pragma omp simd
                    for (int64_t u = 0; u < C; u++) db[u] += tmp[gi[u]];
                }
            } else if (write) {
                #pragma omp simd reduction(+:t)
                for (int64_t j = 0; j < C; j++) {
                    const float v = dz[j] * bm[j];
                    t += ck[j] * v;
                    dc[j] += rk * v;
                    db[j] = rk * ck[j] * dz[j];
                }
            } else {
                #pragma omp simd reduction(+:t)
                for (int64_t j = 0; j < C; j++) {
                    const float v = dz[j] * bm[j];
                    t += ck[j] * v;
                    dc[j] += rk * v;
                    db[j] += rk * ck[j] * dz[j];
                }
            }
            if (p->dr) p->dr[i] = t;
        }
    }
    return NULL;
}

/* z: the forward's logits, overwritten with dz. Targets: row i loses val_r[q, i] at column lab_r[q, i]; column j
 * loses val_c[q, j] at row lab_c[q, j]. Returns sum(dz * z) over the softmax part of dz (the targets' part,
 * -sum(val z[target]), the caller has from the forward): the scale's gradient times s. */
double combo_backward(const Part *parts, int64_t K, int64_t R, int64_t C, float s, float *z, const float *lse_r,
                      const float *a, const float *lse_c, const float *b, int64_t Kr, const int64_t *lab_r,
                      const float *val_r, int64_t Kc, const int64_t *lab_c, const float *val_c, float *ddiag,
                      int64_t threads) {
    const int64_t T = team(threads);
    double zdz_t[64] = {0};
    float *dc_t = calloc((size_t)(T * K * C), sizeof(float));
    Job J = {.parts = parts, .K = K, .R = R, .C = C, .T = T, .s = s, .z = z, .lse_r = (float *)lse_r,
             .lse_c = (float *)lse_c, .a = a, .b = b, .Kr = Kr, .lab_r = lab_r, .val_r = val_r,
             .ddiag = ddiag, .zdz_t = zdz_t, .dc_t = dc_t};
    run(&J, grad_rows);
    for (int64_t q = 0; q < Kc; q++)
        for (int64_t j = 0; j < C; j++) z[lab_c[q * C + j] * C + j] -= val_c[q * C + j];
    if (ddiag)  /* the diagonal was set, not built: its gradient goes there, none to the parts */
        for (int64_t i = 0; i < R; i++) { ddiag[i] = z[i * C + i]; z[i * C + i] = 0.f; }
    run(&J, grad_blocks);
    for (int64_t k = 0; k < K; k++) {
        if (!parts[k].dc) continue;
        for (int64_t j = 0; j < C; j++) {
            float acc = 0.f;
            for (int64_t t = 0; t < T; t++) acc += dc_t[(t * K + k) * C + j];
            parts[k].dc[j] = acc;
        }
    }
    free(dc_t);
    double zdz = 0.0;
    for (int64_t t = 0; t < T; t++) zdz += zdz_t[t];
    return zdz;
}
