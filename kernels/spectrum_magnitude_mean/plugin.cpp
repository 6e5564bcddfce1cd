/*
 * TensorRT IPluginV3 of specdet.SpectrumMagnitudeMean ("SpectrumMagnitudeMean",
 * version "1", namespace "specdet"): no fields; [B, C, H, W] to [B, C]; the
 * work is specdet_spectrum_magnitude_mean (spectrum_magnitude_mean.h).
 * The plugin skeleton is SpectralPlugin (trt_plugin_base.h); this is the op.
 */
#include "spectrum_magnitude_mean.h"
#include "trt_plugin_base.h"

#include <optional>

namespace specdet {
namespace trt {
namespace {

using namespace nvinfer1;

struct SpectrumMagnitudeMeanOp {
    static constexpr char const* kName = "SpectrumMagnitudeMean";
    using Params = specdet_spectrum_magnitude_mean_params;
    static constexpr auto workspace_size = specdet_spectrum_magnitude_mean_workspace_size;
    static constexpr auto prepare = specdet_spectrum_magnitude_mean_prepare;
    static constexpr auto launch = specdet_spectrum_magnitude_mean;

    // No attributes: no fields to take or to serialise.
    static void field_names(Fields&) {}
    static std::optional<SpectrumMagnitudeMeanOp> from_fields(char const*, PluginFieldCollection const*) {
        return SpectrumMagnitudeMeanOp{};
    }
    void fields(Fields&) const {}
    Params params() const { return Params{}; }

    void output_shape(DimsExprs const& input, IExprBuilder&, DimsExprs& output) const {
        output.nbDims = 2;
        output.d[0] = input.d[0];
        output.d[1] = input.d[1];
    }
};

} // namespace

IPluginCreatorV3One* spectrum_magnitude_mean_creator() {
    static SpectralCreator<SpectrumMagnitudeMeanOp> creator;
    return &creator;
}

} // namespace trt
} // namespace specdet
