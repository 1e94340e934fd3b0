// The TensorRT path: deserialises an engine with TensorRT's C++ runtime (nvinfer, TensorRT 10 API)
// and runs it on CUDA tensors allocated by libtorch, on the current CUDA stream of the device.
// Outputs whose shape follows from the input shapes are allocated before enqueueV3; outputs with
// a data-dependent shape (-1 once the input shapes are set: the INMSLayer of a `codetr export
// --postprocess threshold|nms` engine) are served by an IOutputAllocator that hands TensorRT
// libtorch memory of the size it asks for, as codetr.runtime.tensorrt does.
#include <algorithm>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

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

// One data-dependent output in a libtorch CUDA byte buffer that grows on demand and is kept between
// runs (TensorRT asks again on every run, usually for the same size). TensorRT calls it from
// enqueueV3: exceptions must not cross into TensorRT, so a failed allocation returns nullptr (the
// enqueue then fails) and is reported by output().
class TorchOutputAllocator final : public nvinfer1::IOutputAllocator {
 public:
  TorchOutputAllocator(std::string name, at::ScalarType dtype, c10::Device device)
      : name_(std::move(name)), dtype_(dtype), device_(device) {}

  void* reallocateOutputAsync(char const*, void*, uint64_t size, uint64_t alignment, cudaStream_t) noexcept override {
    try {
      if (!buffer_.defined() || static_cast<uint64_t>(buffer_.numel()) < size) {
        // libtorch allocates on the device's current stream, the one the engine is enqueued on.
        buffer_ = at::empty({static_cast<int64_t>(size)}, at::TensorOptions(device_).dtype(at::kByte));
      }
      if (alignment > 1 && reinterpret_cast<uintptr_t>(buffer_.data_ptr()) % alignment != 0) {
        error_ = "a libtorch allocation is not aligned to " + std::to_string(alignment) + " bytes";
        return nullptr;
      }
      return buffer_.data_ptr();
    } catch (const std::exception& error) {
      error_ = error.what();
      return nullptr;
    }
  }

  void notifyShape(char const*, nvinfer1::Dims const& dims) noexcept override {
    try {
      shape_.emplace(dims.d, dims.d + dims.nbDims);
    } catch (const std::exception& error) {
      error_ = error.what();
    }
  }

  // Forget the last run's shape (called before each enqueue).
  void reset() {
    shape_.reset();
    error_.clear();
  }

  // Throws what went wrong inside a callback of the last run, if anything.
  void check() const {
    if (!error_.empty()) throw std::runtime_error("TensorRT output " + name_ + ": " + error_);
  }

  // The last run's output: a copy of the buffer's first bytes, viewed as the notified shape.
  at::Tensor output() const {
    check();
    if (!shape_ || !buffer_.defined()) {
      throw std::runtime_error("TensorRT did not report the shape of the data-dependent output " + name_);
    }
    int64_t count = 1;
    for (const int64_t size : *shape_) count *= size;
    const int64_t bytes = count * static_cast<int64_t>(c10::elementSize(dtype_));
    if (bytes > buffer_.numel()) throw std::runtime_error("TensorRT output " + name_ + " is larger than its allocation");
    return buffer_.narrow(0, 0, bytes).view(dtype_).view(*shape_).clone();
  }

 private:
  std::string name_;
  at::ScalarType dtype_;
  c10::Device device_;
  at::Tensor buffer_;
  std::optional<std::vector<int64_t>> shape_;
  std::string error_;
};

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
    std::vector<std::pair<std::string, TorchOutputAllocator*>> data_dependent;
    for (int32_t index = 0; index < engine_->getNbIOTensors(); ++index) {
      const std::string name = engine_->getIOTensorName(index);
      if (engine_->getTensorIOMode(name.c_str()) != nvinfer1::TensorIOMode::kOUTPUT) continue;
      const auto type = scalar_type(engine_->getTensorDataType(name.c_str()), name);
      const auto dims = context_->getTensorShape(name.c_str());
      if (dims.nbDims < 0) throw std::runtime_error("TensorRT cannot infer the shape of output " + name);
      const std::vector<int64_t> shape(dims.d, dims.d + dims.nbDims);
      if (std::find(shape.begin(), shape.end(), -1) != shape.end()) {
        data_dependent.emplace_back(name, output_allocator(name, type));
        continue;
      }
      auto tensor = at::empty(shape, at::TensorOptions(device_).dtype(type));
      context_->setTensorAddress(name.c_str(), tensor.data_ptr());
      outputs[name] = tensor;
    }
    const auto stream = c10::cuda::getCurrentCUDAStream(device_.index());
    if (!context_->enqueueV3(stream.stream())) {
      for (const auto& entry : data_dependent) entry.second->check();
      throw std::runtime_error("TensorRT: enqueueV3 failed (see the TensorRT log above)");
    }
    if (!data_dependent.empty()) {
      // TensorRT reports the shapes before enqueueV3 returns; the sync makes the buffers' contents final.
      stream.synchronize();
      for (const auto& [name, allocator] : data_dependent) outputs[name] = allocator->output();
    }
    for (const char* name : {"boxes", "scores", "labels"}) {
      if (!outputs.count(name)) throw std::runtime_error(std::string("the engine has no output ") + name);
    }
    return {outputs["boxes"].to(at::kFloat), outputs["scores"].to(at::kFloat), outputs["labels"].to(at::kLong)};
  }

  std::string device() const override { return device_.str(); }

 private:
  // The allocator of output `name`, registered with the context on first use and reset for this run.
  TorchOutputAllocator* output_allocator(const std::string& name, at::ScalarType type) {
    auto& allocator = allocators_[name];
    if (!allocator) {
      allocator = std::make_unique<TorchOutputAllocator>(name, type, device_);
      if (!context_->setOutputAllocator(name.c_str(), allocator.get())) {
        throw std::runtime_error("TensorRT does not take an output allocator for " + name);
      }
    }
    allocator->reset();
    return allocator.get();
  }

  Logger logger_;
  c10::Device device_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  // Declared before the context, which refers to them, so that they outlive it.
  std::unordered_map<std::string, std::unique_ptr<TorchOutputAllocator>> allocators_;
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
