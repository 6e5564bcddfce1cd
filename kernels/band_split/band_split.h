/*
 * specdet.BandSplit: image [B, C, H, W] to radial frequency bands [B, K, C, H, W].
 *
 * y[b, k, c] = irfft2(rfft2(x[b, c], norm="ortho") * mask_k, s=(H, W), norm="ortho"),
 * mask_k the bins whose radius r lies in [edge_{k-1}, edge_k) (the first ring
 * starts at -inf, the last one ends at +inf), K = num_edges + 1. The radius of
 * bin (h, f) is computed in double as models/spectral.py does, and compared
 * with the float32 edges widened to double. The bands sum back to x.
 * Contract (ranges, tolerances, golden data): contract.json beside this file.
 */
#ifndef SPECDET_BAND_SPLIT_H
#define SPECDET_BAND_SPLIT_H

#include "specdet_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct specdet_band_split_params {
    int32_t batch;    /* B >= 0 (0: nothing to do) */
    int32_t channels; /* C >= 1 */
    int32_t height;   /* H in [1, SPECDET_MAX_SIDE] */
    int32_t width;    /* W in [1, SPECDET_MAX_SIDE] */
    int32_t num_edges;                   /* K - 1 in [0, SPECDET_MAX_BANDS - 1] */
    float edges[SPECDET_MAX_BANDS - 1];  /* finite, strictly increasing; the first num_edges are used */
    int32_t centre;   /* specdet_centre */
    int32_t dtype;    /* specdet_dtype of x and y */
    int32_t method;   /* specdet_method */
} specdet_band_split_params;

/* sizeof(specdet_band_split_params), for bindings that mirror the struct. */
SPECDET_API size_t specdet_band_split_params_size(void);
/* SPECDET_OK or SPECDET_ERROR_INVALID_ARGUMENT; host only. */
SPECDET_API int specdet_band_split_validate(const specdet_band_split_params* params);
/* The method a launch uses (AUTO resolved); -1 for invalid parameters. */
SPECDET_API int specdet_band_split_resolved_method(const specdet_band_split_params* params);
/* Bytes of workspace a launch with these parameters needs (0 when invalid); host only. */
SPECDET_API size_t specdet_band_split_workspace_size(const specdet_band_split_params* params);
/* Makes the cuFFT plans of this shape in `plans` (no-op for the DFT method). */
SPECDET_API int specdet_band_split_prepare(const specdet_band_split_params* params, specdet_fft_plans* plans);
/* x: device [B, C, H, W], y: device [B, K, C, H, W], both of params->dtype, contiguous.
 * plans may be NULL for the DFT method. Asynchronous on `stream`. */
SPECDET_API int specdet_band_split(const specdet_band_split_params* params, const void* x, void* y, void* workspace,
    size_t workspace_size, specdet_fft_plans* plans, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* SPECDET_BAND_SPLIT_H */
