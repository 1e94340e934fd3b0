// Drives libcodetr_msda_trt.so the way TensorRT would, without TensorRT: dlopen, setLoggerFinder,
// getCreators, createPlugin, the build/runtime capability calls and enqueue. It lets a machine
// with no TensorRT (the CPU checks: fields, formats, shapes; on a GPU: enqueue against the torch
// op) test the plugin library itself. Loaded with ctypes by codetr/tensorrt/plugin_harness.py;
// compiled against the same TensorRT headers as the library.
//
// Plugins are handed out as opaque pointers; every call returns 0 on success, and messages the
// plugin logs are collected for harness_messages().
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

using nvinfer1::DataType;
using nvinfer1::IPluginV3;

constexpr int32_t kNumInputs = 5;
constexpr int32_t kNumTensors = kNumInputs + 1;

class RecordingLogger final : public nvinfer1::ILogger {
 public:
  void log(Severity, const nvinfer1::AsciiChar* message) noexcept override {
    std::lock_guard<std::mutex> lock(mutex_);
    text_ += message;
    text_ += '\n';
  }
  std::string take() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string result;
    result.swap(text_);
    return result;
  }

 private:
  std::mutex mutex_;
  std::string text_;
};

class Finder final : public nvinfer1::ILoggerFinder {
 public:
  nvinfer1::ILogger* findLogger() noexcept override { return &logger; }
  RecordingLogger logger;
};

Finder finder;
std::string messages;  // returned by harness_messages, kept alive between calls
nvinfer1::IPluginCreatorV3One* creator = nullptr;

