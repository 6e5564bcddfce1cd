/*
 * The part of cuFFT this library uses, emulated on the CPU for the CPU
 * emulation build (see emulation.h): batched 2-D R2C and C2R transforms with
 * cuFFT's conventions (unnormalised, basic data layout, C2R reading the half
 * spectrum), computed as separable DFTs in double. Slow (O(n^2) per axis) and
 * only for tests: it lets the cuFFT method's own kernels (conversions, band
 * masks, scaling, batch layout) run on a machine without a GPU.
 *
 * Also a stand-in for CUDA graph capture of the cuFFT calls, for the plan
 * cache's tests: between specdet_emu_capture_begin and _end (emulation_common.cpp)
 * a stream "is capturing", and every transform run on it is recorded with its
 * plan; replaying the graph runs the recorded transforms again and fails, as
 * a real replay would read freed memory, when a recorded plan was destroyed.
 */
#ifndef SPECDET_CUFFT_EMULATION_H
#define SPECDET_CUFFT_EMULATION_H

#include <cmath>
#include <complex>
#include <cstddef>
#include <vector>

typedef int cufftHandle;
typedef float cufftReal;
struct cufftComplex {
    float x;
    float y;
};
typedef enum cufftResult_t { CUFFT_SUCCESS = 0, CUFFT_INVALID_PLAN = 1, CUFFT_INVALID_VALUE = 4 } cufftResult;
typedef enum cufftType_t { CUFFT_R2C = 0x2a, CUFFT_C2R = 0x2c } cufftType;

namespace specdet_emu {

struct FftPlan {
    bool made = false;
    cufftType type = CUFFT_R2C;
    long long height = 0, width = 0, batch = 0;
    cudaStream_t stream = nullptr;
};

// One transform as a graph holds it: the plan (and so its work area) and the buffers, baked in.
struct CapturedFft {
    cufftHandle handle;
    void* in;
    void* out;
};

struct Capture {
    cudaStream_t stream = nullptr;
    bool open = false;
    std::vector<CapturedFft> transforms;
};

// Every capture so far, by graph id (its index); at most one open per stream.
inline std::vector<Capture>& captures() {
    static std::vector<Capture> all;
    return all;
}

inline Capture* open_capture(cudaStream_t stream) {
    for (auto& c : captures()) {
        if (c.open && c.stream == stream) {
            return &c;
        }
    }
    return nullptr;
}

inline bool stream_capturing(cudaStream_t stream) {
    return open_capture(stream) != nullptr;
}

inline std::vector<FftPlan>& fft_plans() {
    static std::vector<FftPlan> plans(1); // handle 0 is never handed out
    return plans;
}

inline FftPlan* fft_plan_of(cufftHandle handle) {
    auto& plans = fft_plans();
    return handle > 0 && static_cast<size_t>(handle) < plans.size() && plans[handle].made ? &plans[handle] : nullptr;
}

inline std::complex<double> twiddle(long long p, long long n, double sign) {
    double const angle = sign * 2.0 * 3.14159265358979323846 * static_cast<double>(p % n) / static_cast<double>(n);
    return {std::cos(angle), std::sin(angle)};
}

// out[g][f] = sum_h in[h][f] e^{sign 2 pi i g h / H} for an H x Wh half spectrum: the pass
// along the columns, the same in R2C (sign -1) and C2R (sign +1).
inline void column_dft(
    std::complex<double> const* in, std::complex<double>* out, long long H, long long Wh, double sign) {
    for (long long g = 0; g < H; ++g) {
        for (long long f = 0; f < Wh; ++f) {
            std::complex<double> acc = 0.0;
            for (long long h = 0; h < H; ++h) {
                acc += in[h * Wh + f] * twiddle(g * h, H, sign);
            }
            out[g * Wh + f] = acc;
        }
    }
}

} // namespace specdet_emu

inline cufftResult cufftCreate(cufftHandle* handle) {
    auto& plans = specdet_emu::fft_plans();
    plans.emplace_back();
    *handle = static_cast<cufftHandle>(plans.size() - 1);
    return CUFFT_SUCCESS;
}

inline cufftResult cufftMakePlanMany64(cufftHandle handle, int rank, long long* n, long long* inembed, long long,
    long long, long long* onembed, long long, long long, cufftType type, long long batch, size_t* work) {
    auto& plans = specdet_emu::fft_plans();
    if (handle <= 0 || static_cast<size_t>(handle) >= plans.size() || rank != 2 || inembed || onembed) {
        return CUFFT_INVALID_VALUE;
    }
    plans[handle] = specdet_emu::FftPlan{true, type, n[0], n[1], batch};
    *work = 0;
    return CUFFT_SUCCESS;
}

inline cufftResult cufftSetStream(cufftHandle handle, cudaStream_t stream) {
    specdet_emu::FftPlan* plan = specdet_emu::fft_plan_of(handle);
    if (!plan) {
        return CUFFT_INVALID_PLAN;
    }
    plan->stream = stream;
    return CUFFT_SUCCESS;
}

