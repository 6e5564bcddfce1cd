// The artifact's manifest (specdet/manifest.py): read with nlohmann::json, validated field by field
// with one-line errors that say what to do, as the Python runtime's messages do.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

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

// The last suffix of a path's file name, lowercased, as Python's pathlib takes it ("" for "model",
// ".onnx" or "model."), so both runtimes tell engines from ONNX files alike.
std::string lower_suffix(const std::string& path);

// An engine (.engine, .plan): it cannot carry its manifest.
bool is_engine(const std::string& path);

// The artifact's manifest, in the lookup order both runtimes follow (README "Checkpoints and
// manifests", Manifest.read in specdet/manifest.py): an engine's is <file>.json beside it and nowhere
// else; any other file's (ONNX) is the one it carries, which `embedded` reads (nullptr: none; an
// empty function: the file cannot carry one), else <stem>.json beside it (older exports), which is
// not opened when the file carries one. None found: SPECDET_ERROR_MANIFEST, with Python's line.
Manifest find_manifest(const std::string& artifact, const std::function<std::unique_ptr<Manifest>()>& embedded);

// Read a file whole; throws SPECDET_ERROR_IO.
std::string read_file(const std::string& path);

bool file_exists(const std::string& path);

}  // namespace specdet
