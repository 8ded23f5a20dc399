/* CPU kernels of wmkit, loaded with ctypes by wmkit/kernels/native.py:
 *
 * - wmkit_green_bias: the green-list bias of the PRF v2 (spec: wmkit/prf.py);
 * - wmkit_levenshtein_prefix: EXP-edit's edit-distance dynamic programme
 *   (wmkit/watermark/text/exp_edit.py: levenshtein_prefix_scores is the torch reference).
 *
 * Built on first use by wmkit/kernels/native.py with the spec's constants as -D flags
 * (PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, CTX_DOMAIN, TOKEN_DOMAIN, SELECT_DOMAIN,
 * MODE_LEFTHASH, MODE_SELFHASH), loaded with ctypes. Per row: the context state (a few Philox
 * calls), then one Philox call per 4 vocabulary entries, the compare and the add fused.
 * Unsigned 32-bit words with 64-bit products: the compiler vectorizes the lane loop
 * (32 x 32 -> 64-bit multiplies). Bit-identical to the torch reference (tests/test_kernels.py).
 */
#include <stdint.h>
#include <stdlib.h>

#define LANES 64

/* Philox4x32-10 on LANES counters at once; keys per lane. */
static inline void philox_lanes(uint32_t c0[LANES], uint32_t c1[LANES], uint32_t c2[LANES], uint32_t c3[LANES],
                                uint32_t k0, uint32_t k1) {
    for (int r = 0; r < 10; r++) {
        for (int i = 0; i < LANES; i++) {
            uint64_t p0 = (uint64_t)c0[i] * (uint64_t)PHILOX_M0;
            uint64_t p1 = (uint64_t)c2[i] * (uint64_t)PHILOX_M1;
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[i] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[i] ^ k1;
            c1[i] = (uint32_t)p1;
            c3[i] = (uint32_t)p0;
            c0[i] = n0;
            c2[i] = n2;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
}

/* One Philox4x32-10 call on one counter. */
static void philox1(uint32_t c[4], uint32_t k0, uint32_t k1) {
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)c[0] * (uint64_t)PHILOX_M0;
        uint64_t p1 = (uint64_t)c[2] * (uint64_t)PHILOX_M1;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
        c[1] = (uint32_t)p1;
        c[3] = (uint32_t)p0;
        c[0] = n0;
        c[2] = n2;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
}

/* The context state of the n tokens at ctx (prf.context_state): S = (d0, d1, CTX_DOMAIN ^ mode,
 * hword), then S = philox(S ^ w; k0 ^ b, k1) per block of 4 (padded with M - 1 - i), at least once. */
static void context_state(const int64_t *ctx, int n, uint32_t mode, uint32_t hword, uint32_t k0, uint32_t k1,
                          uint32_t d0, uint32_t d1, uint32_t s[4]) {
    s[0] = d0;
    s[1] = d1;
    s[2] = CTX_DOMAIN ^ mode;
    s[3] = hword;
    int blocks = n > 0 ? (n + 3) / 4 : 1;
    for (int b = 0; b < blocks; b++) {
        for (int i = 0; i < 4; i++)
            s[i] ^= 4 * b + i < n ? (uint32_t)ctx[4 * b + i] : 0xFFFFFFFFu - (uint32_t)i;
        philox1(s, k0 ^ (uint32_t)b, k1);
    }
}

/* Words of tokens 4g .. 4g+3 for groups g0 .. g0+LANES-1 under state s and domain dom. */
static inline void block_words(uint32_t g0, const uint32_t s[4], uint32_t k0, uint32_t k1, uint32_t dom,
                               uint32_t w[4][LANES]) {
    for (int i = 0; i < LANES; i++) {
        w[0][i] = g0 + (uint32_t)i;
        w[1][i] = s[0];
        w[2][i] = s[1];
        w[3][i] = s[2];
    }
    philox_lanes(w[0], w[1], w[2], w[3], k0 ^ s[3], k1 ^ dom);
}

/* For each row r in [row0, row1) with active[r] != 0 (every row if active is NULL):
 *   out[r, t] = scores[r, t] + delta  if u(t) < thr  else scores[r, t],   t < vocab,
 * with u(t) the lefthash word after the row's last h ids (ids[r, ctx_start .. ctx_start + h)),
 * or with selfhash the colour word of the state, among the h one-token states, whose selector
 * word is smallest (the first on ties). Callers split rows across threads; out may be scores. */
void wmkit_green_bias(const float *scores, int64_t stride_s, float *out, int64_t stride_o,
                      const int64_t *ids, int64_t stride_i, int64_t ctx_start, int32_t h, int32_t selfhash,
                      const uint8_t *active, int64_t row0, int64_t row1, int64_t vocab,
                      uint32_t k0, uint32_t k1, uint32_t d0, uint32_t d1, uint32_t thr, float delta) {
    uint32_t w[4][LANES], sel[4][LANES], best[4][LANES], u[4][LANES], st[64][4];
    int64_t ngroups = (vocab + 3) / 4;
    int nstates = selfhash ? h : 1;
    for (int64_t r = row0; r < row1; r++) {
        const float *x = scores + r * stride_s;
        float *y = out + r * stride_o;
        if (active && !active[r]) {
            if (y != x)
                for (int64_t t = 0; t < vocab; t++) y[t] = x[t];
            continue;
        }
        const int64_t *ctx = ids + r * stride_i + ctx_start;
        if (selfhash)
            for (int j = 0; j < h; j++)
                context_state(ctx + j, 1, MODE_SELFHASH, (uint32_t)h, k0, k1, d0, d1, st[j]);
        else
            context_state(ctx, h, MODE_LEFTHASH, (uint32_t)h, k0, k1, d0, d1, st[0]);
        for (int64_t g0 = 0; g0 < ngroups; g0 += LANES) {
            if (nstates == 1) {
                block_words((uint32_t)g0, st[0], k0, k1, TOKEN_DOMAIN, u);
            } else {
                for (int j = 0; j < nstates; j++) {
                    block_words((uint32_t)g0, st[j], k0, k1, SELECT_DOMAIN, sel);
                    block_words((uint32_t)g0, st[j], k0, k1, TOKEN_DOMAIN, w);
                    for (int c = 0; c < 4; c++)
                        for (int i = 0; i < LANES; i++) {
                            int take = j == 0 || sel[c][i] < best[c][i];
                            best[c][i] = take ? sel[c][i] : best[c][i];
                            u[c][i] = take ? w[c][i] : u[c][i];
                        }
                }
            }
            int64_t base = 4 * g0;
            if (base + 4 * LANES <= vocab) {
                const float *xb = x + base;
                float *yb = y + base;
#pragma GCC ivdep
                for (int i = 0; i < LANES; i++)
                    for (int c = 0; c < 4; c++)
                        yb[4 * i + c] = u[c][i] < thr ? xb[4 * i + c] + delta : xb[4 * i + c];
            } else {
                for (int64_t t = 0; base + t < vocab; t++)
                    y[base + t] = u[t & 3][t >> 2] < thr ? x[base + t] + delta : x[base + t];
            }
        }
    }
}

/* EXP-edit's prefix edit distances for key rows r in [r0, r1).
 *
 * g is [R][m][n]: g[r][i][p] = log(1 - xi_p[y_i]) for text token i and key position p under key r.
 * For each rotation l (0 .. n-1) the cost of matching token i with column j (0-based) is
 * g[r][i][(l + j) % n]; D[i][j] = min(D[i-1][j-1] + cost(i-1, j-1), D[i-1][j] + gap, D[i][j-1] + gap)
 * with D[i][0] = i gap, D[0][j] = j gap. out[r][k-1] = min over rotations of D[k][k] (k = 1 .. m).
 * The rotations are the vector lanes (contiguous); rows are sequential. Returns 0, or -1 if out of memory. */
int wmkit_levenshtein_prefix(const float *g, int64_t m, int64_t n, float gap, int64_t r0, int64_t r1, float *out) {
    float *prev = malloc(sizeof(float) * (size_t)((m + 1) * n));
    float *cur = malloc(sizeof(float) * (size_t)((m + 1) * n));
    float *dup = malloc(sizeof(float) * (size_t)(n + m));
    if (!prev || !cur || !dup) {
        free(prev);
        free(cur);
        free(dup);
        return -1;
    }
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t j = 0; j <= m; j++)
            for (int64_t l = 0; l < n; l++) prev[j * n + l] = gap * (float)j;
        for (int64_t i = 1; i <= m; i++) {
            const float *gi = g + (r * m + (i - 1)) * n;
            for (int64_t p = 0; p < n + m; p++) dup[p] = gi[p % n];
            for (int64_t l = 0; l < n; l++) cur[l] = gap * (float)i;
            for (int64_t j = 1; j <= m; j++) {
                const float *c = dup + (j - 1);
                const float *dl = prev + (j - 1) * n, *du = prev + j * n, *dc = cur + (j - 1) * n;
                float *dj = cur + j * n;
                for (int64_t l = 0; l < n; l++) {
                    float a = dl[l] + c[l], b = du[l] + gap;
                    float x = a < b ? a : b;
                    float y = dc[l] + gap;
                    dj[l] = x < y ? x : y;
                }
            }
            float best = cur[i * n];
            for (int64_t l = 1; l < n; l++) best = cur[i * n + l] < best ? cur[i * n + l] : best;
            out[r * m + (i - 1)] = best;
            float *t = prev;
            prev = cur;
            cur = t;
        }
    }
    free(prev);
    free(cur);
    free(dup);
    return 0;
}
