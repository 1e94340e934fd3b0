// The TensorRT path: deserialises an engine with TensorRT's C++ runtime (nvinfer) and runs it on
// CUDA tensors allocated by libtorch, on the current CUDA stream of the device.
#include <algorithm>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <unordered_map>

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <NvInferRuntime.h>

#include "model.h"

namespace codetr {
namespace {

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "TensorRT: %s\n", message);
  }
};

at::ScalarType scalar_type(nvinfer1::DataType type, const std::string& name) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT: return at::kFloat;
    case nvinfer1::DataType::kHALF: return at::kHalf;
    case nvinfer1::DataType::kBF16: return at::kBFloat16;
    case nvinfer1::DataType::kINT32: return at::kInt;
    case nvinfer1::DataType::kINT64: return at::kLong;
    case nvinfer1::DataType::kBOOL: return at::kBool;
    default: throw std::runtime_error("engine tensor " + name + " has a data type the runner does not handle");
  }
}

class TensorRtModel final : public Model {
 public:
  TensorRtModel(const std::filesystem::path& path, const std::vector<std::filesystem::path>& plugin_libraries,
                int device_index)
      : device_(c10::kCUDA, static_cast<c10::DeviceIndex>(std::max(device_index, 0))) {
    const c10::cuda::CUDAGuard guard(device_);
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw std::runtime_error("TensorRT: cannot create the runtime");
    for (const auto& library : plugin_libraries) {
      if (runtime_->getPluginRegistry().loadLibrary(library.c_str()) == nullptr) {
        throw std::runtime_error("TensorRT cannot load the plugin library " + library.string());
      }
    }
    std::ifstream stream(path, std::ios::binary);
    const std::vector<char> blob((std::istreambuf_iterator<char>(stream)), std::istreambuf_iterator<char>());
    if (blob.empty()) throw std::runtime_error("cannot read the engine " + path.string());
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) {
      throw std::runtime_error("TensorRT cannot deserialise " + path.string() +
                               " (built by another TensorRT version or for another GPU, or a plugin library is missing)");
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw std::runtime_error("TensorRT: cannot create an execution context");
  }

  Detections run(const at::Tensor& images, const at::Tensor& image_sizes) override {
    const c10::cuda::CUDAGuard guard(device_);
    const std::unordered_map<std::string, at::Tensor> inputs{
        {"images", images.to(device_).contiguous()}, {"image_sizes", image_sizes.to(device_).contiguous()}};
    std::unordered_map<std::string, at::Tensor> outputs;
    for (int32_t index = 0; index < engine_->getNbIOTensors(); ++index) {
      const std::string name = engine_->getIOTensorName(index);
      if (engine_->getTensorIOMode(name.c_str()) != nvinfer1::TensorIOMode::kINPUT) continue;
      const auto found = inputs.find(name);
      if (found == inputs.end()) throw std::runtime_error("the engine has an unknown input " + name);
      const auto type = scalar_type(engine_->getTensorDataType(name.c_str()), name);
      const auto tensor = found->second.to(type);
      nvinfer1::Dims dims{};
      dims.nbDims = static_cast<int32_t>(tensor.dim());
      for (int64_t axis = 0; axis < tensor.dim(); ++axis) dims.d[axis] = tensor.size(axis);
      if (!context_->setInputShape(name.c_str(), dims) || !context_->setTensorAddress(name.c_str(), tensor.data_ptr())) {
        throw std::runtime_error("the engine does not take input " + name + " of this shape");
      }
      kept_inputs_[name] = tensor;  // alive until the enqueued work is done
    }
    for (int32_t index = 0; index < engine_->getNbIOTensors(); ++index) {
      const std::string name = engine_->getIOTensorName(index);
      if (engine_->getTensorIOMode(name.c_str()) != nvinfer1::TensorIOMode::kOUTPUT) continue;
      const auto dims = context_->getTensorShape(name.c_str());
      std::vector<int64_t> shape(dims.d, dims.d + dims.nbDims);
      auto tensor = at::empty(shape, at::TensorOptions(device_).dtype(scalar_type(engine_->getTensorDataType(name.c_str()), name)));
      context_->setTensorAddress(name.c_str(), tensor.data_ptr());
      outputs[name] = tensor;
    }
    const auto stream = c10::cuda::getCurrentCUDAStream(device_.index());
    if (!context_->enqueueV3(stream.stream())) throw std::runtime_error("TensorRT: enqueueV3 failed");
    for (const char* name : {"boxes", "scores", "labels"}) {
      if (!outputs.count(name)) throw std::runtime_error(std::string("the engine has no output ") + name);
    }
    return {outputs["boxes"].to(at::kFloat), outputs["scores"].to(at::kFloat), outputs["labels"].to(at::kLong)};
  }

  std::string device() const override { return device_.str(); }

 private:
  Logger logger_;
  c10::Device device_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::unordered_map<std::string, at::Tensor> kept_inputs_;
};

}  // namespace

std::unique_ptr<Model> load_tensorrt_engine(const std::filesystem::path& path,
                                            const std::vector<std::filesystem::path>& plugin_libraries,
                                            int device_index) {
  if (!std::filesystem::is_regular_file(path)) throw std::runtime_error("no model file at " + path.string());
  return std::make_unique<TensorRtModel>(path, plugin_libraries, device_index);
}

}  // namespace codetr
