// CPU emulation build of common/common.cu (see emulation.h): the same source, compiled as C++.
#include "../common/common.cu"
