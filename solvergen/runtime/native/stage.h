/* The forward of a solvergen solver, per instance, in C (solvergen/runtime/native.py).
 *
 * The per-problem source (`native.source`) is portable.h, the sizes and tables below, sturm.h,
 * roots.h and this file, then the generated functions. For each instance: (where generated) the
 * coefficients from the parameters and a natural formulation's linear block (LINEAR_BLOCK, at the
 * end); fill the elimination template from the coefficients, eliminate it (the compile-time
 * sparse plan, else LU with partial pivoting), build the action matrix, take its real eigenpairs
 * (balancing, Hessenberg reduction; the eigenvalues from the characteristic polynomial in closed
 * form up to 4 x 4 (roots.h), the real ones by a Sturm sequence for small bases (sturm.h), else
 * by Francis double-shift QR; inverse iteration on the Hessenberg form for the eigenvectors, and
 * Newton on each eigenpair), read the unknowns off the eigenvectors, and polish them by Gauss-Newton
 * on the polish system. The eigenvectors and the polish take EIG_LANES eigenpairs or LANES candidates
 * at a time, each lane computing what one at a time would, vectorised across the lanes (the per-lane
 * loops `for (r < LANES)`; NVRTC's source has one lane: a GPU thread is scalar). Outputs as
 * `template.polished_candidates` of the torch path: x [S, N], the relative residual [S],
 * candidate [S] (S = BASIS: one solution per eigenpair).
 *
 * Per-problem macros: ROWS, COLS, SQUARE, NRED, BASIS, EIG_LANES (eigenpairs processed together:
 * hessenberg_eigenvectors), LANES (candidates: polish_lanes, the declared check), NREAD, ACTION_READ, NUNK, EVEN, SLOTS, NCOEF,
 * DENSE_SCATTER and NDENSE (native.dense_tables), NCONST, NACT, EIG_CLOSED (every eigenvalue by roots.h), EIG_STURM (real eigenvalues by
 * sturm.h rather than QR), SPARSE_LU, NATIVE_COEFFICIENTS, LINEAR_BLOCK, GROUPED_COEFFICIENTS
 * (the CPU batch computes COEFFICIENT_LANES instances' coefficients, and a natural formulation's reduced
 * coefficients, at once), NPARAM; polish
 * system: PN (unknowns), PK (equations). Arrays:
 * see native.py's `source`. Generated after this file (declared below): `residual_lanes`,
 * `jacobian_lanes`, `sparse_eliminate`, `coefficients`, `reduced_coefficients`, `gauge_value`,
 * `evaluate_declared_lanes`.
 */

#define COEFFICIENT_LANES 4 /* the CPU batch's instances at once (GROUPED_COEFFICIENTS) */
/* The CPU batch's instances per OpenMP chunk, handed to whichever thread is free (schedule(dynamic)):
 * instances differ in cost (real solutions, fallbacks) and cores in speed (a shared or hybrid machine);
 * with static halves the batch waited for the slower one (5-point on both cores, 3.09 -> 3.07 us per
 * instance on a quiet machine). About 0.2 ms of work per chunk on the 5-point: the hand-off is noise. */
#define SG_CHUNK 32

#define CONVERGED (4.0 * DBL_EPSILON) /* newton.CONVERGED */
#define EIG_ROUNDS 2  /* inverse iteration solves per eigenvector (1: a few instances lose a solution) */
#define EIG_NEWTON 3  /* Newton steps on each real eigenpair (refine_eigenpair) */
#define EIG_CLOSE (4096.0 * DBL_EPSILON) /* ... unless its residual is within this of |a| */
#define EXTRA_STEPS 3 /* Newton steps beyond newton_steps (none where it is 0), kept only where they lower the residual:
                         the eigenpairs here are less accurate than LAPACK's on badly scaled
                         action matrices */

/* LU with partial pivoting of a (n x n, row-major, in place); 0 if a pivot is not finite, or is
 * 0 and `pivot_floor` is 0. A pivot below `pivot_floor` in magnitude is replaced by it (inverse
 * iteration on a matrix that is singular by construction). */
SG_FN int lu_factor(double *a, int n, int *perm, double pivot_floor) {
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int k = 0; k < n; k++) {
        int p = k;
        double best = fabs(a[k * n + k]);
        for (int i = k + 1; i < n; i++) { /* (selects: the comparisons are not predictable) */
            const double v = fabs(a[i * n + k]);
            p = v > best ? i : p;
            best = v > best ? v : best;
        }
        if (!isfinite(best) || !(best > 0.0 || pivot_floor > 0.0)) return 0;
        if (p != k) {
            for (int j = 0; j < n; j++) { double t = a[k * n + j]; a[k * n + j] = a[p * n + j]; a[p * n + j] = t; }
            int t = perm[k]; perm[k] = perm[p]; perm[p] = t;
        }
        if (fabs(a[k * n + k]) < pivot_floor) a[k * n + k] = pivot_floor;
        double inv = 1.0 / a[k * n + k];
        for (int i = k + 1; i < n; i++) {
            double f = a[i * n + k] * inv;
            a[i * n + k] = f;
            if (f != 0.0)
                for (int j = k + 1; j < n; j++) a[i * n + j] -= f * a[k * n + j];
        }
    }
    return 1;
}

/* Solve with lu_factor's factors: b (n x m, row-major, the original row order) -> x in place. */
SG_FN void lu_solve(const double *lu, int n, const int *perm, double *b, int m, double *work) {
    for (int i = 0; i < n; i++) memcpy(work + i * m, b + perm[i] * m, sizeof(double) * m);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < i; k++) {
            double f = lu[i * n + k];
            if (f != 0.0)
                for (int j = 0; j < m; j++) work[i * m + j] -= f * work[k * m + j];
        }
    for (int i = n - 1; i >= 0; i--) {
        for (int k = i + 1; k < n; k++) {
            double f = lu[i * n + k];
            if (f != 0.0)
                for (int j = 0; j < m; j++) work[i * m + j] -= f * work[k * m + j];
        }
        double inv = 1.0 / lu[i * n + i];
        for (int j = 0; j < m; j++) work[i * m + j] *= inv;
    }
    memcpy(b, work, sizeof(double) * n * m);
}

/* max |a_i| over count entries, NaN entries skipped: four running maxima, each a compare and
 * select that compiles without branches (max_of's NaN test made this a chain of unpredictable
 * branches: 700 cycles of the 5-point's instance for two 10 x 10 matrices). */
SG_FN double largest_magnitude(const double *a, int count) {
    double top[4] = {0.0, 0.0, 0.0, 0.0};
    int i = 0;
    for (; i + 4 <= count; i += 4)
        for (int k = 0; k < 4; k++) {
            const double v = fabs(a[i + k]);
            top[k] = v > top[k] ? v : top[k];
        }
    for (; i < count; i++) {
        const double v = fabs(a[i]);
        top[0] = v > top[0] ? v : top[0];
    }
    top[0] = top[1] > top[0] ? top[1] : top[0];
    top[2] = top[3] > top[2] ? top[3] : top[2];
    return top[2] > top[0] ? top[2] : top[0];
}

/* Inverse iteration's pieces (eigenvector, hessenberg_eigenvectors): the pivot floor eps |a|_max
 * (the matrix a - lambda I is singular by construction), the start vector (distinct entries),
 * and v / |v| (0 where |v| is 0 or not finite; eigenvector's). */
SG_FN double pivot_floor_of(const double *a, int n) {
    const double norm = largest_magnitude(a, n * n);
    return DBL_EPSILON * (norm > 0 ? norm : 1.0);
}

SG_FN void iteration_start(double *v, int n) {
    for (int i = 0; i < n; i++) v[i] = 1.0 / sqrt((double)n) * (1.0 + 0.01 * i);
}

SG_FN int normalize(double *v, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += v[i] * v[i];
    s = sqrt(s);
    if (!(s > 0.0) || !isfinite(s)) return 0;
    for (int i = 0; i < n; i++) v[i] /= s;
    return 1;
}

/* Declares c and r of type T: the sums of squares of column i and row i of a (n x n), even and odd j
 * apart (two chains of additions where one waits on the other: the 5-point 1% faster), summed as
 * (even) + (odd). balance's, and balance_lanes' with vectors: one order, each lane bit for bit
 * balance's (C has no generics). */
#define BALANCE_SUMS(T, a, n, i, zero, c, r)                                  \
    T c = (zero), r = (zero);                                                 \
    {                                                                         \
        T odd_c_ = (zero), odd_r_ = (zero);                                   \
        int j_ = 0;                                                           \
        for (; j_ + 1 < (n); j_ += 2) {                                       \
            c += a[j_ * (n) + (i)] * a[j_ * (n) + (i)];                       \
            r += a[(i) * (n) + j_] * a[(i) * (n) + j_];                       \
            odd_c_ += a[(j_ + 1) * (n) + (i)] * a[(j_ + 1) * (n) + (i)];      \
            odd_r_ += a[(i) * (n) + j_ + 1] * a[(i) * (n) + j_ + 1];          \
        }                                                                     \
        if (j_ < (n)) {                                                       \
            c += a[j_ * (n) + (i)] * a[j_ * (n) + (i)];                       \
            r += a[(i) * (n) + j_] * a[(i) * (n) + j_];                       \
        }                                                                     \
        c += odd_c_;                                                          \
        r += odd_r_;                                                          \
    }

/* Balance a (n x n) by powers of 2, as LAPACK's dgebal (3.5 and later: 2-norms of the rows
 * and columns; scaling only): a <- D^-1 a D. The 1-norm variant of older codes leaves some
 * action matrices (norm 1e12, graded) with eigenvalues off by 1e-5. */
SG_FN void balance(double *a, int n, double *d) {
    for (int i = 0; i < n; i++) d[i] = 1.0;
    /* The rows in turn, cyclically, until n checks in a row have changed nothing: where dgebal's sweeps
     * stop (at the end of a sweep that changed nothing), the same matrix, with n checks after the last
     * change instead of up to 2 n - 1 (a row's check sees the same matrix again: the same outcome) */
    for (int i = 0, unchanged = 0; unchanged < n; i = i + 1 < n ? i + 1 : 0) {
        unchanged++;
        BALANCE_SUMS(double, a, n, i, 0.0, c, r);
        /* No scaling where r / 2 <= c < 2 r (the loops below would leave f = 1), decided on the squares
         * with a margin of 1e-10 that the square roots' roundings cannot undo (squares of normal size
         * only): two square roots saved on most checks (the 5-point's: about two in three) */
        if (c > 1e-290 && r > 1e-290 && c >= 0.25 * (1.0 + 1e-10) * r && 0.25 * (1.0 + 1e-10) * c < r) continue;
        c = sqrt(c);
        r = sqrt(r);
        if (c == 0.0 || r == 0.0 || !isfinite(c) || !isfinite(r)) continue;
        double g = r / 2.0, f = 1.0, s = c + r;
        while (c < g && f < 1e150) { f *= 2.0; c *= 2.0; r /= 2.0; g /= 2.0; }
        g = c / 2.0;
        while (g >= r && f > 1e-150) { f /= 2.0; c /= 2.0; g /= 2.0; r *= 2.0; }
        if (c + r >= 0.95 * s) continue;
        unchanged = 0;
        d[i] *= f;
        const double inverse = 1.0 / f; /* (exact: f is a power of 2) */
        for (int j = 0; j < n; j++) a[i * n + j] *= inverse;
        for (int j = 0; j < n; j++) a[j * n + i] *= f;
    }
}

/* Reduce a (n x n) to upper Hessenberg form by stabilized elementary similarity transforms
 * (Gaussian elimination with pivoting: Numerical Recipes' elmhes, 0-based), keeping them: step m
 * swapped rows and columns m and pivot[m], then took mult[i n + m] times row m from row i > m
 * (and added as much of column i to column m). hessenberg_back maps eigenvectors back. */
