// Programmatic dependent launch (PDL) for the kernels of a decode step. A step is ~270 small
// kernels; launched one after another, each waits for its predecessor to drain before the GPU even
// starts it. Launched with LaunchPdl, a kernel starts while its predecessor runs (once every CTA of
// that predecessor has called PdlTrigger, or exited) and blocks in PdlWait until the predecessor
// has finished and its writes are visible. Stream capture keeps these as programmatic edges of
// the step graph.
//
// The rule for a kernel launched with LaunchPdl: nothing before PdlWait may read what an earlier
// kernel writes, or write anything at all; reading constants (weights) is allowed, which is what
// the skinny GEMM does to start streaming W early. The decode kernel v5 also reads K/V of
// earlier steps early, under the contract of DecodeParams::fresh_kv_tokens. Launched without the attribute (<<<>>>), both
// calls are no-ops, so a kernel may be launched either way.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace sqa::cuda {

__device__ __forceinline__ void PdlWait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void PdlTrigger() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
// The usual start of a kernel: let the next one launch, then wait for the previous one.
__device__ __forceinline__ void PdlEnter() {
  PdlTrigger();
  PdlWait();
}

template <typename... KArgs, typename... Args>
cudaError_t LaunchPdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace sqa::cuda
