/*
 * The shared launches of spectral_common.cuh, the cuFFT plan cache and the status strings.
 */
#include "spectral_common.cuh"

#include <new>
#include <vector>

namespace specdet {
namespace detail {

namespace {

__global__ void twiddle_kernel(cfloat* m, int rows, int cols, int n, double scale, int c2r_row_weights) {
    int64_t const total = static_cast<int64_t>(rows) * cols;
    for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        int64_t const r = idx / cols;
        int64_t const c = idx % cols;
        double cosine = 0.0;
        double sine = 0.0;
        cos_sin_2pi((r * c) % n, n, &cosine, &sine);
        double factor = scale;
        if (c2r_row_weights && r != 0 && !(n % 2 == 0 && r == n / 2)) {
            factor *= 2.0;
        }
        m[idx] = cfloat{static_cast<float>(cosine * factor), static_cast<float>(sine * factor)};
    }
}

__global__ void band_table_kernel(int32_t* table, int height, int width, Bands bands) {
    int const half_width = width / 2 + 1;
    int64_t const total = static_cast<int64_t>(height) * half_width;
    for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        int const h = static_cast<int>(idx / half_width);
        int const f = static_cast<int>(idx % half_width);
        table[idx] = band_of(h, f, height, width, bands);
    }
}

template <class Src, class Dst>
__global__ void convert_kernel(Src const* x, Dst* y, int64_t count) {
    for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < count;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        y[idx] = from_float<Dst>(to_float(x[idx]));
    }
}

// One block per image (grid-stride over images): a block-wide sum of |spectrum|.
template <class T>
__global__ void __launch_bounds__(kThreads)
    magnitude_mean_kernel(cfloat const* spectrum, int64_t images, int64_t bins, float scale, T* y) {
    __shared__ float partial[kThreads];
    for (int64_t image = blockIdx.x; image < images; image += gridDim.x) {
        cfloat const* s = spectrum + image * bins;
        float sum = 0.f;
        for (int64_t j = threadIdx.x; j < bins; j += kThreads) {
            sum += sqrtf(s[j].re * s[j].re + s[j].im * s[j].im);
        }
        partial[threadIdx.x] = sum;
        __syncthreads();
        for (int width = kThreads / 2; width > 0; width /= 2) {
            if (static_cast<int>(threadIdx.x) < width) {
                partial[threadIdx.x] += partial[threadIdx.x + width];
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            y[image] = from_float<T>(partial[0] * scale / static_cast<float>(bins));
        }
        __syncthreads();
    }
}

} // namespace

int build_twiddles(cfloat* m, int rows, int cols, int n, double scale, bool c2r_row_weights, cudaStream_t stream) {
    int64_t const total = static_cast<int64_t>(rows) * cols;
    launch(twiddle_kernel, dim3(blocks_for(total)), dim3(kThreads), stream, m, rows, cols, n, scale,
        c2r_row_weights ? 1 : 0);
    return check_launch();
}

int build_band_table(int32_t* table, int height, int width, Bands const& bands, cudaStream_t stream) {
    int64_t const total = static_cast<int64_t>(height) * (width / 2 + 1);
    launch(band_table_kernel, dim3(blocks_for(total)), dim3(kThreads), stream, table, height, width, bands);
    return check_launch();
}

int convert_to_float(__half const* x, float* y, int64_t count, cudaStream_t stream) {
    if (count == 0) {
        return SPECDET_OK;
    }
    launch(convert_kernel<__half, float>, dim3(blocks_for(count)), dim3(kThreads), stream, x, y, count);
    return check_launch();
}

template <class T>
int magnitude_mean(cfloat const* spectrum, int64_t images, int64_t bins, float scale, T* y, cudaStream_t stream) {
    if (images == 0) {
        return SPECDET_OK;
    }
    unsigned const grid = static_cast<unsigned>(images < 65535 ? images : 65535);
    launch(magnitude_mean_kernel<T>, dim3(grid), dim3(kThreads), stream, spectrum, images, bins, scale, y);
    return check_launch();
}

template int magnitude_mean<float>(cfloat const*, int64_t, int64_t, float, float*, cudaStream_t);
template int magnitude_mean<__half>(cfloat const*, int64_t, int64_t, float, __half*, cudaStream_t);

} // namespace detail
} // namespace specdet

// ---- cuFFT plan cache ----
//
// Up to kCapacity plans are kept, the least recently used evicted beyond that, except the plans a CUDA graph
// captured: a captured cuFFT launch bakes in its plan's work area, and destroying the plan frees that area while
// the graph can still be replayed (issue 20's latent bug: more batch shapes than the cache holds, then a replay of
// the oldest graph used freed memory). A plan looked up while its stream is capturing is pinned for the cache's
// life, and the cache grows past kCapacity rather than evict a pinned plan; nothing is destroyed during a capture
// (cudaFree is not allowed in one).