nvinfer1::IPluginV3OneCore* core(IPluginV3* plugin) {
  return static_cast<nvinfer1::IPluginV3OneCore*>(
      plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
}
nvinfer1::IPluginV3OneBuild* build(IPluginV3* plugin) {
  return static_cast<nvinfer1::IPluginV3OneBuild*>(
      plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
}
nvinfer1::IPluginV3OneRuntime* runtime(IPluginV3* plugin) {
  return static_cast<nvinfer1::IPluginV3OneRuntime*>(
      plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
}

// Tensor descriptions from flat arrays: ranks[kNumTensors], dims[kNumTensors * 8].
std::vector<nvinfer1::PluginTensorDesc> descriptions(const int32_t* types, const int32_t* ranks,
                                                     const int64_t* dims) {
  std::vector<nvinfer1::PluginTensorDesc> result(kNumTensors);
  for (int32_t i = 0; i < kNumTensors; ++i) {
    result[i].type = static_cast<DataType>(types[i]);
    result[i].format = nvinfer1::TensorFormat::kLINEAR;
    result[i].scale = -1.0F;
    result[i].dims.nbDims = ranks[i];
    for (int32_t axis = 0; axis < ranks[i]; ++axis) result[i].dims.d[axis] = dims[i * 8 + axis];
  }
  return result;
}

}  // namespace

extern "C" {

// Loads the library and finds the creator (name, version, namespace). 0 on success.
int harness_open(const char* library, const char* name, const char* version,
                 const char* plugin_namespace) {
  void* handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    messages = dlerror();
    return 1;
  }
  using SetLoggerFinder = void (*)(nvinfer1::ILoggerFinder*);
  using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*)(int32_t&);
  auto set_logger_finder = reinterpret_cast<SetLoggerFinder>(dlsym(handle, "setLoggerFinder"));
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
  if (set_logger_finder == nullptr || get_creators == nullptr) {
    messages = "library lacks setLoggerFinder or getCreators";
    return 2;
  }
  set_logger_finder(&finder);
  int32_t count = 0;
  nvinfer1::IPluginCreatorInterface* const* creators = get_creators(count);
  for (int32_t i = 0; i < count; ++i) {
    if (std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0) continue;
    auto* candidate = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
    if (std::strcmp(candidate->getPluginName(), name) == 0 &&
        std::strcmp(candidate->getPluginVersion(), version) == 0 &&
        std::strcmp(candidate->getPluginNamespace(), plugin_namespace) == 0) {
      creator = candidate;
      return 0;
    }
  }
  messages = "no matching IPluginCreatorV3One in the library";
  return 3;
}

// Messages logged by the plugin (or by the harness) since the last call.
const char* harness_messages() {
  messages += finder.logger.take();
  static std::string returned;
  returned.swap(messages);
  messages.clear();
  return returned.c_str();
}

// Creates a plugin from the fields (names[i], types[i] as PluginFieldType, one value each from
// values[i], converted to the field type). Returns nullptr on failure.
IPluginV3* harness_create(int32_t num_fields, const char* const* names, const int32_t* types,
                          const int64_t* values, int32_t runtime_phase) {
  std::vector<int32_t> int32_values(num_fields);
  std::vector<nvinfer1::PluginField> fields(num_fields);
  for (int32_t i = 0; i < num_fields; ++i) {
    const auto type = static_cast<nvinfer1::PluginFieldType>(types[i]);
    int32_values[i] = static_cast<int32_t>(values[i]);
    const void* data =
        type == nvinfer1::PluginFieldType::kINT64 ? static_cast<const void*>(&values[i])
                                                  : static_cast<const void*>(&int32_values[i]);
    fields[i] = nvinfer1::PluginField(names[i], data, type, 1);
  }
  nvinfer1::PluginFieldCollection collection{num_fields, fields.data()};
  return creator->createPlugin("harness", &collection,
                               runtime_phase != 0 ? nvinfer1::TensorRTPhase::kRUNTIME
                                                  : nvinfer1::TensorRTPhase::kBUILD);
}

// What TensorRT does when it serializes and deserializes an engine: fields from the runtime
// interface, then createPlugin in the runtime phase.
IPluginV3* harness_roundtrip(IPluginV3* plugin) {
  const nvinfer1::PluginFieldCollection* fields = runtime(plugin)->getFieldsToSerialize();
  return creator->createPlugin("harness_roundtrip", fields, nvinfer1::TensorRTPhase::kRUNTIME);
}

// The serialized fields as "name:type:value;..." (integer fields only).
const char* harness_serialized_fields(IPluginV3* plugin) {
  static std::string text;
  text.clear();
  const nvinfer1::PluginFieldCollection* fields = runtime(plugin)->getFieldsToSerialize();
  for (int32_t i = 0; i < fields->nbFields; ++i) {
    const nvinfer1::PluginField& field = fields->fields[i];
    int64_t value = 0;
    if (field.type == nvinfer1::PluginFieldType::kINT32) {
      value = *static_cast<const int32_t*>(field.data);
    } else if (field.type == nvinfer1::PluginFieldType::kINT64) {
      value = *static_cast<const int64_t*>(field.data);
    }
    text += std::string(field.name) + ":" + std::to_string(static_cast<int32_t>(field.type)) +
            ":" + std::to_string(value) + ";";
  }
  return text.c_str();
}

// "name version namespace" from the core capability.
const char* harness_identity(IPluginV3* plugin) {
  static std::string text;
  nvinfer1::IPluginV3OneCore* c = core(plugin);
  text = std::string(c->getPluginName()) + " " + c->getPluginVersion() + " " +
         c->getPluginNamespace();
  return text.c_str();
}

IPluginV3* harness_clone(IPluginV3* plugin) { return plugin->clone(); }

void harness_destroy(IPluginV3* plugin) { delete plugin; }

// 1 if the plugin accepts these six types (TensorRT DataType values, inputs then output) in
// linear format, asking position by position as the builder does; else 0.
int harness_supports(IPluginV3* plugin, const int32_t* types) {
  std::vector<nvinfer1::DynamicPluginTensorDesc> in_out(kNumTensors);
  for (int32_t i = 0; i < kNumTensors; ++i) {
    in_out[i].desc.type = static_cast<DataType>(types[i]);
    in_out[i].desc.format = nvinfer1::TensorFormat::kLINEAR;
  }
  for (int32_t pos = 0; pos < kNumTensors; ++pos) {
    if (!build(plugin)->supportsFormatCombination(pos, in_out.data(), kNumInputs, 1)) return 0;
  }
  return 1;
}

// getOutputDataTypes for five input types; the result goes to *output_type.
int harness_output_type(IPluginV3* plugin, const int32_t* input_types, int32_t* output_type) {
  DataType inputs[kNumInputs];
  for (int32_t i = 0; i < kNumInputs; ++i) inputs[i] = static_cast<DataType>(input_types[i]);
  DataType output = DataType::kFLOAT;
  const int status = build(plugin)->getOutputDataTypes(&output, 1, inputs, kNumInputs);
  *output_type = static_cast<int32_t>(output);
  return status;
}

// onShapeChange with concrete shapes (types, ranks, dims as in descriptions()).
int harness_on_shape_change(IPluginV3* plugin, const int32_t* types, const int32_t* ranks,
                            const int64_t* dims) {
  const auto desc = descriptions(types, ranks, dims);
  return runtime(plugin)->onShapeChange(desc.data(), kNumInputs, desc.data() + kNumInputs, 1);
}

// onShapeChange, then enqueue on device pointers (five inputs, then the output) and a stream.
int harness_enqueue(IPluginV3* plugin, const int32_t* types, const int32_t* ranks,
                    const int64_t* dims, void* const* pointers, void* stream) {
  const auto desc = descriptions(types, ranks, dims);
  nvinfer1::IPluginV3OneRuntime* r = runtime(plugin);
  if (const int status = r->onShapeChange(desc.data(), kNumInputs, desc.data() + kNumInputs, 1)) {
    return status;
  }
  const void* inputs[kNumInputs];
  for (int32_t i = 0; i < kNumInputs; ++i) inputs[i] = pointers[i];
  void* outputs[1] = {pointers[kNumInputs]};
  return r->enqueue(desc.data(), desc.data() + kNumInputs, inputs, outputs, nullptr,
                    static_cast<cudaStream_t>(stream));
}

}  // extern "C"
