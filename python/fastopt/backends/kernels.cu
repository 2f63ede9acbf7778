// fastopt's CUDA kernels: the CPU core's update rules and activations, for CuPy arrays.
//
// Compiled on first use by NVRTC (through cupy.RawModule, with --fmad=false so that only
// the explicit fma() calls below fuse, as the CPU core's FMA levels do). The same file also
// compiles as plain C++ (FASTOPT_HOST_EMULATION): each kernel then runs one "thread" per
// block, and the test suite checks its arithmetic against the CPU core on machines without a
// GPU. Kernels are therefore written for any blockDim.x (block-strided loops, reductions
// that work with one thread).
//
// Optimizer steps use torch's multi-tensor apply: one launch per (param group, dtype) over
// all its tensors, in chunks of FO_CHUNK elements; `blocks` maps each block to a (tensor,
// chunk) pair. The same launch advances the step counters (the last block of each tensor). The tensor table and the block table live in device memory (built once per
// set of pointers), so the launch argument size never limits the tensor count. Values that
// change per step without the host knowing them (a clipping coefficient, a loss scaler's
// found-inf flag) are read from device memory; step counters live on the device and the
// per-tensor constants (bias corrections, ...) are computed from them in double precision,
// as the CPU core computes them (sqrt where it takes pow(x, 0.5), correctly rounded in
// both), then rounded to the element type.

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FO_GLOBAL extern "C" __global__
#define FO_DEVICE __device__ __forceinline__
#define FO_SHARED __shared__
#define FO_SYNC() __syncthreads()
#define FO_TID threadIdx.x
#define FO_BDIM blockDim.x
#define FO_BID blockIdx.x
#define FO_GDIM gridDim.x
// The step kernels run 512 threads per block: at most 128 registers per thread (the compiler
// spills beyond, rather than the launch failing for want of registers).
#define FO_BOUNDS __launch_bounds__(512)
#define FO_INF __longlong_as_double(0x7ff0000000000000LL)
#else
// Host emulation: one thread per block, the block index a thread-local the driver sets.
#include <math.h>
#include <stdint.h>
#define FO_GLOBAL extern "C"
#define FO_DEVICE inline
#define FO_SHARED static thread_local
#define FO_SYNC() ((void)0)
#define FO_TID 0u
#define FO_BDIM 1u
static thread_local unsigned fo_block_index, fo_grid_dim;
extern "C" void fo_set_block(unsigned b, unsigned g) { fo_block_index = b; fo_grid_dim = g; }
#define FO_BID fo_block_index
#define FO_GDIM fo_grid_dim
#define FO_BOUNDS
#define FO_INF HUGE_VAL
#endif

#define FO_CHUNK 65536
#define FO_MAX_STATES 4
#define FO_MAX_COUNTERS 3

typedef long long i64;

// One tensor of a launch (8-byte fields: the Python side's numpy structured dtype matches).
struct TensorRef {
    void* param;
    const void* grad;
    void* state[FO_MAX_STATES];
    float* counters[FO_MAX_COUNTERS];
    i64 n;
    i64 flags;  // bit 0: the state buffers were just created (SGD's first step)
};

FO_DEVICE float fo_sqrt(float x) { return sqrtf(x); }
FO_DEVICE double fo_sqrt(double x) { return sqrt(x); }
FO_DEVICE float fo_fma(float a, float b, float c) { return fmaf(a, b, c); }
FO_DEVICE double fo_fma(double a, double b, double c) { return fma(a, b, c); }
FO_DEVICE float fo_abs(float x) { return fabsf(x); }
FO_DEVICE double fo_abs(double x) { return fabs(x); }
FO_DEVICE bool fo_isnan(float x) { return x != x; }
FO_DEVICE bool fo_isnan(double x) { return x != x; }

template <class T> FO_DEVICE T nan_max(T a, T b) { return (fo_isnan(a) || a > b) ? a : b; }
template <class T> FO_DEVICE T fo_sign(T x) {
    if (x > T(0)) return T(1);
    if (x < T(0)) return T(-1);
    if (x == T(0)) return x;
    return T(0);
}
// clamp(x, lo, hi) that keeps a NaN
template <class T> FO_DEVICE T fo_clamp(T x, T lo, T hi) { return x < lo ? lo : (x > hi ? hi : x); }
FO_DEVICE double bias_correction(double beta, double step) { return 1.0 - pow(beta, step); }

// The gradient prologue: maximize and the grad scale as one factor, L2 or decoupled decay.
template <class T> struct Grad {
    T sign, weight_decay, decay;
    bool l2;
    FO_DEVICE void init(bool maximize, double scale, double wd, bool decoupled, double lr) {
        T s = T(scale);
        sign = maximize ? -s : s;
        weight_decay = T(wd);
        l2 = wd != 0.0 && !decoupled;
        decay = (wd != 0.0 && decoupled) ? T(1.0 - lr * wd) : T(1);
    }
    FO_DEVICE T read(T& p, T g) const {
        p = p * decay;
        T plain = g * sign;
        return l2 ? fo_fma(p, weight_decay, plain) : plain;
    }
    FO_DEVICE T plain(T g) const { return g * sign; }
    // the core's `with_l2` or `plain`: for rules without decoupled decay (p is left alone)
    FO_DEVICE T coupled(T p, T g) const { return l2 ? fo_fma(p, weight_decay, g * sign) : g * sign; }
};

// torch's lerp(start, end, w): two forms depending on |w| < 0.5.
template <class T> struct Lerp {
    T coef;
    bool small;
    FO_DEVICE void init(double weight) {
        T w = T(weight);
        small = fo_abs(double(w)) < 0.5;
        coef = small ? w : w - T(1);
    }
    FO_DEVICE T apply(T start, T end) const { return fo_fma(coef, end - start, small ? start : end); }
};

template <class T> struct Ema {
    T beta, one_minus;
    FO_DEVICE void init(double b) { beta = T(b); one_minus = T(1.0 - b); }
    FO_DEVICE T mean(T s, T x) const { return fo_fma(x, one_minus, s * beta); }
    FO_DEVICE T square(T s, T x) const { return fo_fma(one_minus * x, x, s * beta); }
};

// What every rule's `make` gets: the hyperparameters (in the order of the rule's names on
// the Python side), the gradient factor, the tensor's counters (read, and the new values
// written to `next`) and its flags.
struct Ctx {
    const double* h;
    double scale;
    const float* counters;
    float* next;
    i64 flags;
};

// ---------------------------------------------------------------------------- the rules
// Each rule: `make(Ctx)` builds the tensor's constants (and its next counters); `update(p,
// g, s)` is the per-element step, operation for operation the CPU core's.

