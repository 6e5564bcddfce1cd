// detect-predict's three output forms (specdet/runtime/cli.py), byte for byte: Python's json.dump
// with indent=2 and float repr, csv.writer with %.6f, and the aligned table.
#pragma once

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace specdet_score {

struct Row {
  std::string path;
  float probability;
  bool fake;
};

// Python's repr(float) of the float32 value widened to double: shortest round-trip digits,
// scientific notation when the exponent is below -4 or at least 16.
inline std::string python_repr(double value) {
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::scientific);
  std::string sci(buffer, result.ptr);  // d[.ddd]e[+-]XX
  const auto e = sci.find('e');
  std::string digits = sci.substr(0, e);
  int exponent = 0;  // from_chars: no exception (std::stoi's would abort the tool), and none is possible here
  std::from_chars(sci.data() + e + 1 + (sci[e + 1] == '+'), sci.data() + sci.size(), exponent);
  bool negative = false;
  if (digits[0] == '-') {
    negative = true;
    digits.erase(0, 1);
  }
  if (digits.size() > 1) digits.erase(1, 1);  // drop the point: the significant digits
  std::string out;
  if (exponent < -4 || exponent >= 16) {
    out = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    char exp[8];
    std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', exponent < 0 ? -exponent : exponent);
    out += exp;
  } else if (exponent < 0) {
    out = "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  } else if (static_cast<int>(digits.size()) <= exponent + 1) {
    out = digits + std::string(static_cast<size_t>(exponent + 1 - static_cast<int>(digits.size())), '0') + ".0";
  } else {
    out = digits.substr(0, static_cast<size_t>(exponent + 1)) + "." + digits.substr(static_cast<size_t>(exponent + 1));
  }
  return negative ? "-" + out : out;
}

// json.dumps of a str with ensure_ascii=True.
inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  char buffer[16];
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    uint32_t code = c;
    size_t length = 1;
    if (c >= 0x80) {  // decode UTF-8; an invalid byte is shown as itself (Python would use surrogates)
      length = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
      if (i + length > s.size()) length = 1;
      code = length == 1 ? c : c & (0x7F >> length);
      for (size_t k = 1; k < length; ++k) code = code << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    }
    i += length;
    switch (code) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
    }
    if (code >= 0x20 && code <= 0x7F) {
      out += static_cast<char>(code);
    } else if (code >= 0x10000) {
      code -= 0x10000;
      std::snprintf(buffer, sizeof buffer, "\\u%04x\\u%04x", 0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF));
      out += buffer;
    } else {
      std::snprintf(buffer, sizeof buffer, "\\u%04x", code);
      out += buffer;
    }
  }
  return out + "\"";
}

inline std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

inline size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

inline void write_json(const std::vector<Row>& rows, FILE* out) {
  if (rows.empty()) {
    std::fputs("[]\n", out);
    return;
  }
  std::fputs("[\n", out);
  for (size_t i = 0; i < rows.size(); ++i) {
    std::fprintf(out, "  {\n    \"path\": %s,\n    \"probability\": %s,\n    \"label\": \"%s\"\n  }%s\n",
                 json_string(rows[i].path).c_str(), python_repr(rows[i].probability).c_str(),
                 rows[i].fake ? "fake" : "real", i + 1 < rows.size() ? "," : "");
  }
  std::fputs("]\n", out);
}

inline void write_csv(const std::vector<Row>& rows, FILE* out) {
  std::fputs("path,probability,label\n", out);
  for (const Row& r : rows)
    std::fprintf(out, "%s,%.6f,%s\n", csv_field(r.path).c_str(), static_cast<double>(r.probability),
                 r.fake ? "fake" : "real");
}

inline void write_table(const std::vector<Row>& rows, FILE* out) {
  size_t width = 4;
  for (const Row& r : rows) width = std::max(width, code_points(r.path));
  std::fprintf(out, "path%s  probability  label\n", std::string(width - 4, ' ').c_str());
  for (const Row& r : rows)
    std::fprintf(out, "%s%s  %11.6f  %s\n", r.path.c_str(), std::string(width - code_points(r.path), ' ').c_str(),
                 static_cast<double>(r.probability), r.fake ? "fake" : "real");
}

}  // namespace specdet_score
