/*
 * specdet.SpectrumMagnitudeMean: feature map [B, C, H, W] to [B, C].
 *
 * y[b, c] = mean over the H x (W/2 + 1) bins of |rfft2(x[b, c], norm="ortho")|.
 * Contract (ranges, tolerances, golden data): contract.json beside this file.
 */
#ifndef SPECDET_SPECTRUM_MAGNITUDE_MEAN_H
#define SPECDET_SPECTRUM_MAGNITUDE_MEAN_H

#include "specdet_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct specdet_spectrum_magnitude_mean_params {
    int32_t batch;    /* B >= 0 (0: nothing to do) */
    int32_t channels; /* C >= 1 */
    int32_t height;   /* H in [1, SPECDET_MAX_SIDE] */
    int32_t width;    /* W in [1, SPECDET_MAX_SIDE] */
    int32_t dtype;    /* specdet_dtype of x and y */
    int32_t method;   /* specdet_method */
} specdet_spectrum_magnitude_mean_params;

SPECDET_API size_t specdet_spectrum_magnitude_mean_params_size(void);
SPECDET_API int specdet_spectrum_magnitude_mean_validate(const specdet_spectrum_magnitude_mean_params* params);
SPECDET_API int specdet_spectrum_magnitude_mean_resolved_method(const specdet_spectrum_magnitude_mean_params* params);
SPECDET_API size_t specdet_spectrum_magnitude_mean_workspace_size(const specdet_spectrum_magnitude_mean_params* params);
SPECDET_API int specdet_spectrum_magnitude_mean_prepare(
    const specdet_spectrum_magnitude_mean_params* params, specdet_fft_plans* plans);
/* x: device [B, C, H, W], y: device [B, C], both of params->dtype, contiguous. */
SPECDET_API int specdet_spectrum_magnitude_mean(const specdet_spectrum_magnitude_mean_params* params, const void* x,
    void* y, void* workspace, size_t workspace_size, specdet_fft_plans* plans, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* SPECDET_SPECTRUM_MAGNITUDE_MEAN_H */
