/*
 * specdet.BandSplit kernels and their C launch function (see band_split.h).
 *
 * Two methods, float32 arithmetic in both, float32 or float16 in memory:
 *
 * DFT (any build, any H and W): the separable 2-D DFT as four batched
 * complex matrix products, with N = B * C images and K bands:
 *   1. rows, real to half spectrum: Y[n] = x[n] . conj(E_W)      (H x W) . (W x W/2+1)
 *   2. columns, forward:            Z[n] = conj(C_H) . Y[n]      (H x H) . (H x W/2+1)
 *   3. columns, inverse, per band:  U[n,k] = C_H . (Z[n] * mask_k)
 *   4. rows, half spectrum to real: y[n,k] = Re(U[n,k] . E_C2R)  (H x W/2+1) . (W/2+1 x W)
 * with E_W[w][f] = e^{2 pi i w f / W} / sqrt(W), C_H[g][h] = e^{2 pi i g h / H} / sqrt(H)
 * and E_C2R[f][s] = weight_f e^{2 pi i f s / W} / sqrt(W) (weight 2 for the
 * bins that stand for two): the matrices of export/dft_matrices.py. Stage 4
 * reads only the real part of bins 0 and W/2, as torch.fft.irfft2 does.
 *
 * cuFFT: one R2C plan over the N images, a kernel that writes the masked
 * half spectra (scaled by 1/(H W), the two orthonormal factors, and made
 * Hermitian in columns 0 and W/2 so that C2R sees the values irfft2 would
 * use; each bin's band computed in place, as the band table would hold it),
 * one C2R plan over the bands. float32: all N * K bands, the C2R writing
 * [B, K, C, H, W] directly. float16: the input converted to float32 in the
 * workspace, only the first K - 1 bands transformed (the masks partition the
 * spectrum and the transforms are linear, so the last band is the input
 * minus the others), and one kernel writes all K bands as float16: the last
 * one's subtraction fused with the store.
 */
#include "band_split.h"

#include "spectral_common.cuh"

namespace specdet {
namespace detail {
namespace {

struct Shape {
    int batch, channels, height, width, half_width, bands;
    int64_t images() const { return static_cast<int64_t>(batch) * channels; }
    int64_t band_images() const { return images() * bands; }
};

// Bands the cuFFT method transforms back: all of them in float32 (the C2R writes the output), all but the last in
// float16 (the last is the input minus the others, written with the float16 store).
int inverse_bands(Shape const& s, int dtype) {
    return dtype == SPECDET_FLOAT16 ? s.bands - 1 : s.bands;
}

Shape shape_of(specdet_band_split_params const& p) {
    return Shape{p.batch, p.channels, p.height, p.width, p.width / 2 + 1, p.num_edges + 1};
}

// The op as the launch steps every op shares (op_launch, ... in spectral_common.cuh) see it;
// the runs are defined below.
struct BandSplitOp {
    using Params = specdet_band_split_params;

    static int validate(Params const* p) { return specdet_band_split_validate(p); }

    static int make_plans(Params const& p, specdet_fft_plans* plans) {
        Shape const s = shape_of(p);
        int64_t const inverse = s.images() * inverse_bands(s, p.dtype);
        if (inverse == 0) {
            return SPECDET_OK; // float16 with one band: the band is the input, no transform
        }
        cufftHandle plan = 0;
        SPECDET_TRY(fft_plan(plans, true, s.height, s.width, s.images(), nullptr, &plan));
        return fft_plan(plans, false, s.height, s.width, inverse, nullptr, &plan);
    }

