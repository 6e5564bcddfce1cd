/*
 * specdet.SpectrumMagnitudeMean kernels and their C launch function (see spectrum_magnitude_mean.h).
 *
 * DFT: rows Y[n] = x[n] . conj(E_W), columns Z[n] = conj(C_H) . Y[n] (the
 * orthonormal half spectrum, as in band_split.cu), then one block per image
 * sums |Z|. cuFFT: one R2C plan over the B * C images, then the same sum
 * scaled by 1 / sqrt(H W). float32 arithmetic; float16 data converted on load.
 */
#include "spectrum_magnitude_mean.h"

#include "spectral_common.cuh"

namespace specdet {
namespace detail {
namespace {

struct SmmShape {
    int batch, channels, height, width, half_width;
    int64_t images() const { return static_cast<int64_t>(batch) * channels; }
    int64_t plane() const { return static_cast<int64_t>(height) * half_width; }
};

SmmShape shape_of(specdet_spectrum_magnitude_mean_params const& p) {
    return SmmShape{p.batch, p.channels, p.height, p.width, p.width / 2 + 1};
}

// The op as the launch steps every op shares (op_launch, ... in spectral_common.cuh) see it;
// the runs are defined below.
struct SpectrumMagnitudeMeanOp {
    using Params = specdet_spectrum_magnitude_mean_params;

    static int validate(Params const* p) { return specdet_spectrum_magnitude_mean_validate(p); }

    static int make_plans(Params const& p, specdet_fft_plans* plans) {
        SmmShape const s = shape_of(p);
        cufftHandle plan = 0;
        return fft_plan(plans, true, s.height, s.width, s.images(), nullptr, &plan);
    }

    static size_t workspace_bytes(Params const& p);
    template <class T>
    static int run_dft(Params const& p, T const* x, T* y, void* workspace, cudaStream_t stream);
    static int run_cufft(
        Params const& p, void const* x, void* y, void* workspace, specdet_fft_plans* plans, cudaStream_t stream);
};

struct SmmDftLayout {
    cfloat *e_w, *c_h, *y, *z;
};

SmmDftLayout dft_layout(SmmShape const& s, void* base, size_t* size) {
    Workspace ws(base);
    SmmDftLayout l{};
    l.e_w = ws.take<cfloat>(static_cast<int64_t>(s.width) * s.half_width);
    l.c_h = ws.take<cfloat>(static_cast<int64_t>(s.height) * s.height);
    l.y = ws.take<cfloat>(s.images() * s.plane());
    l.z = ws.take<cfloat>(s.images() * s.plane());
    *size = ws.size();
    return l;
}

struct SmmFftLayout {
    float* x32;
    cfloat* spectrum;
};

SmmFftLayout fft_layout(SmmShape const& s, int dtype, void* base, size_t* size) {
    Workspace ws(base);
    SmmFftLayout l{};
    l.x32 = dtype == SPECDET_FLOAT16 ? ws.take<float>(s.images() * s.height * s.width) : nullptr;
    l.spectrum = ws.take<cfloat>(s.images() * s.plane());
    *size = ws.size();
    return l;
}

size_t SpectrumMagnitudeMeanOp::workspace_bytes(specdet_spectrum_magnitude_mean_params const& p) {
    size_t size = 0;
    SmmShape const s = shape_of(p);
    if (resolve_method(p.method) == SPECDET_METHOD_DFT) {
        dft_layout(s, nullptr, &size);
    } else {
        fft_layout(s, p.dtype, nullptr, &size);
    }
    return size;
}

template <class T>
int SpectrumMagnitudeMeanOp::run_dft(
    specdet_spectrum_magnitude_mean_params const& p, T const* x, T* y, void* workspace, cudaStream_t stream) {
    SmmShape const s = shape_of(p);
    size_t size = 0;
    SmmDftLayout const l = dft_layout(s, workspace, &size);
    SPECDET_TRY(build_twiddles(l.e_w, s.width, s.half_width, s.width, 1.0 / std::sqrt(static_cast<double>(s.width)),
        false, stream));
    SPECDET_TRY(build_twiddles(l.c_h, s.height, s.height, s.height, 1.0 / std::sqrt(static_cast<double>(s.height)),
        false, stream));
    int const images = static_cast<int>(s.images());
    SPECDET_TRY(complex_matmul(s.height, s.half_width, s.width, images, RealOperand<T>{x, s.height, s.width},
        MatrixOperand{l.e_w, s.half_width, 1}, ComplexResult{l.y, s.height, s.half_width}, stream));
    SPECDET_TRY(complex_matmul(s.height, s.half_width, s.height, images, MatrixOperand{l.c_h, s.height, 1},
        ComplexOperand{l.y, s.height, s.half_width}, ComplexResult{l.z, s.height, s.half_width}, stream));
    return magnitude_mean(l.z, s.images(), s.plane(), 1.0f, y, stream);
}

int SpectrumMagnitudeMeanOp::run_cufft(specdet_spectrum_magnitude_mean_params const& p, void const* x, void* y,
    void* workspace, specdet_fft_plans* plans, cudaStream_t stream) {
    SmmShape const s = shape_of(p);
    size_t size = 0;
    SmmFftLayout const l = fft_layout(s, p.dtype, workspace, &size);
    cufftHandle forward = 0;
    SPECDET_TRY(fft_plan(plans, true, s.height, s.width, s.images(), stream, &forward));
    float const* x32 = static_cast<float const*>(x);
    if (p.dtype == SPECDET_FLOAT16) {
        SPECDET_TRY(convert_to_float(
            static_cast<__half const*>(x), l.x32, s.images() * s.height * s.width, stream));
        x32 = l.x32;
    }
    if (cufftExecR2C(forward, const_cast<cufftReal*>(x32), reinterpret_cast<cufftComplex*>(l.spectrum))
        != CUFFT_SUCCESS) {
        return SPECDET_ERROR_CUFFT;
    }
    float const scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.height) * s.width));
    if (p.dtype == SPECDET_FLOAT16) {
        return magnitude_mean(l.spectrum, s.images(), s.plane(), scale, static_cast<__half*>(y), stream);
    }
    return magnitude_mean(l.spectrum, s.images(), s.plane(), scale, static_cast<float*>(y), stream);
}

} // namespace
} // namespace detail
} // namespace specdet

