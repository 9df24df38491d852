/* Shared numerical helpers of the native kernels, and the real eigenvalues of an upper
 * Hessenberg matrix by a Sturm sequence (solvergen/runtime/native.py puts this file after portable.h).
 *
 * The Sturm path: the characteristic polynomial's coefficients by the Hessenberg recurrence,
 * its distinct real roots isolated on Sturm sequence sign counts (multisection on the CPU, bisection
 * on CUDA) and refined by safeguarded Newton on the polynomial (rtsafe, two roots at a time). It finds only the real eigenvalues, which is
 * all the read-off uses; QR (stage.h's hqr) finds all of them. The coefficients of a
 * characteristic polynomial lose accuracy as the size grows, so native.py uses it only up to
 * STURM_MAX_BASIS (chosen by measurement: benchmarks/README.md, "Native kernels"). Where the sequence is
 * degenerate (a multiple root, a leading coefficient lost to cancellation) it returns -1 and the
 * caller uses QR. sturm_prepare (the polynomial and its sequence) and sturm_roots (isolation and
 * refinement) are apart: the CPU batch prepares four instances' at once (stage.h's sturm_prepare_lanes).
 */
/* fmax and fmin (a NaN argument gives the other), inline: libm's are calls. */
SG_FN inline double max_of(double a, double b) { return (a >= b || b != b) ? a : b; }
SG_FN inline double min_of(double a, double b) { return (a <= b || b != b) ? a : b; }

#ifndef STURM_MAX_BASIS
#define STURM_MAX_BASIS 12
#endif
#ifndef STURM_ROOT_TOL
#define STURM_ROOT_TOL 1e-12 /* a root's last Newton correction, relative (the eigenpair Newton refines it) */
#endif
#define STURM_LOST 1e-13 /* a remainder whose leading coefficient is below this share of its largest: degenerate */

/* p (ascending coefficients, monic of degree n) = det(lambda I - h), h upper Hessenberg (n x n). */
SG_FN void hessenberg_charpoly(const double *h, int n, double *p) {
    double q[(STURM_MAX_BASIS + 1) * (STURM_MAX_BASIS + 1)]; /* q_k: row k, det of the leading k x k */
    int w = n + 1;
    for (int i = 0; i < w * w; i++) q[i] = 0.0;
    q[0] = 1.0;
    for (int k = 1; k <= n; k++) {
        double *qk = q + k * w;
        const double *prev = q + (k - 1) * w;
        double diag = h[(k - 1) * n + (k - 1)];
        for (int i = 0; i <= k; i++) qk[i] = (i > 0 ? prev[i - 1] : 0.0) - (i < k ? diag * prev[i] : 0.0);
        double product = 1.0;
        for (int i = k - 1; i >= 1; i--) { /* - h[i-1][k-1] (prod_{j=i}^{k-1} h[j][j-1]) q_{i-1} */
            product *= h[i * n + (i - 1)];
            double t = h[(i - 1) * n + (k - 1)] * product;
            if (t == 0.0) continue;
            const double *qi = q + (i - 1) * w;
            for (int j = 0; j < i; j++) qk[j] -= t * qi[j];
        }
    }
    for (int i = 0; i <= n; i++) p[i] = q[n * w + i];
}

/* The Sturm sequence of p as linear quotients: s_0 = p, s_1 = p', s_{k+1} = q_k s_k - s_{k-1}
 * with q_k = a[k] lambda + b[k] (each remainder one degree lower: the generic case), s_n = c.
 * 0 where a remainder loses its degree. */
typedef struct { int n; double seq[(STURM_MAX_BASIS + 1) * (STURM_MAX_BASIS + 1)]; } sturm_t; /* s_k: row k, degree n - k */

