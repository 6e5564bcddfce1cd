/*
 * TensorRT IPluginV3 of specdet.BandSplit ("BandSplit", version "1", namespace
 * "specdet"): the ONNX node's attributes `edges` (floats) and `centre`
 * (string) are its fields; the work is specdet_band_split (band_split.h).
 */
#include "band_split.h"
#include "trt_plugin_common.h"

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace specdet {
namespace trt {
namespace {

using namespace nvinfer1;

constexpr char const* kName = "BandSplit";

int32_t method_from_env() {
    char const* value = std::getenv("SPECDET_KERNELS_METHOD");
    std::string const method = value ? value : "auto";
    return method == "dft" ? SPECDET_METHOD_DFT : method == "cufft" ? SPECDET_METHOD_CUFFT : SPECDET_METHOD_AUTO;
}

class BandSplitPlugin final : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    BandSplitPlugin(std::vector<float> edges, std::string centre)
        : edges_(std::move(edges)), centre_(std::move(centre)), method_(method_from_env()) {
        init_fields();
    }

    BandSplitPlugin(BandSplitPlugin const& other)
        : IPluginV3(other), IPluginV3OneCore(other), IPluginV3OneBuild(other), IPluginV3OneRuntime(other),
          edges_(other.edges_), centre_(other.centre_), method_(other.method_) {
        init_fields(); // plans_ stay with `other`: each clone (execution context) makes its own
    }

    ~BandSplitPlugin() override {
        specdet_fft_plans_destroy(plans_);
    }

    // IPluginV3
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
            return new BandSplitPlugin(*this);
        } catch (...) {
            log_error("BandSplit: out of memory in clone");
            return nullptr;
        }
    }

    // IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override { return kName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nb_inputs, DynamicPluginTensorDesc const*,
        int32_t nb_outputs) noexcept override {
        return nb_inputs == 1 && nb_outputs == 1 && in[0].desc.dims.nbDims == 4 ? 0 : -1;
    }

    int32_t getOutputDataTypes(
        DataType* output_types, int32_t nb_outputs, DataType const* input_types, int32_t nb_inputs) const noexcept override {
        if (nb_inputs != 1 || nb_outputs != 1 || !is_float_type(input_types[0])) {
            log_error("BandSplit takes one float32 or float16 tensor");
            return -1;
        }
        output_types[0] = input_types[0];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nb_inputs, DimsExprs const*, int32_t, DimsExprs* outputs,
        int32_t nb_outputs, IExprBuilder& builder) noexcept override {
        if (nb_inputs != 1 || nb_outputs != 1 || inputs[0].nbDims != 4) {
            log_error("BandSplit takes a [B, C, H, W] tensor");
            return -1;
        }
        outputs[0].nbDims = 5;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = builder.constant(static_cast<int64_t>(edges_.size()) + 1);
        outputs[0].d[2] = inputs[0].d[1];
        outputs[0].d[3] = inputs[0].d[2];
        outputs[0].d[4] = inputs[0].d[3];
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
        specdet_band_split_params const p = params(inputs[0].max, inputs[0].desc.type);
        return specdet_band_split_workspace_size(&p);
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nb_inputs, PluginTensorDesc const*, int32_t) noexcept override {
        if (nb_inputs != 1) {
            return -1;
        }
        specdet_band_split_params const p = params(in[0].dims, in[0].type);
        return ensure_plans() && check(specdet_band_split_prepare(&p, plans_), "prepare") ? 0 : -1;
    }

    int32_t enqueue(PluginTensorDesc const* input_desc, PluginTensorDesc const*, void const* const* inputs,
        void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
        specdet_band_split_params const p = params(input_desc[0].dims, input_desc[0].type);
        if (!ensure_plans()) {
            return -1;
        }
        int const status = specdet_band_split(
            &p, inputs[0], outputs[0], workspace, specdet_band_split_workspace_size(&p), plans_, stream);
        return check(status, "enqueue") ? 0 : -1;
    }

    IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override { return fields_.collection(); }

private:
    void init_fields() {
        fields_.clear();
        fields_.add("edges", edges_.data(), PluginFieldType::kFLOAT32, static_cast<int32_t>(edges_.size()));
        fields_.add("centre", centre_.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(centre_.size() + 1));
    }

    specdet_band_split_params params(Dims const& dims, DataType type) const {
        specdet_band_split_params p{};
        p.batch = static_cast<int32_t>(dims.d[0]);
        p.channels = static_cast<int32_t>(dims.d[1]);
        p.height = static_cast<int32_t>(dims.d[2]);
        p.width = static_cast<int32_t>(dims.d[3]);
        p.num_edges = static_cast<int32_t>(edges_.size());
        for (size_t e = 0; e < edges_.size() && e < SPECDET_MAX_BANDS - 1; ++e) {
            p.edges[e] = edges_[e];
        }
        p.centre = centre_ == "seed" ? SPECDET_CENTRE_SEED : SPECDET_CENTRE_ZERO;
        p.dtype = to_specdet_dtype(type);
        p.method = method_;
        return p;
    }

    bool ensure_plans() {
        return plans_ != nullptr || check(specdet_fft_plans_create(&plans_), "plan cache");
    }

    static bool check(int status, char const* where) {
        if (status != SPECDET_OK) {
            log_error(std::string("BandSplit ") + where + ": " + specdet_status_string(status));
            return false;
        }
        return true;
    }

    std::vector<float> edges_;
    std::string centre_;
    int32_t method_;
    specdet_fft_plans* plans_ = nullptr;
    Fields fields_;
};

class BandSplitCreator final : public IPluginCreatorV3One {
public:
    BandSplitCreator() {
        field_names_.add("edges", nullptr, PluginFieldType::kFLOAT32, 0);
        field_names_.add("centre", nullptr, PluginFieldType::kCHAR, 0);
    }

    IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
        try {
            std::vector<float> edges;
            std::string centre = "zero";
            if (PluginField const* f = find_field(fc, "edges")) {
                if (f->type != PluginFieldType::kFLOAT32 || f->length < 0) {
                    log_error("BandSplit: field edges must be float32");
                    return nullptr;
                }
                float const* data = static_cast<float const*>(f->data);
                edges.assign(data, data + f->length);
            }
            if (PluginField const* f = find_field(fc, "centre")) {
                if (f->type != PluginFieldType::kCHAR) {
                    log_error("BandSplit: field centre must be a string");
                    return nullptr;
                }
                centre = field_string(*f);
            }
            // The contract's ranges, checked once here on a stand-in shape.
            specdet_band_split_params p{};
            p.batch = 1;
            p.channels = 1;
            p.height = 1;
            p.width = 1;
            p.num_edges = static_cast<int32_t>(edges.size());
            for (size_t e = 0; e < edges.size() && e < SPECDET_MAX_BANDS - 1; ++e) {
                p.edges[e] = edges[e];
            }
            p.centre = centre == "seed" ? SPECDET_CENTRE_SEED : SPECDET_CENTRE_ZERO;
            if ((centre != "zero" && centre != "seed") || edges.size() > SPECDET_MAX_BANDS - 1
                || specdet_band_split_validate(&p) != SPECDET_OK) {
                log_error(std::string("BandSplit ") + (name ? name : "")
                    + ": edges must be at most 15 finite increasing floats and centre \"zero\" or \"seed\"");
                return nullptr;
            }
            return new BandSplitPlugin(std::move(edges), std::move(centre));
        } catch (...) {
            log_error("BandSplit: could not create the plugin");
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

IPluginCreatorV3One* band_split_creator() {
    static BandSplitCreator creator;
    return &creator;
}

} // namespace trt
} // namespace specdet
