// load_tensorrt_engine of a build without TensorRT's runtime library.
#include <stdexcept>

#include "model.h"

namespace codetr {

std::unique_ptr<Model> load_tensorrt_engine(const std::filesystem::path& path, const std::vector<std::filesystem::path>&,
                                            int) {
  throw std::runtime_error("cannot run the TensorRT engine " + path.string() +
                           ": this codetr_infer was built without TensorRT (configure with -DTensorRT_ROOT=...)");
}

}  // namespace codetr
