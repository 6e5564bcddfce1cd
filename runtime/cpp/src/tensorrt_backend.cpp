// TensorRT / TensorRT-RTX engines (built with SPECDET_WITH_TENSORRT=ON; runs only on an NVIDIA GPU).
//
// The library is dlopened like ONNX Runtime (libnvinfer.so.<major>, or libtensorrt_rtx.so.1 for RTX
// engines, or the "tensorrt_library" option) and entered through createInferRuntime_INTERNAL, so the
// shared library has no link-time dependency on TensorRT. Life cycle, as the Python runner's:
//  - before deserialising: the manifest's engine.library_version must equal the loaded library's
//    (engines are tied to the version that built them), and our plugin library is loaded;
//  - one execution context, CUDA stream, device buffers and pinned host buffers per concurrent
//    caller (a pool: a thread takes a free set or makes one, and gives it back);
//  - one call: copy into pinned memory, H2D async, set the input shape, enqueueV3, D2H async,
//    synchronise; with cuda_graphs, enqueueV3 is captured once per batch size and replayed.
#include <dlfcn.h>

#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#include <nlohmann/json.hpp>

#include "backend.hpp"
#include "error.hpp"

namespace specdet {
namespace {

void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) fail(SPECDET_ERROR_BACKEND, std::string("CUDA: ") + what + " (" + cudaGetErrorString(status) + ")");
}

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity > Severity::kERROR) return;
    std::lock_guard<std::mutex> lock(mutex_);
    last_ = message;
  }
  std::string last() {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_;
  }

 private:
  std::mutex mutex_;
  std::string last_;
};

size_t element_size(nvinfer1::DataType type) {
  return type == nvinfer1::DataType::kHALF ? 2 : 4;
}

// One caller's execution state: never shared by two calls at once.
struct Slot {
  nvinfer1::IExecutionContext* context = nullptr;
  cudaStream_t stream = nullptr;
  void* device[3] = {nullptr, nullptr, nullptr};  // input, logit, probability
  void* host[3] = {nullptr, nullptr, nullptr};    // pinned
  std::map<int64_t, cudaGraphExec_t> graphs;

  ~Slot() {
    for (auto& entry : graphs) cudaGraphExecDestroy(entry.second);
    for (void* p : device) if (p) cudaFree(p);
    for (void* p : host) if (p) cudaFreeHost(p);
    if (stream) cudaStreamDestroy(stream);
    delete context;
  }
};