SG_FN void hessenberg(double *a, int n, int *pivot, double *mult) {
    for (int m = 1; m < n - 1; m++) {
        double largest = 0.0;
        int i = m;
        for (int j = m; j < n; j++) { /* (selects: the comparisons are not predictable) */
            const double v = fabs(a[j * n + m - 1]);
            i = v > largest ? j : i;
            largest = v > largest ? v : largest;
        }
        const double x = largest > 0.0 ? a[i * n + m - 1] : 0.0;
        pivot[m] = i;
        if (i != m) {
            for (int j = m - 1; j < n; j++) { double t = a[i * n + j]; a[i * n + j] = a[m * n + j]; a[m * n + j] = t; }
            for (int j = 0; j < n; j++) { double t = a[j * n + i]; a[j * n + i] = a[j * n + m]; a[j * n + m] = t; }
        }
        double y[BASIS]; /* the multipliers: every row operation, then the column operations (left and right
                            multiplications commute) */
        for (i = m + 1; i < n; i++) {
            y[i] = x != 0.0 ? a[i * n + m - 1] / x : 0.0;
            if (y[i] != 0.0)
                for (int j = m; j < n; j++) a[i * n + j] -= y[i] * a[m * n + j];
            mult[i * n + m] = y[i];
            if (x != 0.0) a[i * n + m - 1] = 0.0;
        }
        /* column m += sum over i > m of y_i column i: every row's sum at once, in the order of i (a loop over
         * the rows that vectorises: the reduction 7% faster than one dot product per row) */
        double column[BASIS];
        for (int j = 0; j < n; j++) column[j] = a[j * n + m];
        for (i = m + 1; i < n; i++)
            for (int j = 0; j < n; j++) column[j] += y[i] * a[j * n + i];
        for (int j = 0; j < n; j++) a[j * n + m] = column[j];
    }
}

#if !SG_CUDA
/* On the CPU the EIG_LANES eigenpairs are the lanes of one vector (gcc's and clang's vector extensions:
 * the loop vectoriser had left parts of the loops below scalar; the 5-point 5.60 -> 5.30 us per instance,
 * P3P 1.22 -> 1.14, the 6-point 21.5 -> 20.8; bit for bit without FMA contraction); on CUDA (one lane)
 * the loops in the #else branch, which compute the same. */
typedef double eig_lanes __attribute__((vector_size(8 * EIG_LANES)));
typedef int64_t eig_mask __attribute__((vector_size(8 * EIG_LANES))); /* (a comparison: -1 where true) */
SG_FN inline eig_lanes eig_select(eig_mask m, eig_lanes a, eig_lanes b) {
    return (eig_lanes)(((eig_mask)a & m) | ((eig_mask)b & ~m));
}
SG_FN inline eig_lanes eig_abs(eig_lanes v) { return eig_select(v < 0.0, -v, v); }
/* The CPU batch's COEFFICIENT_LANES instances in the lanes of one vector (the group functions: dense_eliminate_lanes,
 * eigenproblems_lanes); the same helpers for that width (C has no generics). */
typedef double group_lanes __attribute__((vector_size(8 * COEFFICIENT_LANES)));
typedef int64_t group_mask __attribute__((vector_size(8 * COEFFICIENT_LANES))); /* (-1 where true) */
SG_FN inline group_lanes group_select(group_mask m, group_lanes a, group_lanes b) {
    return (group_lanes)(((group_mask)a & m) | ((group_mask)b & ~m));
}
SG_FN inline group_lanes group_abs(group_lanes v) { return group_select(v < 0.0, -v, v); }
SG_FN inline int group_any(group_mask m) {
    int any = 0;
    for (int r = 0; r < COEFFICIENT_LANES; r++) any |= m[r] != 0;
    return any;
}

SG_FN void hessenberg_back(const int *SG_RESTRICT pivot, const double *SG_RESTRICT mult, double *SG_RESTRICT y_out) {
    const int n = BASIS;
    eig_lanes y[BASIS];
    memcpy(y, y_out, sizeof(y));
    for (int m = n - 2; m >= 1; m--) {
        for (int i = m + 1; i < n; i++) y[i] += mult[i * n + m] * y[m];
        const int i = pivot[m];
        const eig_lanes t = y[i];
        y[i] = y[m];
        y[m] = t;
    }
    memcpy(y_out, y, sizeof(y));
}

SG_FN void hessenberg_eigenvectors(const double *SG_RESTRICT h, double pivot_floor, const double *SG_RESTRICT lambda,
                                   double *SG_RESTRICT y_out, int *SG_RESTRICT ok) {
    const int n = BASIS;
    const eig_lanes zero = {0.0};
    eig_lanes u[BASIS * BASIS], l[BASIS], inverse[BASIS], y[BASIS], lambdas;
    eig_mask swapped[BASIS], bad = {0};
    memcpy(&lambdas, lambda, sizeof(lambdas));
    for (int i = 0; i < n; i++) /* (the entries left of the subdiagonal are never read) */
        for (int j = i > 0 ? i - 1 : 0; j < n; j++) u[i * n + j] = i == j ? h[i * n + j] - lambdas : h[i * n + j] - zero;
    for (int k = 0; k < n; k++) { /* step k: rows k and k + 1 swapped where that pivots, then row k + 1 -= l_k row k */
        const int last = k + 1 == n;
        const eig_lanes a = u[k * n + k], b = last ? zero : u[(k + 1) * n + k];
        const eig_mask swap = last ? (eig_mask){0} : eig_abs(b) > eig_abs(a);
        eig_lanes pivot = eig_select(swap, b, a);
        bad |= (pivot - pivot) != 0.0; /* (not finite) */
        pivot = eig_select(eig_abs(pivot) < pivot_floor, zero + pivot_floor, pivot);
        u[k * n + k] = pivot;
        swapped[k] = swap;
        inverse[k] = 1.0 / pivot;
        l[k] = eig_select(swap, a, b) * inverse[k];
        for (int j = k + 1; j < n; j++) { /* (row k + 1's column k is not read again) */
            const eig_lanes top = eig_select(swap, u[(k + 1) * n + j], u[k * n + j]);
            const eig_lanes bottom = eig_select(swap, u[k * n + j], u[(k + 1) * n + j]);
            u[k * n + j] = top;
            u[(k + 1) * n + j] = bottom - l[k] * top;
        }
    }
    double start[BASIS];
    iteration_start(start, n);
    for (int i = 0; i < n; i++) y[i] = start[i] - zero;
    for (int round = 0; round < EIG_ROUNDS; round++) {
        for (int k = 0; k + 1 < n; k++) { /* L^-1 P */
            const eig_lanes top = eig_select(swapped[k], y[k + 1], y[k]), bottom = eig_select(swapped[k], y[k], y[k + 1]);
            y[k] = top;
            y[k + 1] = bottom - l[k] * top;
        }
        for (int i = n - 1; i >= 0; i--) { /* U^-1 (the newest entry last: each row waits for one multiply-add) */
            eig_lanes acc = y[i];
            for (int j = n - 1; j > i; j--) acc -= u[i * n + j] * y[j];
            y[i] = acc * inverse[i];
        }
    }
    eig_lanes norm = zero; /* normalize's, once at the end */
    for (int i = 0; i < n; i++) norm += y[i] * y[i];
    for (int r = 0; r < EIG_LANES; r++) {
        norm[r] = sqrt(norm[r]);
        ok[r] = !bad[r];
        if (!(norm[r] > 0.0) || !isfinite(norm[r])) {
            ok[r] = 0;
            norm[r] = 1.0;
        }
    }
    for (int i = 0; i < n; i++) y[i] /= norm;
    memcpy(y_out, y, sizeof(y));
}
#else
/* EIG_LANES eigenvectors y [BASIS x EIG_LANES] (lane-minor) of the Hessenberg form -> the matrix's, v = M y
 * with M = P_1 L_1 ... P_k L_k (hessenberg's transformations, the last one first): O(n^2). */
SG_FN void hessenberg_back(const int *SG_RESTRICT pivot, const double *SG_RESTRICT mult, double *SG_RESTRICT y) {
    const int n = BASIS;
    for (int m = n - 2; m >= 1; m--) {
        for (int i = m + 1; i < n; i++)
            for (int r = 0; r < EIG_LANES; r++) y[i * EIG_LANES + r] += mult[i * n + m] * y[m * EIG_LANES + r];
        const int i = pivot[m];
        if (i != m)
            for (int r = 0; r < EIG_LANES; r++) {
                const double t = y[i * EIG_LANES + r];
                y[i * EIG_LANES + r] = y[m * EIG_LANES + r];
                y[m * EIG_LANES + r] = t;
            }
    }
}

/* Inverse iteration on the upper Hessenberg h (BASIS x BASIS) for EIG_LANES eigenvalues at once:
 * (h - lambda_r I) y_r = y_r,previous, EIG_ROUNDS solves, by LU with partial pivoting (between
 * neighbouring rows only: O(n^2), where a full matrix's LU is O(n^3)); pivots below eps |h|
 * replaced by it (pivot_floor: pivot_floor_of(h, BASIS), computed once per instance by the caller), as
 * `eigenvector` does. y [BASIS x EIG_LANES] (lane-minor); ok[r] = 0 where lane r's
 * iterate is not finite. Each lane computes what one eigenvalue at a time would; the lanes are
 * vectorised (the 5-point's eigenvectors with the back-transform: 7,600 -> 4,100 cycles per instance). */
SG_FN void hessenberg_eigenvectors(const double *SG_RESTRICT h, double pivot_floor, const double *SG_RESTRICT lambda,
                                   double *SG_RESTRICT y, int *SG_RESTRICT ok) {
    double u[BASIS * BASIS * EIG_LANES], l[BASIS * EIG_LANES], inverse[BASIS * EIG_LANES]; /* (1 / U's diagonal) */
    int64_t swapped[BASIS * EIG_LANES]; /* (as wide as a double: gcc vectorises the selects) */
    const int n = BASIS;
    for (int r = 0; r < EIG_LANES; r++) ok[r] = 1;
    for (int i = 0; i < n; i++) /* (the entries left of the subdiagonal are never read) */
        for (int j = i > 0 ? i - 1 : 0; j < n; j++)
            for (int r = 0; r < EIG_LANES; r++) u[(i * n + j) * EIG_LANES + r] = i == j ? h[i * n + j] - lambda[r] : h[i * n + j];
    for (int k = 0; k < n; k++) { /* step k: rows k and k + 1 swapped where that pivots, then row k + 1 -= l_k row k */
        double *uk = u + k * n * EIG_LANES, *next = u + (k + 1) * n * EIG_LANES;
        const int last = k + 1 == n;
        for (int r = 0; r < EIG_LANES; r++) {
            const double a = uk[k * EIG_LANES + r], b = last ? 0.0 : next[k * EIG_LANES + r];
            const int64_t swap = !last && fabs(b) > fabs(a);
            double pivot = swap ? b : a;
            if (!isfinite(pivot)) ok[r] = 0;
            if (fabs(pivot) < pivot_floor) pivot = pivot_floor;
            uk[k * EIG_LANES + r] = pivot;
            swapped[k * EIG_LANES + r] = swap;
            inverse[k * EIG_LANES + r] = 1.0 / pivot;
            l[k * EIG_LANES + r] = (swap ? a : b) * inverse[k * EIG_LANES + r];
        }
        for (int j = k + 1; j < n; j++) /* (row k + 1's column k is not read again) */
            for (int r = 0; r < EIG_LANES; r++) {
                const double a = uk[j * EIG_LANES + r], b = next[j * EIG_LANES + r];
                const double top = swapped[k * EIG_LANES + r] ? b : a, bottom = swapped[k * EIG_LANES + r] ? a : b;
                uk[j * EIG_LANES + r] = top;
                next[j * EIG_LANES + r] = bottom - l[k * EIG_LANES + r] * top;
            }
    }
    double start[BASIS];
    iteration_start(start, n);
    for (int i = 0; i < n; i++)
        for (int r = 0; r < EIG_LANES; r++) y[i * EIG_LANES + r] = start[i];
    for (int round = 0; round < EIG_ROUNDS; round++) {
        for (int k = 0; k + 1 < n; k++) /* L^-1 P */
            for (int r = 0; r < EIG_LANES; r++) {
                const double a = y[k * EIG_LANES + r], b = y[(k + 1) * EIG_LANES + r];
                const double top = swapped[k * EIG_LANES + r] ? b : a, bottom = swapped[k * EIG_LANES + r] ? a : b;
                y[k * EIG_LANES + r] = top;
                y[(k + 1) * EIG_LANES + r] = bottom - l[k * EIG_LANES + r] * top;
            }
        for (int i = n - 1; i >= 0; i--) { /* U^-1: y_i's sum ends with y_{i+1}, the one just found, so that each
                                               row waits for one multiply-add (5-point: -600 cycles per instance) */
            double acc[EIG_LANES];
            for (int r = 0; r < EIG_LANES; r++) acc[r] = y[i * EIG_LANES + r];
            for (int j = n - 1; j > i; j--)
                for (int r = 0; r < EIG_LANES; r++) acc[r] -= u[(i * n + j) * EIG_LANES + r] * y[j * EIG_LANES + r];
            for (int r = 0; r < EIG_LANES; r++) y[i * EIG_LANES + r] = acc[r] * inverse[i * EIG_LANES + r];
        }
        /* Normalized once, at the end (the 5-point: 2% faster): a solve grows y by about 1 / eps where lambda
         * is an eigenvalue, and a lane that overflows is not ok (its eigenpair takes `eigenvector`). */
        if (round + 1 < EIG_ROUNDS) continue;
        double norm[EIG_LANES]; /* normalize's */
        for (int r = 0; r < EIG_LANES; r++) norm[r] = 0.0;
        for (int i = 0; i < n; i++)
            for (int r = 0; r < EIG_LANES; r++) norm[r] += y[i * EIG_LANES + r] * y[i * EIG_LANES + r];
        for (int r = 0; r < EIG_LANES; r++) {
            norm[r] = sqrt(norm[r]);
            if (!(norm[r] > 0.0) || !isfinite(norm[r])) {
                ok[r] = 0;
                norm[r] = 1.0;
            }
        }
        for (int i = 0; i < n; i++)
            for (int r = 0; r < EIG_LANES; r++) y[i * EIG_LANES + r] /= norm[r];
    }
}

