#include <math.h>
#include <stdint.h>
/* Causal attention for heads of 16 dimensions, forward and backward, one (batch, head) pair at a time: the fast
   path's attention on the CPU where circuitlab.model.attention chooses it (compiled there at run time; timed by
   benchmarks/attention_kernel.py against torch's flash kernel).

   q, k, v, o, dO, dq, dk, dv are [B, T, H, 16] tensors addressed p[b*sb + t*st + h*sh + e] (the fused QKV
   product's views); lse [B, H, T] contiguous, the forward's log-sum-exp per query, which the backward uses to
   recompute the pattern. Forward per query i: s_j = scale q_i . k_j (j <= i), p = softmax(s), o_i = sum_j p_j v_j.
   Backward: D_i = dO_i . o_i, dP_ij = dO_i . v_j, dS_ij = p_ij (dP_ij - D_i), dq_i = scale sum_j dS_ij k_j,
   dk_j += scale dS_ij q_i, dv_j += p_ij dO_i. Scores are computed 16 keys at a time from a transposed K (or V);
   the output and gradients are 16-wide vectors (GCC vector extensions). T <= 512. The (batch, head) pairs are
   shared out over OpenMP threads (built against the libgomp torch itself loads, so torch's thread count and
   thread pool are the kernel's); each pair is computed whole by one thread, so the result is the same on any
   thread count. */
#define E 16
#define TMAX 512
typedef long long ll;
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
static inline v16 ld(const float *p) { return *(const v16u *)p; }
static inline void stv(float *p, v16 x) { *(v16u *)p = x; }

static inline void scores(const float *restrict a, const float (*restrict kT)[TMAX], float *restrict s, int nb) {
    for (int jb = 0; jb < nb * 16; jb += 16) {
        v16 acc = {0};
        for (int e = 0; e < E; e++) acc += a[e] * *(const v16 *)(kT[e] + jb);
        *(v16 *)(s + jb) = acc;
    }
}

static void fwd_bh(const float *restrict q, const float *restrict k, const float *restrict v, float *restrict o,
                   float *restrict lse, ll st_q, ll st_k, ll st_v, ll st_o, int T, float scale) {
    float kT[E][TMAX] __attribute__((aligned(64)));
    float s[TMAX] __attribute__((aligned(64)));
    int Tp = (T + 15) & ~15;
    for (int e = 0; e < E; e++) for (int j = T; j < Tp; j++) kT[e][j] = 0.f;
    for (int j = 0; j < T; j++) for (int e = 0; e < E; e++) kT[e][j] = k[j * st_k + e];
    for (int i = 0; i < T; i++) {
        int n = i + 1, nb = (n + 15) >> 4;
        float a[E];
        for (int e = 0; e < E; e++) a[e] = q[i * st_q + e] * scale;
        scores(a, (const float (*)[TMAX])kT, s, nb);
        float m = s[0];
        for (int j = 1; j < n; j++) m = s[j] > m ? s[j] : m;
        for (int j = n; j < nb * 16; j++) s[j] = m;
        for (int j = 0; j < nb * 16; j++) s[j] = expf(s[j] - m);
        for (int j = n; j < nb * 16; j++) s[j] = 0.f;
        float l = 0.f;
        for (int j = 0; j < n; j++) l += s[j];
        float r = 1.f / l;
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        int j = 0;
        for (; j + 4 <= n; j += 4) {
            a0 += s[j] * ld(v + j * st_v); a1 += s[j + 1] * ld(v + (j + 1) * st_v);
            a2 += s[j + 2] * ld(v + (j + 2) * st_v); a3 += s[j + 3] * ld(v + (j + 3) * st_v);
        }
        for (; j < n; j++) a0 += s[j] * ld(v + j * st_v);
        stv(o + i * st_o, ((a0 + a1) + (a2 + a3)) * r);
        lse[i] = m + logf(l);
    }
}

void attn16_fwd(const float *q, const float *k, const float *v, float *o, float *lse, int B, int H, int T,
                ll sb_q, ll st_q, ll sh_q, ll sb_k, ll st_k, ll sh_k, ll sb_v, ll st_v, ll sh_v,
                ll sb_o, ll st_o, ll sh_o, float scale, int bh0, int bh1) {
    #pragma omp parallel for schedule(static)
    for (int bh = bh0; bh < bh1; bh++) {
        int b = bh / H, h = bh % H;
        fwd_bh(q + b * sb_q + h * sh_q, k + b * sb_k + h * sh_k, v + b * sb_v + h * sh_v, o + b * sb_o + h * sh_o,
               lse + (ll)bh * T, st_q, st_k, st_v, st_o, T, scale);
    }
}

