// Built when TensorRT's headers were not found (SPECDET_WITH_TENSORRT=OFF): engines are refused with
// a message that says how to build the backend.
#include "backend.hpp"
#include "error.hpp"

namespace specdet {

std::unique_ptr<Backend> open_tensorrt(const std::string& artifact, const Options&, Manifest) {
  fail(SPECDET_ERROR_UNSUPPORTED, "cannot run " + artifact +
                                      ": this libspecdet_runtime was built without TensorRT; rebuild with "
                                      "-DSPECDET_WITH_TENSORRT=ON -DTensorRT_ROOT=DIR on a machine with TensorRT");
}

}  // namespace specdet