#endif

/* Eigenvalues (wr + i wi) of an upper Hessenberg matrix by the Francis double-shift QR
 * iteration (Numerical Recipes' hqr, 0-based); 0 if it does not converge. a is destroyed. */
SG_FN int hqr(double *a, int n, double *wr, double *wi) {
#define A(i, j) a[(i) * n + (j)]
    double anorm = 0.0, p = 0.0, q = 0.0, r = 0.0, s, t = 0.0, w, x, y, z;
    for (int i = 0; i < n; i++)
        for (int j = (i > 0 ? i - 1 : 0); j < n; j++) anorm += fabs(A(i, j));
    int nn = n - 1;
    while (nn >= 0) {
        int its = 0, l;
        do {
            for (l = nn; l >= 1; l--) { /* negligible subdiagonal: LAPACK dlahqr's test (Ahues and Tisseur) */
                double sub = fabs(A(l, l - 1));
                s = fabs(A(l - 1, l - 1)) + fabs(A(l, l));
                if (s == 0.0) s = anorm;
                if (sub <= DBL_MIN) { A(l, l - 1) = 0.0; break; }
                if (sub <= DBL_EPSILON * s) {
                    double ab = max_of(sub, fabs(A(l - 1, l))), ba = min_of(sub, fabs(A(l - 1, l)));
                    double diff = fabs(A(l - 1, l - 1) - A(l, l));
                    double aa = max_of(fabs(A(l, l)), diff), bb = min_of(fabs(A(l, l)), diff);
                    double total = aa + ab;
                    if (ba * (ab / total) <= max_of(DBL_MIN, DBL_EPSILON * (bb * (aa / total)))) { A(l, l - 1) = 0.0; break; }
                }
            }
            x = A(nn, nn);
            if (l == nn) {
                wr[nn] = x + t; wi[nn--] = 0.0;
            } else {
                y = A(nn - 1, nn - 1);
                w = A(nn, nn - 1) * A(nn - 1, nn);
                if (l == nn - 1) {
                    p = 0.5 * (y - x);
                    q = p * p + w;
                    z = sqrt(fabs(q));
                    x += t;
                    if (q >= 0.0) {
                        z = p + (p >= 0 ? fabs(z) : -fabs(z));
                        wr[nn - 1] = wr[nn] = x + z;
                        if (z != 0.0) wr[nn] = x - w / z;
                        wi[nn - 1] = wi[nn] = 0.0;
                    } else {
                        wr[nn - 1] = wr[nn] = x + p;
                        wi[nn - 1] = -(wi[nn] = z);
                    }
                    nn -= 2;
                } else {
                    if (its == 60) return 0;
                    if (its == 10 || its == 20) { /* exceptional shift */
                        t += x;
                        for (int i = 0; i <= nn; i++) A(i, i) -= x;
                        s = fabs(A(nn, nn - 1)) + fabs(A(nn - 1, nn - 2));
                        y = x = 0.75 * s;
                        w = -0.4375 * s * s;
                    }
                    ++its;
                    int m;
                    for (m = nn - 2; m >= l; m--) {
                        z = A(m, m);
                        r = x - z;
                        s = y - z;
                        p = (r * s - w) / A(m + 1, m) + A(m, m + 1);
                        q = A(m + 1, m + 1) - z - r - s;
                        r = A(m + 2, m + 1);
                        s = fabs(p) + fabs(q) + fabs(r);
                        p /= s; q /= s; r /= s;
                        if (m == l) break;
                        double u = fabs(A(m, m - 1)) * (fabs(q) + fabs(r));
                        double v = fabs(p) * (fabs(A(m - 1, m - 1)) + fabs(z) + fabs(A(m + 1, m + 1)));
                        if (u + v == v) break;
                    }
                    for (int i = m; i < nn - 1; i++) {
                        A(i + 2, i) = 0.0;
                        if (i != m) A(i + 2, i - 1) = 0.0;
                    }
                    for (int k = m; k < nn; k++) {
                        if (k != m) {
                            p = A(k, k - 1);
                            q = A(k + 1, k - 1);
                            r = 0.0;
                            if (k + 1 != nn) r = A(k + 2, k - 1);
                            if ((x = fabs(p) + fabs(q) + fabs(r)) != 0.0) { p /= x; q /= x; r /= x; }
                        }
                        double sq = sqrt(p * p + q * q + r * r);
                        if ((s = (p >= 0 ? sq : -sq)) != 0.0) {
                            if (k == m) {
                                if (l != m) A(k, k - 1) = -A(k, k - 1);
                            } else {
                                A(k, k - 1) = -s * x;
                            }
                            p += s;
                            x = p / s; y = q / s; z = r / s;
                            q /= p; r /= p;
                            for (int j = k; j <= nn; j++) {
                                p = A(k, j) + q * A(k + 1, j);
                                if (k + 1 != nn) { p += r * A(k + 2, j); A(k + 2, j) -= p * z; }
                                A(k + 1, j) -= p * y;
                                A(k, j) -= p * x;
                            }
                            int mmin = nn < k + 3 ? nn : k + 3;
                            for (int i = l; i <= mmin; i++) {
                                p = x * A(i, k) + y * A(i, k + 1);
                                if (k + 1 != nn) { p += z * A(i, k + 2); A(i, k + 2) -= p * r; }
                                A(i, k + 1) -= p * q;
                                A(i, k) -= p;
                            }
                        }
                    }
                }
            }
        } while (l < nn - 1);
    }
    return 1;
#undef A
}

/* An eigenvector of a (n x n) for the real eigenvalue lambda by inverse iteration (two solves
 * with (a - lambda I), its zero pivots nudged); 0 if it fails. */
SG_FN int eigenvector(const double *a, int n, double lambda, double *v) {
    double m[BASIS * BASIS], work[BASIS];
    int perm[BASIS];
    memcpy(m, a, sizeof(double) * n * n);
    for (int i = 0; i < n; i++) m[i * n + i] -= lambda;
    if (!lu_factor(m, n, perm, pivot_floor_of(a, n))) return 0; /* tiny pivots: eps |a| */
    iteration_start(v, n);
    for (int round = 0; round < EIG_ROUNDS; round++) {
        lu_solve(m, n, perm, v, 1, work);
        if (!normalize(v, n)) return 0;
    }
    return 1;
}

/* Newton's method on the eigenpair (a - lambda I) v = 0, v_k = 1 (k: v's largest entry): a few
 * steps of the bordered system [[a - lambda I, -v], [e_k^T, 0]] [dv; dlambda] = -[(a - lambda I) v; 0],
 * each kept only where it lowers |(a - lambda I) v|. The Hessenberg reduction and QR leave
 * eigenvalues of graded matrices off by up to 1e-5; the residual here is of a itself, so the
 * pair converges to the accuracy LAPACK reaches. largest: a's largest |entry| (the caller's, once
 * for all the eigenpairs). */
SG_FN void refine_eigenpair(const double *a, int n, double largest, double *lambda, double *v) {
    int k = 0;
    double top = fabs(v[0]);
    for (int i = 1; i < n; i++) { /* (selects, not branches: the comparisons are not predictable) */
        const double size = fabs(v[i]);
        k = size > top ? i : k;
        top = size > top ? size : top;
    }
    double scale = v[k];
    for (int i = 0; i < n; i++) v[i] /= scale;
    double r[BASIS + 1], m[(BASIS + 1) * (BASIS + 1)], work[BASIS + 1];
    int perm[BASIS + 1];
    double norm = 0.0, size = max_of(fabs(*lambda), largest);
    for (int i = 0; i < n; i++) {
        r[i] = -*lambda * v[i];
        for (int j = 0; j < n; j++) r[i] += a[i * n + j] * v[j];
        norm += r[i] * r[i];
    }
    /* Near the rounding level already (|v|_inf = 1): the Newton polish on the equations that
     * follows takes the read-off from there (64 eps here instead of 4096: P3P 1.71 -> 1.52 us per
     * instance on one core, the same truth found and errors on every problem). */
    if (sqrt(norm) <= EIG_CLOSE * size) return;
    for (int step = 0; step < EIG_NEWTON; step++) {
        int N = n + 1;
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) m[i * N + j] = a[i * n + j] - (i == j ? *lambda : 0.0);
            m[i * N + n] = -v[i];
        }
        for (int j = 0; j < N; j++) m[n * N + j] = (j == k) ? 1.0 : 0.0;
        double rhs[BASIS + 1];
        for (int i = 0; i < n; i++) rhs[i] = -r[i];
        rhs[n] = 0.0;
        if (!lu_factor(m, N, perm, 0.0)) return;
        lu_solve(m, N, perm, rhs, 1, work);
        double w[BASIS], mu = *lambda + rhs[n], r1[BASIS], norm1 = 0.0;
        for (int i = 0; i < n; i++) w[i] = v[i] + rhs[i];
        for (int i = 0; i < n; i++) {
            r1[i] = -mu * w[i];
            for (int j = 0; j < n; j++) r1[i] += a[i * n + j] * w[j];
            norm1 += r1[i] * r1[i];
        }
        if (!(norm1 < norm)) return;
        memcpy(v, w, sizeof(double) * n);
        memcpy(r, r1, sizeof(double) * n);
        *lambda = mu;
        norm = norm1;
    }
}

#if !SG_CUDA
/* refine_eigenpair's first steps for the EIG_LANES eigenpairs (lambda[r], y[:, r]) of a group at once, in
 * the lanes of one vector: each y scaled by its largest entry, and close[r] = 1 where the residual is
 * already within EIG_CLOSE (refine_eigenpair then returns there: the caller skips it; elsewhere it
 * redoes these steps, a no-op on the scaled y, and takes Newton's): the 5-point 5.30 -> 5.15 us per instance. */
SG_FN void eigenpairs_close(const double *SG_RESTRICT a, double largest, const double *SG_RESTRICT lambda,
                            double *SG_RESTRICT y_inout, int *SG_RESTRICT close) {
    const int n = BASIS;
    const eig_lanes zero = {0.0};
    eig_lanes y[BASIS], lambdas, r, norm = zero;
    memcpy(y, y_inout, sizeof(y));
    memcpy(&lambdas, lambda, sizeof(lambdas));
    eig_lanes top = eig_abs(y[0]), scale = y[0];
    for (int i = 1; i < n; i++) { /* (the first largest, as refine_eigenpair) */
        const eig_lanes size = eig_abs(y[i]);
        const eig_mask larger = size > top;
        scale = eig_select(larger, y[i], scale);
        top = eig_select(larger, size, top);
    }
    for (int i = 0; i < n; i++) y[i] /= scale;
    for (int i = 0; i < n; i++) {
        r = -lambdas * y[i];
        for (int j = 0; j < n; j++) r += a[i * n + j] * y[j];
        norm += r * r;
    }
    const eig_lanes size = eig_select(eig_abs(lambdas) >= largest, eig_abs(lambdas), zero + largest); /* max_of */
    for (int k = 0; k < EIG_LANES; k++) close[k] = sqrt(norm[k]) <= EIG_CLOSE * size[k];
    memcpy(y_inout, y, sizeof(y));
}
#endif

/* The polish system at LANES points at once (lane-minor arrays: x[i LANES + r]): h [PK] and the
 * size of its terms [PK], or dh/dx [PK x PN]; generated per problem after this file (native.py's
 * evaluate_lanes_source). */
