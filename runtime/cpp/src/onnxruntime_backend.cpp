// ONNX Runtime through its C API, loaded with dlopen at run time: the library is found by the rule in
// specdet.h ("onnxruntime_library"), and GetApi(ORT_API_VERSION) accepts any ONNX Runtime at least as
// new as the headers we were compiled with. Linking -lonnxruntime instead would pin the binary to the
// symbol version of one release.
#include <dlfcn.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include <onnxruntime_c_api.h>

#include "backend.hpp"
#include "error.hpp"

#ifndef SPECDET_DEFAULT_ONNXRUNTIME_LIBRARY
#define SPECDET_DEFAULT_ONNXRUNTIME_LIBRARY ""
#endif

namespace specdet {
namespace {

// One loaded ONNX Runtime: its API table and its environment. Kept for the life of the process:
// ONNX Runtime allows one environment per process and does not support being unloaded.
struct Runtime {
  const OrtApi* api = nullptr;
  OrtEnv* env = nullptr;
  std::string path;
  std::string version;
};

std::string library_path(const Options& options) {
  if (!options.onnxruntime_library.empty()) return options.onnxruntime_library;
  if (const char* env = std::getenv("SPECDET_ONNXRUNTIME_LIBRARY"); env && *env) return env;
  if (*SPECDET_DEFAULT_ONNXRUNTIME_LIBRARY && file_exists(SPECDET_DEFAULT_ONNXRUNTIME_LIBRARY))
    return SPECDET_DEFAULT_ONNXRUNTIME_LIBRARY;
  return "libonnxruntime.so.1";
}

// Turn an OrtStatus into an exception (and release it).
void check(const OrtApi* api, OrtStatus* status, int code, const std::string& what) {
  if (!status) return;
  std::string message = api->GetErrorMessage(status);
  api->ReleaseStatus(status);
  if (const auto newline = message.find('\n'); newline != std::string::npos) message.resize(newline);
  fail(code, what + " (" + message + ")");
}

const Runtime& load_runtime(const std::string& path) {
  static std::mutex mutex;
  static std::map<std::string, Runtime> loaded;  // never erased, see Runtime
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = loaded.find(path); it != loaded.end()) return it->second;
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle)
    fail(SPECDET_ERROR_BACKEND, "cannot load ONNX Runtime from " + path + " (" + dlerror() +
                                    "): set the option onnxruntime_library or $SPECDET_ONNXRUNTIME_LIBRARY "
                                    "to a libonnxruntime.so.1.*");
  using GetApiBase = const OrtApiBase* (*)();
  auto get_api_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
  if (!get_api_base) fail(SPECDET_ERROR_BACKEND, path + " is not ONNX Runtime (no OrtGetApiBase)");
  const OrtApiBase* base = get_api_base();
  Runtime runtime;
  runtime.path = path;
  runtime.version = base->GetVersionString();
  runtime.api = base->GetApi(ORT_API_VERSION);
  if (!runtime.api)
    fail(SPECDET_ERROR_BACKEND, "ONNX Runtime " + runtime.version + " at " + path + " is older than API " +
                                    std::to_string(ORT_API_VERSION) + " this library was built for: use a newer one");
  check(runtime.api, runtime.api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "specdet", &runtime.env), SPECDET_ERROR_BACKEND,
        "ONNX Runtime could not create its environment");
  return loaded.emplace(path, runtime).first->second;
}

class OnnxRuntimeBackend final : public Backend {
 public:
  OnnxRuntimeBackend(const std::string& artifact, const Options& options)
      : runtime_(load_runtime(library_path(options))), api_(runtime_.api) {
    try {
      open(artifact, options);
    } catch (...) {
      release();
      throw;
    }
  }

  ~OnnxRuntimeBackend() override { release(); }

  const char* name() const override { return "onnxruntime"; }
  const Manifest& manifest() const override { return manifest_; }

