#include "workers/engine/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "workers/engine/cpu/simd.h"

namespace sqa::cpu {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr double kLn2 = 0.6931471805599453;
constexpr int TK = kTileKeys;
constexpr int kRowBlock = 6;  // rows (P V) or keys (scores) per register block: 6 x 4 accumulators
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Below this many multiply-adds (per matrix product) an attention call stays on one thread.
constexpr double kSerialWork = 1 << 22;

inline int64_t RoundUp16(int64_t x) { return (x + 15) / 16 * 16; }

// Per-thread working memory, grown on demand and reused across calls. Queries are packed
// transposed (qt: [dh][rpad], rpad = rows rounded up to 16) so that scores come out as S^T
// ([keys][rows]): a key's scalar is broadcast against 16 query rows at a time, K is read in place
// from the cache (no transposition), and the softmax statistics of 16 rows live in one vector.
struct Scratch {
  std::vector<float> qt;     // [dh][rpad] pre-scaled queries (log2 units)
  std::vector<float> o;      // [rpad][dp] unnormalised outputs
  std::vector<float> m, l;   // [rpad] running max (log2 units) and sum
  std::vector<float> alpha;  // [rpad] rescale of the current tile
  std::vector<int32_t> lim;  // [rpad] last key position each row may see (-1: none)
  std::vector<int32_t> vmin, vmax;  // per 16-row vector: min/max of lim
  std::vector<float> st;     // [TK][rpad] scores, then probabilities
  std::vector<float> v;      // [TK][dp] value tile when it cannot be read in place
  void Ensure(int64_t rpad, int64_t dh, int64_t dp) {
    auto grow = [](auto& vec, int64_t n) {
      if (static_cast<int64_t>(vec.size()) < n) vec.resize(static_cast<size_t>(n));
    };
    grow(qt, dh * rpad);
    grow(o, rpad * dp);
    grow(m, rpad);
    grow(l, rpad);
    grow(alpha, rpad);
    grow(lim, rpad);
    grow(vmin, rpad / 16);
    grow(vmax, rpad / 16);
    grow(st, TK * rpad);
    grow(v, TK * dp);
  }
};

Scratch& ThreadScratch() {
  thread_local Scratch s;
  return s;
}

typedef int32_t v16i_u __attribute__((vector_size(64), aligned(4), may_alias));
inline v16i LoadI(const int32_t* p) { return *reinterpret_cast<const v16i_u*>(p); }

// S^T[j][rows of vectors v0 .. v0+RV) for KB keys (rows of k, stride dh).
template <int KB, int RV>
void ScoreBlock(const float* k, int64_t dh, const float* qt, int64_t rpad, float* st) {
  v16f acc[KB][RV];
#pragma GCC unroll 8
  for (int a = 0; a < KB; ++a)
#pragma GCC unroll 4
    for (int c = 0; c < RV; ++c) acc[a][c] = Splat(0.f);
  for (int64_t d = 0; d < dh; ++d) {
    v16f q[RV];
#pragma GCC unroll 4
    for (int c = 0; c < RV; ++c) q[c] = Load(qt + d * rpad + 16 * c);
#pragma GCC unroll 8
    for (int a = 0; a < KB; ++a) {
      const float kv = k[a * dh + d];
#pragma GCC unroll 4
      for (int c = 0; c < RV; ++c) acc[a][c] += kv * q[c];
    }
  }
#pragma GCC unroll 8
  for (int a = 0; a < KB; ++a)
#pragma GCC unroll 4
    for (int c = 0; c < RV; ++c) Store(st + a * rpad + 16 * c, acc[a][c]);
}

using ScoreFn = void (*)(const float*, int64_t, const float*, int64_t, float*);
template <int KB>
constexpr ScoreFn kScoreRow[5] = {nullptr, ScoreBlock<KB, 1>, ScoreBlock<KB, 2>, ScoreBlock<KB, 3>,
                                  ScoreBlock<KB, 4>};
constexpr const ScoreFn* kScoreFns[7] = {nullptr,      kScoreRow<1>, kScoreRow<2>, kScoreRow<3>,
                                         kScoreRow<4>, kScoreRow<5>, kScoreRow<6>};

// O[rows r0 .. r0+RB) = O * alpha + P V for output columns [c0, c0 + 16 NV).
template <int RB, int NV>
void PvBlock(const float* pt, int64_t rpad, const float* v, int64_t vstride, int nk, const float* alpha, float* o,
             int64_t dp, int64_t c0) {
  v16f acc[RB][NV];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) acc[r][c] = Load(o + r * dp + c0 + 16 * c) * alpha[r];
  for (int j = 0; j < nk; ++j) {
    const float* vr = v + j * vstride + c0;
    v16f vv[NV];
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) vv[c] = Load(vr + 16 * c);
    const float* pj = pt + j * rpad;
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const float pr = pj[r];
#pragma GCC unroll 4
      for (int c = 0; c < NV; ++c) acc[r][c] += pr * vv[c];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) Store(o + r * dp + c0 + 16 * c, acc[r][c]);
}