SG_FN void residual_lanes(const double *SG_RESTRICT c, const double *SG_RESTRICT x, double *SG_RESTRICT h,
                          double *SG_RESTRICT scale);
SG_FN void jacobian_lanes(const double *SG_RESTRICT c, const double *SG_RESTRICT x, double *SG_RESTRICT jac);
/* The template's X [NRED x BASIS] by the fixed-pivot sparse elimination planned at compile time
 * (solvergen/sparse_lu.py), as straight-line code generated after this file where SPARSE_LU;
 * 0 where a factor exceeds the growth limit or a value is not finite (then dense_eliminate). */
SG_FN int sparse_eliminate(const double *c, double *reduced);
#if NATIVE_COEFFICIENTS
/* The coefficients c [NCOEF] of one instance's parameters a [NPARAM] (the generated
 * `_coefficients`, traced into C by ctrace.py); generated after this file. */
SG_FN void coefficients(const double *a, double *c);
#endif

/* An equation's size (the sum of its terms' magnitudes) as a divisor: at least DBL_MIN (NaN gives
 * DBL_MIN, as max_of does); a select, not a branch, so that loops over lanes vectorise. */
SG_FN inline double divisor_size(double size) { return size >= DBL_MIN ? size : DBL_MIN; }

/* The larger of a running relative residual and one more ratio, NaN where either is NaN (an
 * equation that overflowed: as the torch path's amax; a later finite ratio used to replace it).
 * Two selects that gcc vectorises (one condition `ratio > error || ratio != ratio` did not: it
 * cost the 5-point's polish 900 cycles per instance). */
SG_FN inline double worse_ratio(double error, double ratio) {
    const double larger = ratio <= error ? error : ratio; /* ratio where it is NaN */
    return error != error ? error : larger;
}

/* Each lane's largest |h_k| / size_k (worse_ratio's, over k). */
SG_FN void relative_errors(const double *h, const double *scale, double *error) {
    for (int r = 0; r < LANES; r++) error[r] = 0.0;
    for (int k = 0; k < PK; k++)
        for (int r = 0; r < LANES; r++)
            error[r] = worse_ratio(error[r], fabs(h[k * LANES + r]) / divisor_size(scale[k * LANES + r]));
}

/* Gauss-Newton steps on the polish system from LANES points x [PN x LANES] at once (rows scaled
 * by their size), each kept only where it lowers the point's relative residual (newton.polish):
 * -> each point's relative residual, error [LANES]. A point whose step is not kept stops there
 * (its next step would be the same step from the same x): the same steps as one point at a time,
 * with the evaluations vectorised across the points (the 5-point's candidates: 9,100 -> 3,100
 * cycles per instance; benchmarks/README.md, "Native kernels"). */
SG_FN void polish_lanes(const double *c, double *x, int steps, double *error) {
    double h[PK * LANES], scale[PK * LANES], jac[PK * PN * LANES], scaled[PK * LANES];
    double h1[PK * LANES], scale1[PK * LANES], error1[LANES], moved[PN * LANES];
    double m[PN * PN * LANES], rhs[PN * LANES];
    int active[LANES];
    residual_lanes(c, x, h, scale);
    relative_errors(h, scale, error);
    for (int r = 0; r < LANES; r++) active[r] = 1;
    for (int step = 0; step < steps; step++) {
        int any = 0;
        for (int r = 0; r < LANES; r++) {
            active[r] = active[r] && error[r] > CONVERGED;
            any |= active[r];
        }
        if (!any) break;
        jacobian_lanes(c, x, jac);
        for (int k = 0; k < PK; k++)
            for (int r = 0; r < LANES; r++) { /* (one division per row) */
                const double row = 1.0 / divisor_size(scale[k * LANES + r]);
                for (int n = 0; n < PN; n++) jac[(k * PN + n) * LANES + r] *= row;
                scaled[k * LANES + r] = h[k * LANES + r] * row;
            }
        if (PK == PN) {
            memcpy(m, jac, sizeof(m));
            memcpy(rhs, scaled, sizeof(rhs));
        } else { /* normal equations */
            for (int i = 0; i < PN; i++) {
                for (int r = 0; r < LANES; r++) rhs[i * LANES + r] = 0.0;
                for (int k = 0; k < PK; k++)
                    for (int r = 0; r < LANES; r++) rhs[i * LANES + r] += jac[(k * PN + i) * LANES + r] * scaled[k * LANES + r];
                for (int j = 0; j < PN; j++) {
                    for (int r = 0; r < LANES; r++) m[(i * PN + j) * LANES + r] = 0.0;
                    for (int k = 0; k < PK; k++)
                        for (int r = 0; r < LANES; r++)
                            m[(i * PN + j) * LANES + r] += jac[(k * PN + i) * LANES + r] * jac[(k * PN + j) * LANES + r];
                }
            }
        }
        for (int r = 0; r < LANES; r++) { /* each point's step: LU with partial pivoting */
            double a[PN * PN], b[PN], work[PN];
            int perm[PN];
            for (int n = 0; n < PN; n++) moved[n * LANES + r] = x[n * LANES + r];
            if (!active[r]) continue;
            for (int i = 0; i < PN * PN; i++) a[i] = m[i * LANES + r];
            for (int n = 0; n < PN; n++) b[n] = rhs[n * LANES + r];
            if (!lu_factor(a, PN, perm, 0.0)) {
                active[r] = 0;
                continue;
            }
            lu_solve(a, PN, perm, b, 1, work);
            for (int n = 0; n < PN; n++) moved[n * LANES + r] = x[n * LANES + r] - b[n];
        }
        residual_lanes(c, moved, h1, scale1);
        relative_errors(h1, scale1, error1);
        for (int r = 0; r < LANES; r++) {
            if (!(active[r] && error1[r] < error[r])) {
                active[r] = 0;
                continue;
            }
            for (int n = 0; n < PN; n++) x[n * LANES + r] = moved[n * LANES + r];
            for (int k = 0; k < PK; k++) {
                h[k * LANES + r] = h1[k * LANES + r];
                scale[k * LANES + r] = scale1[k * LANES + r];
            }
            error[r] = error1[r];
        }
    }
}

/* The template [eliminated | reduced | basis] and its solve X' = T[:, :SQUARE]^-1 T[:, SQUARE:]: Gaussian
 * elimination with partial pivoting on the rows [square | basis] (COLS = SQUARE + BASIS wide; the rows past
 * SQUARE are dropped), then back substitution for the reduced monomials' rows, the last NRED, the only ones
 * read: -> X [NRED x BASIS]; 0 where the square block is singular. The operations, and their order, are
 * those of lu_factor and lu_solve on the two blocks, without the permutation's copies (the 5-point,
 * with native.dense_tables: 2,860 -> 1,700 cycles per instance). */
SG_FN int dense_eliminate(const double *c, double *reduced) {
    double t[SQUARE * COLS];
#if DENSE_SCATTER /* (native.dense_tables) */
    memset(t, 0, sizeof(t));
    for (int k = 0; k < NDENSE; k++) t[dense_positions[k]] = c[dense_sources[k]];
#else
    for (int k = 0; k < SQUARE * COLS; k++) {
        const int source = dense_source[k];
        t[k] = source >= 0 ? c[source] : 0.0;
    }
#endif
    for (int k = 0; k < SQUARE; k++) {
        int p = k;
        double best = fabs(t[k * COLS + k]);
        for (int i = k + 1; i < SQUARE; i++) { /* (selects: the comparisons are not predictable) */
            const double v = fabs(t[i * COLS + k]);
            p = v > best ? i : p;
            best = v > best ? v : best;
        }
        if (!isfinite(best) || !(best > 0.0)) return 0;
        if (p != k)
            for (int j = k; j < COLS; j++) { const double s = t[k * COLS + j]; t[k * COLS + j] = t[p * COLS + j]; t[p * COLS + j] = s; }
        const double inv = 1.0 / t[k * COLS + k];
        const int from = (k + 1) & ~3; /* (from a multiple of 4: whole vectors; the entries left of k + 1 are
                                          not read again) */
        for (int i = k + 1; i < SQUARE; i++) {
            const double f = t[i * COLS + k] * inv;
            if (f != 0.0)
                for (int j = from; j < COLS; j++) t[i * COLS + j] -= f * t[k * COLS + j];
        }
    }
    for (int i = SQUARE - 1; i >= SQUARE - NRED; i--) {
        double *row = t + i * COLS + SQUARE;
        for (int k = i + 1; k < SQUARE; k++) {
            const double f = t[i * COLS + k];
            if (f != 0.0)
                for (int j = 0; j < BASIS; j++) row[j] -= f * t[k * COLS + SQUARE + j];
        }
        const double inv = 1.0 / t[i * COLS + i];
        for (int j = 0; j < BASIS; j++) row[j] *= inv;
        memcpy(reduced + (i - (SQUARE - NRED)) * BASIS, row, sizeof(double) * BASIS);
    }
    return 1;
}

#if !SG_CUDA && GROUPED_COEFFICIENTS && GROUP_EIGENPROBLEMS && !SPARSE_LU
/* dense_eliminate for the CPU batch's COEFFICIENT_LANES instances at once, each in a lane of one vector:
 * c [NCOEF x COEFFICIENT_LANES] (lane-minor) -> reduced [NRED BASIS x COEFFICIENT_LANES], ok[r] 0 where
 * lane r's square block is singular (its reduced entries are then not to be read). Each lane computes
 * what dense_eliminate does, bit for bit without FMA contraction: the pivots' row swaps are selects (a
 * lane's rows k and p), the skipped updates (a zero multiplier) are selects that keep the row as it
 * was (a row whose multipliers are all zero is skipped, as dense_eliminate skips it). The 5-point's
 * elimination alone: 770 -> 390 ns per instance. */
SG_FN void dense_eliminate_lanes(const double *SG_RESTRICT c, double *SG_RESTRICT reduced, int *SG_RESTRICT ok) {
    group_lanes t[SQUARE * COLS];
    const group_lanes zero = {0.0};
    group_mask failed = {0};
#if DENSE_SCATTER
    for (int k = 0; k < SQUARE * COLS; k++) t[k] = zero;
    for (int k = 0; k < NDENSE; k++) memcpy(&t[dense_positions[k]], c + dense_sources[k] * COEFFICIENT_LANES, sizeof(group_lanes));
#else
    for (int k = 0; k < SQUARE * COLS; k++) {
        const int source = dense_source[k];
        if (source >= 0) memcpy(&t[k], c + source * COEFFICIENT_LANES, sizeof(group_lanes));
        else t[k] = zero;
    }
#endif
    for (int k = 0; k < SQUARE; k++) {
        group_mask p = (group_mask){0} + k; /* each lane's pivot row */
        group_lanes best = group_abs(t[k * COLS + k]);
        for (int i = k + 1; i < SQUARE; i++) {
            const group_lanes v = group_abs(t[i * COLS + k]);
            const group_mask larger = v > best;
            p = (larger & ((group_mask){0} + i)) | (p & ~larger);
            best = group_select(larger, v, best);
        }
        failed |= ~((best - best) == 0.0) | ~(best > 0.0); /* (not finite, or 0) */
        for (int i = k + 1; i < SQUARE; i++) { /* rows k and p swapped in the lanes whose pivot is row i */
            const group_mask here = p == i;
            if (!group_any(here)) continue;
            for (int j = k; j < COLS; j++) {
                const group_lanes top = t[k * COLS + j], row = t[i * COLS + j];
                t[k * COLS + j] = group_select(here, row, top);
                t[i * COLS + j] = group_select(here, top, row);
            }
        }
        const group_lanes inv = 1.0 / t[k * COLS + k];
        const int from = (k + 1) & ~3;
        for (int i = k + 1; i < SQUARE; i++) {
            const group_lanes f = t[i * COLS + k] * inv;
            const group_mask update = f != 0.0;
            if (!group_any(update)) continue; /* (a sparse template's zeros: dense_eliminate skips them too) */
            for (int j = from; j < COLS; j++)
                t[i * COLS + j] = group_select(update, t[i * COLS + j] - f * t[k * COLS + j], t[i * COLS + j]);
        }
    }
    for (int i = SQUARE - 1; i >= SQUARE - NRED; i--) {
        group_lanes *row = t + i * COLS + SQUARE;
        for (int k = i + 1; k < SQUARE; k++) {
            const group_lanes f = t[i * COLS + k];
            const group_mask update = f != 0.0;
            if (!group_any(update)) continue;
            for (int j = 0; j < BASIS; j++) row[j] = group_select(update, row[j] - f * t[k * COLS + SQUARE + j], row[j]);
        }
        const group_lanes inv = 1.0 / t[i * COLS + i];
        for (int j = 0; j < BASIS; j++) row[j] *= inv;
        memcpy(reduced + (i - (SQUARE - NRED)) * BASIS * COEFFICIENT_LANES, row, sizeof(group_lanes) * BASIS);
    }
    for (int r = 0; r < COEFFICIENT_LANES; r++) ok[r] = !failed[r];
}
#endif

