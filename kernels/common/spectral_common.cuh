/*
 * Device helpers shared by the spectral ops, one definition each:
 * - the DFT matrices (twiddles), built on the device in double from the
 *   phase (r * c) mod n reduced in integers, stored as float: the same
 *   matrices as export/dft_matrices.py;
 * - the band index of every bin of the half spectrum, with the radius
 *   computed in double exactly as models/spectral.py computes it (no fused
 *   multiply-add) and compared with the float32 edges;
 * - a tiled, batched complex matrix product with float32 accumulation, whose
 *   operands are read and whose result is written through small functors, so
 *   that every stage of a separable 2-D DFT (real input, masks, real output,
 *   float16 data) is one launch of the same kernel;
 * - float16/float32 conversion, the per-image mean of |spectrum|, the cuFFT
 *   plan cache and the workspace layout helper;
 * - the steps of the C launch functions that are the same for every op
 *   (validation, argument and workspace checks, method and dtype dispatch).
 */
#ifndef SPECDET_SPECTRAL_COMMON_CUH
#define SPECDET_SPECTRAL_COMMON_CUH

#include "specdet_kernels.h"

#ifdef SPECDET_CPU_EMULATION
#include "emulation.h"
#include "cufft_emulation.h"
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cufft.h>
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>

// Returns the status of `call` when it is not SPECDET_OK.
#define SPECDET_TRY(call)                                                                                             \
    do {                                                                                                              \
        int const status_ = (call);                                                                                   \
        if (status_ != SPECDET_OK) {                                                                                  \
            return status_;                                                                                           \
        }                                                                                                             \
    } while (0)

namespace specdet {
namespace detail {

struct cfloat {
    float re;
    float im;
};

// ---- data types: float32 or float16 in memory, float32 in registers ----

__host__ __device__ __forceinline__ float to_float(float v) { return v; }
__host__ __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <class T>
__host__ __device__ __forceinline__ T from_float(float v);
template <>
__host__ __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__host__ __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// ---- double arithmetic without contraction, so radii round as in NumPy/torch ----

__host__ __device__ __forceinline__ double exact_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}
__host__ __device__ __forceinline__ double exact_add(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}
__host__ __device__ __forceinline__ double exact_div(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __ddiv_rn(a, b);
#else
    return a / b;
#endif
}
__host__ __device__ __forceinline__ double exact_sqrt(double a) {
#if defined(__CUDA_ARCH__)
    return __dsqrt_rn(a);
#else
    return std::sqrt(a);
#endif
}

// cos and sin of 2*pi*p/n in double.
__host__ __device__ __forceinline__ void cos_sin_2pi(int64_t p, int64_t n, double* c, double* s) {
#if defined(__CUDA_ARCH__)
    sincospi(2.0 * static_cast<double>(p) / static_cast<double>(n), s, c);
#else
    double const angle = 2.0 * 3.14159265358979323846 * static_cast<double>(p) / static_cast<double>(n);
    *c = std::cos(angle);
    *s = std::sin(angle);
#endif
}

// ---- band masks ----

struct Bands {
    int32_t num_edges;
    float edges[SPECDET_MAX_BANDS - 1];
    int32_t centre;
};

// Frequency (cycles per pixel) of index k of an n-point spectrum, as
// torch.fft.fftfreq (k * (1 / n), negative in the upper half) or the seed's
// (k - n // 2) / n.
__host__ __device__ __forceinline__ double frequency(int k, int n, int centre) {
    if (centre == SPECDET_CENTRE_SEED) {
        return exact_div(static_cast<double>(k - n / 2), static_cast<double>(n));
    }
    int const signed_k = (2 * k < n) ? k : k - n;
    return exact_mul(static_cast<double>(signed_k), exact_div(1.0, static_cast<double>(n)));
}

// Band of bin (h, f): the number of edges at or below its radius.
__host__ __device__ __forceinline__ int band_of(int h, int f, int height, int width, Bands const& bands) {
    double const fy = frequency(h, height, bands.centre);
    double const fx = frequency(f, width, bands.centre);
    double const r = exact_sqrt(exact_add(exact_mul(fy, fy), exact_mul(fx, fx)));
    int band = 0;
    for (int e = 0; e < bands.num_edges; ++e) {
        band += r >= static_cast<double>(bands.edges[e]) ? 1 : 0;
    }
    return band;
}

// ---- kernel launches: the same call for CUDA and for the CPU emulation ----

template <class... Params, class... Args>
inline void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args... args) {
#ifdef SPECDET_CPU_EMULATION
    (void) stream;
    ::specdet_emu::launch(grid, block, kernel, static_cast<Params>(args)...);
#else
    kernel<<<grid, block, 0, stream>>>(static_cast<Params>(args)...);
#endif
}

