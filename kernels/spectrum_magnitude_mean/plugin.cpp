/*
 * TensorRT IPluginV3 of specdet.SpectrumMagnitudeMean ("SpectrumMagnitudeMean",
 * version "1", namespace "specdet"): no fields; [B, C, H, W] to [B, C]; the
 * work is specdet_spectrum_magnitude_mean (spectrum_magnitude_mean.h).
 */
#include "spectrum_magnitude_mean.h"
#include "trt_plugin_common.h"

#include <cstdlib>
#include <string>

namespace specdet {
namespace trt {
namespace {

using namespace nvinfer1;

constexpr char const* kName = "SpectrumMagnitudeMean";

int32_t method_from_env() {
    char const* value = std::getenv("SPECDET_KERNELS_METHOD");
    std::string const method = value ? value : "auto";
    return method == "dft" ? SPECDET_METHOD_DFT : method == "cufft" ? SPECDET_METHOD_CUFFT : SPECDET_METHOD_AUTO;
}

class SpectrumMagnitudeMeanPlugin final : public IPluginV3,
                                          public IPluginV3OneCore,
                                          public IPluginV3OneBuild,
                                          public IPluginV3OneRuntime {
public:
    SpectrumMagnitudeMeanPlugin() : method_(method_from_env()) {}

    SpectrumMagnitudeMeanPlugin(SpectrumMagnitudeMeanPlugin const& other)
        : IPluginV3(other), IPluginV3OneCore(other), IPluginV3OneBuild(other), IPluginV3OneRuntime(other),
          method_(other.method_) {}

    ~SpectrumMagnitudeMeanPlugin() override {
        specdet_fft_plans_destroy(plans_);
    }

    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override {
        try {
            return new SpectrumMagnitudeMeanPlugin(*this);
        } catch (...) {
            log_error("SpectrumMagnitudeMean: out of memory in clone");
            return nullptr;
        }
    }

    AsciiChar const* getPluginName() const noexcept override { return kName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nb_inputs, DynamicPluginTensorDesc const*,
        int32_t nb_outputs) noexcept override {
        return nb_inputs == 1 && nb_outputs == 1 && in[0].desc.dims.nbDims == 4 ? 0 : -1;
    }

    int32_t getOutputDataTypes(
        DataType* output_types, int32_t nb_outputs, DataType const* input_types, int32_t nb_inputs) const noexcept override {
        if (nb_inputs != 1 || nb_outputs != 1 || !is_float_type(input_types[0])) {
            log_error("SpectrumMagnitudeMean takes one float32 or float16 tensor");
            return -1;
        }
        output_types[0] = input_types[0];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nb_inputs, DimsExprs const*, int32_t, DimsExprs* outputs,
        int32_t nb_outputs, IExprBuilder&) noexcept override {
        if (nb_inputs != 1 || nb_outputs != 1 || inputs[0].nbDims != 4) {
            log_error("SpectrumMagnitudeMean takes a [B, C, H, W] tensor");
            return -1;
        }
        outputs[0].nbDims = 2;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = inputs[0].d[1];
        return 0;
    }

    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* in_out, int32_t nb_inputs, int32_t nb_outputs) noexcept override {
        return nb_inputs == 1 && nb_outputs == 1 && supports_float_io(pos, in_out);
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nb_inputs, DynamicPluginTensorDesc const*,
        int32_t) const noexcept override {
        if (nb_inputs != 1) {
            return 0;
        }
        specdet_spectrum_magnitude_mean_params const p = params(inputs[0].max, inputs[0].desc.type);
        return specdet_spectrum_magnitude_mean_workspace_size(&p);
    }

    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nb_inputs, PluginTensorDesc const*, int32_t) noexcept override {
        if (nb_inputs != 1) {
            return -1;
        }
        specdet_spectrum_magnitude_mean_params const p = params(in[0].dims, in[0].type);
        return ensure_plans() && check(specdet_spectrum_magnitude_mean_prepare(&p, plans_), "prepare") ? 0 : -1;
    }

    int32_t enqueue(PluginTensorDesc const* input_desc, PluginTensorDesc const*, void const* const* inputs,
        void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
        specdet_spectrum_magnitude_mean_params const p = params(input_desc[0].dims, input_desc[0].type);
        if (!ensure_plans()) {
            return -1;
        }
        int const status = specdet_spectrum_magnitude_mean(&p, inputs[0], outputs[0], workspace,
            specdet_spectrum_magnitude_mean_workspace_size(&p), plans_, stream);
        return check(status, "enqueue") ? 0 : -1;
    }

    IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override { return fields_.collection(); }

private:
    specdet_spectrum_magnitude_mean_params params(Dims const& dims, DataType type) const {
        specdet_spectrum_magnitude_mean_params p{};
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
            log_error(std::string("SpectrumMagnitudeMean ") + where + ": " + specdet_status_string(status));
            return false;
        }
        return true;
    }

    int32_t method_;
    specdet_fft_plans* plans_ = nullptr;
    Fields fields_; // no fields
};

class SpectrumMagnitudeMeanCreator final : public IPluginCreatorV3One {
public:
    IPluginV3* createPlugin(AsciiChar const*, PluginFieldCollection const*, TensorRTPhase) noexcept override {
        try {
            return new SpectrumMagnitudeMeanPlugin();
        } catch (...) {
            log_error("SpectrumMagnitudeMean: could not create the plugin");
            return nullptr;
        }
    }

    PluginFieldCollection const* getFieldNames() noexcept override { return field_names_.collection(); }
    AsciiChar const* getPluginName() const noexcept override { return kName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

private:
    Fields field_names_;
};

} // namespace

IPluginCreatorV3One* spectrum_magnitude_mean_creator() {
    static SpectrumMagnitudeMeanCreator creator;
    return &creator;
}

} // namespace trt
} // namespace specdet