/* LANES points, lane-minor (xl [width x LANES]), from the rows slots[first ...] of x [S x width]; a last
 * partial group padded with copies of slots[count - 1]. */
SG_FN void gather_lanes(const double *x, int width, const int *slots, int first, int count, double *xl) {
    for (int r = 0; r < LANES; r++) {
        const double *xs = x + slots[first + r < count ? first + r : count - 1] * width;
        for (int i = 0; i < width; i++) xl[i * LANES + r] = xs[i];
    }
}

/* Whether every one of the count values is finite (no early exit: a loop that vectorises). */
SG_FN int all_finite(const double *v, int count) {
    int finite = 1;
    for (int i = 0; i < count; i++) finite &= isfinite(v[i]) != 0;
    return finite;
}

/* No solution yet: x [SLOTS x unknowns] zero, error 0, no candidate. */
SG_FN void clear_outputs(double *x, int unknowns, double *error, uint8_t *candidate) {
    memset(x, 0, sizeof(double) * SLOTS * unknowns);
    for (int s = 0; s < SLOTS; s++) {
        candidate[s] = 0;
        error[s] = 0.0;
    }
}

/* One instance's eigenproblem up to the Hessenberg form (eigenproblem_of; on the CPU four at once,
 * eigenproblems_lanes). */
/* The CPU group's eigenproblems also carry the Sturm path's start (sturm_prepare_lanes) where the eigenvalues
 * take that path. */
#if !SG_CUDA && GROUPED_COEFFICIENTS && GROUP_EIGENPROBLEMS && EIG_STURM && !EIG_CLOSED
#define GROUP_STURM 1
#else
#define GROUP_STURM 0
#endif
typedef struct {
    double reduced[NRED * BASIS];  /* X [NRED x BASIS]: the reduced monomials' rows of the template's solve */
    double balanced[BASIS * BASIS]; /* the action matrix A balanced: D^-1 A D */
    double d[BASIS];                /* D's diagonal */
    double h[BASIS * BASIS];        /* the Hessenberg form of `balanced`, and its transforms (hessenberg) */
    double hmult[BASIS * BASIS];
    int hpivot[BASIS];
#if GROUP_STURM
    int sturm_ready; /* sturm_prepare's result for h (1, or 0: QR), or -1 where not prepared (solve_one prepares it) */
    sturm_start sturm;
#endif
} eigenproblem;

/* The action matrix [BASIS x BASIS] from the template's X; 0 where an entry is not finite. */
SG_FN int action_matrix(const double *reduced, double *action) {
    memset(action, 0, sizeof(double) * BASIS * BASIS);
    for (int k = 0; k < NCONST; k++) action[const_row[k] * BASIS + const_col[k]] += const_value[k];
    for (int k = 0; k < NACT; k++)
        for (int j = 0; j < BASIS; j++)
            action[action_rows[k] * BASIS + j] -= action_scale[k] * reduced[action_reduced[k] * BASIS + j];
    return all_finite(action, BASIS * BASIS);
}

/* The template's elimination, the action matrix, balanced, and its Hessenberg form, from the
 * coefficients c [NCOEF]; 0 where the elimination fails or the action matrix is not finite. */
SG_FN int eigenproblem_of(const double *c, eigenproblem *e) {
    if (!(SPARSE_LU && sparse_eliminate(c, e->reduced)) && !dense_eliminate(c, e->reduced)) return 0;
    if (!action_matrix(e->reduced, e->balanced)) return 0;
    balance(e->balanced, BASIS, e->d); /* (without it, P3P and gP3P were 15 to 20% faster, and the 5-point lost
                                           every solution where one null-space basis vector is scaled by 1e-20) */
    memcpy(e->h, e->balanced, sizeof(e->h));
    hessenberg(e->h, BASIS, e->hpivot, e->hmult);
#if GROUP_STURM
    e->sturm_ready = -1;
#endif
    return 1;
}

#if !SG_CUDA && GROUPED_COEFFICIENTS && GROUP_EIGENPROBLEMS
/* balance for COEFFICIENT_LANES matrices at once, a [BASIS x BASIS] and d [BASIS] lane-minor (vectors): each
 * lane computes what balance does, bit for bit (a lane that has balanced checks on and changes nothing:
 * its n checks in a row that changed nothing leave every row's check as it was; its factor is 1, exact). */
SG_FN void balance_lanes(group_lanes *SG_RESTRICT a, group_lanes *SG_RESTRICT d) {
    const int n = BASIS;
    const group_lanes zero = {0.0}, one = zero + 1.0;
    group_mask unchanged = {0};
    for (int i = 0; i < n; i++) d[i] = one;
    for (int i = 0; group_any(unchanged < n); i = i + 1 < n ? i + 1 : 0) {
        unchanged += 1;
        BALANCE_SUMS(group_lanes, a, n, i, zero, c, r);
        const group_mask kept = (c > 1e-290) & (r > 1e-290) & (c >= 0.25 * (1.0 + 1e-10) * r) & (0.25 * (1.0 + 1e-10) * c < r);
        if (!group_any(~kept)) continue;
        for (int l = 0; l < COEFFICIENT_LANES; l++) {
            c[l] = sqrt(c[l]);
            r[l] = sqrt(r[l]);
        }
        const group_mask scalable = ~kept & (c != 0.0) & (r != 0.0) & ((c - c) == 0.0) & ((r - r) == 0.0);
        if (!group_any(scalable)) continue;
        group_lanes g = r / 2.0, f = one;
        const group_lanes s = c + r;
        for (group_mask m = scalable & (c < g) & (f < 1e150); group_any(m); m = scalable & (c < g) & (f < 1e150)) {
            f = group_select(m, f * 2.0, f);
            c = group_select(m, c * 2.0, c);
            r = group_select(m, r / 2.0, r);
            g = group_select(m, g / 2.0, g);
        }
        g = c / 2.0;
        for (group_mask m = scalable & (g >= r) & (f > 1e-150); group_any(m); m = scalable & (g >= r) & (f > 1e-150)) {
            f = group_select(m, f / 2.0, f);
            c = group_select(m, c / 2.0, c);
            g = group_select(m, g / 2.0, g);
            r = group_select(m, r * 2.0, r);
        }
        const group_mask changed = scalable & ~(c + r >= 0.95 * s);
        if (!group_any(changed)) continue;
        unchanged &= ~changed;
        f = group_select(changed, f, one);
        d[i] *= f;
        const group_lanes inverse = 1.0 / f; /* (exact: f is a power of 2) */
        for (int j = 0; j < n; j++) a[i * n + j] *= inverse;
        for (int j = 0; j < n; j++) a[j * n + i] *= f;
    }
}

/* hessenberg for COEFFICIENT_LANES matrices at once (a [BASIS x BASIS] and mult lane-minor; pivot[m]: each lane's
 * row): each lane computes what hessenberg does, bit for bit without FMA contraction; the pivots' swaps of
 * rows and columns are selects. */
SG_FN void hessenberg_lanes(group_lanes *SG_RESTRICT a, group_mask *SG_RESTRICT pivot, group_lanes *SG_RESTRICT mult) {
    const int n = BASIS;
    const group_lanes zero = {0.0};
    for (int m = 1; m < n - 1; m++) {
        group_lanes largest = zero, x = zero;
        group_mask p = (group_mask){0} + m;
        for (int j = m; j < n; j++) {
            const group_lanes e = a[j * n + m - 1], v = group_abs(e);
            const group_mask larger = v > largest;
            p = (larger & ((group_mask){0} + j)) | (p & ~larger);
            largest = group_select(larger, v, largest);
            x = group_select(larger, e, x);
        }
        pivot[m] = p;
        for (int i = m + 1; i < n; i++) { /* rows and columns m and i swapped in the lanes whose pivot is row i */
            const group_mask here = p == i;
            if (!group_any(here)) continue;
            for (int j = m - 1; j < n; j++) {
                const group_lanes top = a[m * n + j], row = a[i * n + j];
                a[m * n + j] = group_select(here, row, top);
                a[i * n + j] = group_select(here, top, row);
            }
            for (int j = 0; j < n; j++) {
                const group_lanes left = a[j * n + m], column = a[j * n + i];
                a[j * n + m] = group_select(here, column, left);
                a[j * n + i] = group_select(here, left, column);
            }
        }
        const group_mask pivoted = x != 0.0;
        group_lanes y[BASIS];
        for (int i = m + 1; i < n; i++) {
            y[i] = group_select(pivoted, a[i * n + m - 1] / x, zero);
            const group_mask update = y[i] != 0.0;
            if (group_any(update))
                for (int j = m; j < n; j++) a[i * n + j] = group_select(update, a[i * n + j] - y[i] * a[m * n + j], a[i * n + j]);
            mult[i * n + m] = y[i];
            a[i * n + m - 1] = group_select(pivoted, zero, a[i * n + m - 1]);
        }
        for (int j = 0; j < n; j++) { /* (hessenberg's column operations, in its order) */
            group_lanes sum = a[j * n + m];
            for (int i = m + 1; i < n; i++) sum += y[i] * a[j * n + i];
            a[j * n + m] = sum;
        }
    }
}

#if GROUP_STURM
/* sturm_prepare for COEFFICIENT_LANES Hessenberg matrices at once (h [BASIS x BASIS] lane-minor): -> e[r].sturm and
 * e[r].sturm_ready, each lane bit for bit sturm_prepare's without FMA contraction (hessenberg_charpoly and
 * sturm_build in the lanes of one vector; a lane that fails goes on, and is not ready). */
SG_FN void sturm_prepare_lanes(const group_lanes *SG_RESTRICT h, eigenproblem *SG_RESTRICT e) {
    const int n = BASIS, w = BASIS + 1;
    const group_lanes zero = {0.0}, one = zero + 1.0;
    group_lanes q[(BASIS + 1) * (BASIS + 1)], seq[(BASIS + 1) * (BASIS + 1)]; /* hessenberg_charpoly's, sturm_build's */
    for (int i = 0; i < w * w; i++) q[i] = zero;
    q[0] = one;
    for (int k = 1; k <= n; k++) {
        group_lanes *qk = q + k * w;
        const group_lanes *prev = q + (k - 1) * w, diag = h[(k - 1) * n + (k - 1)];
        for (int i = 0; i <= k; i++) qk[i] = (i > 0 ? prev[i - 1] : zero) - (i < k ? diag * prev[i] : zero);
        group_lanes product = one;
        for (int i = k - 1; i >= 1; i--) {
            product *= h[i * n + (i - 1)];
            const group_lanes t = h[(i - 1) * n + (k - 1)] * product;
            const group_mask update = t != 0.0;
            if (!group_any(update)) continue;
            const group_lanes *qi = q + (i - 1) * w;
            for (int j = 0; j < i; j++) qk[j] = group_select(update, qk[j] - t * qi[j], qk[j]);
        }
    }
    group_lanes *p = q + n * w; /* (ascending, monic) */
    group_mask finite = (p[0] - p[0]) == 0.0;
    for (int i = 1; i <= n; i++) finite &= (p[i] - p[i]) == 0.0;
    group_lanes bound = zero;
    for (int i = 0; i < n; i++) {
        group_lanes row = zero;
        for (int j = (i > 0 ? i - 1 : 0); j < n; j++) row += group_abs(h[i * n + j]);
        bound = group_select((bound >= row) | (row != row), bound, row); /* (max_of) */
    }
    const group_mask bound_finite = (bound - bound) == 0.0, scaled = (bound > 0.0) & bound_finite;
    bound *= 1.01;
    group_lanes power = one;
    for (int i = n - 1; i >= 0; i--) {
        power *= bound;
        p[i] /= power;
    }
    group_mask built = scaled; /* sturm_build's */
    for (int i = 0; i <= n; i++) seq[i] = p[i];
    for (int i = 0; i < n; i++) seq[w + i] = (i + 1) * p[i + 1];
    for (int k = 2; k <= n; k++) {
        const group_lanes *u = seq + (k - 2) * w, *v = seq + (k - 1) * w;
        group_lanes *r = seq + k * w;
        const int du = n - k + 2, dv = n - k + 1;
        const group_lanes lead = v[dv];
        group_lanes size = zero;
        for (int i = 0; i <= dv; i++) size = group_select(group_abs(v[i]) > size, group_abs(v[i]), size);
        built &= (group_abs(lead) > STURM_LOST * size) & ((lead - lead) == 0.0);
        const group_lanes a = u[du] / lead, b = (u[du - 1] - a * v[dv - 1]) / lead;
        for (int i = 0; i <= du - 2; i++) r[i] = -(u[i] - b * v[i] - (i > 0 ? a * v[i - 1] : zero));
    }
    built &= (group_abs(seq[n * w]) > 0.0) & ((seq[n * w] - seq[n * w]) == 0.0);
    for (int r = 0; r < COEFFICIENT_LANES; r++) {
        sturm_start *start = &e[r].sturm;
        start->s.n = n;
        start->bound = scaled[r] ? bound[r] : 0.0;
        for (int i = 0; i <= n; i++) start->p[i] = p[i][r];
        for (int i = 0; i < w * w; i++) start->s.seq[i] = seq[i][r];
        e[r].sturm_ready = finite[r] && (scaled[r] ? built[r] != 0 : bound_finite[r] && n == 1);
    }
}
#endif