template <class T> struct Sgd {  // lr, momentum, dampening, weight_decay, nesterov, maximize
    Grad<T> g; T momentum, one_minus_dampening, neg_lr; bool mom, nesterov, fresh;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        g.init(h[5] != 0, c.scale, h[3], false, h[0]);
        momentum = T(h[1]); one_minus_dampening = T(1.0 - h[2]); neg_lr = T(-h[0]);
        mom = h[1] != 0; nesterov = h[4] != 0; fresh = (c.flags & 1) != 0;
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.coupled(p, gr);
        if (mom) {
            T decayed = s[0] * momentum;
            T b = fresh ? x : fo_fma(x, one_minus_dampening, decayed);
            s[0] = b;
            x = nesterov ? fo_fma(b, momentum, x) : b;
        }
        p = fo_fma(x, neg_lr, p);
    }
};

template <class T> struct Adam {  // lr beta1 beta2 eps weight_decay amsgrad maximize decoupled_weight_decay cautious
    Grad<T> g; Lerp<T> lerp; Ema<T> v; T bc2_sqrt, eps, neg_step_size; bool ams;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        double step = double(c.counters[0] + 1.0f);
        c.next[0] = float(step);
        g.init(h[6] != 0, c.scale, h[4], h[7] != 0, h[0]);
        lerp.init(1.0 - h[1]); v.init(h[2]);
        bc2_sqrt = T(sqrt(bias_correction(h[2], step)));  // (= the core's correctly rounded pow(x, 0.5))
        eps = T(h[3]);
        neg_step_size = T(-(h[0] / bias_correction(h[1], step)));
        ams = h[5] != 0;
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);  // (L2 or decoupled decay, never both: read's order is the core's split)
        T m = lerp.apply(s[0], x); s[0] = m;
        T vv = v.square(s[1], x); s[1] = vv;
        if (ams) { s[2] = nan_max(s[2], vv); vv = s[2]; }
        T denom = fo_sqrt(vv) / bc2_sqrt + eps;
        p = p + neg_step_size * m / denom;
    }
};

template <class T> struct Adagrad {  // lr lr_decay weight_decay eps maximize
    Grad<T> g; T eps, neg_clr;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        double step = double(c.counters[0] + 1.0f);
        c.next[0] = float(step);
        g.init(h[4] != 0, c.scale, h[2], false, h[0]);
        eps = T(h[3]);
        neg_clr = T(-(h[0] / (1.0 + (step - 1.0) * h[1])));
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.coupled(p, gr);
        T sum = fo_fma(x, x, s[0]); s[0] = sum;
        p = p + neg_clr * x / (fo_sqrt(sum) + eps);
    }
};

template <class T> struct Rmsprop {  // lr alpha eps weight_decay momentum centered maximize
    Grad<T> g; Ema<T> sq; Lerp<T> lerp; T eps, momentum, neg_lr; bool mom, cen;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        c.next[0] = c.counters[0] + 1.0f;
        g.init(h[6] != 0, c.scale, h[3], false, h[0]);
        sq.init(h[1]); lerp.init(1.0 - h[1]);
        eps = T(h[2]); momentum = T(h[4]); neg_lr = T(-h[0]);
        mom = h[4] > 0; cen = h[5] != 0;
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.coupled(p, gr);
        T q = sq.square(s[0], x); s[0] = q;
        T avg;
        if (cen) {
            int k = mom ? 2 : 1;
            T a = lerp.apply(s[k], x); s[k] = a;
            avg = fo_sqrt(fo_fma(-a, a, q));
        } else {
            avg = fo_sqrt(q);
        }
        avg = avg + eps;
        if (mom) {
            T b = s[1] * momentum + x / avg; s[1] = b;
            p = fo_fma(b, neg_lr, p);
        } else {
            p = p + neg_lr * x / avg;
        }
    }
};

template <class T> struct Adamax {  // lr beta1 beta2 eps weight_decay maximize
    Grad<T> g; Lerp<T> lerp; T beta2, eps, neg_clr;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        double step = double(c.counters[0] + 1.0f);
        c.next[0] = float(step);
        g.init(h[5] != 0, c.scale, h[4], false, h[0]);
        lerp.init(1.0 - h[1]); beta2 = T(h[2]); eps = T(h[3]);
        neg_clr = T(-(h[0] / bias_correction(h[1], step)));
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);
        s[0] = lerp.apply(s[0], x);
        s[1] = nan_max(s[1] * beta2, fo_abs(x) + eps);
        p = p + neg_clr * s[0] / s[1];
    }
};

template <class T> struct Adadelta {  // lr rho eps weight_decay maximize
    Grad<T> g; Ema<T> rho; T eps, neg_lr;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        c.next[0] = c.counters[0] + 1.0f;
        g.init(h[4] != 0, c.scale, h[3], false, h[0]);
        rho.init(h[1]); eps = T(h[2]); neg_lr = T(-h[0]);
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);
        T q = rho.square(s[0], x); s[0] = q;
        T std_ = fo_sqrt(q + eps);
        T delta = fo_sqrt(s[1] + eps) / std_ * x;
        s[1] = rho.square(s[1], delta);
        p = fo_fma(delta, neg_lr, p);
    }
};

template <class T> struct Nadam {  // lr beta1 beta2 eps weight_decay momentum_decay decoupled_weight_decay maximize
    Grad<T> g; Lerp<T> lerp; Ema<T> v; T bc2, eps, c_grad, c_avg;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        double lr = h[0], b1 = h[1], md = h[5];
        double step = double(c.counters[0] + 1.0f);
        c.next[0] = float(step);
        double bc2d = bias_correction(h[2], step);
        double mu = b1 * (1.0 - 0.5 * pow(0.96, step * md));
        double mu_next = b1 * (1.0 - 0.5 * pow(0.96, (step + 1.0) * md));
        float mp32 = c.counters[1] * float(mu);
        c.next[1] = mp32;
        double mp = double(mp32), mp_next = mp * mu_next;
        g.init(h[7] != 0, c.scale, h[4], h[6] != 0, lr);
        lerp.init(1.0 - b1); v.init(h[2]);
        bc2 = T(bc2d); eps = T(h[3]);
        c_grad = T(-lr * (1.0 - mu) / (1.0 - mp));
        c_avg = T(-lr * mu_next / (1.0 - mp_next));
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);
        s[0] = lerp.apply(s[0], x);
        s[1] = v.square(s[1], x);
        T denom = fo_sqrt(s[1] / bc2) + eps;
        p = p + c_grad * x / denom;
        p = p + c_avg * s[0] / denom;
    }
};

