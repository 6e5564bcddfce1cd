// CPU emulation build of band_split/band_split.cu (see emulation.h): the same source, compiled as C++.
#include "../band_split/band_split.cu"
