// libFuzzer entry for the safetensors header parser. Any input must yield either an error status
// or tensors whose views lie inside the buffer; ASan/UBSan turn anything else into a crash.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "workers/engine/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = std::make_shared<std::vector<uint8_t>>(data, data + size);
  auto f = sqa::SafetensorsFile::Parse(bytes, "fuzz.safetensors");
  if (!f.ok()) return 0;
  const uint8_t* lo = bytes->data();
  const uint8_t* hi = lo + bytes->size();
  for (const auto& [name, view] : (*f)->tensors()) {
    const auto* p = static_cast<const uint8_t*>(view.data);
    const size_t n = view.nbytes();
    if (p < lo || p > hi || n > static_cast<size_t>(hi - p)) __builtin_trap();  // view outside the image
    if (reinterpret_cast<uintptr_t>(p) % sqa::DTypeSize(view.dtype) != 0) __builtin_trap();
    // Touch the bytes (ASan checks the reads) and run the conversion the backends use.
    const size_t count = std::min<size_t>(static_cast<size_t>(view.numel()), 64);
    std::vector<float> out(count);
    sqa::ConvertToF32(view.data, view.dtype, count, out.data());
    if (n > 0) (void)*static_cast<volatile const uint8_t*>(p + n - 1);
  }
  return 0;
}