template <class T> struct Radam {  // lr beta1 beta2 eps weight_decay decoupled_weight_decay maximize
    Grad<T> g; Lerp<T> lerp; Ema<T> v; T bc1, lr, bc2_sqrt, eps, rect; bool rectified;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        double b1 = h[1], b2 = h[2];
        double step = double(c.counters[0] + 1.0f);
        c.next[0] = float(step);
        double bc2d = bias_correction(b2, step);
        double rho_inf = 2.0 / (1.0 - b2) - 1.0;
        double rho_t = rho_inf - 2.0 * step * pow(b2, step) / bc2d;
        rectified = rho_t > 5.0;
        double r = rectified ? sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) : 1.0;
        g.init(h[6] != 0, c.scale, h[4], h[5] != 0, h[0]);
        lerp.init(1.0 - b1); v.init(b2);
        bc1 = T(bias_correction(b1, step)); lr = T(h[0]);
        bc2_sqrt = T(sqrt(bc2d)); eps = T(h[3]); rect = T(r);
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);
        s[0] = lerp.apply(s[0], x);
        s[1] = v.square(s[1], x);
        T corrected = s[0] / bc1;
        T u;
        if (rectified) {
            T adaptive = T(1) / (fo_sqrt(s[1]) + eps) * bc2_sqrt;
            u = corrected * lr * adaptive * rect;
        } else {
            u = corrected * lr;
        }
        p = fo_fma(u, T(-1), p);
    }
};

template <class T> struct AdaBound {  // lr beta1 beta2 eps weight_decay final_lr gamma decoupled_weight_decay maximize
    Grad<T> g; Ema<T> m, v; T eps, step_size, lower, upper; bool ams;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        double step = double(c.counters[0] + 1.0f);
        c.next[0] = float(step);
        double bc1 = bias_correction(h[1], step), bc2 = bias_correction(h[2], step);
        g.init(h[8] != 0, c.scale, h[4], h[7] != 0, h[0]);
        m.init(h[1]); v.init(h[2]); eps = T(h[3]);
        step_size = T(h[0] * sqrt(bc2) / bc1);
        lower = T(h[5] * (1.0 - 1.0 / (h[6] * step + 1.0)));
        upper = T(h[5] * (1.0 + 1.0 / (h[6] * step)));
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);
        s[0] = m.mean(s[0], x);
        s[1] = v.square(s[1], x);
        T vv = s[1];
        if (ams) { s[2] = nan_max(s[2], s[1]); vv = s[2]; }
        T size = step_size / (fo_sqrt(vv) + eps);
        size = fo_clamp(size, lower, upper);
        p = p - size * s[0];
    }
};
template <class T> struct AdaBoundPlain : AdaBound<T> {
    FO_DEVICE void make(const Ctx& c) { AdaBound<T>::make(c); this->ams = false; }
};
template <class T> struct AmsBound : AdaBound<T> {
    FO_DEVICE void make(const Ctx& c) { AdaBound<T>::make(c); this->ams = true; }
};

template <class T> struct Lion {  // lr beta1 beta2 weight_decay maximize cautious
    Grad<T> g; Ema<T> m, v; T neg_lr;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        c.next[0] = c.counters[0] + 1.0f;
        g.init(h[4] != 0, c.scale, h[3], true, h[0]);
        m.init(h[1]); v.init(h[2]); neg_lr = T(-h[0]);
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);
        T direction = fo_sign(m.mean(s[0], x));
        s[0] = v.mean(s[0], x);
        p = p + direction * neg_lr;
    }
};

template <class T> struct AdaBelief {
    // lr beta1 beta2 eps weight_decay decoupled_weight_decay fixed_decay amsgrad rectify degenerated_to_sgd maximize
    Grad<T> g; Ema<T> m, v; T eps, k0, k1; int kind; bool ams;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        double lr = h[0], b1 = h[1], b2 = h[2];
        double step = double(c.counters[0] + 1.0f);
        c.next[0] = float(step);
        g.init(h[10] != 0, c.scale, h[4], h[5] != 0, h[6] != 0 ? 1.0 : lr);
        m.init(b1); v.init(b2); eps = T(h[3]); ams = h[7] != 0;
        k0 = T(0); k1 = T(1);
        if (h[8] == 0) {
            kind = 1;
            k1 = T(sqrt(bias_correction(b2, step)));
            k0 = T(-(lr / bias_correction(b1, step)));
            return;
        }
        double beta2_t = pow(b2, step);
        double n_max = 2.0 / (1.0 - b2) - 1.0;
        double n = n_max - 2.0 * step * beta2_t / (1.0 - beta2_t);
        if (n >= 5.0) {
            double r = sqrt((1.0 - beta2_t) * (n - 4.0) / (n_max - 4.0) * (n - 2.0) / n * n_max / (n_max - 2.0)) / (1.0 - pow(b1, step));
            kind = 2; k0 = T(-r * lr);
        } else if (h[9] != 0) {
            kind = 3; k0 = T(-(1.0 / (1.0 - pow(b1, step))) * lr);
        } else {
            kind = 4;
        }
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);
        T mm = m.mean(s[0], x); s[0] = mm;
        T r = x - mm;
        T var = v.square(s[1], r) + eps; s[1] = var;
        T top = var;
        if (ams) { s[2] = nan_max(s[2], var); top = s[2]; }
        if (kind == 1) p = p + k0 * (mm / (fo_sqrt(top) / k1 + eps));
        else if (kind == 2) p = p + k0 * (mm / (fo_sqrt(var) + eps));
        else if (kind == 3) p = fo_fma(mm, k0, p);
    }
};

template <class T> struct Asgd {  // lr lambd alpha t0 weight_decay maximize
    Grad<T> g; T decay, neg_eta, mu; bool average;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        double lr = h[0], lambd = h[1], alpha = h[2], t0 = h[3];
        double step = double(c.counters[0] + 1.0f);
        c.next[0] = float(step);
        double eta = double(c.counters[1]), m = double(c.counters[2]);
        c.next[1] = float(lr / pow(1.0 + lambd * lr * step, alpha));
        double d = step - t0;
        c.next[2] = float(1.0 / (d > 1.0 ? d : 1.0));
        g.init(h[5] != 0, c.scale, h[4], false, lr);
        decay = T(1.0 - lambd * eta); neg_eta = T(-eta); mu = T(m); average = m != 1.0;
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);
        p = fo_fma(x, neg_eta, p * decay);
        s[0] = average ? s[0] + (p - s[0]) * mu : p;
    }
};