using PvFn = void (*)(const float*, int64_t, const float*, int64_t, int, const float*, float*, int64_t, int64_t);
template <int RB>
constexpr PvFn kPvRow[5] = {nullptr, PvBlock<RB, 1>, PvBlock<RB, 2>, PvBlock<RB, 3>, PvBlock<RB, 4>};
constexpr const PvFn* kPvFns[kRowBlock + 1] = {nullptr, kPvRow<1>, kPvRow<2>, kPvRow<3>, kPvRow<4>, kPvRow<5>, kPvRow<6>};

// Attends the R packed rows in `s` (qt, lim, vmin/vmax, o, m, l initialised; rpad = R rounded up
// to 16) to keys [kb, ke) of KV head h. Tiles never cross a block, so K and V are read in place.
void AttendRange(const KvLayout& kv, const int32_t* table, int64_t h, int64_t kb, int64_t ke, int64_t R, int64_t rpad,
                 Scratch& s) {
  const int64_t dh = kv.head_dim, dp = RoundUp16(dh), bs = kv.block_size;
  const int64_t nvec = rpad / 16;
  const v16f neg_inf = Splat(kNegInf);
  for (int64_t t0 = kb; t0 < ke;) {
    const int64_t off = t0 % bs;
    const int nk = static_cast<int>(std::min<int64_t>({TK, ke - t0, bs - off}));
    const float* kp = kv.base + table[t0 / bs] * kv.block_stride + h * bs * dh + off * dh;
    const float* vp = kp + kv.v_offset;
    int64_t vstride = dh;
    if (dp != dh) {  // rows are not a whole number of vectors: copy into a zero-padded tile
      for (int j = 0; j < nk; ++j) {
        std::copy(vp + j * dh, vp + (j + 1) * dh, s.v.data() + j * dp);
        std::fill(s.v.data() + j * dp + dh, s.v.data() + (j + 1) * dp, 0.f);
      }
      vp = s.v.data();
      vstride = dp;
    }
    // Row vectors that see at least one key of this tile.
    int64_t v_first = nvec, v_last = -1;
    for (int64_t v = 0; v < nvec; ++v) {
      if (s.vmax[v] >= t0) {
        v_first = std::min(v_first, v);
        v_last = v;
      }
    }
    if (v_last < 0) {
      t0 += nk;
      continue;
    }
    // Scores for row vectors [v_first, v_last].
    float* st = s.st.data();
    for (int64_t v0 = v_first; v0 <= v_last; v0 += 4) {
      const int rv = static_cast<int>(std::min<int64_t>(4, v_last + 1 - v0));
      for (int j0 = 0; j0 < nk; j0 += 6) {
        const int kbn = std::min(6, nk - j0);
        kScoreFns[kbn][rv](kp + j0 * dh, dh, s.qt.data() + v0 * 16, rpad, st + j0 * rpad + v0 * 16);
      }
    }
    // Online softmax, 16 rows at a time.
    for (int64_t v = v_first; v <= v_last; ++v) {
      float* col = st + v * 16;
      const v16f m_old = Load(s.m.data() + v * 16);
      v16f mx = neg_inf;
      if (s.vmin[v] < t0 + nk - 1) {  // some row of this vector does not see the whole tile
        const v16i rel = LoadI(s.lim.data() + v * 16) - static_cast<int32_t>(t0);
        for (int j = 0; j < nk; ++j) {
          v16f x = Load(col + j * rpad);
          x = (v16i{} + j <= rel) ? x : neg_inf;
          Store(col + j * rpad, x);
          mx = Max(mx, x);
        }
      } else {
        for (int j = 0; j < nk; ++j) mx = Max(mx, Load(col + j * rpad));
      }
      const v16f m_new = Max(m_old, mx);
      const v16f m_use = m_new == neg_inf ? Splat(0.f) : m_new;  // rows with no visible key yet
      const v16f alpha = Exp2(m_old - m_use);
      v16f sum = Splat(0.f);
      for (int j = 0; j < nk; ++j) {
        const v16f p = Exp2(Load(col + j * rpad) - m_use);
        Store(col + j * rpad, p);
        sum += p;
      }
      Store(s.l.data() + v * 16, Load(s.l.data() + v * 16) * alpha + sum);
      Store(s.m.data() + v * 16, m_new);
      Store(s.alpha.data() + v * 16, alpha);
    }
    // O = O * alpha + P V over the rows of those vectors.
    const int64_t r_begin = v_first * 16, r_end = std::min(R, (v_last + 1) * 16);
    for (int64_t r0 = r_begin; r0 < r_end; r0 += kRowBlock) {
      const int rn = static_cast<int>(std::min<int64_t>(kRowBlock, r_end - r0));
      bool any = false;
      for (int r = 0; r < rn; ++r) any |= s.lim[r0 + r] >= t0;
      if (!any) continue;  // alpha = 1 and P = 0 for all of them: nothing changes
      for (int64_t c0 = 0; c0 < dp; c0 += 64) {
        const int nv = static_cast<int>(std::min<int64_t>(4, (dp - c0) / 16));
        kPvFns[rn][nv](st + r0, rpad, vp, vstride, nk, s.alpha.data() + r0, s.o.data() + r0 * dp, dp, c0);
      }
    }
    t0 += nk;
  }
}

