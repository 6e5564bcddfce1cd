/*
 * specdet kernels: what every op's C interface shares.
 *
 * Plain C, no TensorRT and no torch: a caller passes device pointers, a
 * workspace it allocated (size from the op's *_workspace_size function) and a
 * CUDA stream; nothing is allocated, synchronised or copied from the host
 * inside a launch, so launches can be captured in CUDA graphs. The cuFFT
 * method needs plans; they live in a specdet_fft_plans cache that the caller
 * owns (one per stream or thread: it is not thread-safe), made with
 * specdet_fft_plans_create. The *_prepare functions make the plans of a
 * shape ahead of time (plan creation allocates, so not inside a graph
 * capture); a launch makes the ones still missing.
 *
 * Every function returns a specdet_status (0 is success).
 */
#ifndef SPECDET_KERNELS_H
#define SPECDET_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h> /* cudaStream_t */

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SPECDET_API __declspec(dllexport)
#else
#define SPECDET_API __attribute__((visibility("default")))
#endif

#define SPECDET_KERNELS_ABI_VERSION 1
#define SPECDET_MAX_BANDS 16  /* at most 15 edges */
#define SPECDET_MAX_SIDE 8192 /* largest H and W */

typedef enum specdet_status {
    SPECDET_OK = 0,
    SPECDET_ERROR_INVALID_ARGUMENT = 1, /* parameters out of their contract's ranges */
    SPECDET_ERROR_CUDA = 2,             /* a CUDA runtime call or a kernel launch failed */
    SPECDET_ERROR_CUFFT = 3,            /* cuFFT plan creation or execution failed */
    SPECDET_ERROR_WORKSPACE = 4,        /* workspace missing or smaller than *_workspace_size */
} specdet_status;

typedef enum specdet_dtype {
    SPECDET_FLOAT32 = 0,
    SPECDET_FLOAT16 = 1, /* input and output; the arithmetic is float32 for both */
} specdet_dtype;

typedef enum specdet_centre {
    SPECDET_CENTRE_ZERO = 0, /* rings around the zero frequency (the corrected masks) */
    SPECDET_CENTRE_SEED = 1, /* the seed code's rings around bin (H/2, W/2) of the unshifted spectrum */
} specdet_centre;

typedef enum specdet_method {
    SPECDET_METHOD_AUTO = 0,  /* SPECDET_METHOD_CUFFT for now: provisional until measured on a GPU (README) */
    SPECDET_METHOD_DFT = 1,   /* separable DFT as batched complex matrix products, float32 */
    SPECDET_METHOD_CUFFT = 2, /* cuFFT R2C / C2R in float32 (float16 data converted in the workspace) */
} specdet_method;

typedef struct specdet_fft_plans specdet_fft_plans; /* opaque cache of cuFFT plans */

SPECDET_API int specdet_kernels_abi_version(void);
SPECDET_API int specdet_kernels_is_emulation(void); /* 1 in the CPU emulation build (emulation.h) */
SPECDET_API const char* specdet_status_string(int status);

SPECDET_API int specdet_fft_plans_create(specdet_fft_plans** plans);
SPECDET_API void specdet_fft_plans_destroy(specdet_fft_plans* plans);

#ifdef __cplusplus
}
#endif

#endif /* SPECDET_KERNELS_H */
