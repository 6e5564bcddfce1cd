/*
 * The IPluginV3 plugin and creator of a specdet op, written once.
 *
 * Every op's plugin is the same skeleton around its C launch functions: one
 * [B, C, H, W] float32 or float16 input, one output of the input's type, a
 * cuFFT plan cache per plugin object (each clone, that is each execution
 * context, makes its own), the method from SPECDET_KERNELS_METHOD, errors
 * through TensorRT's logger. SpectralPlugin<Op> and SpectralCreator<Op> are
 * that skeleton; an op's plugin.cpp supplies only what differs, as a struct Op
 * whose data members are the op's attributes (the ONNX node's, the plugin's
 * fields):
 *
 *   static constexpr char const* kName;        plugin name = ONNX op type
 *   using Params = ...;                        the op's launch parameter struct
 *   static constexpr auto workspace_size, prepare, launch;   its C launch functions
 *   static void field_names(Fields&);          the fields the creator takes (no data)
 *   static std::optional<Op> from_fields(char const* name, PluginFieldCollection const*);
 *                                              the attributes, checked (nullopt after logging why not)
 *   void fields(Fields&) const;                the attributes as fields, pointing into *this
 *   Params params() const;                     Params with the attributes set (shape, dtype
 *                                              and method are the plugin's to fill)
 *   void output_shape(DimsExprs const& input, IExprBuilder&, DimsExprs& output) const;
 */
#ifndef SPECDET_TRT_PLUGIN_BASE_H
#define SPECDET_TRT_PLUGIN_BASE_H

#include "trt_plugin_common.h"

#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

