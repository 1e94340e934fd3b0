// Entry points of libcodetr_msda_trt.so. TensorRT's plugin registry (loadLibrary, trtexec
// --dynamicPlugins, engines with an embedded plugin library) looks these two symbols up:
//   setLoggerFinder  gives the library a way to reach the logger of the calling builder/runtime;
//   getCreators      lists the creators the library provides.
// codetr_msda_plugin_info lets codetr's Python code check which plugin version and TensorRT
// headers a library was built with before an engine is deserialized against it.
#include <NvInferVersion.h>

#include <atomic>
#include <cstdio>
#include <string>

#include "msda_plugin.h"

#define CODETR_STRINGIFY_(x) #x
#define CODETR_STRINGIFY(x) CODETR_STRINGIFY_(x)

namespace codetr::tensorrt {
namespace {

std::atomic<nvinfer1::ILoggerFinder*> logger_finder{nullptr};

}  // namespace

void log_error(const std::string& message) noexcept {
  const std::string text = std::string(kPluginName) + " plugin: " + message;
  nvinfer1::ILoggerFinder* finder = logger_finder.load();
  // findLogger must be called on the thread of the TensorRT call being served, hence no caching.
  nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
  if (logger != nullptr) {
    logger->log(nvinfer1::ILogger::Severity::kERROR, text.c_str());
  } else {
    std::fprintf(stderr, "[E] %s\n", text.c_str());
  }
}

}  // namespace codetr::tensorrt

extern "C" {

__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  codetr::tensorrt::logger_finder.store(finder);
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& num_creators) {
  static codetr::tensorrt::MsdaPluginCreator msda_creator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&msda_creator};
  num_creators = 1;
  return creators;
}

// For example "CodetrMSDA 1 codetr; TensorRT headers 11.1.0".
__attribute__((visibility("default"))) const char* codetr_msda_plugin_info() {
  using namespace codetr::tensorrt;
  static const std::string info = std::string(kPluginName) + " " + kPluginVersion + " " +
                                  kPluginNamespace + "; TensorRT headers " +
                                  CODETR_STRINGIFY(NV_TENSORRT_MAJOR) "." CODETR_STRINGIFY(
                                      NV_TENSORRT_MINOR) "." CODETR_STRINGIFY(NV_TENSORRT_PATCH);
  return info.c_str();
}
}
