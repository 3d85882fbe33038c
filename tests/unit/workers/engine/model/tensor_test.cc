#include "workers/engine/model/tensor.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace sqa {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Reference f32 -> bf16 by exact arithmetic in double: the two bf16 neighbours of x, the nearer
// one wins, ties go to the even mantissa.
uint16_t RefBf16(float x) {
  const uint32_t u = Bits(x);
  const uint16_t lo = static_cast<uint16_t>(u >> 16);  // truncation toward zero
  if ((u & 0xffff) == 0) return lo;
  const uint16_t hi = static_cast<uint16_t>(lo + 1);  // next magnitude up (may be infinity)
  const double dlo = std::fabs(static_cast<double>(x) - Bf16ToF32(lo));
  const double dhi = std::isinf(Bf16ToF32(hi)) ? std::ldexp(1.0, 128) - std::fabs(static_cast<double>(x))
                                               : std::fabs(static_cast<double>(Bf16ToF32(hi)) - x);
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(DType, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI32), 4u);
  EXPECT_EQ(DTypeName(DType::kF32), "F32");
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeName(DType::kF16), "F16");
  EXPECT_EQ(DTypeName(DType::kI32), "I32");
  EXPECT_EQ(ShapeString({}), "[]");
  EXPECT_EQ(ShapeString({4096, 2048}), "[4096, 2048]");
}

TEST(Bf16, EveryValueRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = Bf16ToF32(static_cast<uint16_t>(h));
    const uint16_t back = F32ToBf16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(Bf16ToF32(back))) << h;
      EXPECT_EQ(back & 0x8000, h & 0x8000) << h;
    } else {
      EXPECT_EQ(back, h) << h;
    }
  }
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBf16(FromBits(0x3f808000)), 0x3f80);  // tie, even stays
  EXPECT_EQ(F32ToBf16(FromBits(0x3f818000)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(F32ToBf16(FromBits(0x3f808001)), 0x3f81);  // just above the tie
  EXPECT_EQ(F32ToBf16(FromBits(0x7f7fffff)), 0x7f80);  // FLT_MAX rounds to +inf
  EXPECT_EQ(F32ToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(F32ToBf16(FromBits(0x00000001)), 0x0000);  // tiny subnormal -> +0
  EXPECT_EQ(F32ToBf16(FromBits(0x00018000)), 0x0002);  // subnormal tie, odd -> up
  // A NaN whose payload lives only in the low half must stay NaN, not become infinity.
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(FromBits(0x7f800001)))));
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(FromBits(0xff800001)))));
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const float x = FromBits(rng());
    if (std::isnan(x)) continue;
    ASSERT_EQ(F32ToBf16(x), RefBf16(x)) << std::hex << Bits(x);
  }
}

TEST(F16, EveryValueRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    const uint16_t back = F32ToF16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToF32(back))) << h;
    } else {
      EXPECT_EQ(back, h) << h;
    }
  }
}

TEST(F16, KnownValues) {
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(F16ToF32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_TRUE(std::isinf(F16ToF32(0x7c00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_EQ(F32ToF16(65519.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);  // halfway to 65536 ties to even -> inf
  EXPECT_EQ(F32ToF16(1e10f), 0x7c00);
  EXPECT_EQ(F32ToF16(-1e10f), 0xfc00);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000);                   // tie to even zero
  EXPECT_EQ(F32ToF16(std::ldexp(1.5f, -25)), 0x0001);                   // above the tie
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)), 0x0002);                   // 1.5 units, tie -> 2
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -26)), 0x0400);  // carries into normal
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(FromBits(0x7f800001)))));
}

#if defined(__F16C__)
TEST(F16, MatchesHardwareConversion) {
  std::mt19937 rng(11);
  for (int i = 0; i < 300000; ++i) {
    // Bias toward the f16 range (exponents near zero) so subnormals and overflow are covered.
    uint32_t u = rng();
    if (i % 2) u = (u & 0x807fffff) | ((100u + rng() % 60u) << 23);
    const float x = FromBits(u);
    if (std::isnan(x)) continue;
    ASSERT_EQ(F32ToF16(x), _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)) << std::hex << u;
    const uint16_t h = static_cast<uint16_t>(u);
    if (!std::isnan(F16ToF32(h))) {
      ASSERT_EQ(Bits(F16ToF32(h)), Bits(_cvtsh_ss(h))) << h;
    }
  }
}
#endif

TEST(Convert, BulkMatchesScalarAtAnyLengthAndAlignment) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 100.f);
  for (size_t n : {0u, 1u, 7u, 8u, 9u, 33u, 1000u}) {
    std::vector<float> src(n);
    for (float& x : src) x = nd(rng);
    if (n > 3) {
      src[0] = std::numeric_limits<float>::infinity();
      src[1] = std::nanf("");
      src[2] = 1e-30f;
      src[3] = 70000.f;
    }
    for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
      // Odd offset inside a byte buffer: the bulk routines must not assume alignment.
      std::vector<uint8_t> buf(n * DTypeSize(t) + 1);
      ConvertFromF32(src.data(), n, t, buf.data() + 1);
      std::vector<float> back(n);
      ConvertToF32(buf.data() + 1, t, n, back.data());
      for (size_t i = 0; i < n; ++i) {
        float expect = src[i];
        if (t == DType::kBF16) expect = Bf16ToF32(F32ToBf16(src[i]));
        if (t == DType::kF16) expect = F16ToF32(F32ToF16(src[i]));
        if (std::isnan(expect)) {
          EXPECT_TRUE(std::isnan(back[i]));
        } else {
          EXPECT_EQ(Bits(back[i]), Bits(expect)) << DTypeName(t) << " n=" << n << " i=" << i;
        }
      }
    }
  }
}

TEST(Convert, I32) {
  const std::vector<int32_t> v = {0, -5, 1 << 20, INT32_MIN};
  std::vector<float> f(v.size());
  ConvertToF32(v.data(), DType::kI32, v.size(), f.data());
  EXPECT_EQ(f[1], -5.f);
  EXPECT_EQ(f[2], 1048576.f);
  const std::vector<float> g = {3.7f, -1e20f, 1e20f, std::nanf("")};
  std::vector<int32_t> out(g.size());
  ConvertFromF32(g.data(), g.size(), DType::kI32, out.data());
  EXPECT_EQ(out[0], 3);
  EXPECT_EQ(out[1], INT32_MIN);
  EXPECT_EQ(out[2], INT32_MAX);
  EXPECT_EQ(out[3], 0);
}

}  // namespace
}  // namespace sqa
