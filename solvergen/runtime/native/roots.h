/* Every eigenvalue of a small upper Hessenberg matrix (n <= 4) in closed form: the roots of its
 * characteristic polynomial (sturm.h's hessenberg_charpoly) by the quadratic formula, the
 * trigonometric / Cardano cubic and Ferrari's quartic, each real root then polished by Newton
 * steps on the polynomial. Like QR (stage.h's hqr) it returns the complex ones too (wr, wi), so
 * the caller's imag_tol test applies unchanged. native.py uses it up to CLOSED_FORM_MAX_BASIS
 * (chosen by measurement: benchmarks/README.md, "Native kernels").
 */
#define ROOT_POLISH 3 /* Newton steps on the polynomial per real root (kept where |p| decreases) */
#ifndef CLOSED_FORM_TOL
#define CLOSED_FORM_TOL 1e-10 /* largest |p(root)| / sum |p_i| |root|^i trusted */
#endif
#ifndef CLOSED_FORM_GAP
#define CLOSED_FORM_GAP 1e-8 /* smallest distance between two roots trusted, relative to the largest root */
#endif
#define PI_VALUE 3.14159265358979323846

/* The roots of x^2 + b x + c: (re, im) pairs in wr, wi (the stable form: no cancellation). */
SG_FN void quadratic_roots(double b, double c, double *wr, double *wi) {
    double disc = b * b - 4.0 * c;
    if (disc >= 0.0) {
        double q = -0.5 * (b + (b >= 0.0 ? sqrt(disc) : -sqrt(disc)));
        wr[0] = q;
        wr[1] = q != 0.0 ? c / q : 0.0;
        wi[0] = wi[1] = 0.0;
    } else {
        wr[0] = wr[1] = -0.5 * b;
        wi[0] = 0.5 * sqrt(-disc);
        wi[1] = -wi[0];
    }
}

/* The roots of the monic cubic x^3 + a x^2 + b x + c (Numerical Recipes' forms). */
SG_FN void cubic_roots(double a, double b, double c, double *wr, double *wi) {
    const double q = (a * a - 3.0 * b) / 9.0, r = (2.0 * a * a * a - 9.0 * a * b + 27.0 * c) / 54.0;
    const double q3 = q * q * q;
    if (r * r < q3) { /* three real roots: the trigonometric form */
        const double t = acos(max_of(-1.0, min_of(1.0, r / sqrt(q3)))), s = -2.0 * sqrt(q);
        wr[0] = s * cos(t / 3.0) - a / 3.0;
        wr[1] = s * cos((t + 2.0 * PI_VALUE) / 3.0) - a / 3.0;
        wr[2] = s * cos((t - 2.0 * PI_VALUE) / 3.0) - a / 3.0;
        wi[0] = wi[1] = wi[2] = 0.0;
    } else { /* one real root (Cardano) and a complex pair */
        double u = -cbrt(fabs(r) + sqrt(r * r - q3));
        if (r < 0.0) u = -u;
        const double v = u != 0.0 ? q / u : 0.0;
        wr[0] = u + v - a / 3.0;
        wr[1] = wr[2] = -0.5 * (u + v) - a / 3.0;
        wi[1] = 0.5 * sqrt(3.0) * (u - v);
        wi[2] = -wi[1];
        wi[0] = 0.0;
    }
}

/* The roots of the monic quartic x^4 + a x^3 + b x^2 + c x + d (Ferrari): with x = y - a/4,
 * y^4 + p y^2 + q y + r = (y^2 + s y + t)(y^2 - s y + t') where s^2 = z is the largest root of
 * the resolvent z^3 + 2p z^2 + (p^2 - 4r) z - q^2 (z >= 0). */
