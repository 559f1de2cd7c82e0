/* Both precisions of scan_pairs.c and of the training GRU's step (gru_cell.c), and the token screen's probe pass
   (token_probe.c), in one shared library. */
#include <math.h>
/* glibc's vector maths (libmvec) declares its SIMD variants only under -ffast-math's __FAST_MATH__, which this build
   does not use (see FLAGS in __init__.py), so declare the two variants the loops need here. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__FAST_MATH__) && !defined(SCAN_NO_MVEC)
__attribute__((__simd__("notinbranch"))) float expf(float);
__attribute__((__simd__("notinbranch"))) double exp(double);
/* tanh's vector variants came with glibc 2.35 (gru_cell.c; scalar calls before that) */
#if defined(__GLIBC__) && defined(__GLIBC_PREREQ)
#if __GLIBC_PREREQ(2, 35)
__attribute__((__simd__("notinbranch"))) float tanhf(float);
__attribute__((__simd__("notinbranch"))) double tanh(double);
#endif
#endif
#endif
/* IEEE float16 (GCC 12+ and Clang on x86-64 and AArch64; widened with the CPU's conversion instructions where
   -march=native has them, F16C on x86): the half-row entry point exists only where the compiler has the type */
#if defined(__FLT16_MAX__)
#define HALF_T _Float16
#define HALF_ROWS
#else
#define HALF_T unsigned short
#endif
#define T float
#define IT int
#define SUFFIX f32
#define EXP expf
#define TANH tanhf
#define SQRT sqrtf
#define LOG logf
#include "scan_pairs.c"
#include "gru_cell.c"
#undef HALF_ROWS
#undef T
#undef IT
#undef SUFFIX
#undef EXP
#undef TANH
#undef SQRT
#undef LOG
#define T double
#define IT long long
#define SUFFIX f64
#define EXP exp
#define TANH tanh
#define SQRT sqrt
#define LOG log
#include "scan_pairs.c"
#include "gru_cell.c"
#include "token_probe.c"