template <class T> struct Rprop {  // etaminus etaplus step_size_min step_size_max maximize
    Grad<T> g; T etaminus, etaplus, lo, hi;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        c.next[0] = c.counters[0] + 1.0f;
        g.init(h[4] != 0, c.scale, 0.0, false, 0.0);
        etaminus = T(h[0]); etaplus = T(h[1]); lo = T(h[2]); hi = T(h[3]);
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);
        T prod = x * s[0];
        T factor = prod > T(0) ? etaplus : (prod < T(0) ? etaminus : T(1));
        T size = fo_clamp(s[1] * factor, lo, hi);
        s[1] = size;
        x = prod < T(0) ? T(0) : x;
        s[0] = x;
        p = p - fo_sign(x) * size;
    }
};

template <class T> struct Adopt {  // lr beta1 beta2 eps weight_decay decouple clip clip_power maximize
    Grad<T> g; Lerp<T> lerp; Ema<T> v; T neg_decay, eps, clip, neg_lr; bool first;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        bool decouple = h[5] != 0;
        double before = double(c.counters[0] + 1.0f) - 1.0;
        c.next[0] = c.counters[0] + 1.0f;
        g.init(h[8] != 0, c.scale, decouple ? 0.0 : h[4], false, h[0]);
        neg_decay = T(decouple ? -h[0] * h[4] : 0.0);
        double cl = h[7] >= 0.0 ? pow(before, h[7]) : (h[6] >= 0.0 ? h[6] : FO_INF);
        first = before == 0.0; eps = T(h[3]); clip = T(cl);
        lerp.init(1.0 - h[1]); v.init(h[2]); neg_lr = T(-h[0]);
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);
        if (first) { s[1] = fo_fma(x, x, s[1]); return; }
        p = fo_fma(p, neg_decay, p);
        T sq = fo_sqrt(s[1]);
        T denom = sq < eps ? eps : sq;
        T nn = fo_clamp(x / denom, -clip, clip);
        s[0] = lerp.apply(s[0], nn);
        s[1] = v.square(s[1], x);
        p = fo_fma(s[0], neg_lr, p);
    }
};

template <class T> struct Ademamix {
    // lr beta1 beta2 beta3 alpha beta3_warmup alpha_warmup eps weight_decay maximize
    Grad<T> g; Ema<T> fast, slow, v; T bc1, bc2_sqrt, alpha, eps, weight_decay, neg_lr;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        double step = double(c.counters[0] + 1.0f);
        c.next[0] = float(step);
        double al = h[4], b3 = h[3];
        if (h[6] > 0.0 && step < h[6]) al = step / h[6] * h[4];
        if (h[5] > 0.0 && step < h[5]) {
            double a = step / h[5];
            double hl1 = log(0.5) / log(h[1] + 1e-8) - 1.0, hl3 = log(0.5) / log(h[3] + 1e-8) - 1.0;
            b3 = pow(0.5, 1.0 / ((1.0 - a) * hl1 + a * hl3 + 1.0));
        }
        g.init(h[9] != 0, c.scale, 0.0, false, h[0]);
        fast.init(h[1]); slow.init(b3); v.init(h[2]);
        bc1 = T(bias_correction(h[1], step)); bc2_sqrt = T(sqrt(bias_correction(h[2], step)));
        alpha = T(al); eps = T(h[7]); weight_decay = T(h[8]); neg_lr = T(-h[0]);
    }
    FO_DEVICE void update(T& p, T gr, T* s) const {
        T x = g.read(p, gr);
        s[0] = fast.mean(s[0], x);
        s[1] = slow.mean(s[1], x);
        s[2] = v.square(s[2], x);
        T denom = fo_sqrt(s[2]) / bc2_sqrt + eps;
        T u = fo_fma(alpha, s[1], s[0] / bc1) / denom;
        u = fo_fma(p, weight_decay, u);
        p = p + neg_lr * u;
    }
};

template <class T> struct ScheduleFree {  // lr beta1 beta2 eps weight_decay ckp1 bc2 adam maximize
    Grad<T> g; Ema<T> v; Lerp<T> lerp; T bc2, eps, weight_decay, c_y, neg_lr; bool adam, fresh;
    FO_DEVICE void make(const Ctx& c) {
        const double* h = c.h;
        g.init(h[8] != 0, c.scale, 0.0, false, h[0]);
        v.init(h[2]); lerp.init(h[5]);
        bc2 = T(h[6]); eps = T(h[3]); weight_decay = T(h[4]);
        c_y = T(h[0] * (h[1] * (1.0 - h[5]) - 1.0)); neg_lr = T(-h[0]);
        adam = h[7] != 0; fresh = (c.flags & 1) != 0;
    }
    FO_DEVICE void update(T& y, T gr, T* s) const {
        T x = g.plain(gr);
        T z = fresh ? y : s[0];
        T gn = x;
        if (adam) {
            T vv = v.square(s[1], x); s[1] = vv;
            gn = x / (fo_sqrt(vv / bc2) + eps);
        }
        gn = fo_fma(y, weight_decay, gn);
        T ny = fo_fma(gn, c_y, lerp.apply(y, z));
        s[0] = fo_fma(gn, neg_lr, z);
        y = ny;
    }
};

// ------------------------------------------------------------------ multi-tensor apply

// Reads the per-step factor: the host's scale times the device's (a clipping coefficient),
// and whether a loss scaler found a non-finite gradient (then nothing moves).
FO_DEVICE bool fo_skip(const float* found_inf) { return found_inf != 0 && *found_inf != 0.0f; }

// 16-byte vector loads and stores (float4, double2), and their host stand-ins.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
template <class T> FO_DEVICE void fo_vload(const T* a, T* out) {
    if (sizeof(T) == 4) {
        const float4 v = *reinterpret_cast<const float4*>(a);
        out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
    } else {
        const double2 v = *reinterpret_cast<const double2*>(a);
        out[0] = v.x; out[1] = v.y;
    }
}
template <class T> FO_DEVICE void fo_vstore(T* a, const T* in) {
    if (sizeof(T) == 4) {
        *reinterpret_cast<float4*>(a) = make_float4(in[0], in[1], in[2], in[3]);
    } else {
        *reinterpret_cast<double2*>(a) = make_double2(in[0], in[1]);
    }
}
typedef unsigned long long fo_uptr;
#else
#include <string.h>
template <class T> FO_DEVICE void fo_vload(const T* a, T* out) { memcpy(out, a, 16); }
template <class T> FO_DEVICE void fo_vstore(T* a, const T* in) { memcpy(a, in, 16); }
typedef uintptr_t fo_uptr;
#endif

