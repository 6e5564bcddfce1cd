/*
 * The entry points TensorRT looks for in a plugin library
 * (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, detect-build --plugins):
 * getCreators lists the creators of every specdet op, setLoggerFinder hands
 * over TensorRT's logger.
 */
#include "trt_plugin_common.h"

#include <mutex>

namespace specdet {
namespace trt {

nvinfer1::IPluginCreatorV3One* band_split_creator();
nvinfer1::IPluginCreatorV3One* spectrum_magnitude_mean_creator();

namespace {

std::mutex logger_mutex;
nvinfer1::ILoggerFinder* logger_finder = nullptr;

} // namespace

void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept {
    try {
        std::lock_guard<std::mutex> lock(logger_mutex);
        nvinfer1::ILogger* logger = logger_finder ? logger_finder->findLogger() : nullptr;
        if (logger != nullptr) {
            logger->log(severity, ("[specdet] " + message).c_str());
        }
    } catch (...) {
    }
}

} // namespace trt
} // namespace specdet

extern "C" {

SPECDET_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    std::lock_guard<std::mutex> lock(specdet::trt::logger_mutex);
    if (specdet::trt::logger_finder == nullptr && finder != nullptr) {
        specdet::trt::logger_finder = finder;
    }
}

SPECDET_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static nvinfer1::IPluginCreatorInterface* const creators[] = {
        specdet::trt::band_split_creator(),
        specdet::trt::spectrum_magnitude_mean_creator(),
    };
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

} // extern "C"