inline void InitRows(Scratch& s, int64_t rpad, int64_t dp) {
  std::fill(s.o.begin(), s.o.begin() + rpad * dp, 0.f);
  std::fill(s.m.begin(), s.m.begin() + rpad, kNegInf);
  std::fill(s.l.begin(), s.l.begin() + rpad, 0.f);
  std::fill(s.lim.begin(), s.lim.begin() + rpad, -1);
}

// Packs query row `row` (dh floats at src) into qt, scaled into log2 units.
inline void PackQueryRow(const float* src, int64_t dh, int64_t rpad, int64_t row, float scale2, float* qt) {
  for (int64_t d = 0; d < dh; ++d) qt[d * rpad + row] = src[d] * scale2;
}

// Zeroes the padding rows of qt and computes per-vector lim bounds.
inline void FinishRows(Scratch& s, int64_t R, int64_t rpad, int64_t dh) {
  for (int64_t d = 0; d < dh; ++d)
    for (int64_t r = R; r < rpad; ++r) s.qt[d * rpad + r] = 0.f;
  for (int64_t v = 0; v < rpad / 16; ++v) {
    int32_t lo = INT32_MAX, hi = -1;
    for (int64_t r = v * 16; r < std::min(R, v * 16 + 16); ++r) {
      lo = std::min(lo, s.lim[r]);
      hi = std::max(hi, s.lim[r]);
    }
    s.vmin[v] = lo;  // over real rows only: padding rows' values are never used
    s.vmax[v] = hi;
  }
}

}  // namespace