/* eigenproblem_of for the CPU batch's COEFFICIENT_LANES instances at once: c [NCOEF x COEFFICIENT_LANES]
 * (lane-minor) -> e[r], ok[r] (0 where lane r's elimination fails or its action matrix is not finite; e[r]
 * is then not to be read). The elimination (a dense template; a sparse one's per instance), the action
 * matrix, the balancing, the Hessenberg reduction and (GROUP_STURM) the Sturm path's start in the lanes
 * of one vector, each lane bit for bit eigenproblem_of's and sturm_prepare's without FMA contraction: a
 * scalar instance waits on its pivot searches, divisions, square roots and swaps in turn, four in lanes
 * wait once (one core, standalone kernel: the natural 5-point 5.61 -> 5.22 us per instance, after the
 * elimination's lanes took it 5.69 -> 5.56, and the Sturm start 5.26 -> 5.04; gP3P 2.59 -> 2.09, the
 * 6-point 20.5 -> 19.1). Templates up to GROUP_TEMPLATE_MAX entries (native.py). */
SG_FN void eigenproblems_lanes(const double *SG_RESTRICT c, eigenproblem *SG_RESTRICT e, int *SG_RESTRICT ok) {
    const int n = BASIS;
    group_lanes x[NRED * BASIS], a[BASIS * BASIS], d[BASIS], mult[BASIS * BASIS];
    group_mask pivot[BASIS];
#if SPARSE_LU
    for (int r = 0; r < COEFFICIENT_LANES; r++) { /* (the sparse elimination per instance) */
        double cr[NCOEF];
        for (int k = 0; k < NCOEF; k++) cr[k] = c[k * COEFFICIENT_LANES + r];
        ok[r] = sparse_eliminate(cr, e[r].reduced) || dense_eliminate(cr, e[r].reduced);
        for (int k = 0; k < NRED * BASIS; k++) x[k][r] = e[r].reduced[k];
    }
#else
    dense_eliminate_lanes(c, (double *)x, ok);
    for (int r = 0; r < COEFFICIENT_LANES; r++)
        for (int k = 0; k < NRED * BASIS; k++) e[r].reduced[k] = x[k][r];
#endif
    const group_lanes zero = {0.0};
    for (int k = 0; k < n * n; k++) a[k] = zero; /* action_matrix's */
    for (int k = 0; k < NCONST; k++) a[const_row[k] * n + const_col[k]] += const_value[k];
    for (int k = 0; k < NACT; k++)
        for (int j = 0; j < n; j++) a[action_rows[k] * n + j] -= action_scale[k] * x[action_reduced[k] * n + j];
    group_mask finite = (a[0] - a[0]) == 0.0;
    for (int k = 1; k < n * n; k++) finite &= (a[k] - a[k]) == 0.0;
    for (int r = 0; r < COEFFICIENT_LANES; r++) ok[r] = ok[r] && finite[r];
    balance_lanes(a, d);
    for (int r = 0; r < COEFFICIENT_LANES; r++) {
        for (int k = 0; k < n * n; k++) e[r].balanced[k] = a[k][r];
        for (int i = 0; i < n; i++) e[r].d[i] = d[i][r];
    }
    for (int k = 0; k < n * n; k++) mult[k] = zero;
    hessenberg_lanes(a, pivot, mult);
    for (int r = 0; r < COEFFICIENT_LANES; r++) {
        for (int k = 0; k < n * n; k++) {
            e[r].h[k] = a[k][r];
            e[r].hmult[k] = mult[k][r];
        }
        for (int m = 1; m < n - 1; m++) e[r].hpivot[m] = (int)pivot[m][r];
    }
#if GROUP_STURM
    sturm_prepare_lanes(a, e);
#endif
}
#endif

/* One instance: coefficients c [NCOEF] -> x [SLOTS x NUNK], error [SLOTS], candidate [SLOTS]
 * (SLOTS = BASIS, or 2 BASIS for an even template: each eigenpair gives x and -x). given: its
 * eigenproblem where the caller has it (the CPU group's eigenproblems_lanes), else NULL. */
SG_FN void solve_one(const double *c, int usable, const eigenproblem *given, double imag_tol, int newton_steps,
                      double *x, double *error, uint8_t *candidate) {
    clear_outputs(x, NUNK, error, candidate);
    if (!usable || !all_finite(c, NCOEF)) return;
    eigenproblem own;
    const eigenproblem *e = given;
    if (!e) {
        if (!eigenproblem_of(c, &own)) return;
        e = &own;
    }
    /* Real eigenpairs: Sturm sequences (or closed forms, or QR) on the Hessenberg form; eigenvectors
     * of the balanced matrix by inverse iteration, scaled back. */
    const double *reduced = e->reduced, *balanced = e->balanced, *d = e->d, *h = e->h, *hmult = e->hmult;
    const int *hpivot = e->hpivot;
    double wr[BASIS], wi[BASIS];
    if (!(EIG_CLOSED && closed_form_eigenvalues(h, BASIS, wr, wi))) { /* every one in closed form (roots.h), or */
        int real; /* -1: degenerate, use QR */
#if GROUP_STURM
        if (e->sturm_ready >= 0) /* (the CPU group's) */
            real = e->sturm_ready ? sturm_roots(&e->sturm, BASIS, wr) : -1;
        else
#endif
            real = EIG_STURM ? sturm_real_eigenvalues(h, BASIS, wr) : -1;
        if (real >= 0) {
            for (int s = 0; s < BASIS; s++) wi[s] = s < real ? 0.0 : NAN; /* (NaN: skipped whatever imag_tol) */
        } else {
            double qr[BASIS * BASIS]; /* (hqr destroys its matrix; h is kept for the eigenvectors) */
            memcpy(qr, h, sizeof(qr));
            if (!hqr(qr, BASIS, wr, wi)) return;
        }
    }
    double floor = 0.0; /* real_enough: |imag| <= imag_tol max(|real|, min(1, largest |eigenvalue|)) */
    for (int s = 0; s < BASIS; s++) { /* (hypot, a libm call, only for a complex pair: 400 cycles on the 5-point) */
        if (wi[s] != wi[s]) continue; /* (not found by the Sturm path: its size would be NaN) */
        const double size = wi[s] == 0.0 ? fabs(wr[s]) : hypot(wr[s], wi[s]);
        if (isfinite(size) && size > floor) floor = size;
    }
    floor = floor < 1.0 ? floor : 1.0;
    int real[BASIS], nreal = 0; /* the real eigenvalues' slots */
    for (int s = 0; s < BASIS; s++)
        if (fabs(wi[s]) <= imag_tol * max_of(fabs(wr[s]), floor)) real[nreal++] = s;
    /* Their eigenvectors on the Hessenberg form, O(n^2), EIG_LANES at a time (a last partial group
     * padded with copies of its last eigenvalue), then back; the full matrix's, O(n^3), where
     * that fails. */
    double vectors[BASIS * BASIS];
    int on_hessenberg[BASIS], refined[BASIS];
    const double largest = nreal ? largest_magnitude(balanced, BASIS * BASIS) : 0.0; /* (refine_eigenpair's) */
    const double pivot_floor = nreal ? pivot_floor_of(h, BASIS) : 0.0;
    for (int first = 0; first < nreal; first += EIG_LANES) {
        double lambda[EIG_LANES], y[BASIS * EIG_LANES];
        int ok[EIG_LANES], close[EIG_LANES];
        for (int r = 0; r < EIG_LANES; r++) lambda[r] = wr[real[first + r < nreal ? first + r : nreal - 1]];
        hessenberg_eigenvectors(h, pivot_floor, lambda, y, ok);
        hessenberg_back(hpivot, hmult, y);
#if !SG_CUDA
        eigenpairs_close(balanced, largest, lambda, y, close);
#else
        for (int r = 0; r < EIG_LANES; r++) close[r] = 0;
#endif
        for (int r = 0; r < EIG_LANES && first + r < nreal; r++) {
            for (int i = 0; i < BASIS; i++) vectors[(first + r) * BASIS + i] = y[i * EIG_LANES + r];
            on_hessenberg[first + r] = ok[r];
            refined[first + r] = ok[r] && close[r];
        }
    }
    int found[BASIS], count = 0; /* the eigenpairs read off: their slots */
    for (int e = 0; e < nreal; e++) {
        const int s = real[e];
        double v[BASIS], values[BASIS + NRED];
        if (on_hessenberg[e]) {
            memcpy(v, vectors + e * BASIS, sizeof(v));
        } else if (!eigenvector(balanced, BASIS, wr[s], v)) {
            continue;
        }
        double lambda = wr[s];
        if (!(on_hessenberg[e] && refined[e])) refine_eigenpair(balanced, BASIS, largest, &lambda, v);
        for (int i = 0; i < BASIS; i++) v[i] *= d[i];
        /* Read-off: values = [v, -X v]; monomial q = sum v_i values_j / sum v_i^2 over its pairs. */
        for (int i = 0; i < BASIS; i++) values[i] = v[i];
        for (int r = 0; r < NRED; r++) {
            double acc = 0.0;
            for (int j = 0; j < BASIS; j++) acc += reduced[r * BASIS + j] * v[j];
            values[BASIS + r] = -acc;
        }
        double q[NREAD]; /* (native.read_tables: each monomial's pairs in a row) */
        for (int k = 0; k < NREAD; k++) {
            double num = 0.0, den = 0.0;
            for (int pair = read_start[k]; pair < read_start[k + 1]; pair++) {
                const double vi = v[read_basis[pair]];
                num += vi * values[read_value[pair]];
                den += vi * vi;
            }
            q[k] = k == ACTION_READ ? lambda : num / den;
        }
        double *xs = x + s * NUNK;
#if EVEN
        /* The read monomials are x_i x_j (i <= j): with G = x x^T, x = G[:, k] / sqrt(G_kk) for the
         * largest diagonal entry (template.from_quadratics); not real where G_kk <= 0. */
        int top = 0;
        for (int k = 1; k < NUNK; k++)
            if (q[gram_index[k * NUNK + k]] > q[gram_index[top * NUNK + top]]) top = k;
        double g = q[gram_index[top * NUNK + top]];
        if (!(g > 0.0)) continue;
        for (int i = 0; i < NUNK; i++) xs[i] = q[gram_index[i * NUNK + top]] / sqrt(g);
#else
        for (int i = 0; i < NUNK; i++) xs[i] = q[i];
#endif
        int finite = 1;
        for (int i = 0; i < NUNK; i++)
            if (!isfinite(xs[i])) finite = 0;
        if (!finite) {
            for (int i = 0; i < NUNK; i++) xs[i] = 0.0;
            continue;
        }
        candidate[s] = 1;
        found[count++] = s;
    }
    /* Newton on the polish system, LANES candidates at a time (a last partial group padded with
     * copies of its last candidate). */
    const int steps = newton_steps > 0 ? newton_steps + EXTRA_STEPS : 0;
    for (int first = 0; first < count; first += LANES) {
        double xl[PN * LANES], el[LANES];
        gather_lanes(x, NUNK, found, first, count, xl);
        polish_lanes(c, xl, steps, el);
        for (int r = 0; r < LANES && first + r < count; r++) {
            const int s = found[first + r];
            for (int i = 0; i < NUNK; i++) x[s * NUNK + i] = xl[i * LANES + r];
            error[s] = el[r];
#if EVEN
            /* The pair's other member: Newton keeps the sign symmetry exactly. */
            for (int i = 0; i < NUNK; i++) x[(s + BASIS) * NUNK + i] = -x[s * NUNK + i];
            candidate[s + BASIS] = 1;
            error[s + BASIS] = error[s];
#endif
        }
    }
}