SG_FN void quartic_roots(double a, double b, double c, double d, double *wr, double *wi) {
    const double a2 = a * a, shift = -0.25 * a;
    const double p = b - 0.375 * a2, q = c - 0.5 * a * b + 0.125 * a2 * a,
                 r = d - 0.25 * a * c + 0.0625 * a2 * b - 3.0 / 256.0 * a2 * a2;
    double zr[3], zi[3];
    cubic_roots(2.0 * p, p * p - 4.0 * r, -q * q, zr, zi);
    double z = zr[0];
    for (int k = 1; k < 3; k++)
        if (zi[k] == 0.0 && zr[k] > z) z = zr[k];
    if (z > 0.0) {
        const double s = sqrt(z), t = 0.5 * (p + z);
        const double u = 0.5 * q / s;
        quadratic_roots(s, t - u, wr, wi);
        quadratic_roots(-s, t + u, wr + 2, wi + 2);
    } else { /* q = 0: biquadratic in y^2 */
        double yr[2], yi[2];
        quadratic_roots(p, r, yr, yi);
        for (int k = 0; k < 2; k++) { /* y = +-sqrt(y2), y2 = yr + i yi */
            const double m = sqrt(yr[k] * yr[k] + yi[k] * yi[k]);
            const double re = sqrt(max_of(0.0, 0.5 * (m + yr[k]))), im = sqrt(max_of(0.0, 0.5 * (m - yr[k])));
            const double sign = yi[k] < 0.0 ? -1.0 : 1.0;
            wr[2 * k] = re; wi[2 * k] = sign * im;
            wr[2 * k + 1] = -re; wi[2 * k + 1] = -sign * im;
        }
    }
    for (int k = 0; k < 4; k++) wr[k] += shift;
}

/* Every eigenvalue (wr, wi) of the upper Hessenberg h (n x n, n <= 4); 0 where the polynomial is
 * not finite (the caller uses QR). */
SG_FN int closed_form_eigenvalues(const double *h, int n, double *wr, double *wi) {
    double p[5];
    hessenberg_charpoly(h, n, p); /* ascending, monic */
    for (int i = 0; i <= n; i++)
        if (!isfinite(p[i])) return 0;
    if (n == 1) { wr[0] = -p[0]; wi[0] = 0.0; }
    else if (n == 2) quadratic_roots(p[1], p[0], wr, wi);
    else if (n == 3) cubic_roots(p[2], p[1], p[0], wr, wi);
    else if (n == 4) quartic_roots(p[3], p[2], p[1], p[0], wr, wi);
    else return 0;
    /* Roots closer than CLOSED_FORM_GAP (a double root split by rounding, which may come out as
     * a complex pair and be lost) are declined. Measured on a helper's adversarial families (P3P
     * near its danger cylinder: near-double roots 1e-8 to 1e-6 apart): with the gap at 1e-8 the
     * closed forms find the truth in 385 of 400 instances, the Sturm sequence in 320 (the torch
     * path 387); at 1e-6 or 1e-4, which send those to the Sturm sequence, 331 and 320. */
    double largest = 0.0;
    for (int k = 0; k < n; k++) {
        if (!isfinite(wr[k]) || !isfinite(wi[k])) return 0;
        largest = max_of(largest, sqrt(wr[k] * wr[k] + wi[k] * wi[k]));
    }
    for (int k = 0; k < n; k++)
        for (int l = k + 1; l < n; l++) {
            const double dr = wr[k] - wr[l], di = wi[k] - wi[l];
            if (!(sqrt(dr * dr + di * di) > CLOSED_FORM_GAP * largest)) return 0;
        }
    for (int k = 0; k < n; k++) {
        if (wi[k] != 0.0) continue;
        double x = wr[k], value = horner(p, n, x);
        for (int step = 0; step < ROOT_POLISH && value != 0.0; step++) {
            double slope = 0.0; /* p'(x) */
            for (int i = n; i >= 1; i--) slope = slope * x + i * p[i];
            const double next = x - value / slope, next_value = horner(p, n, next);
            if (!(fabs(next_value) < fabs(value))) break;
            x = next;
            value = next_value;
        }
        wr[k] = x;
    }
    /* Trusted only where every root (complex ones included) leaves a residual at the rounding
     * level of the polynomial's terms: two close real roots come out of Ferrari's formulas as a
     * complex pair (or a close complex pair as two real roots) when the other roots are much
     * larger, and then the caller isolates the real roots by a Sturm sequence instead. */
    for (int k = 0; k < n; k++) {
        double re = 1.0, im = 0.0, sr = 0.0, si = 0.0, size = 0.0, power = 1.0; /* z^i, sum p_i z^i */
        const double modulus = sqrt(wr[k] * wr[k] + wi[k] * wi[k]);
        for (int i = 0; i <= n; i++) {
            sr += p[i] * re;
            si += p[i] * im;
            size += fabs(p[i]) * power;
            const double next = re * wr[k] - im * wi[k];
            im = re * wi[k] + im * wr[k];
            re = next;
            power *= modulus;
        }
        if (!(sqrt(sr * sr + si * si) <= CLOSED_FORM_TOL * size)) return 0;
    }
    return 1;
}