    static size_t workspace_bytes(Params const& p);
    template <class T>
    static int run_dft(Params const& p, T const* x, T* y, void* workspace, cudaStream_t stream);
    static int run_cufft(
        Params const& p, void const* x, void* y, void* workspace, specdet_fft_plans* plans, cudaStream_t stream);
};

Bands bands_of(specdet_band_split_params const& p) {
    Bands bands{};
    bands.num_edges = p.num_edges;
    for (int e = 0; e < p.num_edges; ++e) {
        bands.edges[e] = p.edges[e];
    }
    bands.centre = p.centre;
    return bands;
}

// Z of image n = b * C + c, masked to band k, for output image (b * K + k) * C + c.
struct BandOperand {
    cfloat const* z;
    int32_t const* table;
    int channels, bands, height, half_width;
    __host__ __device__ __forceinline__ cfloat operator()(int band_image, int row, int col) const {
        int const c = band_image % channels;
        int const k = (band_image / channels) % bands;
        int const b = band_image / (channels * bands);
        int64_t const bin = static_cast<int64_t>(row) * half_width + col;
        if (table[bin] != k) {
            return cfloat{0.f, 0.f};
        }
        return z[(static_cast<int64_t>(b) * channels + c) * height * half_width + bin];
    }
};

// The first `bands` bands of each image's spectrum, [B, bands, C, H, W/2+1]; each bin's band is computed here
// (band_of, the table's own function): no table to build and read on every launch.
__global__ void masked_spectra_kernel(cfloat const* spectrum, Bands edges, cfloat* out, int channels, int bands,
    int height, int width, int64_t band_images, float scale) {
    int const half_width = width / 2 + 1;
    int64_t const plane = static_cast<int64_t>(height) * half_width;
    int64_t const total = band_images * plane;
    for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        int64_t const bin = idx % plane;
        int64_t const band_image = idx / plane;
        int const f = static_cast<int>(bin % half_width);
        int const h = static_cast<int>(bin / half_width);
        int const c = static_cast<int>(band_image % channels);
        int const k = static_cast<int>((band_image / channels) % bands);
        int64_t const b = band_image / (static_cast<int64_t>(channels) * bands);
        cfloat const* s = spectrum + (b * channels + c) * plane;
        cfloat v = band_of(h, f, height, width, edges) == k ? s[bin] : cfloat{0.f, 0.f};
        if (f == 0 || (width % 2 == 0 && f == width / 2)) {
            // These columns hold their own conjugate partners: keep the Hermitian part,
            // (v[h] + conj(v[-h])) / 2, whose inverse is the real part irfft2 keeps.
            int const mirror = (height - h) % height;
            int64_t const mirror_bin = static_cast<int64_t>(mirror) * half_width + f;
            cfloat const w = band_of(mirror, f, height, width, edges) == k ? s[mirror_bin] : cfloat{0.f, 0.f};
            v = cfloat{0.5f * (v.re + w.re), 0.5f * (v.im - w.im)};
        }
        out[idx] = cfloat{v.re * scale, v.im * scale};
    }
}

// float16 output of the cuFFT method, one thread per pixel of each image n = b * C + c: the K - 1 transformed
// bands y32 [B, K-1, C, H, W] stored as float16, and the last band, x32 minus their sum, after them.
__global__ void store_bands_kernel(
    float const* x32, float const* y32, __half* y, int channels, int bands, int64_t pixels, int64_t count) {
    for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < count;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        int64_t const p = idx % pixels;
        int64_t const n = idx / pixels;
        int64_t const c = n % channels;
        int64_t const b = n / channels;
        float rest = x32[idx];
        for (int k = 0; k + 1 < bands; ++k) {
            float const v = y32[((b * (bands - 1) + k) * channels + c) * pixels + p];
            rest -= v;
            y[((b * bands + k) * channels + c) * pixels + p] = __float2half_rn(v);
        }
        y[((b * bands + bands - 1) * channels + c) * pixels + p] = __float2half_rn(rest);
    }
}

struct DftLayout {
    cfloat *e_w, *e_c2r, *c_h;
    int32_t* table;
    cfloat *y, *z, *u;
};

DftLayout dft_layout(Shape const& s, void* base, size_t* size) {
    Workspace ws(base);
    DftLayout l{};
    l.e_w = ws.take<cfloat>(static_cast<int64_t>(s.width) * s.half_width);
    l.e_c2r = ws.take<cfloat>(static_cast<int64_t>(s.half_width) * s.width);
    l.c_h = ws.take<cfloat>(static_cast<int64_t>(s.height) * s.height);
    l.table = ws.take<int32_t>(static_cast<int64_t>(s.height) * s.half_width);
    int64_t const plane = static_cast<int64_t>(s.height) * s.half_width;
    l.y = ws.take<cfloat>(s.images() * plane);
    l.z = ws.take<cfloat>(s.images() * plane);
    l.u = ws.take<cfloat>(s.band_images() * plane);
    *size = ws.size();
    return l;
}

struct FftLayout {
    float* x32;
    cfloat *spectrum, *banded;
    float* y32;
};

// float32: the spectra and the K banded spectra; float16: the input as float32, the spectra, K - 1 banded
// spectra and their K - 1 float32 transforms.
FftLayout fft_layout(Shape const& s, int dtype, void* base, size_t* size) {
    Workspace ws(base);
    FftLayout l{};
    int64_t const plane = static_cast<int64_t>(s.height) * s.half_width;
    int64_t const pixels = static_cast<int64_t>(s.height) * s.width;
    int64_t const inverse = s.images() * inverse_bands(s, dtype);
    l.x32 = dtype == SPECDET_FLOAT16 ? ws.take<float>(s.images() * pixels) : nullptr;
    l.spectrum = ws.take<cfloat>(s.images() * plane);
    l.banded = ws.take<cfloat>(inverse * plane);
    l.y32 = dtype == SPECDET_FLOAT16 ? ws.take<float>(inverse * pixels) : nullptr;
    *size = ws.size();
    return l;
}

size_t BandSplitOp::workspace_bytes(specdet_band_split_params const& p) {
    size_t size = 0;
    Shape const s = shape_of(p);
    if (resolve_method(p.method) == SPECDET_METHOD_DFT) {
        dft_layout(s, nullptr, &size);
    } else {
        fft_layout(s, p.dtype, nullptr, &size);
    }
    return size;
}

template <class T>
int BandSplitOp::run_dft(specdet_band_split_params const& p, T const* x, T* y, void* workspace, cudaStream_t stream) {
    Shape const s = shape_of(p);
    size_t size = 0;
    DftLayout const l = dft_layout(s, workspace, &size);
    double const scale_w = 1.0 / std::sqrt(static_cast<double>(s.width));
    double const scale_h = 1.0 / std::sqrt(static_cast<double>(s.height));
    SPECDET_TRY(build_twiddles(l.e_w, s.width, s.half_width, s.width, scale_w, false, stream));
    SPECDET_TRY(build_twiddles(l.e_c2r, s.half_width, s.width, s.width, scale_w, true, stream));
    SPECDET_TRY(build_twiddles(l.c_h, s.height, s.height, s.height, scale_h, false, stream));
    SPECDET_TRY(build_band_table(l.table, s.height, s.width, bands_of(p), stream));
    int const images = static_cast<int>(s.images());
    int const band_images = static_cast<int>(s.band_images());
    // 1. rows: Y[n](h, f) = sum_w x[n](h, w) conj(E_W)[w][f]
    SPECDET_TRY(complex_matmul(s.height, s.half_width, s.width, images, RealOperand<T>{x, s.height, s.width},
        MatrixOperand{l.e_w, s.half_width, 1}, ComplexResult{l.y, s.height, s.half_width}, stream));
    // 2. columns: Z[n](g, f) = sum_h conj(C_H)[g][h] Y[n](h, f)
    SPECDET_TRY(complex_matmul(s.height, s.half_width, s.height, images, MatrixOperand{l.c_h, s.height, 1},
        ComplexOperand{l.y, s.height, s.half_width}, ComplexResult{l.z, s.height, s.half_width}, stream));
    // 3. inverse columns per band: U[n,k](t, f) = sum_g C_H[t][g] (Z[n](g, f) mask_k(g, f))
    SPECDET_TRY(complex_matmul(s.height, s.half_width, s.height, band_images, MatrixOperand{l.c_h, s.height, 0},
        BandOperand{l.z, l.table, s.channels, s.bands, s.height, s.half_width},
        ComplexResult{l.u, s.height, s.half_width}, stream));
    // 4. inverse rows to real: y[n,k](t, s) = Re(sum_f U[n,k](t, f) E_C2R[f][s])
    SPECDET_TRY(complex_matmul(s.height, s.width, s.half_width, band_images,
        ComplexOperand{l.u, s.height, s.half_width}, MatrixOperand{l.e_c2r, s.width, 0},
        RealResult<T>{y, s.height, s.width}, stream));
    return SPECDET_OK;
}

int BandSplitOp::run_cufft(specdet_band_split_params const& p, void const* x, void* y, void* workspace,
    specdet_fft_plans* plans, cudaStream_t stream) {
    Shape const s = shape_of(p);
    size_t size = 0;
    FftLayout const l = fft_layout(s, p.dtype, workspace, &size);
    int64_t const pixels = static_cast<int64_t>(s.height) * s.width;
    int64_t const plane = static_cast<int64_t>(s.height) * s.half_width;
    bool const half = p.dtype == SPECDET_FLOAT16;
    int const transformed = inverse_bands(s, p.dtype);
    float const* x32 = static_cast<float const*>(x);
    if (half) {
        SPECDET_TRY(convert_to_float(static_cast<__half const*>(x), l.x32, s.images() * pixels, stream));
        x32 = l.x32;
    }
    if (transformed > 0) {
        cufftHandle forward = 0;
        cufftHandle inverse = 0;
        SPECDET_TRY(fft_plan(plans, true, s.height, s.width, s.images(), stream, &forward));
        SPECDET_TRY(fft_plan(plans, false, s.height, s.width, s.images() * transformed, stream, &inverse));
        // Out-of-place R2C leaves its input untouched.
        if (cufftExecR2C(forward, const_cast<cufftReal*>(x32), reinterpret_cast<cufftComplex*>(l.spectrum))
            != CUFFT_SUCCESS) {
            return SPECDET_ERROR_CUFFT;
        }
        float const scale = static_cast<float>(1.0 / static_cast<double>(pixels));
        int64_t const total = s.images() * transformed * plane;
        launch(masked_spectra_kernel, dim3(blocks_for(total, 1 << 20)), dim3(kThreads), stream, l.spectrum,
            bands_of(p), l.banded, s.channels, transformed, s.height, s.width, s.images() * transformed, scale);
        SPECDET_TRY(check_launch());
        // C2R may overwrite its input: the banded spectra are scratch.
        float* y32 = half ? l.y32 : static_cast<float*>(y);
        if (cufftExecC2R(inverse, reinterpret_cast<cufftComplex*>(l.banded), y32) != CUFFT_SUCCESS) {
            return SPECDET_ERROR_CUFFT;
        }
    }
    if (half) {
        int64_t const count = s.images() * pixels;
        launch(store_bands_kernel, dim3(blocks_for(count, 1 << 20)), dim3(kThreads), stream, x32, l.y32,
            static_cast<__half*>(y), s.channels, s.bands, pixels, count);
        SPECDET_TRY(check_launch());
    }
    return SPECDET_OK;
}

} // namespace
} // namespace detail
} // namespace specdet

