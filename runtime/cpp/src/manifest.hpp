// The artifact's manifest (specdet/manifest.py): read with nlohmann::json, validated field by field
// with one-line errors that say what to do, as the Python runtime's messages do.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "preprocess.hpp"

namespace specdet {

struct Manifest {
  std::string text;    // the JSON as read
  std::string source;  // where it came from: "metadata_props of X", or a file path
  std::string architecture;
  std::string precision = "fp32";
  Preprocessing preprocessing;
  double threshold = 0.5;
  std::string input_name;
  std::string input_dtype;  // "float32" or "float16"
  int64_t min_batch = 1, max_batch = 1;
};

// The key under which the exporter embeds the manifest in the ONNX file's metadata_props.
inline constexpr const char* kMetadataKey = "specdet.manifest";

// Parse and validate; `source` names the origin in messages. Throws SPECDET_ERROR_MANIFEST.
Manifest parse_manifest(const std::string& text, const std::string& source);

// Sidecar candidates for an artifact, in the order they are tried: <file>.specdet.json, then
// <stem>.json for ONNX files or <file>.json for engines (.engine, .plan).
std::vector<std::string> sidecar_paths(const std::string& artifact);

// The first existing sidecar's text and path; throws SPECDET_ERROR_MANIFEST naming them if none.
Manifest read_sidecar(const std::string& artifact);

// Read a file whole; throws SPECDET_ERROR_IO.
std::string read_file(const std::string& path);

bool file_exists(const std::string& path);

}  // namespace specdet