class TensorRTBackend final : public Backend {
 public:
  TensorRTBackend(const std::string& artifact, const Options& options, Manifest manifest)
      : options_(options), manifest_(std::move(manifest)) {
    const nlohmann::json data = nlohmann::json::parse(manifest_.text);
    const nlohmann::json engine = data.value("engine", nlohmann::json());
    if (!engine.is_object())
      fail(SPECDET_ERROR_MANIFEST, artifact + " is not described as an engine by its manifest: build it with detect-build");
    const std::string library_name = engine.value("library", std::string("tensorrt"));
    std::string path = options.tensorrt_library;
    if (path.empty())
      path = library_name == "tensorrt_rtx" ? "libtensorrt_rtx.so.1" : "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!handle) fail(SPECDET_ERROR_BACKEND, "cannot load " + library_name + " from " + path + " (" + dlerror() + ")");
    using Create = void* (*)(void*, int32_t);
    auto create = reinterpret_cast<Create>(dlsym(handle, "createInferRuntime_INTERNAL"));
    using Version = int32_t (*)();
    auto version = reinterpret_cast<Version>(dlsym(handle, "getInferLibVersion"));
    if (!create || !version) fail(SPECDET_ERROR_BACKEND, path + " is not a TensorRT runtime library");
    const int32_t loaded = version();
    const std::string built = engine.value("library_version", std::string());
    const std::string here = std::to_string(loaded / 10000) + "." + std::to_string(loaded / 100 % 100) + "." +
                             std::to_string(loaded % 100);
    if (!built.empty() && built.rfind(here, 0) != 0)
      fail(SPECDET_ERROR_BACKEND, artifact + " was built with " + library_name + " " + built + "; this is " + here +
                                      ": rebuild it with detect-build (engines are tied to their library version)");
    cuda_check(cudaSetDevice(static_cast<int>(options.device)), "cudaSetDevice");
    runtime_ = static_cast<nvinfer1::IRuntime*>(create(&logger_, NV_TENSORRT_VERSION));
    if (!runtime_) fail(SPECDET_ERROR_BACKEND, "TensorRT could not create a runtime (" + logger_.last() + ")");
    std::vector<std::string> plugins;
    if (!options.plugin_library.empty()) plugins.push_back(options.plugin_library);
    else if (engine.contains("plugins") && engine["plugins"].is_array())
      for (const auto& p : engine["plugins"]) if (p.is_object() && p.contains("path")) plugins.push_back(p["path"]);
    for (const auto& plugin : plugins) {
      if (!file_exists(plugin)) fail(SPECDET_ERROR_BACKEND, "plugin library " + plugin + " not found");
      if (!dlopen(plugin.c_str(), RTLD_NOW | RTLD_GLOBAL) && !runtime_->getPluginRegistry().loadLibrary(plugin.c_str()))
        fail(SPECDET_ERROR_BACKEND, "cannot load plugin library " + plugin);
    }
    const std::string blob = read_file(artifact);
    engine_ = runtime_->deserializeCudaEngine(blob.data(), blob.size());
    if (!engine_)
      fail(SPECDET_ERROR_BACKEND, artifact + " is not an engine this " + library_name + " " + here +
                                      " can run on this GPU (" + logger_.last() + "): rebuild it with detect-build");
    names_[0] = manifest_.input_name;
    names_[1] = "logit";
    names_[2] = "probability";
    for (int i = 0; i < 3; ++i) {
      bool found = false;
      for (int32_t k = 0; k < engine_->getNbIOTensors(); ++k) found |= names_[i] == engine_->getIOTensorName(k);
      if (!found) fail(SPECDET_ERROR_MANIFEST, artifact + " has no tensor " + names_[i] + " that its manifest names");
      types_[i] = engine_->getTensorDataType(names_[i].c_str());
    }
  }

  ~TensorRTBackend() override {
    free_.clear();
    delete engine_;
    delete runtime_;
  }

  const char* name() const override { return "tensorrt"; }
  const Manifest& manifest() const override { return manifest_; }

  void run(const float* input, int64_t count, float* logits, float* probabilities) const override {
    std::unique_ptr<Slot> slot = acquire();
    try {
      execute(*slot, input, count, logits, probabilities);
    } catch (...) {
      release(std::move(slot));
      throw;
    }
    release(std::move(slot));
  }