SG_FN int sturm_build(const double *p, int n, sturm_t *s) {
    int w = n + 1;
    s->n = n;
    for (int i = 0; i <= n; i++) s->seq[i] = p[i];
    for (int i = 0; i < n; i++) s->seq[w + i] = (i + 1) * p[i + 1];
    for (int k = 2; k <= n; k++) { /* s_k = -rem(s_{k-2}, s_{k-1}): degrees n-k+2, n-k+1 -> n-k */
        const double *u = s->seq + (k - 2) * w, *v = s->seq + (k - 1) * w;
        double *r = s->seq + k * w;
        int du = n - k + 2, dv = n - k + 1;
        double lead = v[dv], size = 0.0;
        for (int i = 0; i <= dv; i++) size = fabs(v[i]) > size ? fabs(v[i]) : size; /* (max_of, as a select) */
        if (!(fabs(lead) > STURM_LOST * size) || !isfinite(lead)) return 0;
        double a = u[du] / lead;
        double b = (u[du - 1] - a * v[dv - 1]) / lead;
        for (int i = 0; i <= du - 2; i++) r[i] = -(u[i] - b * v[i] - (i > 0 ? a * v[i - 1] : 0.0));
    }
    /* The last, a constant, is 0 for a multiple root; rounded to a few ulps instead, its sign only
     * decides whether the root is counted once or twice (the eigenpair refinement and the polish
     * take it from there). */
    if (!(fabs(s->seq[n * w]) > 0.0) || !isfinite(s->seq[n * w])) return 0;
    return 1;
}

SG_FN double horner(const double *p, int degree, double x) {
    double r = p[degree];
    for (int i = degree - 1; i >= 0; i--) r = r * x + p[i];
    return r;
}

/* Sign changes of the Sturm sequence at STURM_POINTS points x[r] at once, each polynomial by Horner (the
 * three-term recurrence is cheaper but loses the signs far from the roots), zeros skipped. On the CPU the
 * points are the lanes of one vector (gcc's and clang's vector extensions: the loop vectorisers left this
 * scalar and branchy): a Horner chain is latency-bound, so that 8 points cost about what one did. On CUDA
 * (a thread is scalar) one point: bisection. */
#ifndef STURM_POINTS
#if SG_CUDA
#define STURM_POINTS 1
#define STURM_CUTS 64 /* bisections of one interval before its roots count as one */
#else
#define STURM_POINTS 8
#define STURM_CUTS 21 /* cuts into 9 (9^21 > 2^64) */
#endif
#endif
#if STURM_POINTS > 1
typedef double sturm_points __attribute__((vector_size(8 * STURM_POINTS)));
typedef int64_t sturm_mask __attribute__((vector_size(8 * STURM_POINTS))); /* (a comparison: -1 where true) */
SG_FN void sturm_changes(const sturm_t *SG_RESTRICT s, const double *SG_RESTRICT x_in, double *SG_RESTRICT changes) {
    const int w = s->n + 1;
    sturm_points x, zero = {0.0};
    sturm_mask count = {0}, last_negative = {0}, last_nonzero = {0}; /* (the last nonzero value's sign) */
    memcpy(&x, x_in, sizeof(x));
    for (int k = 0; k <= s->n; k++) {
        const double *q = s->seq + k * w;
        sturm_points v = zero + q[s->n - k];
        for (int i = s->n - k - 1; i >= 0; i--) v = v * x + q[i];
        const sturm_mask negative = v < 0.0, nonzero = v != 0.0; /* (a NaN: nonzero, not negative) */
        count -= nonzero & last_nonzero & (negative ^ last_negative);
        last_negative = (negative & nonzero) | (last_negative & ~nonzero);
        last_nonzero |= nonzero;
    }
    for (int r = 0; r < STURM_POINTS; r++) changes[r] = (double)count[r];
}
#else
SG_FN void sturm_changes(const sturm_t *s, const double *x, double *changes) {
    int count = 0, w = s->n + 1;
    double last = 0.0;
    for (int k = 0; k <= s->n; k++) {
        double v = horner(s->seq + k * w, s->n - k, x[0]);
        if (v != 0.0) {
            if (last != 0.0 && (v < 0) != (last < 0)) count++;
            last = v;
        }
    }
    changes[0] = count;
}
#endif

#if STURM_POINTS > 1
/* a where m (a comparison's -1), else b */
SG_FN inline sturm_points sturm_select(sturm_mask m, sturm_points a, sturm_points b) {
    return (sturm_points)(((sturm_mask)a & m) | ((sturm_mask)b & ~m));
}
SG_FN inline sturm_points sturm_abs(sturm_points v) { return sturm_select(v < 0.0, -v, v); }

/* The roots of p in STURM_POINTS brackets at once, [lo[r], hi[r]] (p changes sign there), each a lane of one
 * vector: Newton where it lands inside the bracket and shrinks it fast enough, else bisection (Numerical
 * Recipes' rtsafe). Each lane takes the steps it would take alone (sturm_refine_pair's, CUDA's, below), the
 * group as many as its slowest root (the 5-point, two roots at a time before: 1,250 -> 870 cycles per instance). */