struct specdet_fft_plans {
    struct Entry {
        bool forward;
        bool pinned; // captured in a CUDA graph: never evicted
        int device;
        int height;
        int width;
        int64_t batch;
        uint64_t last_use;
        cufftHandle handle;
    };
    static constexpr size_t kCapacity = 8; // unpinned plans kept: (R2C, C2R) x a few batch sizes
    std::vector<Entry> entries;
    uint64_t clock = 0;
};

namespace specdet {
namespace detail {

namespace {

// The least recently used unpinned entry once kCapacity unpinned ones are kept, else null. Pinned plans do not
// count: a full cache of them must not make the plan just handed out (unpinned) the next one evicted.
specdet_fft_plans::Entry* eviction_victim(specdet_fft_plans* plans) {
    specdet_fft_plans::Entry* victim = nullptr;
    size_t unpinned = 0;
    for (auto& e : plans->entries) {
        if (!e.pinned) {
            unpinned += 1;
            if (victim == nullptr || e.last_use < victim->last_use) {
                victim = &e;
            }
        }
    }
    return unpinned < specdet_fft_plans::kCapacity ? nullptr : victim;
}

} // namespace

int fft_plan(specdet_fft_plans* plans, bool forward, int height, int width, int64_t batch, cudaStream_t stream,
    cufftHandle* plan) {
    if (plans == nullptr) {
        return SPECDET_ERROR_INVALID_ARGUMENT;
    }
    int device = 0;
    SPECDET_TRY(current_device(&device));
    bool capturing = false;
    SPECDET_TRY(stream_capturing(stream, &capturing));
    plans->clock += 1;
    specdet_fft_plans::Entry* slot = nullptr;
    for (auto& e : plans->entries) {
        if (e.forward == forward && e.device == device && e.height == height && e.width == width && e.batch == batch) {
            slot = &e;
            break;
        }
    }
    if (slot == nullptr) {
        cufftHandle handle = 0;
        if (cufftCreate(&handle) != CUFFT_SUCCESS) {
            return SPECDET_ERROR_CUFFT;
        }
        long long dims[2] = {height, width};
        size_t work = 0;
        if (cufftMakePlanMany64(handle, 2, dims, nullptr, 1, 0, nullptr, 1, 0, forward ? CUFFT_R2C : CUFFT_C2R,
                static_cast<long long>(batch), &work)
            != CUFFT_SUCCESS) {
            cufftDestroy(handle);
            return SPECDET_ERROR_CUFFT;
        }
        specdet_fft_plans::Entry const made{forward, false, device, height, width, batch, 0, handle};
        specdet_fft_plans::Entry* victim = capturing ? nullptr : eviction_victim(plans);
        if (victim != nullptr) {
            // cufftDestroy frees the plan's work area with cudaFree, which waits for work in flight.
            cufftDestroy(victim->handle);
            *victim = made;
            slot = victim;
        } else {
            try {
                plans->entries.push_back(made);
            } catch (std::bad_alloc const&) {
                cufftDestroy(handle);
                return SPECDET_ERROR_INVALID_ARGUMENT;
            }
            slot = &plans->entries.back();
        }
    }
    slot->last_use = plans->clock;
    slot->pinned = slot->pinned || capturing;
    if (cufftSetStream(slot->handle, stream) != CUFFT_SUCCESS) {
        return SPECDET_ERROR_CUFFT;
    }
    *plan = slot->handle;
    return SPECDET_OK;
}

} // namespace detail
} // namespace specdet

extern "C" {

SPECDET_API int specdet_kernels_abi_version(void) {
    return SPECDET_KERNELS_ABI_VERSION;
}

SPECDET_API int specdet_kernels_is_emulation(void) {
#ifdef SPECDET_CPU_EMULATION
    return 1;
#else
    return 0;
#endif
}

SPECDET_API const char* specdet_status_string(int status) {
    switch (status) {
    case SPECDET_OK: return "success";
    case SPECDET_ERROR_INVALID_ARGUMENT: return "invalid argument (outside the op's contract)";
    case SPECDET_ERROR_CUDA: return "CUDA error (kernel launch or runtime call failed)";
    case SPECDET_ERROR_CUFFT: return "cuFFT error (plan creation or execution failed)";
    case SPECDET_ERROR_WORKSPACE: return "workspace missing or too small";
    default: return "unknown status";
    }
}

SPECDET_API int specdet_fft_plans_create(specdet_fft_plans** plans) {
    if (plans == nullptr) {
        return SPECDET_ERROR_INVALID_ARGUMENT;
    }
    *plans = new (std::nothrow) specdet_fft_plans{};
    return *plans ? SPECDET_OK : SPECDET_ERROR_INVALID_ARGUMENT;
}

SPECDET_API void specdet_fft_plans_destroy(specdet_fft_plans* plans) {
    if (plans == nullptr) {
        return;
    }
    for (auto& e : plans->entries) {
        cufftDestroy(e.handle);
    }
    delete plans;
}

} // extern "C"