// One block's chunk [start, end) of one tensor, with NS state buffers (a constant, so the
// per-element state stays in registers). Where every array is 16-byte aligned at `start`,
// each thread moves one 16-byte vector of each array per iteration; the rest, and tensors
// that are not aligned, go element by element, four elements in flight per thread.
template <class R, class T, int NS>
FO_DEVICE void fo_chunk(const R& r, T* p, const T* g, T* const* st, i64 start, i64 end) {
    const i64 bd = FO_BDIM;
    fo_uptr bits = fo_uptr(p + start) | fo_uptr(g + start);
#pragma unroll
    for (int k = 0; k < NS; k++) bits |= fo_uptr(st[k] + start);
    i64 i0 = start;
    if ((bits & 15) == 0) {
        constexpr int W = 16 / sizeof(T);
        const i64 nv = (end - start) / W;
        for (i64 v = FO_TID; v < nv; v += bd) {
            const i64 i = start + v * W;
            T pv[W], gv[W], sv[NS > 0 ? NS : 1][W], s[FO_MAX_STATES];
            fo_vload(p + i, pv);
            fo_vload(g + i, gv);
#pragma unroll
            for (int k = 0; k < NS; k++) fo_vload(st[k] + i, sv[k]);
#pragma unroll
            for (int w = 0; w < W; w++) {
#pragma unroll
                for (int k = 0; k < NS; k++) s[k] = sv[k][w];
                r.update(pv[w], gv[w], s);
#pragma unroll
                for (int k = 0; k < NS; k++) sv[k][w] = s[k];
            }
            fo_vstore(p + i, pv);
#pragma unroll
            for (int k = 0; k < NS; k++) fo_vstore(st[k] + i, sv[k]);
        }
        i0 = start + nv * W;
    }
    for (i64 base = i0 + FO_TID; base < end; base += 4 * bd) {
        T pv[4], gv[4], sv[4][FO_MAX_STATES];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const i64 i = base + u * bd;
            if (i < end) {
                pv[u] = p[i];
                gv[u] = g[i];
#pragma unroll
                for (int k = 0; k < NS; k++) sv[u][k] = st[k][i];
            }
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const i64 i = base + u * bd;
            if (i < end) {
                r.update(pv[u], gv[u], sv[u]);
                p[i] = pv[u];
#pragma unroll
                for (int k = 0; k < NS; k++) st[k][i] = sv[u][k];
            }
        }
    }
}

// After a block's chunk: the tensor's last block to finish writes its new counters (every block
// of the tensor read the old ones when it started, before it counted itself done), and resets
// the tensor's done count for the next step. An empty tensor has one block, which counts it.
FO_DEVICE void fo_count_done(const TensorRef& t, int ti, int* done, const float* next) {
    const i64 chunks = t.n > 0 ? (t.n + FO_CHUNK - 1) / FO_CHUNK : 1;
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
    __syncthreads();
    if (threadIdx.x != 0) return;
    __threadfence();
    const int before = atomicAdd(done + ti, 1);
#else
    const int before = done[ti]++;
#endif
    if (before + 1 == chunks) {
        for (int k = 0; k < FO_MAX_COUNTERS; k++)
            if (t.counters[k]) *t.counters[k] = next[k];
        done[ti] = 0;
    }
}

template <class R, class T>
FO_DEVICE void fo_step(const TensorRef* tensors, const int* blocks, int* done, const double* h, double hscale,
                       const double* dscale, const float* found_inf) {
    if (fo_skip(found_inf)) return;
    const int ti = blocks[2 * FO_BID], chunk = blocks[2 * FO_BID + 1];
    const TensorRef t = tensors[ti];
    float next[FO_MAX_COUNTERS];
    float old[FO_MAX_COUNTERS];
    for (int k = 0; k < FO_MAX_COUNTERS; k++) {
        old[k] = t.counters[k] ? *t.counters[k] : 0.0f;
        next[k] = old[k];
    }
    Ctx c = {h, dscale ? hscale * double(*dscale) : hscale, old, next, t.flags};
    R r;
    r.make(c);
    T* st[FO_MAX_STATES];
    int ns = 0;
    for (int k = 0; k < FO_MAX_STATES; k++) {
        st[k] = (T*)t.state[k];
        if (st[k]) ns = k + 1;
    }
    const i64 start = i64(chunk) * FO_CHUNK;
    const i64 end = start + FO_CHUNK < t.n ? start + FO_CHUNK : t.n;
    T* p = (T*)t.param;
    const T* g = (const T*)t.grad;
    switch (ns) {
    case 0: fo_chunk<R, T, 0>(r, p, g, st, start, end); break;
    case 1: fo_chunk<R, T, 1>(r, p, g, st, start, end); break;
    case 2: fo_chunk<R, T, 2>(r, p, g, st, start, end); break;
    case 3: fo_chunk<R, T, 3>(r, p, g, st, start, end); break;
    default: fo_chunk<R, T, 4>(r, p, g, st, start, end); break;
    }
    fo_count_done(t, ti, done, next);
}

#define FO_H12 double h0, double h1, double h2, double h3, double h4, double h5, double h6, double h7, double h8, \
               double h9, double h10, double h11
#define FO_HARR const double h[12] = {h0, h1, h2, h3, h4, h5, h6, h7, h8, h9, h10, h11}

#define FO_RULE_T(NAME, RULE, T, SUF)                                                                         \
    FO_GLOBAL void FO_BOUNDS fo_step_##NAME##_##SUF(const TensorRef* tensors, const int* blocks, int* done,    \
                                          const double* dscale, const float* found_inf, double hscale,       \
                                          FO_H12) {                                                           \
        FO_HARR;                                                                                              \
        fo_step<RULE<T>, T>(tensors, blocks, done, h, hscale, dscale, found_inf);                             \
    }
#define FO_RULE(NAME, RULE) FO_RULE_T(NAME, RULE, float, f32) FO_RULE_T(NAME, RULE, double, f64)

// Each rule's kernels; with FO_SELECT defined, only those of the rules named by FO_WANT_<rule>
// (the GPU backend compiles one small module per rule, on its first use).

#if !defined(FO_SELECT) || defined(FO_WANT_sgd)
FO_RULE(sgd, Sgd)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_adam)
FO_RULE(adam, Adam)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_adagrad)
FO_RULE(adagrad, Adagrad)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_rmsprop)
FO_RULE(rmsprop, Rmsprop)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_adamax)
FO_RULE(adamax, Adamax)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_adadelta)
FO_RULE(adadelta, Adadelta)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_nadam)
FO_RULE(nadam, Nadam)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_radam)
FO_RULE(radam, Radam)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_adabound)
FO_RULE(adabound, AdaBoundPlain)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_amsbound)
FO_RULE(amsbound, AmsBound)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_lion)
FO_RULE(lion, Lion)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_adabelief)
FO_RULE(adabelief, AdaBelief)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_asgd)
FO_RULE(asgd, Asgd)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_rprop)
FO_RULE(rprop, Rprop)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_adopt)
FO_RULE(adopt, Adopt)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_ademamix)
FO_RULE(ademamix, Ademamix)
#endif
#if !defined(FO_SELECT) || defined(FO_WANT_schedulefree)
FO_RULE(schedulefree, ScheduleFree)
#endif