using namespace specdet::detail;

extern "C" {

SPECDET_API size_t specdet_band_split_params_size(void) {
    return sizeof(specdet_band_split_params);
}

SPECDET_API int specdet_band_split_validate(specdet_band_split_params const* p) {
    if (p == nullptr || p->num_edges < 0 || p->num_edges > SPECDET_MAX_BANDS - 1
        || !valid_shape(p->batch, p->channels, p->height, p->width, p->num_edges + 1)
        || !valid_dtype_method(p->dtype, p->method)
        || (p->centre != SPECDET_CENTRE_ZERO && p->centre != SPECDET_CENTRE_SEED)) {
        return SPECDET_ERROR_INVALID_ARGUMENT;
    }
    for (int e = 0; e < p->num_edges; ++e) {
        if (!std::isfinite(p->edges[e]) || (e > 0 && !(p->edges[e] > p->edges[e - 1]))) {
            return SPECDET_ERROR_INVALID_ARGUMENT;
        }
    }
    return SPECDET_OK;
}

SPECDET_API int specdet_band_split_resolved_method(specdet_band_split_params const* p) {
    return op_resolved_method<BandSplitOp>(p);
}

SPECDET_API size_t specdet_band_split_workspace_size(specdet_band_split_params const* p) {
    return op_workspace_size<BandSplitOp>(p);
}

SPECDET_API int specdet_band_split_prepare(specdet_band_split_params const* p, specdet_fft_plans* plans) {
    return op_prepare<BandSplitOp>(p, plans);
}

SPECDET_API int specdet_band_split(specdet_band_split_params const* p, void const* x, void* y, void* workspace,
    size_t workspace_size, specdet_fft_plans* plans, cudaStream_t stream) {
    return op_launch<BandSplitOp>(p, x, y, workspace, workspace_size, plans, stream);
}

} // extern "C"