using namespace specdet::detail;

extern "C" {

SPECDET_API size_t specdet_spectrum_magnitude_mean_params_size(void) {
    return sizeof(specdet_spectrum_magnitude_mean_params);
}

SPECDET_API int specdet_spectrum_magnitude_mean_validate(specdet_spectrum_magnitude_mean_params const* p) {
    if (p == nullptr || !valid_shape(p->batch, p->channels, p->height, p->width, 1)
        || !valid_dtype_method(p->dtype, p->method)) {
        return SPECDET_ERROR_INVALID_ARGUMENT;
    }
    return SPECDET_OK;
}

SPECDET_API int specdet_spectrum_magnitude_mean_resolved_method(specdet_spectrum_magnitude_mean_params const* p) {
    return op_resolved_method<SpectrumMagnitudeMeanOp>(p);
}

SPECDET_API size_t specdet_spectrum_magnitude_mean_workspace_size(specdet_spectrum_magnitude_mean_params const* p) {
    return op_workspace_size<SpectrumMagnitudeMeanOp>(p);
}

SPECDET_API int specdet_spectrum_magnitude_mean_prepare(
    specdet_spectrum_magnitude_mean_params const* p, specdet_fft_plans* plans) {
    return op_prepare<SpectrumMagnitudeMeanOp>(p, plans);
}

SPECDET_API int specdet_spectrum_magnitude_mean(specdet_spectrum_magnitude_mean_params const* p, void const* x,
    void* y, void* workspace, size_t workspace_size, specdet_fft_plans* plans, cudaStream_t stream) {
    return op_launch<SpectrumMagnitudeMeanOp>(p, x, y, workspace, workspace_size, plans, stream);
}

} // extern "C"
