// A loaded model: runs pre-processed images [B, 3, H, W] float32 and image_sizes [B, 2] int64
// (both on the CPU) and returns the model's Detections (on any device).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "postprocess.h"

namespace codetr {

class Model {
 public:
  virtual ~Model() = default;
  virtual Detections run(const at::Tensor& images, const at::Tensor& image_sizes) = 0;
  // "cpu" or "cuda:N": where the model runs.
  virtual std::string device() const = 0;
};

// An AOTInductor package (codetr export --artifacts aoti, model_aoti.pt2). The package's device
// is the one it was compiled for; CUDA packages run on GPU `device_index` (-1: the current one).
std::unique_ptr<Model> load_aoti_package(const std::filesystem::path& path, int device_index);

// A serialized TensorRT engine, run on GPU `device_index` (-1: the current one); `plugin_libraries` (e.g.
// libcodetr_msda_trt.so) are loaded into TensorRT's plugin registry before deserialising.
// Throws when this build has no TensorRT runtime.
std::unique_ptr<Model> load_tensorrt_engine(const std::filesystem::path& path,
                                            const std::vector<std::filesystem::path>& plugin_libraries,
                                            int device_index);

}  // namespace codetr
