#include "manifest.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "error.hpp"

namespace specdet {
namespace {

using json = nlohmann::json;

constexpr const char* kFormat = "specdet-manifest";
constexpr int kVersion = 1;
const char* const kRequired[] = {"format", "version", "artifact", "architecture", "preprocessing",
                                 "threshold", "inputs", "outputs", "batch"};

[[noreturn]] void invalid(const std::string& source, const std::string& what) {
  fail(SPECDET_ERROR_MANIFEST, "manifest " + source + ": " + what + ": re-export the artifact with detect-export");
}

bool positive_int(const json& v) { return v.is_number_integer() && v.get<int64_t>() > 0; }

// The folder with its trailing slash, and the last path component.
std::string folder_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

std::string name_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

Preprocessing parse_preprocessing(const json& p, const std::string& source) {
  std::vector<std::string> problems;
  Preprocessing out;
  if (!p.is_object()) invalid(source, "preprocessing is not an object");
  if (!p.contains("crop") || !positive_int(p["crop"])) problems.push_back("crop must be a positive integer");
  if (p.contains("resize") && !p["resize"].is_null() && !positive_int(p["resize"]))
    problems.push_back("resize must be a positive integer or null");
  for (const char* key : {"mean", "std"}) {
    const bool ok = p.contains(key) && p[key].is_array() && p[key].size() == 3 &&
                    std::all_of(p[key].begin(), p[key].end(), [](const json& v) { return v.is_number(); });
    if (!ok) problems.push_back(std::string(key) + " must list 3 numbers");
  }
  if (problems.empty())
    for (int c = 0; c < 3; ++c)
      if (p["std"][c].get<double>() == 0) problems.push_back("std must not be 0");
  if (p.contains("pad_small") && !p["pad_small"].is_boolean()) problems.push_back("pad_small must be true or false");
  const std::string interpolation = p.value("interpolation", json()).is_string() ? p["interpolation"].get<std::string>() : "";
  if (interpolation != "bicubic" && interpolation != "bilinear")
    problems.push_back("interpolation must be one of bicubic, bilinear");
  if (!problems.empty()) {
    std::string joined;
    for (const auto& s : problems) joined += (joined.empty() ? "" : "; ") + s;
    invalid(source, "invalid preprocessing (" + joined + ")");
  }
  out.crop = p["crop"].get<int>();
  out.resize = p.contains("resize") && !p["resize"].is_null() ? p["resize"].get<int>() : 0;
  // numpy builds float32 arrays from the Python floats: the same rounding as this cast.
  for (int c = 0; c < 3; ++c) {
    out.mean[c] = static_cast<float>(p["mean"][c].get<double>());
    out.std[c] = static_cast<float>(p["std"][c].get<double>());
  }
  out.filter = interpolation == "bicubic" ? Filter::Bicubic : Filter::Bilinear;
  out.pad_small = p.contains("pad_small") && p["pad_small"].get<bool>();
  return out;
}

}  // namespace

Manifest parse_manifest(const std::string& text, const std::string& source) {
  json data;
  try {
    data = json::parse(text);
  } catch (const json::parse_error& err) {
    invalid(source, std::string("not valid JSON (") + err.what() + ")");
  }
  if (!data.is_object() || data.value("format", json()) != json(kFormat)) invalid(source, "not a specdet manifest");
  if (data["version"] != json(kVersion))
    fail(SPECDET_ERROR_MANIFEST, "manifest " + source + " is version " + data["version"].dump() +
                                     "; this runtime reads version 1: upgrade specdet or re-export the artifact");
  std::string missing;
  for (const char* key : kRequired)
    if (!data.contains(key)) missing += (missing.empty() ? "" : ", ") + std::string(key);
  if (!missing.empty()) invalid(source, "lacks " + missing);

  Manifest m;
  m.text = text;
  m.source = source;
  if (!data["architecture"].is_string()) invalid(source, "architecture is not a string");
  m.architecture = data["architecture"].get<std::string>();
  if (data.contains("precision")) {
    if (!data["precision"].is_string()) invalid(source, "precision is not a string");
    m.precision = data["precision"].get<std::string>();
  }
  m.preprocessing = parse_preprocessing(data["preprocessing"], source);
  if (!data["threshold"].is_number()) invalid(source, "threshold is not a number");
  m.threshold = data["threshold"].get<double>();

  const json& inputs = data["inputs"];
  if (!inputs.is_array() || inputs.size() != 1 || !inputs[0].is_object()) invalid(source, "inputs must list exactly one tensor");
  const json& input = inputs[0];
  if (!input.contains("name") || !input["name"].is_string()) invalid(source, "the input has no name");
  m.input_name = input["name"].get<std::string>();
  m.input_dtype = input.value("dtype", json()).is_string() ? input["dtype"].get<std::string>() : "";
  if (m.input_dtype != "float32" && m.input_dtype != "float16")
    invalid(source, "input dtype must be float32 or float16, not " + input.value("dtype", json()).dump());
  const json& shape = input.value("shape", json());
  const int crop = m.preprocessing.crop;
  if (!shape.is_array() || shape.size() != 4 || shape[1] != json(3) || shape[2] != json(crop) || shape[3] != json(crop))
    fail(SPECDET_ERROR_MANIFEST, "manifest " + source + ": input shape " + shape.dump() + " is not [batch, 3, " +
                                     std::to_string(crop) + ", " + std::to_string(crop) +
                                     "] as its preprocessing crops: re-export it");

  const json& outputs = data["outputs"];
  bool logit = false, probability = false;
  if (outputs.is_array())
    for (const json& o : outputs) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) continue;
      logit |= o["name"] == "logit";
      probability |= o["name"] == "probability";
    }
  if (!logit || !probability) invalid(source, "outputs must include logit and probability");

  const json& batch = data["batch"];
  if (!batch.is_object() || !positive_int(batch.value("min", json())) || !positive_int(batch.value("max", json())) ||
      batch["min"].get<int64_t>() > batch["max"].get<int64_t>())
    invalid(source, "batch must be {min, max} with 1 <= min <= max");
  m.min_batch = batch["min"].get<int64_t>();
  m.max_batch = batch["max"].get<int64_t>();
  return m;
}

