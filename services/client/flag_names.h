// Lets the absl-flags mains of the router side accept --dashed-names (the project's CLI style)
// as well as --underscored_names: rewrites the name part of each "--flag[=value]" in place.
#pragma once

#include <cstring>

namespace sqa::client {

inline void DashedFlagsToUnderscores(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char* a = argv[i];
    if (std::strncmp(a, "--", 2) != 0 || a[2] == '\0') continue;
    for (char* p = a + 2; *p && *p != '='; ++p) {
      if (*p == '-') *p = '_';
    }
  }
}

}  // namespace sqa::client
