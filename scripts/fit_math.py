"""Fits the polynomial coefficients of the vectorized transcendentals in
rust/fastopt-core/src/math.rs (run: python scripts/fit_math.py; needs mpmath).

Each fit interpolates at Chebyshev nodes in 60-digit arithmetic, converts to monomials about
a centre and rounds the coefficients to the target type; the script then reports the largest
relative error of the rounded polynomial (evaluated in 60 digits) on a dense grid. The
end-to-end accuracy of each function, with rounding, is measured by `cargo test` (math.rs).
"""
import sys
import mpmath as mp
import numpy as np

mp.mp.dps = 60


def fit(f, a, b, deg, center=0):
    a, b, center = mp.mpf(a), mp.mpf(b), mp.mpf(center)
    n = deg + 1
    nodes = [(a + b) / 2 + (b - a) / 2 * mp.cos(mp.pi * (k + mp.mpf(1) / 2) / n) for k in range(n)]
    A = mp.matrix([[(t - center) ** j for j in range(n)] for t in nodes])
    c = mp.lu_solve(A, mp.matrix([f(t) for t in nodes]))
    return [c[j] for j in range(n)]


def worst(f, coefs, a, b, center, cast, m=3000):
    cs = [mp.mpf(cast(c)) for c in coefs]
    w = 0
    for k in range(m + 1):
        t = mp.mpf(a) + (mp.mpf(b) - mp.mpf(a)) * k / m
        p = mp.mpf(0)
        for c in reversed(cs):
            p = p * (t - center) + c
        ref = f(t)
        if ref != 0:
            w = max(w, abs((p - ref) / ref))
    return float(w)


def em1q(r):  # (expm1(r) - r) / r^2
    return (mp.expm1(r) - r) / r**2 if abs(r) > 1e-30 else mp.mpf(1) / 2 + r / 6


def logr(z):  # log(m) = 2s + s*z*R(z), z = s^2:  R(z) = (2 atanh(s) - 2s) / (s z)
    if abs(z) < 1e-30:
        return mp.mpf(2) / 3
    s = mp.sqrt(z)
    return (2 * mp.atanh(s) - 2 * s) / (s * z)


def erfa(u):  # erf(x) / x, u = x^2
    return mp.erf(mp.sqrt(u)) / mp.sqrt(u) if abs(u) > 1e-30 else 2 / mp.sqrt(mp.pi)


def erfb(K):  # (1 + 2x) erfc(x) exp(x^2) with x = K (1 + t) / (1 - t)
    def g(t):
        x = K * (1 + t) / (1 - t)
        return (1 + 2 * x) * mp.erfc(x) * mp.exp(x * x)
    return g


LN2H = mp.log(2) / 2
SMAX = (mp.sqrt(2) - 1) / (mp.sqrt(2) + 1)
SPECS = {
    # name: (function, a, b, centre, {type: degree})
    "EXPM1_Q": (em1q, -LN2H, LN2H, 0, {"f32": 5, "f64": 10}),
    "LOG_R": (logr, 0, SMAX**2, 0, {"f32": 3, "f64": 7}),
    "ERF_A": (erfa, 0, 1, 0, {"f32": 6, "f64": 11}),
}
ERF_K = 3
ERF_B_RANGE = {"f32": (0.5, 10.5), "f64": (0.5, 27.5)}
ERF_B_DEG = {"f32": 9, "f64": 22}


def main():
    casts = {"f32": lambda c: float(np.float32(float(c))), "f64": lambda c: float(c)}
    for ty in ("f32", "f64"):
        cast = casts[ty]
        for name, (f, a, b, center, degs) in SPECS.items():
            c = fit(f, a, b, degs[ty], center)
            print(f"// {name} {ty}: max rel error {worst(f, c, a, b, center, cast):.3g}")
            print(f"const {name}: [{ty}; {len(c)}] = [{', '.join(repr(cast(x)) for x in c)}];")
        lo, hi = ERF_B_RANGE[ty]
        ta, tb = mp.mpf(lo - ERF_K) / (lo + ERF_K), mp.mpf(hi - ERF_K) / (hi + ERF_K)
        ctr = (ta + tb) / 2
        g = erfb(ERF_K)
        c = fit(g, ta, tb, ERF_B_DEG[ty], ctr)
        print(f"// ERF_B {ty} on x in [{lo}, {hi}], t = (x-{ERF_K})/(x+{ERF_K}) about {float(ctr)!r}: "
              f"max rel error {worst(g, c, ta, tb, ctr, cast, 1000):.3g}")
        print(f"const ERF_B: [{ty}; {len(c)}] = [{', '.join(repr(cast(x)) for x in c)}];")


if __name__ == "__main__":
    main()