void AttentionPrefillF32(const PrefillProblem& p, int num_threads) {
  const int64_t hkv = p.kv.num_kv_heads, dh = p.kv.head_dim, dp = RoundUp16(dh);
  const int64_t ha = std::max(p.hq, hkv), group = ha / hkv;
  if (p.n <= 0) return;
  const int64_t bq = std::min<int64_t>(p.n, std::clamp<int64_t>(128 / group, 16, 64));
  const int64_t nqb = (p.n + bq - 1) / bq;
  const int64_t ntasks = nqb * hkv;
  const float scale2 = p.scale * kLog2e;
  int nt = num_threads > 0 ? num_threads : omp_get_max_threads();
  // Small problems run on the calling thread: waking a team costs more than the work.
  const double work = static_cast<double>(p.n) * static_cast<double>(ha) * static_cast<double>(dh) *
                      static_cast<double>(p.causal ? p.q_pos0 + (p.n + 1) / 2 : p.kv_len);
  if (work < kSerialWork) nt = 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t task = 0; task < ntasks; ++task) {
    // Later query blocks see more keys under the causal mask: hand them out first.
    const int64_t qb = nqb - 1 - task / hkv, kvh = task % hkv;
    const int64_t i0 = qb * bq, i1 = std::min(p.n, i0 + bq), nb = i1 - i0, R = group * nb;
    const int64_t rpad = RoundUp16(R);
    Scratch& s = ThreadScratch();
    s.Ensure(rpad, dh, dp);
    InitRows(s, rpad, dp);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = kvh * group + g, qh = h % p.hq;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t row = g * nb + (i - i0);
        PackQueryRow(p.q + (i * p.hq + qh) * dh, dh, rpad, row, scale2, s.qt.data());
        s.lim[row] = static_cast<int32_t>(p.causal ? std::min(p.q_pos0 + i, p.kv_len - 1) : p.kv_len - 1);
      }
    }
    FinishRows(s, R, rpad, dh);
    const int64_t ke = p.causal ? std::min(p.q_pos0 + i1, p.kv_len) : p.kv_len;
    AttendRange(p.kv, p.block_table, kvh, 0, ke, R, rpad, s);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = kvh * group + g;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t row = g * nb + (i - i0);
        const float lsum = s.l[row];
        const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
        const float* src = s.o.data() + row * dp;
        float* dst = p.out + (i * ha + h) * dh;
        for (int64_t d = 0; d < dh; ++d) dst[d] = src[d] * inv;
        if (p.lse != nullptr) {
          p.lse[i * ha + h] = lsum > 0.f ? static_cast<float>(s.m[row] * kLn2 + std::log(static_cast<double>(lsum)))
                                         : kNegInf;
        }
      }
    }
  }
}

namespace {
struct DecodeTask {
  int64_t b, kvh, kb, ke, part;
};
}  // namespace

