// Shared by the CUDA engine tests (cuda_engine_test, cuda_graph_test): a parameterized fixture
// that writes a small random bf16 model of one attention layout and head size (medium preset,
// 3 layers, vocabulary 2048, a fresh seed per test) to a temporary directory and loads it.
// Skips without a GPU.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <system_error>

#include "workers/engine/cuda/cuda_backend.h"
#include "workers/engine/model/mkmodel.h"
#include "workers/engine/model/model.h"

namespace sqa::testing_cuda {

struct ModelCase {
  std::string layout;
  int64_t head_dim;
};

inline std::string ModelCaseName(const ::testing::TestParamInfo<ModelCase>& info) {
  return info.param.layout + "_dh" + std::to_string(info.param.head_dim);
}

class CudaModelTest : public ::testing::TestWithParam<ModelCase> {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    static std::atomic<int> counter{0};
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("sqa_cuda_model_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    auto cfg = PresetConfig("medium", GetParam().layout);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    cfg->head_dim = GetParam().head_dim;
    cfg->num_hidden_layers = 3;
    cfg->vocab_size = 2048;
    MkModelOptions mo;
    mo.config = *cfg;
    mo.dtype = DType::kBF16;
    mo.seed = std::random_device{}();
    ASSERT_TRUE(WriteRandomModel(mo, dir_.string()).ok());
    auto m = Model::Load(dir_.string());
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::shared_ptr<const Model>(std::move(m).value());
    rng_.seed(static_cast<unsigned>(mo.seed));
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  std::filesystem::path dir_;
  std::shared_ptr<const Model> model_;
  std::mt19937 rng_;
};

}  // namespace sqa::testing_cuda