  void run(const float* input, int64_t count, float* logits, float* probabilities) const override {
    const int64_t crop = manifest_.preprocessing.crop;
    const int64_t shape[4] = {count, 3, crop, crop};
    const size_t elements = static_cast<size_t>(count * 3 * crop * crop);
    const bool half = manifest_.input_dtype == "float16";
    std::vector<uint16_t> halves;
    void* data = const_cast<float*>(input);  // ONNX Runtime reads inputs only
    size_t bytes = elements * sizeof(float);
    if (half) {
      halves.resize(elements);
      for (size_t i = 0; i < elements; ++i) halves[i] = float_to_half(input[i]);
      data = halves.data();
      bytes = elements * sizeof(uint16_t);
    }
    OrtValue* tensor = nullptr;
    check(api_, api_->CreateTensorWithDataAsOrtValue(memory_, data, bytes, shape, 4,
                                                     half ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
                                                          : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                     &tensor),
          SPECDET_ERROR_BACKEND, "ONNX Runtime input tensor");
    const char* input_names[1] = {manifest_.input_name.c_str()};
    const char* output_names[2] = {"logit", "probability"};
    OrtValue* outputs[2] = {nullptr, nullptr};
    OrtStatus* status = api_->Run(session_, nullptr, input_names, &tensor, 1, output_names, 2, outputs);
    api_->ReleaseValue(tensor);
    try {
      check(api_, status, SPECDET_ERROR_BACKEND, "ONNX Runtime failed to run the model");
      copy_output(outputs[0], count, logits);
      copy_output(outputs[1], count, probabilities);
    } catch (...) {
      for (OrtValue* v : outputs) if (v) api_->ReleaseValue(v);
      throw;
    }
    for (OrtValue* v : outputs) api_->ReleaseValue(v);
  }

