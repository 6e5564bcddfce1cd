// specdet-score ARTIFACT PATH... [--json|--csv] [--threads N] [--batch-size N]
//
// The C++ twin of detect-predict: the same files (folders searched recursively for the same
// suffixes, in the same order), the same output, the same limits, the same exit codes (1 when files
// were skipped, 2 on a usage or loading error, each one line; 3 for a bug). N worker threads score
// batches with one shared detector.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "../src/limits.hpp"
#include "output.hpp"
#include "specdet/specdet.hpp"

namespace fs = std::filesystem;
using specdet_score::Row;

namespace {

constexpr int kExitSkipped = 1, kExitUserError = 2, kExitInternalError = 3;
namespace limits = specdet::limits;
// specdet.images.IMAGE_SUFFIXES: a folder yields the same files as for detect-predict, and those this
// runtime cannot decode are reported as skipped, not silently left out.
const char* const kSuffixes[] = {".avif", ".bmp", ".dib", ".gif", ".ico", ".j2k", ".jfif", ".jp2", ".jpe", ".jpeg",
                                 ".jpg", ".pbm", ".pgm", ".png", ".pnm", ".ppm", ".tga", ".tif", ".tiff", ".webp"};

struct Args {
  std::string artifact;
  std::vector<std::string> paths;
  std::string form = "table";
  int threads = 1;
  int batch_size = 8;
  int64_t intra_op_threads = -1;  // -1: 1 with several workers, else ONNX Runtime's default
  std::string onnxruntime_library;
  int64_t max_pixels = limits::kMaxPixels, min_side = 1;
};

const char* kUsage =
    "usage: specdet-score ARTIFACT PATH... [--json | --csv] [--threads N] [--batch-size N]\n"
    "                     [--intra-op-threads N] [--onnxruntime-library PATH] [--max-pixels N] [--min-side N]\n";

// One line, as the Python commands' (specdet.cli.ArgumentParser).
[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "specdet-score: error: %s (see specdet-score --help)\n", message.c_str());
  std::exit(kExitUserError);
}

// specdet.cli.int_range: a whole number from low to high, in its words.
int64_t integer(const std::string& flag, const char* text, int64_t low, int64_t high) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (!*text || *end) usage_error("argument " + flag + ": '" + text + "' is not a whole number");
  if (errno == ERANGE || value < low || value > high)
    usage_error("argument " + flag + ": " + text + " is out of range: give a whole number from " +
                std::to_string(low) + " to " + std::to_string(high));
  return value;
}

Args parse(int argc, char** argv) {
  Args args;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage_error("argument " + a + ": expected one argument");
      return argv[++i];
    };
    if (a == "--json" || a == "--csv") {
      if (args.form != "table") usage_error("argument " + a + ": not allowed with --json/--csv");
      args.form = a.substr(2);
    } else if (a == "--threads") args.threads = static_cast<int>(integer(a, value(), 1, limits::kMaxThreads));
    else if (a == "--batch-size") args.batch_size = static_cast<int>(integer(a, value(), 1, limits::kMaxBatch));
    else if (a == "--intra-op-threads") args.intra_op_threads = integer(a, value(), 0, limits::kMaxThreads);
    else if (a == "--onnxruntime-library") args.onnxruntime_library = value();
    else if (a == "--max-pixels") args.max_pixels = integer(a, value(), 1, limits::kMaxPixelsCeiling);
    else if (a == "--min-side") args.min_side = integer(a, value(), 1, INT32_MAX);
    else if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a.size() > 1 && a[0] == '-') usage_error("unrecognized arguments: " + a);
    else positional.push_back(a);
  }
  if (positional.size() < 2) usage_error("the following arguments are required: artifact, paths");
  args.artifact = positional[0];
  args.paths.assign(positional.begin() + 1, positional.end());
  return args;
}

// pathlib's spelling of a path: no empty or "." components, no trailing slash.
std::string pure_path(const std::string& path) {
  std::string out;
  const bool absolute = !path.empty() && path[0] == '/';
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    const std::string part = path.substr(start, end - start);
    if (!part.empty() && part != ".") out += (out.empty() ? "" : "/") + part;
    start = end + 1;
  }
  if (absolute) out = "/" + out;
  return out.empty() ? "." : out;
}

bool is_image(const fs::path& path) {
  std::string suffix = path.extension().string();
  std::transform(suffix.begin(), suffix.end(), suffix.begin(), [](unsigned char c) { return std::tolower(c); });
  return std::find(std::begin(kSuffixes), std::end(kSuffixes), suffix) != std::end(kSuffixes);
}

// specdet.images.collect_images: files as given, folders expanded to their images sorted by path.
// As pathlib's rglob, links to folders are not followed (a link loop would never end) and unreadable
// folders are passed over; anything named like an image that is not a folder is kept, a FIFO or a
// broken link included, so that scoring reports it instead of dropping it without a word.
std::vector<std::string> collect(const std::vector<std::string>& paths) {
  std::vector<std::string> files;
  for (const std::string& given : paths) {
    const std::string path = pure_path(given);
    std::error_code error;
    if (fs::is_directory(path, error)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(path, fs::directory_options::skip_permission_denied, error);
           it != fs::recursive_directory_iterator(); it.increment(error)) {
        if (error) break;
        std::error_code ignored;  // is_directory follows links; one that cannot be followed is no folder
        if (is_image(it->path()) && !fs::is_directory(it->path(), ignored))
          found.push_back(pure_path(it->path().string()));
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(path);
    }
  }
  return files;
}