void AttentionDecodeF32(const DecodeProblem& p, int num_threads) {
  const int64_t hkv = p.kv.num_kv_heads, dh = p.kv.head_dim, dp = RoundUp16(dh);
  const int64_t ha = std::max(p.hq, hkv), group = ha / hkv;
  int nt = num_threads > 0 ? num_threads : omp_get_max_threads();
  if (p.batch <= 0) return;
  {
    double work = 0;
    for (int64_t b = 0; b < p.batch; ++b) work += static_cast<double>(p.seqs[b].kv_len) * ha * dh;
    if (work < kSerialWork) nt = 1;
  }
  // Split long contexts into key ranges (whole tiles) so that every thread has work; the partial
  // results merge exactly through their (m, l).
  thread_local std::vector<DecodeTask> tasks;
  thread_local std::vector<int64_t> first_part;  // per (b, kvh): index of its first task, then end
  thread_local std::vector<float> part_o, part_m, part_l;
  tasks.clear();
  first_part.assign(static_cast<size_t>(p.batch * hkv + 1), 0);
  int64_t total_tiles = 0;
  for (int64_t b = 0; b < p.batch; ++b) total_tiles += (p.seqs[b].kv_len + TK - 1) / TK;
  const int64_t chunk_tiles = std::max<int64_t>(2, (total_tiles * hkv + 4 * nt - 1) / (4 * nt));
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t len = p.seqs[b].kv_len;
    const int64_t tiles = (len + TK - 1) / TK;
    const int64_t parts = std::max<int64_t>(1, (tiles + chunk_tiles - 1) / chunk_tiles);
    const int64_t per = (tiles + parts - 1) / parts;
    for (int64_t kvh = 0; kvh < hkv; ++kvh) {
      first_part[static_cast<size_t>(b * hkv + kvh)] = static_cast<int64_t>(tasks.size());
      for (int64_t s = 0; s < parts; ++s) {
        const int64_t kb = std::min(len, s * per * TK), ke = std::min(len, (s + 1) * per * TK);
        tasks.push_back({b, kvh, kb, ke, static_cast<int64_t>(tasks.size())});
      }
    }
  }
  first_part.back() = static_cast<int64_t>(tasks.size());
  const int64_t ntasks = static_cast<int64_t>(tasks.size());
  if (static_cast<int64_t>(part_o.size()) < ntasks * group * dp) part_o.resize(static_cast<size_t>(ntasks * group * dp));
  if (static_cast<int64_t>(part_m.size()) < ntasks * group) {
    part_m.resize(static_cast<size_t>(ntasks * group));
    part_l.resize(static_cast<size_t>(ntasks * group));
  }
  const float scale2 = p.scale * kLog2e;
  const DecodeTask* tk = tasks.data();
  float* po = part_o.data();
  float* pm = part_m.data();
  float* pl = part_l.data();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < ntasks; ++t) {
    const DecodeTask& task = tk[t];
    const int64_t rpad = RoundUp16(group);
    Scratch& s = ThreadScratch();
    s.Ensure(rpad, dh, dp);
    InitRows(s, rpad, dp);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = task.kvh * group + g, qh = h % p.hq;
      PackQueryRow(p.q + (task.b * p.hq + qh) * dh, dh, rpad, g, scale2, s.qt.data());
      s.lim[g] = static_cast<int32_t>(p.seqs[task.b].kv_len - 1);
    }
    FinishRows(s, group, rpad, dh);
    AttendRange(p.kv, p.seqs[task.b].block_table, task.kvh, task.kb, task.ke, group, rpad, s);
    std::copy(s.o.begin(), s.o.begin() + group * dp, po + task.part * group * dp);
    std::copy(s.m.begin(), s.m.begin() + group, pm + task.part * group);
    std::copy(s.l.begin(), s.l.begin() + group, pl + task.part * group);
  }
  const int64_t* fp = first_part.data();
  const int64_t units = p.batch * hkv;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && units * group * dh > 16384)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t b = u / hkv, kvh = u % hkv;
    const int64_t t_begin = fp[u], t_end = fp[u + 1];
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = kvh * group + g;
      float mmax = kNegInf;
      for (int64_t t = t_begin; t < t_end; ++t) mmax = std::max(mmax, pm[t * group + g]);
      float* dst = p.out + (b * ha + h) * dh;
      double lsum = 0;
      if (mmax != kNegInf) {
        for (int64_t t = t_begin; t < t_end; ++t) {
          const float lt = pl[t * group + g];
          if (lt > 0.f) lsum += lt * std::exp2(static_cast<double>(pm[t * group + g]) - mmax);
        }
      }
      if (lsum <= 0) {
        std::fill(dst, dst + dh, 0.f);
        if (p.lse != nullptr) p.lse[b * ha + h] = kNegInf;
        continue;
      }
      std::fill(dst, dst + dh, 0.f);
      for (int64_t t = t_begin; t < t_end; ++t) {
        if (pl[t * group + g] <= 0.f) continue;
        const float w = static_cast<float>(std::exp2(static_cast<double>(pm[t * group + g]) - mmax) / lsum);
        const float* src = po + (t * group + g) * dp;
        for (int64_t d = 0; d < dh; ++d) dst[d] += w * src[d];
      }
      if (p.lse != nullptr) p.lse[b * ha + h] = static_cast<float>(mmax * kLn2 + std::log(lsum));
    }
  }
}

}  // namespace sqa::cpu