namespace specdet {
namespace trt {

// SPECDET_KERNELS_METHOD (auto, dft, cufft), read when a plugin is made: the same switch as the torch ops'.
inline int32_t method_from_env() {
    char const* value = std::getenv("SPECDET_KERNELS_METHOD");
    std::string const method = value ? value : "auto";
    return method == "dft" ? SPECDET_METHOD_DFT : method == "cufft" ? SPECDET_METHOD_CUFFT : SPECDET_METHOD_AUTO;
}

template <class Op>
class SpectralPlugin final : public nvinfer1::IPluginV3,
                             public nvinfer1::IPluginV3OneCore,
                             public nvinfer1::IPluginV3OneBuild,
                             public nvinfer1::IPluginV3OneRuntime {
public:
    using Params = typename Op::Params;

    explicit SpectralPlugin(Op op) : op_(std::move(op)), method_(method_from_env()) { op_.fields(fields_); }

    SpectralPlugin(SpectralPlugin const& other)
        : IPluginV3(other), IPluginV3OneCore(other), IPluginV3OneBuild(other), IPluginV3OneRuntime(other),
          op_(other.op_), method_(other.method_) {
        op_.fields(fields_); // pointing into this copy's op_; plans_ stay with `other`: each clone makes its own
    }

    SpectralPlugin& operator=(SpectralPlugin const&) = delete; // plans_ has one owner

    ~SpectralPlugin() override {
        specdet_fft_plans_destroy(plans_);
    }

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
        switch (type) {
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override {
        try {
            return new SpectralPlugin(*this);
        } catch (...) {
            log_error(std::string(Op::kName) + ": out of memory in clone");
            return nullptr;
        }
    }

    // IPluginV3OneCore
    nvinfer1::AsciiChar const* getPluginName() const noexcept override { return Op::kName; }
    nvinfer1::AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
    nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nb_inputs,
        nvinfer1::DynamicPluginTensorDesc const*, int32_t nb_outputs) noexcept override {
        return nb_inputs == 1 && nb_outputs == 1 && in[0].desc.dims.nbDims == 4 ? 0 : -1;
    }

    int32_t getOutputDataTypes(nvinfer1::DataType* output_types, int32_t nb_outputs,
        nvinfer1::DataType const* input_types, int32_t nb_inputs) const noexcept override {
        if (nb_inputs != 1 || nb_outputs != 1 || !is_float_type(input_types[0])) {
            log_error(std::string(Op::kName) + " takes one float32 or float16 tensor");
            return -1;
        }
        output_types[0] = input_types[0];
        return 0;
    }

    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nb_inputs, nvinfer1::DimsExprs const*,
        int32_t, nvinfer1::DimsExprs* outputs, int32_t nb_outputs, nvinfer1::IExprBuilder& builder) noexcept override {
        if (nb_inputs != 1 || nb_outputs != 1 || inputs[0].nbDims != 4) {
            log_error(std::string(Op::kName) + " takes a [B, C, H, W] tensor");
            return -1;
        }
        op_.output_shape(inputs[0], builder, outputs[0]);
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* in_out, int32_t nb_inputs,
        int32_t nb_outputs) noexcept override {
        return nb_inputs == 1 && nb_outputs == 1 && supports_float_io(pos, in_out);
    }

    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nb_inputs,
        nvinfer1::DynamicPluginTensorDesc const*, int32_t) const noexcept override {
        if (nb_inputs != 1) {
            return 0;
        }
        Params const p = params(inputs[0].max, inputs[0].desc.type);
        return Op::workspace_size(&p);
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(
        nvinfer1::PluginTensorDesc const* in, int32_t nb_inputs, nvinfer1::PluginTensorDesc const*, int32_t) noexcept override {
        if (nb_inputs != 1) {
            return -1;
        }
        Params const p = params(in[0].dims, in[0].type);
        return ensure_plans() && check(Op::prepare(&p, plans_), "prepare") ? 0 : -1;
    }

    int32_t enqueue(nvinfer1::PluginTensorDesc const* input_desc, nvinfer1::PluginTensorDesc const*,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
        Params const p = params(input_desc[0].dims, input_desc[0].type);
        if (!ensure_plans()) {
            return -1;
        }
        int const status = Op::launch(&p, inputs[0], outputs[0], workspace, Op::workspace_size(&p), plans_, stream);
        return check(status, "enqueue") ? 0 : -1;
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override { return fields_.collection(); }

private:
    // The op's attributes plus what TensorRT knows at this point: the [B, C, H, W] shape and the data type.
    Params params(nvinfer1::Dims const& dims, nvinfer1::DataType type) const {
        Params p = op_.params();
        p.batch = static_cast<int32_t>(dims.d[0]);
        p.channels = static_cast<int32_t>(dims.d[1]);
        p.height = static_cast<int32_t>(dims.d[2]);
        p.width = static_cast<int32_t>(dims.d[3]);
        p.dtype = to_specdet_dtype(type);
        p.method = method_;
        return p;
    }

    bool ensure_plans() {
        return plans_ != nullptr || check(specdet_fft_plans_create(&plans_), "plan cache");
    }

    static bool check(int status, char const* where) {
        if (status != SPECDET_OK) {
            log_error(std::string(Op::kName) + " " + where + ": " + specdet_status_string(status));
            return false;
        }
        return true;
    }

    Op op_;
    int32_t method_;
    specdet_fft_plans* plans_ = nullptr;
    Fields fields_;
};

template <class Op>
class SpectralCreator final : public nvinfer1::IPluginCreatorV3One {
public:
    SpectralCreator() { Op::field_names(field_names_); }

    nvinfer1::IPluginV3* createPlugin(nvinfer1::AsciiChar const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase) noexcept override {
        try {
            std::optional<Op> op = Op::from_fields(name, fc);
            return op ? new SpectralPlugin<Op>(std::move(*op)) : nullptr;
        } catch (...) {
            log_error(std::string(Op::kName) + ": could not create the plugin");
            return nullptr;
        }
    }

    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return field_names_.collection(); }
    nvinfer1::AsciiChar const* getPluginName() const noexcept override { return Op::kName; }
    nvinfer1::AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
    nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

private:
    Fields field_names_;
};

} // namespace trt
} // namespace specdet

#endif // SPECDET_TRT_PLUGIN_BASE_H
