// CPU emulation build of common/common.cu (see emulation.h): the same source, compiled as C++.
#include "../common/common.cu"

// Test hooks of the emulation only (cufft_emulation.h): graph capture of the cuFFT calls, its replay, live plans.
extern "C" {

SPECDET_API void specdet_emu_capture_begin(cudaStream_t stream) {
    specdet_emu::Capture capture;
    capture.stream = stream;
    capture.open = true;
    specdet_emu::captures().push_back(capture);
}

// The graph id of the capture that ends, or -1 when `stream` was not capturing.
SPECDET_API int specdet_emu_capture_end(cudaStream_t stream) {
    auto& all = specdet_emu::captures();
    for (size_t i = 0; i < all.size(); ++i) {
        if (all[i].open && all[i].stream == stream) {
            all[i].open = false;
            return static_cast<int>(i);
        }
    }
    return -1;
}

// SPECDET_OK, SPECDET_ERROR_CUFFT when a captured plan was destroyed, SPECDET_ERROR_INVALID_ARGUMENT for a bad id.
SPECDET_API int specdet_emu_graph_replay(int graph) {
    auto& all = specdet_emu::captures();
    if (graph < 0 || static_cast<size_t>(graph) >= all.size() || all[graph].open) {
        return SPECDET_ERROR_INVALID_ARGUMENT;
    }
    return specdet_emu::replay(all[graph]) == CUFFT_SUCCESS ? SPECDET_OK : SPECDET_ERROR_CUFFT;
}

SPECDET_API int specdet_emu_live_fft_plans(void) {
    return specdet_emu::live_plans();
}

} // extern "C"