SG_FN void sturm_refine_lanes(const double *p, int n, const double *lo_in, const double *hi_in, double *root_out) {
    sturm_points lo, hi, zero = {0.0};
    memcpy(&lo, lo_in, sizeof(lo));
    memcpy(&hi, hi_in, sizeof(hi));
    sturm_points f = zero + p[n];
    for (int i = n - 1; i >= 0; i--) f = f * lo + p[i];
    sturm_mask done = f == 0.0, swap = f > 0.0; /* p(lo) < 0 < p(hi) */
    sturm_points root = lo;
    const sturm_points low = sturm_select(swap, hi, lo);
    hi = sturm_select(swap, lo, hi);
    lo = low;
    sturm_points x = 0.5 * (lo + hi), dx = hi - lo, df = zero;
    dx = sturm_abs(dx);
    sturm_points dx_old = dx;
    f = zero + p[n];
    for (int i = n - 1; i >= 0; i--) { df = df * x + f; f = f * x + p[i]; }
    for (int it = 0; it < 100; it++) {
        int all = 1;
        for (int r = 0; r < STURM_POINTS; r++) all &= done[r] != 0;
        if (all) break;
        const sturm_points a = (x - hi) * df - f, b = (x - lo) * df - f, twice = 2.0 * f, slope = dx_old * df;
        const sturm_mask bisect = (a * b > 0.0) | (sturm_abs(twice) > sturm_abs(slope));
        const sturm_points half = 0.5 * (hi - lo), newton = f / df;
        dx_old = sturm_select(done, dx_old, dx);
        dx = sturm_select(done, dx, sturm_select(bisect, half, newton));
        x = sturm_select(done, x, sturm_select(bisect, lo + dx, x - dx));
        root = sturm_select(done, root, x);
        const sturm_points size = sturm_abs(x), step = sturm_abs(dx);
        done |= step <= STURM_ROOT_TOL * size;
        sturm_points g = zero + p[n], dg = zero;
        for (int i = n - 1; i >= 0; i--) { dg = dg * x + g; g = g * x + p[i]; }
        f = sturm_select(done, f, g);
        df = sturm_select(done, df, dg);
        lo = sturm_select(~done & (g < 0.0), x, lo);
        hi = sturm_select(~done & (g > 0.0), x, hi);
        done |= g == 0.0;
    }
    memcpy(root_out, &root, sizeof(root));
}
#else
/* The roots of p in two brackets at once, [lo[r], hi[r]] (p changes sign there; r = 0, 1): Newton where it
 * lands inside the bracket and shrinks it fast enough, else bisection (Numerical Recipes' rtsafe). Each
 * root takes the steps it would take alone; the two are interleaved so that their Horner chains (latency-
 * bound: ten dependent multiply-adds per evaluation) overlap (the 5-point: 1,890 -> 1,520 cycles per instance). */
SG_FN void sturm_refine_pair(const double *p, int n, const double *lo_in, const double *hi_in, double *root) {
    double lo[2], hi[2], x[2], dx_old[2], dx[2], f[2], df[2];
    int done[2];
    for (int r = 0; r < 2; r++) {
        lo[r] = lo_in[r];
        hi[r] = hi_in[r];
        const double flo = horner(p, n, lo[r]);
        done[r] = flo == 0.0;
        root[r] = lo[r];
        if (flo > 0.0) { double t = lo[r]; lo[r] = hi[r]; hi[r] = t; } /* p(lo) < 0 < p(hi) */
        x[r] = 0.5 * (lo[r] + hi[r]);
        dx_old[r] = dx[r] = fabs(hi[r] - lo[r]);
    }
    for (int r = 0; r < 2; r++) { f[r] = p[n]; df[r] = 0.0; }
    for (int i = n - 1; i >= 0; i--)
        for (int r = 0; r < 2; r++) { df[r] = df[r] * x[r] + f[r]; f[r] = f[r] * x[r] + p[i]; }
    for (int it = 0; it < 100 && !(done[0] && done[1]); it++) {
        for (int r = 0; r < 2; r++) {
            if (done[r]) continue;
            if ((((x[r] - hi[r]) * df[r] - f[r]) * ((x[r] - lo[r]) * df[r] - f[r]) > 0.0) ||
                (fabs(2.0 * f[r]) > fabs(dx_old[r] * df[r]))) {
                dx_old[r] = dx[r];
                dx[r] = 0.5 * (hi[r] - lo[r]);
                x[r] = lo[r] + dx[r];
            } else {
                dx_old[r] = dx[r];
                dx[r] = f[r] / df[r];
                x[r] -= dx[r];
            }
            root[r] = x[r];
            if (fabs(dx[r]) <= STURM_ROOT_TOL * fabs(x[r])) done[r] = 1;
        }
        double g[2], dg[2];
        for (int r = 0; r < 2; r++) { g[r] = p[n]; dg[r] = 0.0; }
        for (int i = n - 1; i >= 0; i--)
            for (int r = 0; r < 2; r++) { dg[r] = dg[r] * x[r] + g[r]; g[r] = g[r] * x[r] + p[i]; }
        for (int r = 0; r < 2; r++) {
            if (done[r]) continue;
            f[r] = g[r];
            df[r] = dg[r];
            if (f[r] == 0.0) done[r] = 1;
            else if (f[r] < 0.0) lo[r] = x[r];
            else hi[r] = x[r];
        }
    }
}
#endif

