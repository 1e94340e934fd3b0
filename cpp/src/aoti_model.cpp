#include <stdexcept>

#include <c10/core/Device.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "model.h"

namespace codetr {
namespace {

class AotiModel final : public Model {
 public:
  AotiModel(const std::filesystem::path& path, int device_index)
      : loader_(path.string(), "model", /*run_single_threaded=*/false, /*num_runners=*/1,
                static_cast<c10::DeviceIndex>(device_index)) {
    // AOTInductor writes the compile device into the package metadata ("cpu", "cuda", ...).
    const auto metadata = loader_.get_metadata();
    const auto found = metadata.find("AOTI_DEVICE_KEY");
    const std::string kind = found == metadata.end() ? "cpu" : found->second;
    device_ = kind == "cpu" ? c10::Device(c10::kCPU) : c10::Device(kind + ":" + std::to_string(std::max(device_index, 0)));
  }

  Detections run(const at::Tensor& images, const at::Tensor& image_sizes) override {
    auto outputs = loader_.run({images.to(device_), image_sizes.to(device_)});
    if (outputs.size() != 3) {
      throw std::runtime_error("the AOTInductor package returned " + std::to_string(outputs.size()) +
                               " outputs, expected 3 (boxes, scores, labels)");
    }
    return {outputs[0], outputs[1], outputs[2]};
  }

  std::string device() const override { return device_.str(); }

 private:
  torch::inductor::AOTIModelPackageLoader loader_;
  c10::Device device_{c10::kCPU};
};

}  // namespace

std::unique_ptr<Model> load_aoti_package(const std::filesystem::path& path, int device_index) {
  if (!std::filesystem::is_regular_file(path)) throw std::runtime_error("no model file at " + path.string());
  try {
    return std::make_unique<AotiModel>(path, device_index);
  } catch (const c10::Error& error) {
    throw std::runtime_error("cannot load the AOTInductor package " + path.string() + ": " + error.what_without_backtrace());
  }
}

}  // namespace codetr
