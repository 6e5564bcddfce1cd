/*
 * TensorRT IPluginV3 of specdet.BandSplit ("BandSplit", version "1", namespace
 * "specdet"): the ONNX node's attributes `edges` (floats) and `centre`
 * (string) are its fields; the work is specdet_band_split (band_split.h).
 * The plugin skeleton is SpectralPlugin (trt_plugin_base.h); this is the op.
 */
#include "band_split.h"
#include "trt_plugin_base.h"

#include <optional>
#include <string>
#include <vector>

namespace specdet {
namespace trt {
namespace {

using namespace nvinfer1;

struct BandSplitOp {
    static constexpr char const* kName = "BandSplit";
    using Params = specdet_band_split_params;
    static constexpr auto workspace_size = specdet_band_split_workspace_size;
    static constexpr auto prepare = specdet_band_split_prepare;
    static constexpr auto launch = specdet_band_split;

    std::vector<float> edges;
    std::string centre = "zero";

    static void field_names(Fields& fields) {
        fields.add("edges", nullptr, PluginFieldType::kFLOAT32, 0);
        fields.add("centre", nullptr, PluginFieldType::kCHAR, 0);
    }

    static std::optional<BandSplitOp> from_fields(char const* name, PluginFieldCollection const* fc) {
        BandSplitOp op;
        if (PluginField const* f = find_field(fc, "edges")) {
            if (f->type != PluginFieldType::kFLOAT32 || f->length < 0) {
                log_error("BandSplit: field edges must be float32");
                return std::nullopt;
            }
            float const* data = static_cast<float const*>(f->data);
            op.edges.assign(data, data + f->length);
        }
        if (PluginField const* f = find_field(fc, "centre")) {
            if (f->type != PluginFieldType::kCHAR) {
                log_error("BandSplit: field centre must be a string");
                return std::nullopt;
            }
            op.centre = field_string(*f);
        }
        // The contract's ranges, checked once here on a stand-in shape.
        Params p = op.params();
        p.batch = 1;
        p.channels = 1;
        p.height = 1;
        p.width = 1;
        if ((op.centre != "zero" && op.centre != "seed") || op.edges.size() > SPECDET_MAX_BANDS - 1
            || specdet_band_split_validate(&p) != SPECDET_OK) {
            log_error(std::string("BandSplit ") + (name ? name : "")
                + ": edges must be at most 15 finite increasing floats and centre \"zero\" or \"seed\"");
            return std::nullopt;
        }
        return op;
    }

    void fields(Fields& fields) const {
        fields.add("edges", edges.data(), PluginFieldType::kFLOAT32, static_cast<int32_t>(edges.size()));
        fields.add("centre", centre.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(centre.size() + 1));
    }

    Params params() const {
        Params p{};
        p.num_edges = static_cast<int32_t>(edges.size());
        for (size_t e = 0; e < edges.size() && e < SPECDET_MAX_BANDS - 1; ++e) {
            p.edges[e] = edges[e];
        }
        p.centre = centre == "seed" ? SPECDET_CENTRE_SEED : SPECDET_CENTRE_ZERO;
        return p;
    }

    // [B, C, H, W] to [B, K, C, H, W], K = number of edges + 1.
    void output_shape(DimsExprs const& input, IExprBuilder& builder, DimsExprs& output) const {
        output.nbDims = 5;
        output.d[0] = input.d[0];
        output.d[1] = builder.constant(static_cast<int64_t>(edges.size()) + 1);
        output.d[2] = input.d[1];
        output.d[3] = input.d[2];
        output.d[4] = input.d[3];
    }
};

} // namespace

IPluginCreatorV3One* band_split_creator() {
    static SpectralCreator<BandSplitOp> creator;
    return &creator;
}

} // namespace trt
} // namespace specdet
