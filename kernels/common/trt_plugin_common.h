/*
 * What the TensorRT plugins of specdet share: the namespace, logging through
 * the logger TensorRT hands the library (setLoggerFinder), plugin fields, and
 * the checks of the plugin skeleton in trt_plugin_base.h (one float input,
 * outputs of its type, linear layout).
 *
 * Only TensorRT's interface headers are used, nothing from libnvinfer, so the
 * plugin library loads into TensorRT and TensorRT-RTX alike.
 */
#ifndef SPECDET_TRT_PLUGIN_COMMON_H
#define SPECDET_TRT_PLUGIN_COMMON_H

#include "NvInferRuntime.h"
#include "specdet_kernels.h"

#include <cstring>
#include <string>
#include <vector>

namespace specdet {
namespace trt {

constexpr char const* kNamespace = "specdet"; // plugin namespace = ONNX domain
constexpr char const* kVersion = "1";         // plugin version = ONNX domain version

// Logs through TensorRT's logger (nothing before setLoggerFinder was called).
void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

inline void log_error(std::string const& message) noexcept {
    log(nvinfer1::ILogger::Severity::kERROR, message);
}

inline bool is_float_type(nvinfer1::DataType type) {
    return type == nvinfer1::DataType::kFLOAT || type == nvinfer1::DataType::kHALF;
}

inline int32_t to_specdet_dtype(nvinfer1::DataType type) {
    return type == nvinfer1::DataType::kHALF ? SPECDET_FLOAT16 : SPECDET_FLOAT32;
}

// Position 0: the input, float32 or float16, linear; every output: the input's type, linear.
inline bool supports_float_io(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* in_out) {
    nvinfer1::PluginTensorDesc const& desc = in_out[pos].desc;
    if (desc.format != nvinfer1::PluginFormat::kLINEAR) {
        return false;
    }
    return pos == 0 ? is_float_type(desc.type) : desc.type == in_out[0].desc.type;
}

// A field collection that owns its entries.
class Fields {
public:
    void add(char const* name, void const* data, nvinfer1::PluginFieldType type, int32_t length) {
        fields_.emplace_back(name, data, type, length);
        collection_.nbFields = static_cast<int32_t>(fields_.size());
        collection_.fields = fields_.data();
    }
    void clear() {
        fields_.clear();
        collection_.nbFields = 0;
        collection_.fields = nullptr;
    }
    nvinfer1::PluginFieldCollection const* collection() const { return &collection_; }

private:
    std::vector<nvinfer1::PluginField> fields_;
    nvinfer1::PluginFieldCollection collection_{};
};

// The field called `name` in `fc`, or nullptr.
inline nvinfer1::PluginField const* find_field(nvinfer1::PluginFieldCollection const* fc, char const* name) {
    if (fc == nullptr) {
        return nullptr;
    }
    for (int32_t i = 0; i < fc->nbFields; ++i) {
        if (fc->fields[i].name != nullptr && std::strcmp(fc->fields[i].name, name) == 0) {
            return &fc->fields[i];
        }
    }
    return nullptr;
}

// A kCHAR field as a string (the ONNX parser passes the text and a final '\0' in `length`).
inline std::string field_string(nvinfer1::PluginField const& field) {
    char const* text = static_cast<char const*>(field.data);
    size_t length = field.length > 0 ? static_cast<size_t>(field.length) : 0;
    while (length > 0 && text[length - 1] == '\0') {
        --length;
    }
    return std::string(text, length);
}

} // namespace trt
} // namespace specdet

#endif // SPECDET_TRT_PLUGIN_COMMON_H
