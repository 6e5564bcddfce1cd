#include "manifest.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

#include "error.hpp"
#include "limits.hpp"

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

// specdet.manifest.finite_normalisation: every pixel x in [0, 1] normalises to a finite float32
// (x - mean) / std. The map is monotone, so its ends bound it; a std of 1e-40 (0 or a denormal in
// float32) or a mean of 1e38 would otherwise score NaN.
bool finite_normalisation(const json& mean, const json& std) {
  for (int c = 0; c < 3; ++c) {
    const float m = static_cast<float>(mean[c].get<double>()), s = static_cast<float>(std[c].get<double>());
    if (!std::isfinite(m) || !std::isfinite(s) || s == 0.0f || !std::isfinite((0.0f - m) / s) ||
        !std::isfinite((1.0f - m) / s))
      return false;
  }
  return true;
}

// JSON as specdet.manifest reads it: at most limits::kMaxJsonDepth levels and kMaxJsonValues values
// (json_problem), counted while parsing, so a manifest nested 100,000 deep is refused before it is
// built; a number beyond double (1e400, which Python reads as inf and refuses) is an error too.
json parse_json(const std::string& text, const std::string& source) {
  int64_t values = 0;
  const json::parser_callback_t bounded = [&](int depth, json::parse_event_t event, json&) {
    const bool value = event == json::parse_event_t::object_start || event == json::parse_event_t::array_start ||
                       event == json::parse_event_t::value;
    if (value && depth + 1 > limits::kMaxJsonDepth)
      invalid(source, "it nests more than " + std::to_string(limits::kMaxJsonDepth) + " levels deep");
    if (value && ++values > limits::kMaxJsonValues)
      invalid(source, "it holds more than " + std::to_string(limits::kMaxJsonValues) + " values");
    return true;
  };
  try {
    return json::parse(text, bounded);
  } catch (const json::exception& err) {  // parse_error, and out_of_range for a number overflow
    invalid(source, std::string("not valid JSON (") + err.what() + ")");
  }
}

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
  if (!p.contains("crop") || !positive_int(p["crop"]) || p["crop"].get<int64_t>() > limits::kMaxInputSize)
    problems.push_back("crop must be a whole number from 1 to " + std::to_string(limits::kMaxInputSize));
  if (p.contains("resize") && !p["resize"].is_null() && !positive_int(p["resize"]))
    problems.push_back("resize must be a positive integer or null");
  bool numbers = true;
  for (const char* key : {"mean", "std"}) {
    const bool ok = p.contains(key) && p[key].is_array() && p[key].size() == 3 &&
                    std::all_of(p[key].begin(), p[key].end(), [](const json& v) { return v.is_number(); });
    if (!ok) problems.push_back(std::string(key) + " must list 3 numbers");
    numbers &= ok;
  }
  if (numbers && !finite_normalisation(p["mean"], p["std"]))
    problems.push_back("mean and std must give finite float32 pixels: (x - mean) / std for x from 0 to 1, with std not 0");
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
  out.resize = p.contains("resize") && !p["resize"].is_null() ? p["resize"].get<int64_t>() : 0;
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
  json data = parse_json(text, source);
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
  if (!data["architecture"].is_string() || data["architecture"].get<std::string>().empty())
    invalid(source, "architecture must be a non-empty string, not " + data["architecture"].dump());
  m.architecture = data["architecture"].get<std::string>();
  if (data.contains("precision")) {
    const json& precision = data["precision"];
    if (precision != "fp32" && precision != "fp16" && precision != "int8")
      invalid(source, "precision must be one of fp32, fp16, int8, not " + precision.dump());
    m.precision = precision.get<std::string>();
  }
  m.preprocessing = parse_preprocessing(data["preprocessing"], source);
  // specdet.limits.is_probability: a threshold of 5 or -1 would call every image real, or every one fake.
  const json& threshold = data["threshold"];
  if (!threshold.is_number() || !(threshold.get<double>() >= 0.0 && threshold.get<double>() <= 1.0))
    invalid(source, "threshold must be a number from 0 to 1, not " + threshold.dump());
  m.threshold = threshold.get<double>();

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
  // Smaller batches are padded up to min: a min beyond the largest batch specdet runs would pad each
  // call to gigabytes. (The Python runtime never pads, so it has no such rule.)
  if (batch["min"].get<int64_t>() > limits::kMaxBatch)
    invalid(source, "batch.min " + batch["min"].dump() + " is above the largest batch, " +
                        std::to_string(limits::kMaxBatch));
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
  // Opened without blocking and checked on the open descriptor, as runtime/preprocess.py's
  // _check_regular_file does by path: a FIFO would block the open (and the read) forever, a device
  // such as /dev/zero never ends. Same reasons, same words.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    struct stat st;
    if (error == ENOENT)
      fail(SPECDET_ERROR_IO, path + ": " + (::lstat(path.c_str(), &st) == 0 ? "a broken link" : "no such file"));
    if (error == EISDIR) fail(SPECDET_ERROR_IO, path + ": a folder, not a file");
    fail(SPECDET_ERROR_IO, path + ": cannot read it (" + std::strerror(error) + ")");
  }
  std::string text;
  struct stat st;
  int error = ::fstat(fd, &st) == 0 ? 0 : errno;
  const char* kind = error ? nullptr : S_ISDIR(st.st_mode) ? "a folder, not a file"
                                      : !S_ISREG(st.st_mode) ? "not a regular file (a FIFO, socket or device): only files are read"
                                                             : nullptr;
  if (!error && !kind) {
    try {
      text.resize(static_cast<size_t>(st.st_size));
      size_t done = 0;
      for (;;) {  // to the end, which may have moved since fstat
        if (done == text.size()) text.resize(done + 65536);
        const ssize_t n = ::read(fd, &text[done], text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          error = errno;
          break;
        }
        if (n == 0) break;
        done += static_cast<size_t>(n);
      }
      text.resize(done);
    } catch (...) {
      ::close(fd);
      throw;
    }
  }
  ::close(fd);
  if (kind) fail(SPECDET_ERROR_IO, path + ": " + kind);
  if (error) fail(SPECDET_ERROR_IO, path + ": cannot read it (" + std::strerror(error) + ")");
  return text;
}

}  // namespace specdet