/* An interval of the isolation, [lo, hi], and the sign changes at its ends. The intervals still to cut are
 * disjoint and hold a root each: at most n, unless rounding makes the counts not monotone. */
typedef struct { double lo, hi, clo, chi; int cuts; } sturm_interval;
#define STURM_STACK (STURM_MAX_BASIS + STURM_POINTS + 1)

/* Pushes [lo, hi] where it holds a root (clo > chi): 0 where the stack is full (the counts are not
 * monotone: the caller gives up on the Sturm path). */
SG_FN int sturm_push(sturm_interval *stack, int *top, double lo, double hi, double clo, double chi, int cuts) {
    if (!(clo > chi)) return 1;
    if (*top == STURM_STACK) return 0;
    stack[*top].lo = lo;
    stack[*top].hi = hi;
    stack[*top].clo = clo;
    stack[*top].chi = chi;
    stack[(*top)++].cuts = cuts;
    return 1;
}

/* The Sturm path's start for h (n x n, upper Hessenberg): its characteristic polynomial in the variable
 * y = lambda / bound (bound: Gershgorin's, with a margin; the roots then lie in (-1, 1) and the
 * coefficients are of one scale, so that a remainder's lost degree is a relative test) and that
 * polynomial's Sturm sequence. -> 1 where ready (bound 0: h = 0 with n = 1, the root 0), 0 where the
 * caller uses QR (degenerate, not finite, or n > STURM_MAX_BASIS). */
typedef struct {
    double p[STURM_MAX_BASIS + 1]; /* ascending, in y */
    double bound;
    sturm_t s;
} sturm_start;

SG_FN int sturm_prepare(const double *h, int n, sturm_start *start) {
    double *p = start->p;
    if (n > STURM_MAX_BASIS) return 0;
    hessenberg_charpoly(h, n, p);
    for (int i = 0; i <= n; i++)
        if (!isfinite(p[i])) return 0;
    double bound = 0.0; /* Gershgorin: |lambda| <= the largest absolute row sum of h */
    for (int i = 0; i < n; i++) {
        double row = 0.0;
        for (int j = (i > 0 ? i - 1 : 0); j < n; j++) row += fabs(h[i * n + j]);
        bound = max_of(bound, row);
    }
    start->bound = 0.0;
    if (!(bound > 0.0) || !isfinite(bound)) /* h = 0: the root 0 (n-fold for n > 1) */
        return isfinite(bound) && n == 1;
    bound *= 1.01; /* (margin: the polynomial's roots are the eigenvalues up to its rounding) */
    double power = 1.0;
    for (int i = n - 1; i >= 0; i--) {
        power *= bound;
        p[i] /= power;
    }
    start->bound = bound;
    return sturm_build(p, n, &start->s);
}

/* The distinct real eigenvalues from sturm_prepare's start: their number (wr [0, found)), or -1 where
 * the isolation fails (the caller uses QR). */