static void bwd_bh(const float *restrict q, const float *restrict k, const float *restrict v, const float *restrict o,
                   const float *restrict dO, const float *restrict lse, float *restrict dq, float *restrict dk,
                   float *restrict dv, ll st_q, ll st_k, ll st_v, ll st_o, ll st_do, ll st_dq, ll st_dk, ll st_dv,
                   int T, float scale) {
    float kT[E][TMAX] __attribute__((aligned(64)));
    float vT[E][TMAX] __attribute__((aligned(64)));
    float dK[TMAX][E] __attribute__((aligned(64)));
    float dV[TMAX][E] __attribute__((aligned(64)));
    float s[TMAX] __attribute__((aligned(64)));
    float dp[TMAX] __attribute__((aligned(64)));
    int Tp = (T + 15) & ~15;
    for (int e = 0; e < E; e++) for (int j = T; j < Tp; j++) { kT[e][j] = 0.f; vT[e][j] = 0.f; }
    for (int j = 0; j < T; j++) for (int e = 0; e < E; e++) {
        kT[e][j] = k[j * st_k + e]; vT[e][j] = v[j * st_v + e]; dK[j][e] = 0.f; dV[j][e] = 0.f;
    }
    for (int i = 0; i < T; i++) {
        int n = i + 1, nb = (n + 15) >> 4;
        float a[E], g[E], D = 0.f;
        for (int e = 0; e < E; e++) { a[e] = q[i * st_q + e] * scale; g[e] = dO[i * st_do + e]; D += g[e] * o[i * st_o + e]; }
        scores(a, (const float (*)[TMAX])kT, s, nb);
        scores(g, (const float (*)[TMAX])vT, dp, nb);
        float L = lse[i];
        for (int j = n; j < nb * 16; j++) s[j] = L;
        for (int j = 0; j < nb * 16; j++) { float p = expf(s[j] - L); s[j] = p; dp[j] = p * (dp[j] - D); }
        v16 c0 = {0}, c1 = {0}, gv = ld(g), av = ld(a);
        int j = 0;
        for (; j + 2 <= n; j += 2) {
            *(v16 *)dV[j] += s[j] * gv; *(v16 *)dK[j] += dp[j] * av; c0 += dp[j] * ld(k + j * st_k);
            *(v16 *)dV[j + 1] += s[j + 1] * gv; *(v16 *)dK[j + 1] += dp[j + 1] * av;
            c1 += dp[j + 1] * ld(k + (j + 1) * st_k);
        }
        for (; j < n; j++) { *(v16 *)dV[j] += s[j] * gv; *(v16 *)dK[j] += dp[j] * av; c0 += dp[j] * ld(k + j * st_k); }
        stv(dq + i * st_dq, (c0 + c1) * scale);
    }
    for (int j = 0; j < T; j++) for (int e = 0; e < E; e++) { dk[j * st_dk + e] = dK[j][e]; dv[j * st_dv + e] = dV[j][e]; }
}

void attn16_bwd(const float *q, const float *k, const float *v, const float *o, const float *dO, const float *lse,
                float *dq, float *dk, float *dv, int B, int H, int T,
                ll sb_q, ll st_q, ll sh_q, ll sb_k, ll st_k, ll sh_k, ll sb_v, ll st_v, ll sh_v,
                ll sb_o, ll st_o, ll sh_o, ll sb_do, ll st_do, ll sh_do,
                ll sb_dq, ll st_dq, ll sh_dq, ll sb_dk, ll st_dk, ll sh_dk, ll sb_dv, ll st_dv, ll sh_dv,
                float scale, int bh0, int bh1) {
    #pragma omp parallel for schedule(static)
    for (int bh = bh0; bh < bh1; bh++) {
        int b = bh / H, h = bh % H;
        bwd_bh(q + b * sb_q + h * sh_q, k + b * sb_k + h * sh_k, v + b * sb_v + h * sh_v, o + b * sb_o + h * sh_o,
               dO + b * sb_do + h * sh_do, lse + (ll)bh * T, dq + b * sb_dq + h * sh_dq, dk + b * sb_dk + h * sh_dk,
               dv + b * sb_dv + h * sh_dv, st_q, st_k, st_v, st_o, st_do, st_dq, st_dk, st_dv, T, scale);
    }
}