// ------------------------------------------------------------------------ norms, clipping

// The block's total of v over its threads (every thread gets it): a sum, or with kind 0 the
// largest value (a NaN wins, as torch's max).
FO_DEVICE double fo_block_reduce(double v, int kind) {
    FO_SHARED double red[1024];
    red[FO_TID] = v;
    FO_SYNC();
    for (unsigned s = FO_BDIM / 2; s > 0; s >>= 1) {
        if (FO_TID < s) {
            const double b = red[FO_TID + s];
            if (kind == 0) red[FO_TID] = nan_max(b, red[FO_TID]);
            else red[FO_TID] += b;
        }
        FO_SYNC();
    }
    const double total = red[0];
    FO_SYNC();
    return total;
}

// Per block: the block's chunk's sum of |g|^p (p = 2, 1, or general), or max |g| (p = inf:
// kind 0), accumulated in double; one partial per block.
template <class T>
FO_DEVICE void fo_norm_partials(const TensorRef* tensors, const int* blocks, int kind, double p, double* partials) {
    const int ti = blocks[2 * FO_BID], chunk = blocks[2 * FO_BID + 1];
    const TensorRef t = tensors[ti];
    const T* g = (const T*)t.grad;
    const i64 start = i64(chunk) * FO_CHUNK;
    const i64 end = start + FO_CHUNK < t.n ? start + FO_CHUNK : t.n;
    double acc = 0.0;
    for (i64 i = start + FO_TID; i < end; i += FO_BDIM) {
        double a = fabs(double(g[i]));
        if (kind == 0) acc = nan_max(a, acc);
        else if (kind == 2) acc += a * a;
        else if (kind == 1) acc += a;
        else acc += pow(a, p);
    }
    const double total = fo_block_reduce(acc, kind);
    if (FO_TID == 0) partials[FO_BID] = total;
}

FO_GLOBAL void fo_norm_partials_f32(const TensorRef* t, const int* b, int kind, double p, double* out) { fo_norm_partials<float>(t, b, kind, p, out); }
FO_GLOBAL void fo_norm_partials_f64(const TensorRef* t, const int* b, int kind, double p, double* out) { fo_norm_partials<double>(t, b, kind, p, out); }

// One block: the partials' total, then the norm (in float32 for float32 gradients, as torch),
// with max_norm >= 0 the clipping coefficient min(1, max_norm / (norm + 1e-6)), and on request
// a flag that the norm is not finite (the step's found_inf: skip_if_nonfinite).
FO_GLOBAL void fo_norm_finish(const double* partials, int n, int kind, double p, double scale, int single, double* norm,
                              double max_norm, double* coef, float* nonfinite) {
    double acc = 0.0;
    for (int i = FO_TID; i < n; i += FO_BDIM) {
        double b = partials[i];
        if (kind == 0) acc = nan_max(b, acc);
        else acc += b;
    }
    const double t = fo_block_reduce(acc, kind);
    if (FO_TID == 0) {
        double v = kind == 0 ? t : (kind == 2 ? sqrt(t) : (kind == 1 ? t : pow(t, 1.0 / p)));
        if (single) {  // float32 gradients: the norm and the coefficient in float32, as torch
            float nf = float(v) * float(scale);
            *norm = nf;
            if (max_norm >= 0.0) {
                float c = (1.0f / (nf + 1e-6f)) * float(max_norm);  // torch's reciprocal, then the product
                *coef = c != c ? c : (c < 1.0f ? c : 1.0f);
            }
        } else {
            double nd = v * scale;
            *norm = nd;
            if (max_norm >= 0.0) {
                double c = (1.0 / (nd + 1e-6)) * max_norm;
                *coef = c != c ? c : (c < 1.0 ? c : 1.0);
            }
        }
        if (nonfinite) *nonfinite = (*norm - *norm != 0.0) ? 1.0f : 0.0f;  // NaN or infinite
    }
}

// g *= coef (read from device memory) over every tensor of the table.
template <class T>
FO_DEVICE void fo_scale(const TensorRef* tensors, const int* blocks, const double* coef) {
    const int ti = blocks[2 * FO_BID], chunk = blocks[2 * FO_BID + 1];
    const TensorRef t = tensors[ti];
    T* g = (T*)t.grad;
    const T c = T(*coef);
    const i64 start = i64(chunk) * FO_CHUNK;
    const i64 end = start + FO_CHUNK < t.n ? start + FO_CHUNK : t.n;
    for (i64 i = start + FO_TID; i < end; i += FO_BDIM) g[i] = g[i] * c;
}
FO_GLOBAL void fo_scale_f32(const TensorRef* t, const int* b, const double* c) { fo_scale<float>(t, b, c); }
FO_GLOBAL void fo_scale_f64(const TensorRef* t, const int* b, const double* c) { fo_scale<double>(t, b, c); }

// ---------------------------------------------------------------------------- activations
// op: 0 relu, 1 leaky_relu(a), 2 elu(alpha a, scale b, input_scale c), 3 sigmoid, 4 tanh,
// 5 gelu, 6 gelu_tanh, 7 silu, 8 softplus(beta a, threshold b).

FO_DEVICE float fo_exp(float x) { return expf(x); }
FO_DEVICE double fo_exp(double x) { return exp(x); }
FO_DEVICE float fo_tanh(float x) { return tanhf(x); }
FO_DEVICE double fo_tanh(double x) { return tanh(x); }
FO_DEVICE float fo_log1p(float x) { return log1pf(x); }
FO_DEVICE float fo_expm1(float x) { return expm1f(x); }
FO_DEVICE double fo_expm1(double x) { return expm1(x); }
FO_DEVICE double fo_log1p(double x) { return log1p(x); }

template <class T> FO_DEVICE T fo_act(int op, T x, T a, T b, T c) {
    switch (op) {
    case 0: return x > T(0) ? x : (fo_isnan(x) ? x : T(0));
    case 1: return x > T(0) ? x : x * a;
    case 2: return x > T(0) ? x * b : fo_expm1(x * c) * a * b;
    case 3: return T(1) / (T(1) + fo_exp(-x));
    case 4: return fo_tanh(x);
    // (gelu in double, through erfc, and its tanh form as x * sigmoid(2 u): no cancellation
    // for large negative x, where 1 + erf and 1 + tanh lose every digit, and float32 within
    // an ulp of the exact value)
    case 5: {
        const double d = double(x);
        return T(d * 0.5 * erfc(d * -0.70710678118654752440));
    }
    case 6: {
        const double d = double(x), inner = 0.79788456080286535588 * (d + 0.044715 * d * d * d);
        return T(d / (1.0 + exp(-2.0 * inner)));
    }
    case 7: return x / (T(1) + fo_exp(-x));
    default: return x * a > b ? x : fo_log1p(fo_exp(x * a)) / a;
    }
}