SG_FN int sturm_roots(const sturm_start *start, int n, double *wr) {
    const double *p = start->p, bound = start->bound;
    const sturm_t *s = &start->s;
    if (bound == 0.0) {
        wr[0] = 0.0;
        return 1;
    }
    const double end = 1.0 + 4.0 * DBL_EPSILON; /* strictly outside: no root at an end */
    /* Isolation by multisection: an interval with two or more roots is cut into STURM_POINTS + 1 pieces at
     * STURM_POINTS points whose sign changes are counted at once (on the CPU, 9 pieces: the 5-point's
     * isolation 1,400 -> 800 to 980 cycles per instance, and its Newton steps from the narrower brackets 1,490 ->
     * 1,220). An interval cut STURM_CUTS times (about 64 bisections) counts its roots as one. */
    sturm_interval stack[STURM_STACK];
    int top = 0, found = 0, isolated = 0, slot[STURM_MAX_BASIS + 1];
    double isolated_lo[STURM_MAX_BASIS + 1], isolated_hi[STURM_MAX_BASIS + 1];
    double x[STURM_POINTS], changes[STURM_POINTS], ends[2];
    if (STURM_POINTS > 1) { /* the first cut: [-end, end] at STURM_POINTS points, its ends among them */
        for (int r = 0; r < STURM_POINTS; r++) x[r] = r == STURM_POINTS - 1 ? end : -end + r * (2.0 * end / (STURM_POINTS - 1));
        sturm_changes(s, x, changes);
        for (int r = 0; r + 1 < STURM_POINTS; r++) /* (left to right: the rightmost is cut first) */
            if (!sturm_push(stack, &top, x[r], x[r + 1], changes[r], changes[r + 1], 1)) return -1;
    } else {
        for (int e = 0; e < 2; e++) {
            x[0] = e ? end : -end;
            sturm_changes(s, x, changes);
            ends[e] = changes[0];
        }
        sturm_push(stack, &top, -end, end, ends[0], ends[1], 0);
    }
    while (top > 0) {
        const sturm_interval v = stack[--top];
        if (found == n) return -1; /* (more roots than the degree: the counts are not monotone) */
        if (v.clo - v.chi == 1.0) { /* refined below (STURM_POINTS at a time on the CPU, two on CUDA) */
            isolated_lo[isolated] = v.lo;
            isolated_hi[isolated] = v.hi;
            slot[isolated++] = found++;
            continue;
        }
        if (v.cuts >= STURM_CUTS) { /* a cluster: one value for it */
            wr[found++] = bound * 0.5 * (v.lo + v.hi);
            continue;
        }
        const double step = (v.hi - v.lo) / (STURM_POINTS + 1);
        for (int r = 0; r < STURM_POINTS; r++) x[r] = v.lo + (r + 1) * step;
        sturm_changes(s, x, changes);
        for (int r = 0; r <= STURM_POINTS; r++)
            if (!sturm_push(stack, &top, r > 0 ? x[r - 1] : v.lo, r < STURM_POINTS ? x[r] : v.hi,
                            r > 0 ? changes[r - 1] : v.clo, r < STURM_POINTS ? changes[r] : v.chi, v.cuts + 1))
                return -1;
    }
#if STURM_POINTS > 1
    for (int k = 0; k < isolated; k += STURM_POINTS) { /* (a last partial group padded with its last) */
        double lo[STURM_POINTS], hi[STURM_POINTS], root[STURM_POINTS];
        for (int r = 0; r < STURM_POINTS; r++) {
            const int j = k + r < isolated ? k + r : isolated - 1;
            lo[r] = isolated_lo[j];
            hi[r] = isolated_hi[j];
        }
        sturm_refine_lanes(p, n, lo, hi, root);
        for (int r = 0; r < STURM_POINTS && k + r < isolated; r++) wr[slot[k + r]] = bound * root[r];
    }
#else
    for (int k = 0; k < isolated; k += 2) { /* (an odd last one paired with itself) */
        const int other = k + 1 < isolated ? k + 1 : k;
        const double lo2[2] = {isolated_lo[k], isolated_lo[other]}, hi2[2] = {isolated_hi[k], isolated_hi[other]};
        double root[2];
        sturm_refine_pair(p, n, lo2, hi2, root);
        wr[slot[k]] = bound * root[0];
        if (other != k) wr[slot[other]] = bound * root[1];
    }
#endif
    return found;
}

/* The distinct real eigenvalues of the upper Hessenberg h (n x n): their number (wr [0, found)), or -1
 * where the Sturm sequence is degenerate (the caller uses QR). */
SG_FN int sturm_real_eigenvalues(const double *h, int n, double *wr) {
    sturm_start start;
    return sturm_prepare(h, n, &start) ? sturm_roots(&start, n, wr) : -1;
}