// SPECDET_OK, or SPECDET_ERROR_CUDA when the last launch failed.
inline int check_launch() {
#ifdef SPECDET_CPU_EMULATION
    return SPECDET_OK;
#else
    return cudaGetLastError() == cudaSuccess ? SPECDET_OK : SPECDET_ERROR_CUDA;
#endif
}

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t count, int64_t cap = 65535) {
    int64_t const blocks = (count + kThreads - 1) / kThreads;
    return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// ---- the complex matrix product ----

constexpr int kTileM = 32;
constexpr int kTileN = 32;
constexpr int kTileK = 16;

// out[b](i, j) = sum_k a(b, i, k) * b(b, k, j) for i < m, j < n, k < depth, b < batch (complex).
// 256 threads; each computes a 2 x 2 patch of a 32 x 32 tile. Operands come
// from the functors (a cfloat for an in-range index), the result goes to
// `store(b, i, j, re, im)`.
template <class LoadA, class LoadB, class Store>
__global__ void __launch_bounds__(kThreads)
    complex_matmul_kernel(int m, int n, int depth, int batch, LoadA load_a, LoadB load_b, Store store) {
    __shared__ float a_re[kTileK][kTileM + 1];
    __shared__ float a_im[kTileK][kTileM + 1];
    __shared__ float b_re[kTileK][kTileN + 1];
    __shared__ float b_im[kTileK][kTileN + 1];
    int const tx = static_cast<int>(threadIdx.x) % 16;
    int const ty = static_cast<int>(threadIdx.x) / 16;
    int const row0 = static_cast<int>(blockIdx.y) * kTileM;
    int const col0 = static_cast<int>(blockIdx.x) * kTileN;
    for (int b = static_cast<int>(blockIdx.z); b < batch; b += static_cast<int>(gridDim.z)) {
        float acc_re[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
        float acc_im[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
        for (int k0 = 0; k0 < depth; k0 += kTileK) {
            for (int e = static_cast<int>(threadIdx.x); e < kTileM * kTileK; e += kThreads) {
                int const i = e / kTileK;
                int const k = e % kTileK;
                cfloat v{0.f, 0.f};
                if (row0 + i < m && k0 + k < depth) {
                    v = load_a(b, row0 + i, k0 + k);
                }
                a_re[k][i] = v.re;
                a_im[k][i] = v.im;
            }
            for (int e = static_cast<int>(threadIdx.x); e < kTileK * kTileN; e += kThreads) {
                int const k = e / kTileN;
                int const j = e % kTileN;
                cfloat v{0.f, 0.f};
                if (k0 + k < depth && col0 + j < n) {
                    v = load_b(b, k0 + k, col0 + j);
                }
                b_re[k][j] = v.re;
                b_im[k][j] = v.im;
            }
            __syncthreads();
            for (int k = 0; k < kTileK; ++k) {
                float const ar0 = a_re[k][ty], ai0 = a_im[k][ty];
                float const ar1 = a_re[k][ty + 16], ai1 = a_im[k][ty + 16];
                float const br0 = b_re[k][tx], bi0 = b_im[k][tx];
                float const br1 = b_re[k][tx + 16], bi1 = b_im[k][tx + 16];
                acc_re[0][0] += ar0 * br0 - ai0 * bi0;
                acc_im[0][0] += ar0 * bi0 + ai0 * br0;
                acc_re[0][1] += ar0 * br1 - ai0 * bi1;
                acc_im[0][1] += ar0 * bi1 + ai0 * br1;
                acc_re[1][0] += ar1 * br0 - ai1 * bi0;
                acc_im[1][0] += ar1 * bi0 + ai1 * br0;
                acc_re[1][1] += ar1 * br1 - ai1 * bi1;
                acc_im[1][1] += ar1 * bi1 + ai1 * br1;
            }
            __syncthreads();
        }
        for (int u = 0; u < 2; ++u) {
            for (int v = 0; v < 2; ++v) {
                int const i = row0 + ty + 16 * u;
                int const j = col0 + tx + 16 * v;
                if (i < m && j < n) {
                    store(b, i, j, acc_re[u][v], acc_im[u][v]);
                }
            }
        }
    }
}

template <class LoadA, class LoadB, class Store>
inline int complex_matmul(
    int m, int n, int depth, int batch, LoadA load_a, LoadB load_b, Store store, cudaStream_t stream) {
    if (batch <= 0) {
        return SPECDET_OK;
    }
    dim3 const grid((n + kTileN - 1) / kTileN, (m + kTileM - 1) / kTileM, batch < 65535 ? batch : 65535);
    launch(complex_matmul_kernel<LoadA, LoadB, Store>, grid, dim3(kThreads), stream, m, n, depth, batch, load_a, load_b,
        store);
    return check_launch();
}

// Operand functors.

// A constant matrix, row-major with `cols` columns, optionally conjugated; the same for every batch entry.
struct MatrixOperand {
    cfloat const* m;
    int cols;
    int conjugate;
    __host__ __device__ __forceinline__ cfloat operator()(int, int row, int col) const {
        cfloat v = m[static_cast<int64_t>(row) * cols + col];
        if (conjugate) {
            v.im = -v.im;
        }
        return v;
    }
};

// Real images [batch][rows][cols] of T.
template <class T>
struct RealOperand {
    T const* x;
    int rows;
    int cols;
    __host__ __device__ __forceinline__ cfloat operator()(int b, int row, int col) const {
        return cfloat{to_float(x[(static_cast<int64_t>(b) * rows + row) * cols + col]), 0.f};
    }
};

// Complex planes [batch][rows][cols].
struct ComplexOperand {
    cfloat const* p;
    int rows;
    int cols;
    __host__ __device__ __forceinline__ cfloat operator()(int b, int row, int col) const {
        return p[(static_cast<int64_t>(b) * rows + row) * cols + col];
    }
};

struct ComplexResult {
    cfloat* p;
    int rows;
    int cols;
    __host__ __device__ __forceinline__ void operator()(int b, int row, int col, float re, float im) const {
        p[(static_cast<int64_t>(b) * rows + row) * cols + col] = cfloat{re, im};
    }
};

// Real part of the result into [batch][rows][cols] of T.
template <class T>
struct RealResult {
    T* y;
    int rows;
    int cols;
    __host__ __device__ __forceinline__ void operator()(int b, int row, int col, float re, float) const {
        y[(static_cast<int64_t>(b) * rows + row) * cols + col] = from_float<T>(re);
    }
};

// ---- workspace layout: one function computes both the size and the pointers ----

class Workspace {
public:
    explicit Workspace(void* base) : base_(static_cast<char*>(base)) {}

    template <class T>
    T* take(int64_t count) {
        size_t const at = (offset_ + 255) / 256 * 256;
        offset_ = at + static_cast<size_t>(count) * sizeof(T);
        return base_ ? reinterpret_cast<T*>(base_ + at) : nullptr;
    }

    size_t size() const { return offset_; }

private:
    char* base_;
    size_t offset_ = 0;
};

// ---- launches defined once in common.cu ----

// m[r * cols + c] = (cos, sin)(2 pi ((r c) mod n) / n) * scale, times 2 for the rows r of a
// Hermitian half spectrum that stand for two bins (c2r_row_weights: all but r = 0 and, n even, r = n / 2).
int build_twiddles(cfloat* m, int rows, int cols, int n, double scale, bool c2r_row_weights, cudaStream_t stream);
// table[h * half_width + f] = band_of(h, f) for the half spectrum.
int build_band_table(int32_t* table, int height, int width, Bands const& bands, cudaStream_t stream);
int convert_to_float(__half const* x, float* y, int64_t count, cudaStream_t stream);
// y[i] = scale * mean_j |spectrum[i * bins + j]| for i < images.
template <class T>
int magnitude_mean(cfloat const* spectrum, int64_t images, int64_t bins, float scale, T* y, cudaStream_t stream);

// cuFFT (emulated in the CPU emulation build): the cached plan of a batched
// 2-D transform (forward: R2C, else C2R) on height x width real images, bound to `stream`.
int fft_plan(specdet_fft_plans* plans, bool forward, int height, int width, int64_t batch, cudaStream_t stream,
    cufftHandle* plan);

inline int current_device(int* device) {
#ifdef SPECDET_CPU_EMULATION
    *device = 0;
    return SPECDET_OK;
#else
    return cudaGetDevice(device) == cudaSuccess ? SPECDET_OK : SPECDET_ERROR_CUDA;
#endif
}

// Whether `stream` is being captured into a CUDA graph (the emulation's test hooks capture too: cufft_emulation.h).
inline int stream_capturing(cudaStream_t stream, bool* capturing) {
#ifdef SPECDET_CPU_EMULATION
    *capturing = ::specdet_emu::stream_capturing(stream);
    return SPECDET_OK;
#else
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
        return SPECDET_ERROR_CUDA;
    }
    *capturing = status != cudaStreamCaptureStatusNone;
    return SPECDET_OK;
#endif
}

// AUTO is cuFFT: a provisional choice until kernels_bench.py has been run on a GPU (see README).
inline int resolve_method(int method) {
    return method == SPECDET_METHOD_AUTO ? SPECDET_METHOD_CUFFT : method;
}

inline bool valid_shape(int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t bands) {
    return batch >= 0 && channels >= 1 && height >= 1 && width >= 1 && height <= SPECDET_MAX_SIDE
        && width <= SPECDET_MAX_SIDE && batch * channels * bands <= INT32_MAX;
}

inline bool valid_dtype_method(int dtype, int method) {
    return (dtype == SPECDET_FLOAT32 || dtype == SPECDET_FLOAT16)
        && (method == SPECDET_METHOD_AUTO || method == SPECDET_METHOD_DFT || method == SPECDET_METHOD_CUFFT);
}

// ---- the C launch functions, written once for every op ----
//
// Each op's .cu file describes itself as a struct Op and its extern "C"
// functions call these. Op has:
//   using Params = ...;                                   the op's parameter struct
//   static int validate(Params const*);                   its specdet_<op>_validate
//   static size_t workspace_bytes(Params const&);         workspace of the resolved method, valid params
//   template <class T> static int run_dft(Params const&, T const* x, T* y, void* workspace, cudaStream_t);
//   static int run_cufft(Params const&, void const* x, void* y, void* workspace, specdet_fft_plans*, cudaStream_t);
//   static int make_plans(Params const&, specdet_fft_plans*);  the cuFFT plans of this shape

template <class Op>
int op_resolved_method(typename Op::Params const* p) {
    return Op::validate(p) == SPECDET_OK ? resolve_method(p->method) : -1;
}

template <class Op>
size_t op_workspace_size(typename Op::Params const* p) {
    return Op::validate(p) == SPECDET_OK ? Op::workspace_bytes(*p) : 0;
}

template <class Op>
int op_prepare(typename Op::Params const* p, specdet_fft_plans* plans) {
    SPECDET_TRY(Op::validate(p));
    if (resolve_method(p->method) != SPECDET_METHOD_CUFFT || p->batch == 0) {
        return SPECDET_OK;
    }
    return Op::make_plans(*p, plans);
}

// The launch: every check on the caller's arguments, then the method's run
// (the DFT kernels are templates over the data type, cuFFT works in float32).
template <class Op>
int op_launch(typename Op::Params const* p, void const* x, void* y, void* workspace, size_t workspace_size,
    specdet_fft_plans* plans, cudaStream_t stream) {
    SPECDET_TRY(Op::validate(p));
    if (p->batch == 0) {
        return SPECDET_OK;
    }
    if (x == nullptr || y == nullptr) {
        return SPECDET_ERROR_INVALID_ARGUMENT;
    }
    size_t const needed = Op::workspace_bytes(*p);
    if (workspace_size < needed || (needed > 0 && workspace == nullptr)) {
        return SPECDET_ERROR_WORKSPACE;
    }
    if (resolve_method(p->method) == SPECDET_METHOD_DFT) {
        if (p->dtype == SPECDET_FLOAT16) {
            return Op::run_dft(*p, static_cast<__half const*>(x), static_cast<__half*>(y), workspace, stream);
        }
        return Op::run_dft(*p, static_cast<float const*>(x), static_cast<float*>(y), workspace, stream);
    }
    if (plans == nullptr) {
        return SPECDET_ERROR_INVALID_ARGUMENT;
    }
    return Op::run_cufft(*p, x, y, workspace, plans, stream);
}

} // namespace detail
} // namespace specdet

#endif // SPECDET_SPECTRAL_COMMON_CUH
