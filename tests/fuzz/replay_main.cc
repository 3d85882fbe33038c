// Replays a corpus through a fuzz entry point without libFuzzer (so it runs under g++), and
// adds deterministic mutations of each input: bit flips, JSON-significant bytes, truncations,
// cut/duplicated ranges, rewritten length prefixes and extreme numbers. Any crash or sanitizer
// report fails the test.
//   usage: <binary> [--mutations N] CORPUS_DIR_OR_FILE...
#include <algorithm>
#include <cstdint>
#include <functional>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

struct Rng {
  uint64_t s;
  uint64_t Next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  size_t Below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(Next() % n); }
};

void Mutate(std::vector<uint8_t>& m, Rng& rng) {
  static const uint8_t kBytes[] = {0, 0xff, '"', '[', ']', '{', '}', ',', ':', '-', '9', '.', 'e', 0x80, 0xc0, '\\', ' '};
  static const char* kNumbers[] = {"18446744073709551615", "18446744073709551616", "-1", "1e308", "0", "4294967296",
                                   "9223372036854775807", "1.5", "null", "\"x\""};
  switch (rng.Below(7)) {
    case 0:
      if (!m.empty()) m[rng.Below(m.size())] ^= static_cast<uint8_t>(1u << rng.Below(8));
      break;
    case 1:
      if (!m.empty()) m[rng.Below(m.size())] = kBytes[rng.Below(sizeof kBytes)];
      break;
    case 2:
      m.resize(rng.Below(m.size() + 1));
      break;
    case 3: {
      if (m.empty()) break;
      const size_t a = rng.Below(m.size()), len = rng.Below(std::min<size_t>(m.size() - a, 32) + 1);
      m.erase(m.begin() + a, m.begin() + a + len);
      break;
    }
    case 4: {
      if (m.empty()) break;
      const size_t a = rng.Below(m.size()), len = rng.Below(std::min<size_t>(m.size() - a, 64) + 1);
      const std::vector<uint8_t> piece(m.begin() + a, m.begin() + a + len);
      m.insert(m.begin() + rng.Below(m.size() + 1), piece.begin(), piece.end());
      break;
    }
    case 5: {  // rewrite the 8-byte length prefix (safetensors) near its value or to an extreme
      if (m.size() < 8) break;
      uint64_t n = 0;
      for (int i = 7; i >= 0; --i) n = (n << 8) | m[i];
      const uint64_t choices[] = {n + 1, n - 1, n + 8, n / 2, 0, ~0ull, m.size() - 8, m.size()};
      n = choices[rng.Below(8)];
      for (int i = 0; i < 8; ++i) m[i] = static_cast<uint8_t>(n >> (8 * i));
      break;
    }
    case 6: {  // replace a run of digits with an extreme number
      std::vector<size_t> digits;
      for (size_t i = 0; i < m.size(); ++i)
        if (m[i] >= '0' && m[i] <= '9' && (i == 0 || m[i - 1] < '0' || m[i - 1] > '9')) digits.push_back(i);
      if (digits.empty()) break;
      size_t a = digits[rng.Below(digits.size())], b = a;
      while (b < m.size() && m[b] >= '0' && m[b] <= '9') ++b;
      const char* num = kNumbers[rng.Below(sizeof kNumbers / sizeof *kNumbers)];
      m.erase(m.begin() + a, m.begin() + b);
      m.insert(m.begin() + a, num, num + std::strlen(num));
      break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int mutations = 300;
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--mutations") == 0 && i + 1 < argc) {
      mutations = std::atoi(argv[++i]);
      continue;
    }
    const std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
    } else {
      files.push_back(p);
    }
  }
  if (files.empty()) {
    std::fprintf(stderr, "no corpus files given\n");
    return 2;
  }
  std::sort(files.begin(), files.end());  // deterministic order
  size_t runs = 0;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::vector<uint8_t> seed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(seed.data(), seed.size());
    ++runs;
    Rng rng{std::hash<std::string>()(f.filename().string())};
    for (int k = 0; k < mutations; ++k) {
      std::vector<uint8_t> m = seed;
      const size_t ops = 1 + rng.Below(3);
      for (size_t o = 0; o < ops; ++o) Mutate(m, rng);
      LLVMFuzzerTestOneInput(m.data(), m.size());
      ++runs;
    }
  }
  std::printf("replayed %zu corpus files, %zu inputs, no crash\n", files.size(), runs);
  return 0;
}