struct Outcome {
  bool ok = false;
  float probability = 0;
  bool fake = false;
  std::string error;
};

// The library's reason a file cannot be read ("PATH: no such file"), without the path the skipped
// line already shows; a folder given by name is "not an image", in runtime/preprocess.py's words.
std::string file_error(const std::string& path, const std::string& message) {
  std::string reason = message.rfind(path + ": ", 0) == 0 ? message.substr(path.size() + 2) : message;
  return reason == "a folder, not a file" ? "a folder, not an image" : reason;
}

void score_batches(const specdet::Detector& detector, const std::vector<std::string>& files, int batch_size,
                   std::atomic<size_t>& next, std::vector<Outcome>& outcomes) {
  for (;;) {
    const size_t start = next.fetch_add(static_cast<size_t>(batch_size));
    if (start >= files.size()) return;
    const size_t end = std::min(files.size(), start + static_cast<size_t>(batch_size));
    std::vector<specdet::Image> images;
    std::vector<size_t> index;
    for (size_t i = start; i < end; ++i) {
      try {
        images.push_back(specdet::Image::file(files[i]));
        index.push_back(i);
      } catch (const specdet::Error& err) {
        outcomes[i].error = file_error(files[i], err.what());
      }
    }
    const std::vector<specdet::Score> scores = detector.score(specdet::View<const specdet::Image>(images));
    for (size_t k = 0; k < scores.size(); ++k) {
      Outcome& o = outcomes[index[k]];
      o.ok = scores[k].ok();
      o.probability = scores[k].probability;
      o.fake = scores[k].fake;
      o.error = scores[k].message;
    }
  }
}

int run(const Args& args) {
  const std::vector<std::string> files = collect(args.paths);
  try {
    if (files.empty()) {
      std::string shown, suffixes;
      for (const auto& p : args.paths) shown += (shown.empty() ? "" : ", ") + pure_path(p);
      for (const char* suffix : kSuffixes) suffixes += (suffixes.empty() ? "" : ", ") + std::string(suffix);
      throw specdet::Error(SPECDET_ERROR_INVALID_ARGUMENT,
                           "no images found in " + shown + ": give image files or folders holding " + suffixes);
    }
    specdet::Options options;
    if (!args.onnxruntime_library.empty()) options.set("onnxruntime_library", args.onnxruntime_library);
    // Several workers each run inference: one ONNX Runtime thread apiece keeps the cores from being
    // oversubscribed, unless asked otherwise.
    const int64_t intra = args.intra_op_threads >= 0 ? args.intra_op_threads : args.threads > 1 ? 1 : 0;
    options.set("intra_op_threads", intra);
    options.set("max_pixels", args.max_pixels);
    options.set("min_side", args.min_side);
    const specdet::Detector detector(args.artifact, options);
    // As the Python Detector, a batch never exceeds the artifact's largest batch.
    const int batch_size = static_cast<int>(std::min<int64_t>(args.batch_size, detector.get_int("max_batch")));

    std::vector<Outcome> outcomes(files.size());
    std::atomic<size_t> next{0};
    std::vector<std::thread> workers;
    std::vector<std::string> failures(static_cast<size_t>(args.threads));
    for (int t = 0; t < args.threads; ++t)
      workers.emplace_back([&, t] {
        try {
          score_batches(detector, files, batch_size, next, outcomes);
        } catch (const std::exception& err) {
          failures[static_cast<size_t>(t)] = err.what();
          next = files.size();  // stop the others: inference itself failed
        } catch (...) {
          failures[static_cast<size_t>(t)] = "unknown exception";
          next = files.size();
        }
      });
    for (auto& w : workers) w.join();
    for (const auto& f : failures)
      if (!f.empty()) throw specdet::Error(SPECDET_ERROR_BACKEND, f);

    std::vector<Row> rows;
    for (size_t i = 0; i < files.size(); ++i) {
      if (outcomes[i].ok) rows.push_back({files[i], outcomes[i].probability, outcomes[i].fake});
      else std::fprintf(stderr, "skipped %s: %s\n", files[i].c_str(), outcomes[i].error.c_str());
    }
    if (args.form == "json") specdet_score::write_json(rows, stdout);
    else if (args.form == "csv") specdet_score::write_csv(rows, stdout);
    else specdet_score::write_table(rows, stdout);
    return rows.size() < files.size() ? kExitSkipped : 0;
  } catch (const specdet::Error& err) {
    if (err.status() == SPECDET_ERROR_INTERNAL) throw;
    std::fprintf(stderr, "specdet-score: error: %s\n", err.what());
    return kExitUserError;
  }
}

}  // namespace

// No exception leaves main (std::terminate would abort with a core and no useful line): bad input is
// exit 2 inside run, anything else is a bug, exit 3 with one line, as the Python commands do.
int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "specdet-score: error: out of memory: score fewer or smaller images at once\n");
    return kExitUserError;
  } catch (const std::exception& err) {
    std::fprintf(stderr, "specdet-score: internal error: %s: please report it\n", err.what());
  } catch (...) {
    std::fprintf(stderr, "specdet-score: internal error: unknown exception: please report it\n");
  }
  return kExitInternalError;
}
