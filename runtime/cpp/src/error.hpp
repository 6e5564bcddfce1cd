// One exception type inside the library; the C ABI turns it into a status code and a message.
#pragma once

#include <stdexcept>
#include <string>

#include "specdet/specdet.h"

namespace specdet {

class Error : public std::runtime_error {
 public:
  Error(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  int status() const noexcept { return status_; }

 private:
  int status_;
};

[[noreturn]] inline void fail(int status, const std::string& message) { throw Error(status, message); }

}  // namespace specdet