 private:
  std::unique_ptr<Slot> acquire() const {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        auto slot = std::move(free_.back());
        free_.pop_back();
        return slot;
      }
    }
    auto slot = std::make_unique<Slot>();
    cuda_check(cudaSetDevice(static_cast<int>(options_.device)), "cudaSetDevice");
    slot->context = engine_->createExecutionContext();
    if (!slot->context) fail(SPECDET_ERROR_BACKEND, "TensorRT could not create an execution context (" + logger_.last() + ")");
    cuda_check(cudaStreamCreateWithFlags(&slot->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    const size_t rows = static_cast<size_t>(manifest_.max_batch);
    const size_t crop = static_cast<size_t>(manifest_.preprocessing.crop);
    const size_t counts[3] = {rows * 3 * crop * crop, rows, rows};
    for (int i = 0; i < 3; ++i) {
      const size_t bytes = counts[i] * element_size(types_[i]);
      cuda_check(cudaMalloc(&slot->device[i], bytes), "cudaMalloc");
      cuda_check(cudaMallocHost(&slot->host[i], bytes), "cudaMallocHost");
      if (!slot->context->setTensorAddress(names_[i].c_str(), slot->device[i]))
        fail(SPECDET_ERROR_BACKEND, "TensorRT refused the address of " + names_[i]);
    }
    return slot;
  }

  void release(std::unique_ptr<Slot> slot) const {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(std::move(slot));
  }

  void execute(Slot& slot, const float* input, int64_t count, float* logits, float* probabilities) const {
    const int64_t crop = manifest_.preprocessing.crop;
    const size_t elements = static_cast<size_t>(count * 3 * crop * crop);
    if (types_[0] == nvinfer1::DataType::kHALF) {
      auto* half = static_cast<uint16_t*>(slot.host[0]);
      for (size_t i = 0; i < elements; ++i) half[i] = float_to_half(input[i]);
    } else {
      std::memcpy(slot.host[0], input, elements * sizeof(float));
    }
    cuda_check(cudaMemcpyAsync(slot.device[0], slot.host[0], elements * element_size(types_[0]), cudaMemcpyHostToDevice,
                               slot.stream), "copy to the GPU");
    nvinfer1::Dims shape{};
    shape.nbDims = 4;
    shape.d[0] = count;
    shape.d[1] = 3;
    shape.d[2] = shape.d[3] = crop;
    if (!slot.context->setInputShape(names_[0].c_str(), shape))
      fail(SPECDET_ERROR_BACKEND, "TensorRT refused a batch of " + std::to_string(count) + " (" + logger_.last() + ")");
    if (options_.cuda_graphs) replay(slot, count);
    else if (!slot.context->enqueueV3(slot.stream)) fail(SPECDET_ERROR_BACKEND, "TensorRT enqueueV3 failed (" + logger_.last() + ")");
    for (int i = 1; i < 3; ++i)
      cuda_check(cudaMemcpyAsync(slot.host[i], slot.device[i], static_cast<size_t>(count) * element_size(types_[i]),
                                 cudaMemcpyDeviceToHost, slot.stream), "copy from the GPU");
    cuda_check(cudaStreamSynchronize(slot.stream), "synchronise");
    float* outs[3] = {nullptr, logits, probabilities};
    for (int i = 1; i < 3; ++i)
      for (int64_t k = 0; k < count; ++k)
        outs[i][k] = types_[i] == nvinfer1::DataType::kHALF ? half_to_float(static_cast<uint16_t*>(slot.host[i])[k])
                                                            : static_cast<float*>(slot.host[i])[k];
  }

  // enqueueV3 captured once per batch size (after one plain run, which lets TensorRT allocate and
  // tune outside the capture), then replayed.
  void replay(Slot& slot, int64_t count) const {
    auto it = slot.graphs.find(count);
    if (it == slot.graphs.end()) {
      if (!slot.context->enqueueV3(slot.stream)) fail(SPECDET_ERROR_BACKEND, "TensorRT enqueueV3 failed (" + logger_.last() + ")");
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      cuda_check(cudaStreamBeginCapture(slot.stream, cudaStreamCaptureModeThreadLocal), "begin graph capture");
      const bool queued = slot.context->enqueueV3(slot.stream);
      cuda_check(cudaStreamEndCapture(slot.stream, &graph), "end graph capture");
      if (!queued) {
        cudaGraphDestroy(graph);
        fail(SPECDET_ERROR_BACKEND, "TensorRT enqueueV3 failed under graph capture");
      }
      const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      cuda_check(status, "instantiate the graph");
      it = slot.graphs.emplace(count, exec).first;
      return;  // this call's results came from the plain run above
    }
    cuda_check(cudaGraphLaunch(it->second, slot.stream), "launch the graph");
  }

  Options options_;
  Manifest manifest_;
  mutable Logger logger_;
  nvinfer1::IRuntime* runtime_ = nullptr;
  nvinfer1::ICudaEngine* engine_ = nullptr;
  std::string names_[3];
  nvinfer1::DataType types_[3]{};
  mutable std::mutex mutex_;
  mutable std::vector<std::unique_ptr<Slot>> free_;
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt(const std::string& artifact, const Options& options, Manifest manifest) {
  return std::make_unique<TensorRTBackend>(artifact, options, std::move(manifest));
}

}  // namespace specdet