/* The batch: c [batch x NCOEF], usable [batch] -> x [batch x SLOTS x NUNK], error and
 * candidate [batch x SLOTS]. On the CPU a loop over the instances; on CUDA one instance per thread. */
#if SG_CUDA
SG_EXPORT __global__ void solve_batch_kernel(int batch, const double *c, const uint8_t *usable, double imag_tol,
                                             int newton_steps, double *x, double *error, uint8_t *candidate) {
    const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b < batch)
        solve_one(c + b * NCOEF, usable[b], NULL, imag_tol, newton_steps, x + b * SLOTS * NUNK, error + b * SLOTS,
                  candidate + b * SLOTS);
}
#else
SG_EXPORT void solve_batch(int64_t batch, const double *c, const uint8_t *usable, double imag_tol, int newton_steps,
                           double *x, double *error, uint8_t *candidate) {
#pragma omp parallel for schedule(dynamic, SG_CHUNK)
    for (int64_t b = 0; b < batch; b++)
        solve_one(c + b * NCOEF, usable[b], NULL, imag_tol, newton_steps, x + b * SLOTS * NUNK, error + b * SLOTS,
                  candidate + b * SLOTS);
}
#endif

#if LINEAR_BLOCK
/* A natural formulation: the declared equations' linear block L x = b in the kernel too (as
 * runtime/forward.py and linear.py do in torch). Per instance: the declared coefficients, L and
 * b, a QR of [L^T | G] (Householder) whose last columns of Q span L's null space N, the
 * least-norm particular solution x_p (inhomogeneous blocks), the reduced equations'
 * coefficients from [N, x_p, used parameters], the template stage on them, and back: x = x_p +
 * N z (in the chart z_last = 1, then scaled to the gauge q(x) = c), the linear block's residual
 * folded into the error, the free unknowns put back in declared order.
 * Per-problem macros: LN (block size), LRANK, LK (null dimension), LHOMOG, NDECL (declared
 * coefficients), NDUNK (declared unknowns), NDEQ (declared equations), NFREE, NUSED, NMAT and NRHS (entries of L and b),
 * GAUGE, GDEG, GCONST; arrays: see native.py's `linear_source`. */
SG_FN void reduced_coefficients(const double *a, double *c); /* generated after this file */
/* The declared equations at LANES points x [NDUNK x LANES] (lane-minor): h [NDEQ x LANES] and the size of
 * their terms; generated (native.declared_residual_source). */
SG_FN void evaluate_declared_lanes(const double *SG_RESTRICT c, const double *SG_RESTRICT x, double *SG_RESTRICT h,
                                   double *SG_RESTRICT scale);
#if GAUGE
SG_FN double gauge_value(const double *c, const double *x); /* q(x) from the declared c: generated */
#endif

/* The linear block of BLOCK_LANES instances at once, every array lane-minor (s[(i LN + j) BLOCK_LANES + r]):
 * on the CPU the grouped batch's COEFFICIENT_LANES (the natural 5-point's block: 2,180 -> 1,100 cycles per
 * instance; the 7-point 1.48 -> 1.10 us per instance), on CUDA one (a thread is scalar). Each lane
 * computes what one instance alone would, bit for bit without FMA contraction. */
#if SG_CUDA || !GROUPED_COEFFICIENTS
#define BLOCK_LANES 1
#else
#define BLOCK_LANES COEFFICIENT_LANES
#endif
#define BL BLOCK_LANES

/* QR of s (LN x LN, row-major, per lane) by Householder reflections: s <- R, and Q's columns from
 * `first` on, q [LN x (LN - first)] (row-major, per lane), by applying the reflections to those columns
 * of the identity, the last first (as LAPACK's dorgqr; accumulating all of Q took 40% longer on the
 * natural 5-point). A reflection of a zero column is the identity (beta 0). */
SG_FN void householder_qr(double *SG_RESTRICT s, double *SG_RESTRICT q, int first) {
    const int n = LN, width = LN - first;
    double v[LN * LN * BL], beta[LN * BL]; /* reflection k: I - beta_k v_k v_k^T, v_k[i] = v[(k n + i) BL + r] (i >= k) */
    for (int k = 0; k < n - 1; k++) {
        double norm[BL], vv[BL], d[LN * BL], *vk = v + k * n * BL;
        for (int r = 0; r < BL; r++) norm[r] = 0.0;
        for (int i = k; i < n; i++)
            for (int r = 0; r < BL; r++) norm[r] += s[(i * n + k) * BL + r] * s[(i * n + k) * BL + r];
        for (int i = k; i < n; i++)
            for (int r = 0; r < BL; r++) vk[i * BL + r] = s[(i * n + k) * BL + r];
        for (int r = 0; r < BL; r++) { /* LAPACK's sign, also at 0: the torch path's basis */
            norm[r] = sqrt(norm[r]);
            vk[k * BL + r] -= s[(k * n + k) * BL + r] >= 0.0 ? -norm[r] : norm[r];
            vv[r] = 0.0;
        }
        for (int i = k; i < n; i++)
            for (int r = 0; r < BL; r++) vv[r] += vk[i * BL + r] * vk[i * BL + r];
        for (int r = 0; r < BL; r++) beta[k * BL + r] = norm[r] != 0.0 && vv[r] > 0.0 ? 2.0 / vv[r] : 0.0;
        /* each column's sum in the order of i, the columns side by side (rows are contiguous); the columns
         * left of k change only below the diagonal, which is not read */
        for (int j = k; j < n; j++)
            for (int r = 0; r < BL; r++) d[j * BL + r] = 0.0;
        for (int i = k; i < n; i++)
            for (int j = k; j < n; j++)
                for (int r = 0; r < BL; r++) d[j * BL + r] += vk[i * BL + r] * s[(i * n + j) * BL + r];
        for (int j = k; j < n; j++)
            for (int r = 0; r < BL; r++) d[j * BL + r] = beta[k * BL + r] != 0.0 ? d[j * BL + r] * beta[k * BL + r] : 0.0;
        for (int i = k; i < n; i++)
            for (int j = k; j < n; j++)
                for (int r = 0; r < BL; r++) s[(i * n + j) * BL + r] -= d[j * BL + r] * vk[i * BL + r];
    }
    for (int i = 0; i < n; i++)
        for (int c = 0; c < width; c++)
            for (int r = 0; r < BL; r++) q[(i * width + c) * BL + r] = i == first + c ? 1.0 : 0.0;
    for (int k = n - 2; k >= 0; k--) {
        const double *vk = v + k * n * BL;
        double d[LN * BL];
        for (int c = 0; c < width; c++)
            for (int r = 0; r < BL; r++) d[c * BL + r] = 0.0;
        for (int i = k; i < n; i++)
            for (int c = 0; c < width; c++)
                for (int r = 0; r < BL; r++) d[c * BL + r] += vk[i * BL + r] * q[(i * width + c) * BL + r];
        for (int c = 0; c < width; c++)
            for (int r = 0; r < BL; r++) d[c * BL + r] = beta[k * BL + r] != 0.0 ? d[c * BL + r] * beta[k * BL + r] : 0.0;
        for (int i = k; i < n; i++)
            for (int c = 0; c < width; c++)
                for (int r = 0; r < BL; r++) q[(i * width + c) * BL + r] -= d[c * BL + r] * vk[i * BL + r];
    }
}

/* The linear blocks of BL instances, from their declared coefficients cd [NDECL x BL] and parameters
 * a [NPARAM x BL]: the null space of L x = b (QR of [L^T | null_mix]) and its particular solution,
 * packed as reduced_coefficients' inputs [NLINPUT x BL]; particular [LN x BL]; ok[r] 0 where a
 * coefficient is not finite or the block is rank deficient (its inputs are then ones). */
#define NLINPUT (LN * LK + LN + NUSED + 1)
SG_FN void linear_block(const double *SG_RESTRICT a, const double *SG_RESTRICT cd, double *SG_RESTRICT inputs,
                        double *SG_RESTRICT particular, int *SG_RESTRICT ok) {
    double square[LN * LN * BL], q[LN * LN * BL], rhs[LRANK * BL + 1]; /* (+ 1: LRANK * BL may be 0) */
    memset(square, 0, sizeof(square));
    memset(rhs, 0, sizeof(rhs));
    memset(inputs, 0, sizeof(double) * NLINPUT * BL);
    for (int r = 0; r < BL; r++) ok[r] = 1;
    for (int k = 0; k < NDECL; k++)
        for (int r = 0; r < BL; r++) ok[r] &= isfinite(cd[k * BL + r]) != 0;
    for (int i = 0; i < LN; i++)
        for (int j = 0; j < LK; j++)
            for (int r = 0; r < BL; r++) square[(i * LN + LRANK + j) * BL + r] = null_mix[i * LK + j];
    for (int k = 0; k < NMAT; k++) { /* L [LRANK x LN] transposed into square's first LRANK columns */
        const int row = matrix_positions[k] / LN, column = matrix_positions[k] % LN;
        for (int r = 0; r < BL; r++) square[(column * LN + row) * BL + r] = cd[matrix_sources[k] * BL + r];
    }
    for (int k = 0; k < NRHS; k++)
        for (int r = 0; r < BL; r++) rhs[rhs_positions[k] * BL + r] = -cd[rhs_sources[k] * BL + r];
    householder_qr(square, q, LHOMOG ? LRANK : 0); /* (the particular solution needs Q's first LRANK columns) */
    const int qw = LHOMOG ? LK : LN, q0 = LHOMOG ? 0 : LRANK; /* q's width, the null space's first column in it */
    for (int r = 0; r < BL; r++) {
        double largest = 0.0, smallest = INFINITY;
        for (int k = 0; k < LRANK; k++) {
            const double p = fabs(square[(k * LN + k) * BL + r]);
            if (!isfinite(p)) ok[r] = 0;
            largest = max_of(largest, p);
            smallest = min_of(smallest, p);
        }
        if (!(smallest > 1e-10 * largest)) ok[r] = 0; /* rank deficient (linear._full_rank) */
    }
    for (int i = 0; i < LN; i++)
        for (int j = 0; j < LK; j++)
            for (int r = 0; r < BL; r++) inputs[(i * LK + j) * BL + r] = q[(i * qw + q0 + j) * BL + r];
    for (int i = 0; i < LN * BL; i++) particular[i] = 0.0;
#if !LHOMOG
    for (int r = 0; r < BL; r++) { /* L^T = Q1 R1: x_p = Q1 R1^-T b, R1^T y = b forward */
        double y[LRANK];
        for (int i = 0; i < LRANK; i++) {
            double acc = rhs[i * BL + r];
            for (int j = 0; j < i; j++) acc -= square[(j * LN + i) * BL + r] * y[j];
            y[i] = acc / square[(i * LN + i) * BL + r];
        }
        for (int i = 0; i < LN; i++) {
            double acc = 0.0;
            for (int j = 0; j < LRANK; j++) acc += q[(i * qw + j) * BL + r] * y[j];
            particular[i * BL + r] = acc;
            inputs[(LN * LK + i) * BL + r] = acc;
        }
    }
#endif
    for (int k = 0; k < NUSED; k++)
        for (int r = 0; r < BL; r++) inputs[(LN * LK + (LHOMOG ? 0 : LN) + k) * BL + r] = a[used_parameters[k] * BL + r];
    for (int i = 0; i < NLINPUT; i++) /* (a lane without a block: ones, finite reduced coefficients) */
        for (int r = 0; r < BL; r++) inputs[i * BL + r] = ok[r] ? inputs[i * BL + r] : 1.0;
}

/* The reduced problem of one instance solved from its coefficients c [NCOEF] (solve_one), and each
 * solution mapped back to the declared unknowns (linear_block's inputs and particular): x [SLOTS x
 * NDUNK], the relative residual of the declared equations [SLOTS], candidate [SLOTS]. */
