// CPU emulation build of spectrum_magnitude_mean/spectrum_magnitude_mean.cu (see emulation.h): the same source, compiled as C++.
#include "../spectrum_magnitude_mean/spectrum_magnitude_mean.cu"
