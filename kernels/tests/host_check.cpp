// Host-side checks of the C interface: compiles against the public headers
// only, links specdet_kernels, and calls the functions that need no GPU
// (validation, workspace sizes, status strings, the plan cache's life cycle,
// empty launches). Exit status 0 when every check passes.
#include "band_split.h"
#include "spectrum_magnitude_mean.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

namespace {

int failures = 0;

void check(bool ok, char const* what) {
    if (!ok) {
        std::printf("FAIL: %s\n", what);
        ++failures;
    }
}

specdet_band_split_params band_split_params() {
    specdet_band_split_params p;
    std::memset(&p, 0, sizeof(p));
    p.batch = 32;
    p.channels = 3;
    p.height = 224;
    p.width = 224;
    p.num_edges = 3;
    p.edges[0] = 0.17677669f;
    p.edges[1] = 0.35355338f;
    p.edges[2] = 0.53033006f;
    p.centre = SPECDET_CENTRE_ZERO;
    p.dtype = SPECDET_FLOAT16;
    p.method = SPECDET_METHOD_AUTO;
    return p;
}

} // namespace

int main() {
    check(specdet_kernels_abi_version() == SPECDET_KERNELS_ABI_VERSION, "ABI version");
    check(specdet_band_split_params_size() == sizeof(specdet_band_split_params), "band split params size");
    check(specdet_spectrum_magnitude_mean_params_size() == sizeof(specdet_spectrum_magnitude_mean_params),
        "spectrum params size");
    check(std::strcmp(specdet_status_string(SPECDET_OK), "success") == 0, "status string");

    specdet_band_split_params p = band_split_params();
    check(specdet_band_split_validate(&p) == SPECDET_OK, "valid band split params");
    check(specdet_band_split_resolved_method(&p) == SPECDET_METHOD_CUFFT, "AUTO resolves to cuFFT");
    size_t const fft_bytes = specdet_band_split_workspace_size(&p);
    p.method = SPECDET_METHOD_DFT;
    size_t const dft_bytes = specdet_band_split_workspace_size(&p);
    // cuFFT, float16: x32 + spectrum + 3 banded spectra + their 3 float32 transforms (the 4th band is the input
    // minus the others), each 256-byte aligned.
    size_t const plane = 224 * 113, images = 32 * 3, pixels = 224 * 224;
    check(fft_bytes >= images * pixels * 4 + images * plane * 8 * 4 + images * 3 * pixels * 4, "cuFFT workspace size");
    check(dft_bytes >= images * plane * 8 * 6, "DFT workspace size");
    std::printf("band split B=32 C=3 224x224 float16 workspace: cuFFT %.1f MiB, DFT %.1f MiB\n",
        fft_bytes / 1048576.0, dft_bytes / 1048576.0);

    specdet_band_split_params bad = band_split_params();
    bad.edges[1] = bad.edges[0];
    check(specdet_band_split_validate(&bad) == SPECDET_ERROR_INVALID_ARGUMENT, "edges must increase");
    check(specdet_band_split_workspace_size(&bad) == 0, "no workspace for invalid params");
    bad = band_split_params();
    bad.edges[2] = std::numeric_limits<float>::infinity();
    check(specdet_band_split_validate(&bad) == SPECDET_ERROR_INVALID_ARGUMENT, "edges must be finite");
    bad = band_split_params();
    bad.num_edges = SPECDET_MAX_BANDS;
    check(specdet_band_split_validate(&bad) == SPECDET_ERROR_INVALID_ARGUMENT, "at most 15 edges");
    bad = band_split_params();
    bad.width = 0;
    check(specdet_band_split_validate(&bad) == SPECDET_ERROR_INVALID_ARGUMENT, "width >= 1");
    bad = band_split_params();
    bad.centre = 2;
    check(specdet_band_split_validate(&bad) == SPECDET_ERROR_INVALID_ARGUMENT, "centre zero or seed");
    bad = band_split_params();
    bad.dtype = 7;
    check(specdet_band_split_validate(&bad) == SPECDET_ERROR_INVALID_ARGUMENT, "dtype float32 or float16");
    check(specdet_band_split(&bad, nullptr, nullptr, nullptr, 0, nullptr, nullptr) == SPECDET_ERROR_INVALID_ARGUMENT,
        "launch refuses invalid params");

    specdet_band_split_params empty = band_split_params();
    empty.batch = 0;
    check(specdet_band_split(&empty, nullptr, nullptr, nullptr, 0, nullptr, nullptr) == SPECDET_OK,
        "empty batch is a no-op");
    specdet_band_split_params small = band_split_params();
    char dummy = 0;
    check(specdet_band_split(&small, &dummy, &dummy, &dummy, 1, nullptr, nullptr) == SPECDET_ERROR_WORKSPACE,
        "launch refuses a small workspace");

    specdet_spectrum_magnitude_mean_params s;
    std::memset(&s, 0, sizeof(s));
    s.batch = 8;
    s.channels = 128;
    s.height = 16;
    s.width = 16;
    s.dtype = SPECDET_FLOAT32;
    s.method = SPECDET_METHOD_DFT;
    check(specdet_spectrum_magnitude_mean_validate(&s) == SPECDET_OK, "valid spectrum params");
    check(specdet_spectrum_magnitude_mean_workspace_size(&s) >= 8 * 128 * 16 * 9 * 8 * 2, "spectrum DFT workspace");
    s.method = 3;
    check(specdet_spectrum_magnitude_mean_validate(&s) == SPECDET_ERROR_INVALID_ARGUMENT, "method in range");

    specdet_fft_plans* plans = nullptr;
    check(specdet_fft_plans_create(&plans) == SPECDET_OK && plans != nullptr, "plan cache created");
    specdet_fft_plans_destroy(plans);

    std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
