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
constexpr int kRowBlock = 6;  // query rows per register block (6 x 4 accumulators = 24 zmm)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Below this many multiply-adds (per matrix product) an attention call stays on one thread.
constexpr double kSerialWork = 1 << 18;

inline int64_t RoundUp16(int64_t x) { return (x + 15) / 16 * 16; }

// Per-thread working memory, grown on demand and reused across calls.
struct Scratch {
  std::vector<float> q;      // [R][dp] packed, pre-scaled queries
  std::vector<float> o;      // [R][dp] unnormalised outputs
  std::vector<float> m, l;   // [R] running max (log2 units) and sum
  std::vector<int64_t> lim;  // [R] last key position each row may see
  std::vector<float> kt;     // [dh][TK] transposed key tile
  std::vector<float> v;      // [TK][dp] value tile
  std::vector<float> p;      // [kRowBlock][TK] probabilities
  void Ensure(int64_t rows, int64_t dh, int64_t dp) {
    auto grow = [](auto& vec, int64_t n) {
      if (static_cast<int64_t>(vec.size()) < n) vec.resize(static_cast<size_t>(n));
    };
    grow(q, rows * dp);
    grow(o, rows * dp);
    grow(m, rows);
    grow(l, rows);
    grow(lim, rows);
    grow(kt, dh * TK + 16);
    grow(v, TK * dp);
    grow(p, kRowBlock * TK);
  }
};

Scratch& ThreadScratch() {
  thread_local Scratch s;
  return s;
}

// Gathers keys [t0, t0 + nk) of KV head `h` through the block table: K transposed into kt
// ([dh][TK]); V either used in place (one block, no padding needed) or copied into vbuf.
const float* PackTile(const KvLayout& kv, const int32_t* table, int64_t h, int64_t t0, int nk, int64_t dp,
                      float* kt, float* vbuf, int64_t* vstride) {
  const int64_t bs = kv.block_size, dh = kv.head_dim;
  const int64_t head_off = h * bs * dh;
  const bool in_place = dp == dh && (t0 / bs) == ((t0 + nk - 1) / bs);
  const float* v_in_place = nullptr;
  int j = 0;
  while (j < nk) {
    const int64_t pos = t0 + j;
    const int64_t blk = table[pos / bs];
    const int64_t off = pos % bs;
    const int run = static_cast<int>(std::min<int64_t>(nk - j, bs - off));
    const float* kp = kv.base + blk * kv.block_stride + head_off + off * dh;
    const float* vp = kp + kv.v_offset;
    for (int r = 0; r < run; ++r) {
      const float* kr = kp + r * dh;
      float* dst = kt + j + r;
      for (int64_t d = 0; d < dh; ++d) dst[d * TK] = kr[d];
    }
    if (in_place) {
      v_in_place = vp;
    } else {
      for (int r = 0; r < run; ++r) {
        float* dst = vbuf + (j + r) * dp;
        std::copy(vp + r * dh, vp + (r + 1) * dh, dst);
        std::fill(dst + dh, dst + dp, 0.f);
      }
    }
    j += run;
  }
  if (in_place) {
    *vstride = dh;
    return v_in_place;
  }
  *vstride = dp;
  return vbuf;
}

template <int RB, int NV>
inline void PvChunk(const float* p, const float* v, int64_t vstride, int nk, const float* alpha, float* o,
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
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const float pr = p[r * TK + j];
#pragma GCC unroll 4
      for (int c = 0; c < NV; ++c) acc[r][c] += pr * vv[c];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) Store(o + r * dp + c0 + 16 * c, acc[r][c]);
}

// One register block of RB query rows against one key tile: scores, mask, online softmax
// update of (m, l), then o = o * alpha + P V.
template <int RB>
void RowBlockTile(const float* qp, int64_t dh, int64_t dp, const float* kt, const float* v, int64_t vstride, int nk,
                  const int64_t* lim_rel, bool need_mask, float* o, float* m, float* l, float* pbuf) {
  v16f acc[RB][4];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) acc[r][c] = Splat(0.f);
  for (int64_t d = 0; d < dh; ++d) {
    const float* kr = kt + d * TK;
    const v16f k0 = Load(kr), k1 = Load(kr + 16), k2 = Load(kr + 32), k3 = Load(kr + 48);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const float qv = qp[r * dp + d];
      acc[r][0] += qv * k0;
      acc[r][1] += qv * k1;
      acc[r][2] += qv * k2;
      acc[r][3] += qv * k3;
    }
  }
  float alpha[RB];
  const v16f neg_inf = Splat(kNegInf);
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) {
    if (need_mask) {
      const int32_t last = static_cast<int32_t>(std::min<int64_t>(lim_rel[r], nk - 1));
      const v16i idx = Iota();
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) acc[r][c] = (idx + 16 * c <= last) ? acc[r][c] : neg_inf;
    }
    const float mx = HMax(Max(Max(acc[r][0], acc[r][1]), Max(acc[r][2], acc[r][3])));
    const float m_new = std::max(m[r], mx);
    float* prow = pbuf + r * TK;
    if (m_new == kNegInf) {  // no visible key yet for this row
      alpha[r] = 1.f;
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) Store(prow + 16 * c, Splat(0.f));
      continue;
    }
    alpha[r] = std::exp2(m[r] - m_new);
    v16f sum = Splat(0.f);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const v16f pv = Exp2(acc[r][c] - m_new);
      Store(prow + 16 * c, pv);
      sum += pv;
    }
    l[r] = l[r] * alpha[r] + HSum(sum);
    m[r] = m_new;
  }
  for (int64_t c0 = 0; c0 < dp; c0 += 64) {
    switch (std::min<int64_t>(4, (dp - c0) / 16)) {
      case 4: PvChunk<RB, 4>(pbuf, v, vstride, nk, alpha, o, dp, c0); break;
      case 3: PvChunk<RB, 3>(pbuf, v, vstride, nk, alpha, o, dp, c0); break;
      case 2: PvChunk<RB, 2>(pbuf, v, vstride, nk, alpha, o, dp, c0); break;
      default: PvChunk<RB, 1>(pbuf, v, vstride, nk, alpha, o, dp, c0); break;
    }
  }
}

