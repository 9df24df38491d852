/* One source for the CPU and CUDA (solvergen/runtime/native.py puts this file first).
 *
 * The kernel source is C99 that is also C++ (NVRTC compiles C++ only). Three ways to compile it:
 *   - the CPU (native.py's `library_path`): the system C compiler; the batch entry points
 *     `solve_batch` and `solve_batch_from` loop over instances (OpenMP across cores);
 *   - CUDA (`cuda_kernels`): NVRTC through torch; the per-instance functions become __device__
 *     functions, the tables __constant__ memory, and the kernels `solve_batch_kernel` and
 *     `solve_batch_from_kernel` run one instance per thread;
 *   - SG_EMULATE_CUDA (tests): the CUDA kernels compiled for the CPU by a C++ compiler, launched
 *     by `emulate_launch` over every (block, thread) in turn, so that their indexing and
 *     arguments are tested where no GPU is.
 * SG_FN marks the per-instance functions, SG_TABLE the constant tables and SG_EXPORT the entry
 * points (C linkage also where the source is compiled as C++).
 */
#ifdef __cplusplus
#define SG_EXPORT extern "C"
#else
#define SG_EXPORT
#endif
#define SG_RESTRICT __restrict__ /* (gcc, clang and NVRTC; C99's restrict is not C++) */
#if defined(__CUDACC_RTC__)
#define SG_CUDA 1
#define SG_FN static __device__
#define SG_TABLE static __constant__ const
/* NVRTC has no C library headers: the types and constants the kernels use. The math functions
 * (sqrt, fabs, pow, isfinite, ...) and memcpy / memset are built into device code. */
typedef unsigned char uint8_t;
typedef long long int64_t;
#define DBL_EPSILON 2.2204460492503131e-16
#define DBL_MIN 2.2250738585072014e-308
#define DBL_MAX 1.7976931348623157e+308
#define INFINITY __longlong_as_double(0x7ff0000000000000ULL)
#define NAN __longlong_as_double(0x7ff8000000000000ULL)
#else
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(SG_EMULATE_CUDA)
#define SG_CUDA 1
#define __global__
#define __device__
struct sg_dim3 { unsigned x, y, z; };
static sg_dim3 threadIdx, blockIdx, blockDim;
#endif
#define SG_FN static
#define SG_TABLE static const
#endif