// The gradient with respect to the input; `s` is the saved output (relu, sigmoid, tanh) or input.
template <class T> FO_DEVICE T fo_act_grad(int op, T g, T s, T a, T b, T c) {
    switch (op) {
    case 0: return s > T(0) ? g : T(0);
    case 1: return s > T(0) ? g : g * a;
    case 2: return s > T(0) ? g * b : g * c * (a * b) * fo_exp(s * c);  // (torch's elu_backward on the input)
    case 3: return g * (T(1) - s) * s;
    case 4: return g * (T(1) - s * s);
    case 5: {  // (in double, as the forward)
        const double d = double(s);
        const double cdf = 0.5 * erfc(d * -0.70710678118654752440), pdf = exp(-0.5 * d * d) * 0.39894228040143267794;
        return T(double(g) * (cdf + d * pdf));
    }
    case 6: {
        // with q = sigmoid(2u) = (1 + tanh u) / 2: d/dx [x q] = q + 2 x q (1 - q) du/dx
        const double d = double(s), k_beta = 0.79788456080286535588, k_kappa = 0.044715;
        const double inner = k_beta * (d + k_kappa * d * d * d);
        const double q = 1.0 / (1.0 + exp(-2.0 * inner));
        return T(double(g) * (q + 2.0 * d * q * (1.0 - q) * (k_beta * (1.0 + 3.0 * k_kappa * d * d))));
    }
    case 7: {
        T sg = T(1) / (T(1) + fo_exp(-s));
        return g * sg * (T(1) + s * (T(1) - sg));
    }
    default: {
        T z = fo_exp(s * a);
        return s * a > b ? g : g * z / (z + T(1));
    }
    }
}

template <class T>
FO_DEVICE void fo_act_forward(int op, const T* x, T* y, i64 n, double a, double b, double c) {
    for (i64 i = i64(FO_BID) * FO_BDIM + FO_TID; i < n; i += i64(FO_GDIM) * FO_BDIM) y[i] = fo_act<T>(op, x[i], T(a), T(b), T(c));
}
template <class T>
FO_DEVICE void fo_act_backward(int op, const T* g, const T* s, T* o, i64 n, double a, double b, double c) {
    for (i64 i = i64(FO_BID) * FO_BDIM + FO_TID; i < n; i += i64(FO_GDIM) * FO_BDIM) o[i] = fo_act_grad<T>(op, g[i], s[i], T(a), T(b), T(c));
}
FO_GLOBAL void fo_act_forward_f32(int op, const float* x, float* y, i64 n, double a, double b, double c) { fo_act_forward<float>(op, x, y, n, a, b, c); }
FO_GLOBAL void fo_act_forward_f64(int op, const double* x, double* y, i64 n, double a, double b, double c) { fo_act_forward<double>(op, x, y, n, a, b, c); }
FO_GLOBAL void fo_act_backward_f32(int op, const float* g, const float* s, float* o, i64 n, double a, double b, double c) { fo_act_backward<float>(op, g, s, o, n, a, b, c); }
FO_GLOBAL void fo_act_backward_f64(int op, const double* g, const double* s, double* o, i64 n, double a, double b, double c) { fo_act_backward<double>(op, g, s, o, n, a, b, c); }

// ------------------------------------------------------------------- softmax, cross-entropy
// One thread per row: x seen as (outer, n, inner), rows along the middle axis (stride inner).
// Sums in double, as the CPU core's.


template <class T>
FO_DEVICE void fo_softmax(const T* x, T* y, i64 outer, i64 n, i64 inner, int logf_) {
    const i64 rows = outer * inner;
    for (i64 r = i64(FO_BID) * FO_BDIM + FO_TID; r < rows; r += i64(FO_GDIM) * FO_BDIM) {
        const i64 o = r / inner, i = r % inner;
        const T* xr = x + o * n * inner + i;
        T* yr = y + o * n * inner + i;
        T m = xr[0];
        for (i64 k = 1; k < n; k++) m = nan_max(m, xr[k * inner]);
        double sum = 0.0;
        for (i64 k = 0; k < n; k++) sum += double(fo_exp(xr[k * inner] - m));
        if (logf_) {
            const T lse = T(log(sum));
            for (i64 k = 0; k < n; k++) yr[k * inner] = xr[k * inner] - m - lse;
        } else {
            const T rcp = T(1.0 / sum);
            for (i64 k = 0; k < n; k++) yr[k * inner] = fo_exp(xr[k * inner] - m) * rcp;
        }
    }
}

template <class T>
FO_DEVICE void fo_softmax_backward(const T* g, const T* y, T* out, i64 outer, i64 n, i64 inner, int logf_) {
    const i64 rows = outer * inner;
    for (i64 r = i64(FO_BID) * FO_BDIM + FO_TID; r < rows; r += i64(FO_GDIM) * FO_BDIM) {
        const i64 base = (r / inner) * n * inner + r % inner;
        double s = 0.0;
        for (i64 k = 0; k < n; k++) {
            const i64 j = base + k * inner;
            s += logf_ ? double(g[j]) : double(g[j]) * double(y[j]);
        }
        const T st = T(s);
        for (i64 k = 0; k < n; k++) {
            const i64 j = base + k * inner;
            out[j] = logf_ ? g[j] - fo_exp(y[j]) * st : y[j] * (g[j] - st);
        }
    }
}

template <class T>
FO_DEVICE void fo_cross_entropy(const T* x, const i64* target, i64 rows, i64 c, double smoothing, i64 ignore,
                                double* losses) {
    for (i64 r = i64(FO_BID) * FO_BDIM + FO_TID; r < rows; r += i64(FO_GDIM) * FO_BDIM) {
        const i64 t = target[r];
        if (t == ignore) { losses[r] = 0.0; continue; }
        const T* row = x + r * c;
        T m = row[0];
        for (i64 k = 1; k < c; k++) m = nan_max(m, row[k]);
        double sum = 0.0, total = 0.0;
        for (i64 k = 0; k < c; k++) {
            sum += double(fo_exp(row[k] - m));
            total += double(row[k]);
        }
        const double lse = double(m) + log(sum);
        const double nll = lse - double(row[t]);
        losses[r] = smoothing > 0.0 ? (1.0 - smoothing) * nll + smoothing * (lse - total / double(c)) : nll;
    }
}

