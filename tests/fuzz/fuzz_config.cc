// libFuzzer entry for config.json parsing. Beyond "no crash", every accepted config must survive
// ToJson -> ParseModelConfig unchanged (the property sqa-mkmodel and the loader rely on).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "workers/engine/model/config.h"
#include "workers/engine/model/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto c = sqa::ParseModelConfig(text, "fuzz/config.json");
  if (!c.ok()) return 0;
  (void)c->LayoutName();
  const std::string json = c->ToJson();
  auto again = sqa::ParseModelConfig(json, "round-trip");
  if (!again.ok() || again->ToJson() != json) __builtin_trap();
  if (c->num_hidden_layers <= 64) (void)sqa::ExpectedTensors(*c);
  return 0;
}