using RowBlockFn = void (*)(const float*, int64_t, int64_t, const float*, const float*, int64_t, int, const int64_t*,
                            bool, float*, float*, float*, float*);
constexpr RowBlockFn kRowBlockFns[kRowBlock + 1] = {nullptr,          RowBlockTile<1>, RowBlockTile<2>,
                                                     RowBlockTile<3>, RowBlockTile<4>, RowBlockTile<5>,
                                                     RowBlockTile<6>};

// Attends the R packed rows in `s` (q, lim, o, m, l initialised) to keys [kb, ke) of KV head h.
void AttendRange(const KvLayout& kv, const int32_t* table, int64_t h, int64_t kb, int64_t ke, int64_t R, Scratch& s) {
  const int64_t dh = kv.head_dim, dp = RoundUp16(dh);
  int64_t rel[kRowBlock];
  for (int64_t t0 = kb; t0 < ke; t0 += TK) {
    const int nk = static_cast<int>(std::min<int64_t>(TK, ke - t0));
    int64_t vstride = 0;
    const float* v = PackTile(kv, table, h, t0, nk, dp, s.kt.data(), s.v.data(), &vstride);
    for (int64_t rb = 0; rb < R; rb += kRowBlock) {
      const int rn = static_cast<int>(std::min<int64_t>(kRowBlock, R - rb));
      bool need_mask = nk < TK, any_visible = false;
      for (int r = 0; r < rn; ++r) {
        rel[r] = s.lim[rb + r] - t0;
        if (rel[r] < nk - 1) need_mask = true;
        if (rel[r] >= 0) any_visible = true;
      }
      if (!any_visible) continue;  // the whole tile is masked for these rows: nothing changes
      kRowBlockFns[rn](s.q.data() + rb * dp, dh, dp, s.kt.data(), v, vstride, nk, rel, need_mask,
                       s.o.data() + rb * dp, s.m.data() + rb, s.l.data() + rb, s.p.data());
    }
  }
}

inline void InitRows(Scratch& s, int64_t R, int64_t dp) {
  std::fill(s.o.begin(), s.o.begin() + R * dp, 0.f);
  std::fill(s.m.begin(), s.m.begin() + R, kNegInf);
  std::fill(s.l.begin(), s.l.begin() + R, 0.f);
}

inline void PackQueryRow(const float* src, int64_t dh, int64_t dp, float scale2, float* dst) {
  for (int64_t d = 0; d < dh; ++d) dst[d] = src[d] * scale2;
  for (int64_t d = dh; d < dp; ++d) dst[d] = 0.f;
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
    Scratch& s = ThreadScratch();
    s.Ensure(R, dh, dp);
    InitRows(s, R, dp);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = kvh * group + g, qh = h % p.hq;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t row = g * nb + (i - i0);
        PackQueryRow(p.q + (i * p.hq + qh) * dh, dh, dp, scale2, s.q.data() + row * dp);
        s.lim[row] = p.causal ? std::min(p.q_pos0 + i, p.kv_len - 1) : p.kv_len - 1;
      }
    }
    const int64_t ke = p.causal ? std::min(p.q_pos0 + i1, p.kv_len) : p.kv_len;
    AttendRange(p.kv, p.block_table, kvh, 0, ke, R, s);
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
    Scratch& s = ThreadScratch();
    s.Ensure(group, dh, dp);
    InitRows(s, group, dp);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = task.kvh * group + g, qh = h % p.hq;
      PackQueryRow(p.q + (task.b * p.hq + qh) * dh, dh, dp, scale2, s.q.data() + g * dp);
      s.lim[g] = p.seqs[task.b].kv_len - 1;
    }
    AttendRange(p.kv, p.seqs[task.b].block_table, task.kvh, task.kb, task.ke, group, s);
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