SG_FN void linear_solutions(const double *cd, const double *inputs, const double *particular, const double *c,
                            const eigenproblem *given, double imag_tol, int newton_steps, double *x, double *error,
                            uint8_t *candidate) {
    double z[SLOTS * NUNK];
    int mapped[SLOTS], count = 0; /* the candidates mapped back: their slots */
    solve_one(c, 1, given, imag_tol, newton_steps, z, error, candidate);
    for (int s = 0; s < SLOTS; s++) {
        if (!candidate[s]) continue;
        mapped[count++] = s;
        const double *zs = z + s * NUNK;
        double chart[LK + 1], block[LN + NFREE + 1]; /* (+ 1: no zero-length array where LK = 0) */
        for (int j = 0; j < NUNK - NFREE; j++) chart[j] = zs[j];
        if (GAUGE) chart[LK - 1] = 1.0;
        for (int i = 0; i < LN; i++) {
            double acc = particular[i];
            for (int j = 0; j < LK; j++) acc += inputs[i * LK + j] * chart[j];
            block[i] = acc;
        }
#if GAUGE
        double ratio = -cd[GCONST] / gauge_value(cd, block), scale;
#if GDEG % 2 == 0
        int scalable = ratio > 0.0;
#if GDEG == 2
        scale = sqrt(max_of(ratio, DBL_MIN)); /* (pow, a libm call: 1.5% of the natural 5-point's time) */
#else
        scale = pow(max_of(ratio, DBL_MIN), 1.0 / GDEG);
#endif
#else
        int scalable = isfinite(ratio);
        scale = (ratio < 0.0 ? -1.0 : 1.0) * pow(fabs(ratio), 1.0 / GDEG);
#endif
        if (!scalable || !isfinite(scale)) candidate[s] = 0;
        for (int i = 0; i < LN; i++) block[i] *= scale;
#endif
        for (int i = 0; i < NFREE; i++) block[LN + i] = zs[NUNK - NFREE + i];
        double *xs = x + s * NDUNK;
        for (int i = 0; i < NDUNK; i++) xs[i] = block[assemble[i]];
    }
    /* Every declared equation at the declared unknowns, LANES points at a time (a last partial group
     * padded with its last point): a degenerate block (collinear points) can leave the reduced
     * equations satisfied and the declared ones not (the torch path checks the reduced equations
     * and the linear block only). */
    for (int first = 0; first < count; first += LANES) {
        double xl[NDUNK * LANES], h[NDEQ * LANES], size[NDEQ * LANES];
        gather_lanes(x, NDUNK, mapped, first, count, xl);
        evaluate_declared_lanes(cd, xl, h, size);
        for (int r = 0; r < LANES && first + r < count; r++) {
            const int s = mapped[first + r];
            for (int k = 0; k < NDEQ; k++)
                error[s] = worse_ratio(error[s], fabs(h[k * LANES + r]) / divisor_size(size[k * LANES + r]));
        }
    }
}

SG_FN void solve_linear_one(const double *a, int usable, double imag_tol, int newton_steps, double *cd,
                             double *x, double *error, uint8_t *candidate) {
    coefficients(a, cd);
    clear_outputs(x, NDUNK, error, candidate);
    double inputs[NLINPUT], particular[LN], c[NCOEF];
    int ok;
    if (!usable) return;
    linear_block(a, cd, inputs, particular, &ok); /* (one lane: BLOCK_LANES is 1 here) */
    if (!ok) return;
    reduced_coefficients(inputs, c);
    linear_solutions(cd, inputs, particular, c, NULL, imag_tol, newton_steps, x, error, candidate);
}

#endif

#if NATIVE_COEFFICIENTS
#if LINEAR_BLOCK
#define XUNK NDUNK
#define XCOEF NDECL
#else
#define XUNK NUNK
#define XCOEF NCOEF
#endif
/* Validity and order (runtime/forward.py's _finish): a point is valid where it is a candidate,
 * its relative residual is within tol and it is finite; the valid points come first, in the
 * order they were found, the others are zero. */
SG_FN void finish_one(double *x, const double *error, const uint8_t *candidate, double tol, uint8_t *valid) {
    double kept[SLOTS * XUNK];
    int count = 0;
    for (int s = 0; s < SLOTS; s++) {
        int ok = candidate[s] && error[s] <= tol;
        for (int i = 0; i < XUNK && ok; i++) ok = isfinite(x[s * XUNK + i]);
        if (ok) memcpy(kept + XUNK * count++, x + s * XUNK, sizeof(double) * XUNK);
    }
    memset(x, 0, sizeof(double) * SLOTS * XUNK);
    memcpy(x, kept, sizeof(double) * XUNK * count);
    for (int s = 0; s < SLOTS; s++) valid[s] = s < count;
}

/* The whole forward of instance b from the parameters: a [batch x NPARAM] -> the declared
 * coefficients c [batch x XCOEF], the solutions x [batch x SLOTS x XUNK] in the declared
 * unknowns and valid [batch x SLOTS] (runtime/forward.py's solve). A row with a non-finite
 * parameter is solved as a row of ones (its coefficients are those) and has no valid solution. */
SG_FN void solve_row_from(int64_t b, const double *a, double imag_tol, int newton_steps, double residual_tol,
                          double *c, double *x, uint8_t *valid) {
    const double *row = a + b * NPARAM;
    double ones[NPARAM], error[SLOTS];
    uint8_t candidate[SLOTS];
    const int finite = all_finite(row, NPARAM);
    if (!finite) {
        for (int i = 0; i < NPARAM; i++) ones[i] = 1.0;
        row = ones;
    }
    double *xb = x + b * SLOTS * XUNK;
#if LINEAR_BLOCK
    solve_linear_one(row, finite, imag_tol, newton_steps, c + b * XCOEF, xb, error, candidate);
#else
    coefficients(row, c + b * XCOEF);
    solve_one(c + b * XCOEF, finite, NULL, imag_tol, newton_steps, xb, error, candidate);
#endif
    finish_one(xb, error, candidate, residual_tol, valid + b * SLOTS);
}

/* The batch from the parameters (the arrays of solve_row_from). */
#if SG_CUDA
SG_EXPORT __global__ void solve_batch_from_kernel(int batch, const double *a, double imag_tol, int newton_steps,
                                                  double residual_tol, double *c, double *x, uint8_t *valid) {
    const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b < batch) solve_row_from(b, a, imag_tol, newton_steps, residual_tol, c, x, valid);
}
#elif !GROUPED_COEFFICIENTS
SG_EXPORT void solve_batch_from(int64_t batch, const double *a, double imag_tol, int newton_steps, double residual_tol,
                                double *c, double *x, uint8_t *valid) {
#pragma omp parallel for schedule(dynamic, SG_CHUNK)
    for (int64_t b = 0; b < batch; b++) solve_row_from(b, a, imag_tol, newton_steps, residual_tol, c, x, valid);
}
#else
/* On the CPU, COEFFICIENT_LANES instances' coefficients at once (generated after this file: the
 * traced coefficients in a loop over the instances that the compiler vectorises; each
 * instance's statements those of `coefficients`), then each instance as solve_row_from does
 * (the 5-point's coefficients: 1,920 -> 470 cycles per instance); for a natural formulation, the
 * reduced coefficients of the group's linear blocks at once too (reduced_coefficients_lanes: the
 * natural 5-point's, 1,840 -> 400 cycles per instance). A last partial group is padded with its last
 * instance. */
SG_FN void coefficients_lanes(const double *SG_RESTRICT a, double *SG_RESTRICT c);
#if LINEAR_BLOCK
SG_FN void reduced_coefficients_lanes(const double *SG_RESTRICT inputs, double *SG_RESTRICT c);
#endif

SG_FN void solve_group_from(int64_t first, int64_t batch, const double *a, double imag_tol, int newton_steps,
                            double residual_tol, double *c, double *x, uint8_t *valid) {
    double al[NPARAM * COEFFICIENT_LANES], cl[XCOEF * COEFFICIENT_LANES], error[SLOTS];
    int finite[COEFFICIENT_LANES];
    uint8_t candidate[SLOTS];
    for (int r = 0; r < COEFFICIENT_LANES; r++) {
        const double *row = a + (first + r < batch ? first + r : batch - 1) * NPARAM;
        finite[r] = all_finite(row, NPARAM);
        for (int i = 0; i < NPARAM; i++) al[i * COEFFICIENT_LANES + r] = finite[r] ? row[i] : 1.0;
    }
    coefficients_lanes(al, cl);
    for (int r = 0; r < COEFFICIENT_LANES && first + r < batch; r++) {
        double *cb = c + (first + r) * XCOEF;
        for (int k = 0; k < XCOEF; k++) cb[k] = cl[k * COEFFICIENT_LANES + r];
    }
#if LINEAR_BLOCK
    double lanes_in[NLINPUT * BL], particular[LN * BL], reduced[NCOEF * BL], rc[NCOEF];
    double inputs[NLINPUT], xp[LN];
    int blocked[BL];
    linear_block(al, cl, lanes_in, particular, blocked); /* (a padded lane is its group's last instance) */
    for (int r = 0; r < BL; r++) blocked[r] &= finite[r];
    reduced_coefficients_lanes(lanes_in, reduced);
#endif
    const eigenproblem *given[COEFFICIENT_LANES] = {NULL}; /* (NULL: solve_one's own) */
#if GROUP_EIGENPROBLEMS /* the group's eigenproblems at once */
    eigenproblem problems[COEFFICIENT_LANES];
    int prepared[COEFFICIENT_LANES];
#if LINEAR_BLOCK
    eigenproblems_lanes(reduced, problems, prepared);
#else
    eigenproblems_lanes(cl, problems, prepared);
#endif
    for (int r = 0; r < COEFFICIENT_LANES; r++) given[r] = prepared[r] ? &problems[r] : NULL; /* (else it fails again) */
#endif
    for (int r = 0; r < COEFFICIENT_LANES && first + r < batch; r++) {
        const int64_t b = first + r;
        double *cb = c + b * XCOEF, *xb = x + b * SLOTS * XUNK;
#if LINEAR_BLOCK
        clear_outputs(xb, NDUNK, error, candidate);
        if (blocked[r]) {
            for (int k = 0; k < NCOEF; k++) rc[k] = reduced[k * BL + r];
            for (int i = 0; i < NLINPUT; i++) inputs[i] = lanes_in[i * BL + r];
            for (int i = 0; i < LN; i++) xp[i] = particular[i * BL + r];
            linear_solutions(cb, inputs, xp, rc, given[r], imag_tol, newton_steps, xb, error, candidate);
        }
#else
        solve_one(cb, finite[r], given[r], imag_tol, newton_steps, xb, error, candidate);
#endif
        finish_one(xb, error, candidate, residual_tol, valid + b * SLOTS);
    }
}

SG_EXPORT void solve_batch_from(int64_t batch, const double *a, double imag_tol, int newton_steps, double residual_tol,
                                double *c, double *x, uint8_t *valid) {
    const int64_t groups = (batch + COEFFICIENT_LANES - 1) / COEFFICIENT_LANES;
#pragma omp parallel for schedule(dynamic, SG_CHUNK / COEFFICIENT_LANES)
    for (int64_t g = 0; g < groups; g++)
        solve_group_from(g * COEFFICIENT_LANES, batch, a, imag_tol, newton_steps, residual_tol, c, x, valid);
}
#endif
#endif

#if defined(SG_EMULATE_CUDA)
/* The CUDA launches, emulated on the CPU (tests): every (block, thread) of a one-dimensional
 * grid in turn, with the kernel's own indexing. */
#define SG_LAUNCH(grid, block, call)                                                            \
    for (unsigned g = 0; g < (unsigned)(grid); g++)                                             \
        for (unsigned t = 0; t < (unsigned)(block); t++) {                                      \
            blockIdx.x = g; threadIdx.x = t; blockDim.x = (unsigned)(block);                    \
            call;                                                                               \
        }
SG_EXPORT void emulate_solve_batch(int grid, int block, int batch, const double *c, const uint8_t *usable,
                                   double imag_tol, int newton_steps, double *x, double *error, uint8_t *candidate) {
    SG_LAUNCH(grid, block, solve_batch_kernel(batch, c, usable, imag_tol, newton_steps, x, error, candidate))
}
#if NATIVE_COEFFICIENTS
SG_EXPORT void emulate_solve_batch_from(int grid, int block, int batch, const double *a, double imag_tol,
                                        int newton_steps, double residual_tol, double *c, double *x, uint8_t *valid) {
    SG_LAUNCH(grid, block, solve_batch_from_kernel(batch, a, imag_tol, newton_steps, residual_tol, c, x, valid))
}
#endif
#endif