 private:
  // The session's optimisation level depends on the precision, which the manifest tells, and the
  // embedded manifest can only be read from a session: the first session is made at the level a
  // named manifest gives (else the level safe for both precisions) and remade only when it was wrong.
  void open(const std::string& artifact, const Options& options) {
    std::unique_ptr<Manifest> named = manifest_from_options(options);
    const std::string guess = named ? named->precision : "fp16";
    create_session(artifact, options, guess);
    manifest_ = named ? std::move(*named) : find_manifest(artifact, [&] { return embedded_manifest(artifact); });
    if ((manifest_.precision == "fp16") != (guess == "fp16")) {
      release_session();
      create_session(artifact, options, manifest_.precision);
    }
    check_names(artifact);
    check(api_, api_->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory_), SPECDET_ERROR_BACKEND,
          "ONNX Runtime memory info");
  }

  void release() {
    if (memory_) api_->ReleaseMemoryInfo(memory_);
    memory_ = nullptr;
    release_session();
  }

  void create_session(const std::string& artifact, const Options& options, const std::string& precision) {
    OrtSessionOptions* session_options = nullptr;
    check(api_, api_->CreateSessionOptions(&session_options), SPECDET_ERROR_BACKEND, "ONNX Runtime session options");
    // As the Python runner: errors only in the log, and FP16 graphs stop below the layout optimizer
    // (which crashes on them in ONNX Runtime 1.32 on the CPU).
    OrtStatus* status = api_->SetSessionLogSeverityLevel(session_options, ORT_LOGGING_LEVEL_ERROR);
    if (!status) status = api_->SetSessionGraphOptimizationLevel(
        session_options, precision == "fp16" ? ORT_ENABLE_EXTENDED : ORT_ENABLE_ALL);
    if (!status && options.intra_op_threads > 0)
      status = api_->SetIntraOpNumThreads(session_options, static_cast<int>(options.intra_op_threads));
    if (!status) status = api_->CreateSession(runtime_.env, artifact.c_str(), session_options, &session_);
    api_->ReleaseSessionOptions(session_options);
    check(api_, status, SPECDET_ERROR_BACKEND, artifact + " is not an ONNX model ONNX Runtime " + runtime_.version +
                                                   " can load; re-export it");
  }

  void release_session() {
    if (session_) api_->ReleaseSession(session_);
    session_ = nullptr;
  }

  // The manifest embedded in metadata_props, or nullptr when the file has none.
  std::unique_ptr<Manifest> embedded_manifest(const std::string& artifact) {
    OrtAllocator* allocator = nullptr;
    check(api_, api_->GetAllocatorWithDefaultOptions(&allocator), SPECDET_ERROR_BACKEND, "ONNX Runtime allocator");
    OrtModelMetadata* metadata = nullptr;
    check(api_, api_->SessionGetModelMetadata(session_, &metadata), SPECDET_ERROR_BACKEND, "ONNX Runtime metadata");
    char* value = nullptr;
    OrtStatus* status = api_->ModelMetadataLookupCustomMetadataMap(metadata, allocator, kMetadataKey, &value);
    api_->ReleaseModelMetadata(metadata);
    check(api_, status, SPECDET_ERROR_BACKEND, "ONNX Runtime metadata lookup");
    if (!value) return nullptr;
    std::string text(value);
    allocator->Free(allocator, value);
    return std::make_unique<Manifest>(parse_manifest(text, "metadata_props[" + std::string(kMetadataKey) + "] of " + artifact));
  }

  std::string io_name(bool input, size_t index) {
    OrtAllocator* allocator = nullptr;
    check(api_, api_->GetAllocatorWithDefaultOptions(&allocator), SPECDET_ERROR_BACKEND, "ONNX Runtime allocator");
    char* name = nullptr;
    check(api_, input ? api_->SessionGetInputName(session_, index, allocator, &name)
                      : api_->SessionGetOutputName(session_, index, allocator, &name),
          SPECDET_ERROR_BACKEND, "ONNX Runtime tensor name");
    std::string out(name);
    allocator->Free(allocator, name);
    return out;
  }

  // The model's inputs and outputs must be those its manifest names (as the Python runner checks).
  void check_names(const std::string& artifact) {
    size_t inputs = 0, outputs = 0;
    check(api_, api_->SessionGetInputCount(session_, &inputs), SPECDET_ERROR_BACKEND, "ONNX Runtime input count");
    check(api_, api_->SessionGetOutputCount(session_, &outputs), SPECDET_ERROR_BACKEND, "ONNX Runtime output count");
    std::string input_names, output_names;
    bool logit = false, probability = false;
    for (size_t i = 0; i < inputs; ++i) input_names += (i ? ", " : "") + io_name(true, i);
    for (size_t i = 0; i < outputs; ++i) {
      const std::string name = io_name(false, i);
      logit |= name == "logit";
      probability |= name == "probability";
      output_names += (i ? ", " : "") + name;
    }
    if (inputs != 1 || input_names != manifest_.input_name || !logit || !probability)
      fail(SPECDET_ERROR_MANIFEST, artifact + " (inputs " + input_names + "; outputs " + output_names +
                                       ") does not match its manifest (input " + manifest_.input_name +
                                       "; outputs logit, probability): re-export it with detect-export");
  }

  void copy_output(OrtValue* value, int64_t count, float* out) const {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    check(api_, api_->GetTensorTypeAndShape(value, &info), SPECDET_ERROR_BACKEND, "ONNX Runtime output shape");
    size_t elements = 0;
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    OrtStatus* status = api_->GetTensorShapeElementCount(info, &elements);
    if (!status) status = api_->GetTensorElementType(info, &type);
    api_->ReleaseTensorTypeAndShapeInfo(info);
    check(api_, status, SPECDET_ERROR_BACKEND, "ONNX Runtime output shape");
    if (elements != static_cast<size_t>(count))
      fail(SPECDET_ERROR_BACKEND, "the model returned " + std::to_string(elements) + " scores for " +
                                      std::to_string(count) + " images: re-export it");
    void* data = nullptr;
    check(api_, api_->GetTensorMutableData(value, &data), SPECDET_ERROR_BACKEND, "ONNX Runtime output data");
    if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      for (int64_t i = 0; i < count; ++i) out[i] = static_cast<const float*>(data)[i];
    } else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
      for (int64_t i = 0; i < count; ++i) out[i] = half_to_float(static_cast<const uint16_t*>(data)[i]);
    } else {
      fail(SPECDET_ERROR_BACKEND, "the model's outputs are not float32 or float16: re-export it");
    }
  }

  const Runtime& runtime_;
  const OrtApi* api_;
  OrtSession* session_ = nullptr;
  OrtMemoryInfo* memory_ = nullptr;
  Manifest manifest_;
};

}  // namespace

std::unique_ptr<Backend> open_onnxruntime(const std::string& artifact, const Options& options) {
  return std::make_unique<OnnxRuntimeBackend>(artifact, options);
}

std::unique_ptr<Manifest> manifest_from_options(const Options& options) {
  if (options.manifest.empty()) return nullptr;
  if (!file_exists(options.manifest)) fail(SPECDET_ERROR_MANIFEST, "manifest " + options.manifest + " not found (option manifest)");
  return std::make_unique<Manifest>(parse_manifest(read_file(options.manifest), options.manifest));
}

}  // namespace specdet