std::string lower_suffix(const std::string& path) {
  const std::string name = name_of(path);
  const auto dot = name.find_last_of('.');
  return dot == std::string::npos || dot == 0 || dot + 1 == name.size() ? "" : lower(name.substr(dot));
}

bool is_engine(const std::string& path) {
  const std::string suffix = lower_suffix(path);
  return suffix == ".engine" || suffix == ".plan";
}

Manifest find_manifest(const std::string& artifact, const std::function<std::unique_ptr<Manifest>()>& embedded) {
  const std::string name = name_of(artifact);
  if (is_engine(artifact)) {
    const std::string sidecar = artifact + ".json";
    if (!file_exists(sidecar))
      fail(SPECDET_ERROR_MANIFEST, "no manifest " + name_of(sidecar) + " beside " + name + ": rebuild it with detect-build");
    return parse_manifest(read_file(sidecar), sidecar);
  }
  if (embedded)
    if (std::unique_ptr<Manifest> inside = embedded()) return std::move(*inside);
  // Older exports kept it as <stem>.json (pathlib's with_suffix: "model.onnx" -> "model.json").
  const std::string stem = name.substr(0, lower_suffix(name).empty() ? name.size() : name.find_last_of('.'));
  const std::string legacy = folder_of(artifact) + stem + ".json";
  if (!file_exists(legacy))
    fail(SPECDET_ERROR_MANIFEST, name + " carries no specdet manifest (ONNX metadata " + kMetadataKey +
                                     ") and has no " + name_of(legacy) + " beside it: re-export it with detect-export");
  return parse_manifest(read_file(legacy), legacy);
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_file(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) fail(SPECDET_ERROR_IO, path + ": a folder, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(SPECDET_ERROR_IO, path + ": " + (errno == ENOENT ? "no such file" : std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail(SPECDET_ERROR_IO, path + ": read error");
  return text.str();
}

}  // namespace specdet