inline cufftResult cufftDestroy(cufftHandle handle) {
    specdet_emu::FftPlan* plan = specdet_emu::fft_plan_of(handle);
    if (!plan) {
        return CUFFT_INVALID_PLAN;
    }
    plan->made = false;
    return CUFFT_SUCCESS;
}

// out[b][h][f] = sum_{t,s} in[b][t][s] e^{-2 pi i (h t / H + f s / W)}, f <= W / 2.
inline cufftResult cufftExecR2C(cufftHandle handle, cufftReal* in, cufftComplex* out) {
    specdet_emu::FftPlan const* plan = specdet_emu::fft_plan_of(handle);
    if (!plan || plan->type != CUFFT_R2C) {
        return CUFFT_INVALID_PLAN;
    }
    if (specdet_emu::Capture* capture = specdet_emu::open_capture(plan->stream)) {
        capture->transforms.push_back({handle, in, out});
    }
    long long const H = plan->height, W = plan->width, Wh = W / 2 + 1;
    std::vector<std::complex<double>> rows(H * Wh), spectrum(H * Wh);
    for (long long b = 0; b < plan->batch; ++b) {
        cufftReal const* x = in + b * H * W;
        for (long long t = 0; t < H; ++t) {
            for (long long f = 0; f < Wh; ++f) {
                std::complex<double> acc = 0.0;
                for (long long s = 0; s < W; ++s) {
                    acc += static_cast<double>(x[t * W + s]) * specdet_emu::twiddle(f * s, W, -1.0);
                }
                rows[t * Wh + f] = acc;
            }
        }
        specdet_emu::column_dft(rows.data(), spectrum.data(), H, Wh, -1.0);
        for (long long i = 0; i < H * Wh; ++i) {
            std::complex<double> const v = spectrum[i];
            out[b * H * Wh + i] = cufftComplex{static_cast<float>(v.real()), static_cast<float>(v.imag())};
        }
    }
    return CUFFT_SUCCESS;
}

// out[b][t][s] = sum_f weight_f Re(U[t][f] e^{2 pi i f s / W}), U[t][f] = sum_h in[b][h][f] e^{2 pi i h t / H}:
// the unnormalised inverse of a Hermitian half spectrum (weight 2 for the bins that stand for two).
inline cufftResult cufftExecC2R(cufftHandle handle, cufftComplex* in, cufftReal* out) {
    specdet_emu::FftPlan const* plan = specdet_emu::fft_plan_of(handle);
    if (!plan || plan->type != CUFFT_C2R) {
        return CUFFT_INVALID_PLAN;
    }
    if (specdet_emu::Capture* capture = specdet_emu::open_capture(plan->stream)) {
        capture->transforms.push_back({handle, in, out});
    }
    long long const H = plan->height, W = plan->width, Wh = W / 2 + 1;
    std::vector<std::complex<double>> spectrum(H * Wh), cols(H * Wh);
    for (long long b = 0; b < plan->batch; ++b) {
        for (long long i = 0; i < H * Wh; ++i) {
            spectrum[i] = {in[b * H * Wh + i].x, in[b * H * Wh + i].y};
        }
        specdet_emu::column_dft(spectrum.data(), cols.data(), H, Wh, 1.0);
        for (long long t = 0; t < H; ++t) {
            for (long long s = 0; s < W; ++s) {
                double acc = 0.0;
                for (long long f = 0; f < Wh; ++f) {
                    double const weight = (f == 0 || (W % 2 == 0 && f == W / 2)) ? 1.0 : 2.0;
                    acc += weight * (cols[t * Wh + f] * specdet_emu::twiddle(f * s, W, 1.0)).real();
                }
                out[(b * H + t) * W + s] = static_cast<float>(acc);
            }
        }
    }
    return CUFFT_SUCCESS;
}

namespace specdet_emu {

// Runs a graph's recorded transforms again: CUFFT_INVALID_PLAN when one's plan was destroyed since its capture.
inline cufftResult replay(Capture const& capture) {
    for (CapturedFft const& t : capture.transforms) {
        FftPlan const* plan = fft_plan_of(t.handle);
        if (!plan) {
            return CUFFT_INVALID_PLAN;
        }
        cufftResult const status = plan->type == CUFFT_R2C
            ? cufftExecR2C(t.handle, static_cast<cufftReal*>(t.in), static_cast<cufftComplex*>(t.out))
            : cufftExecC2R(t.handle, static_cast<cufftComplex*>(t.in), static_cast<cufftReal*>(t.out));
        if (status != CUFFT_SUCCESS) {
            return status;
        }
    }
    return CUFFT_SUCCESS;
}

inline int live_plans() {
    int count = 0;
    for (FftPlan const& p : fft_plans()) {
        count += p.made ? 1 : 0;
    }
    return count;
}

} // namespace specdet_emu

#endif // SPECDET_CUFFT_EMULATION_H
