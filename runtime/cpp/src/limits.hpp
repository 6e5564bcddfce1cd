// The bounds of specdet/limits.py, which the Python runtime and the command lines apply: the same
// numbers here, so both runtimes refuse the same inputs (tests/test_cpp_contract.py pins them equal).
#pragma once

#include <cstdint>

namespace specdet::limits {

// Threads: ONNX Runtime's intra_op_threads, specdet-score's --threads (100000 threads only thrash).
inline constexpr int64_t kMaxThreads = 1024;
// Images per batch (specdet-score's --batch-size).
inline constexpr int64_t kMaxBatch = 65536;
// Pixels of an image, as stored (from its header, before decoding) or once resized for the model.
inline constexpr int64_t kMaxPixels = 64000000;
// The most max_pixels may be raised to (twice Pillow's decompression-bomb limit).
inline constexpr int64_t kMaxPixelsCeiling = 2 * 89478485;
// The side of a model's square input (a manifest's crop).
inline constexpr int64_t kMaxInputSize = 4096;
// A manifest's JSON: nesting, and values counted as written out.
inline constexpr int64_t kMaxJsonDepth = 64;
inline constexpr int64_t kMaxJsonValues = 1000000;

}  // namespace specdet::limits