template <class T>
FO_DEVICE void fo_cross_entropy_backward(const T* x, const i64* target, i64 rows, i64 c, double smoothing, i64 ignore,
                                         const double* scale, T* grad) {
    const T off = T(smoothing / double(c));
    for (i64 r = i64(FO_BID) * FO_BDIM + FO_TID; r < rows; r += i64(FO_GDIM) * FO_BDIM) {
        const i64 t = target[r];
        const T* row = x + r * c;
        T* g = grad + r * c;
        if (t == ignore || scale[r] == 0.0) {
            for (i64 k = 0; k < c; k++) g[k] = T(0);
            continue;
        }
        T m = row[0];
        for (i64 k = 1; k < c; k++) m = nan_max(m, row[k]);
        double sum = 0.0;
        for (i64 k = 0; k < c; k++) sum += double(fo_exp(row[k] - m));
        const T rcp = T(1.0 / sum), w = T(scale[r]);
        for (i64 k = 0; k < c; k++) g[k] = (fo_exp(row[k] - m) * rcp - off) * w;
        g[t] = g[t] - T((1.0 - smoothing) * scale[r]);
    }
}

// ------------------------------------------------------------------------------ batch norm
// x seen as (n, c, l). Per-channel sums: one block per channel, in double.

FO_DEVICE double fo_block_sum(double v) { return fo_block_reduce(v, 1); }

// mean and biased variance (two passes: the mean, then the squared deviations)
template <class T>
FO_DEVICE void fo_bn_stats(const T* x, i64 n, i64 c, i64 l, double* mean, double* var) {
    for (i64 ch = FO_BID; ch < c; ch += FO_GDIM) {
        const i64 count = n * l;
        double s = 0.0;
        for (i64 k = FO_TID; k < count; k += FO_BDIM) s += double(x[((k / l) * c + ch) * l + k % l]);
        const double mu = fo_block_sum(s) / double(count);
        double q = 0.0;
        for (i64 k = FO_TID; k < count; k += FO_BDIM) {
            const double d = double(x[((k / l) * c + ch) * l + k % l]) - mu;
            q += d * d;
        }
        const double m2 = fo_block_sum(q);
        if (FO_TID == 0) { mean[ch] = mu; var[ch] = m2 / double(count); }
    }
}

template <class T>
FO_DEVICE void fo_bn_normalize(const T* x, T* out, i64 n, i64 c, i64 l, const T* mean, const T* scale, const T* shift) {
    const i64 total = n * c * l;
    for (i64 k = i64(FO_BID) * FO_BDIM + FO_TID; k < total; k += i64(FO_GDIM) * FO_BDIM) {
        const i64 ch = (k / l) % c;
        out[k] = (x[k] - mean[ch]) * scale[ch] + shift[ch];
    }
}

template <class T>
FO_DEVICE void fo_bn_backward_sums(const T* g, const T* x, const T* mean, i64 n, i64 c, i64 l, double* sum_g,
                                   double* sum_gx) {
    for (i64 ch = FO_BID; ch < c; ch += FO_GDIM) {
        const i64 count = n * l;
        double a = 0.0, b = 0.0;
        const T m = mean[ch];
        for (i64 k = FO_TID; k < count; k += FO_BDIM) {
            const i64 j = ((k / l) * c + ch) * l + k % l;
            a += double(g[j]);
            b += double(g[j]) * double(x[j] - m);
        }
        const double ta = fo_block_sum(a), tb = fo_block_sum(b);
        if (FO_TID == 0) { sum_g[ch] = ta; sum_gx[ch] = tb; }
    }
}

// out = (g - shift[c] - (x - mean[c]) * k[c]) * scale[c], or g * scale[c] without k
template <class T>
FO_DEVICE void fo_bn_backward_input(const T* g, const T* x, T* out, i64 n, i64 c, i64 l, const T* mean, const T* scale,
                                    const T* shift, const T* k) {
    const i64 total = n * c * l;
    for (i64 j = i64(FO_BID) * FO_BDIM + FO_TID; j < total; j += i64(FO_GDIM) * FO_BDIM) {
        const i64 ch = (j / l) % c;
        out[j] = k ? (g[j] - shift[ch] - (x[j] - mean[ch]) * k[ch]) * scale[ch] : g[j] * scale[ch];
    }
}

#define FO_NN(T, SUF)                                                                                                  \
    FO_GLOBAL void fo_softmax_##SUF(const T* x, T* y, i64 outer, i64 n, i64 inner, int lg) {                          \
        fo_softmax<T>(x, y, outer, n, inner, lg);                                                                      \
    }                                                                                                                  \
    FO_GLOBAL void fo_softmax_backward_##SUF(const T* g, const T* y, T* o, i64 outer, i64 n, i64 inner, int lg) {     \
        fo_softmax_backward<T>(g, y, o, outer, n, inner, lg);                                                          \
    }                                                                                                                  \
    FO_GLOBAL void fo_cross_entropy_##SUF(const T* x, const i64* t, i64 rows, i64 c, double s, i64 ig, double* out) { \
        fo_cross_entropy<T>(x, t, rows, c, s, ig, out);                                                                \
    }                                                                                                                  \
    FO_GLOBAL void fo_cross_entropy_backward_##SUF(const T* x, const i64* t, i64 rows, i64 c, double s, i64 ig,        \
                                                   const double* scale, T* g) {                                        \
        fo_cross_entropy_backward<T>(x, t, rows, c, s, ig, scale, g);                                                  \
    }                                                                                                                  \
    FO_GLOBAL void fo_bn_stats_##SUF(const T* x, i64 n, i64 c, i64 l, double* mean, double* var) {                     \
        fo_bn_stats<T>(x, n, c, l, mean, var);                                                                         \
    }                                                                                                                  \
    FO_GLOBAL void fo_bn_normalize_##SUF(const T* x, T* o, i64 n, i64 c, i64 l, const T* m, const T* sc, const T* sh) { \
        fo_bn_normalize<T>(x, o, n, c, l, m, sc, sh);                                                                  \
    }                                                                                                                  \
    FO_GLOBAL void fo_bn_backward_sums_##SUF(const T* g, const T* x, const T* m, i64 n, i64 c, i64 l, double* sg,      \
                                             double* sgx) {                                                            \
        fo_bn_backward_sums<T>(g, x, m, n, c, l, sg, sgx);                                                             \
    }                                                                                                                  \
    FO_GLOBAL void fo_bn_backward_input_##SUF(const T* g, const T* x, T* o, i64 n, i64 c, i64 l, const T* m,           \
                                              const T* sc, const T* sh, const T* k) {                                  \
        fo_bn_backward_input<T>(g, x, o, n, c, l, m, sc, sh, k);                                                       \
    }

FO_NN(float, f32)
FO_NN(double, f64)
