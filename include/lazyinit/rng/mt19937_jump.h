// Jump-ahead for PyTorch's CPU generator (at::mt19937): the engine as n
// calls of operator() would leave it, in time logarithmic in n.
//
// MT19937 is F2-linear: the sequence of untempered words obeys
// x[k+624] = x[k+397] ^ twist(x[k], x[k+1]), and its state (the top bit of
// x[k] and x[k+1..k+623], 19937 bits) moves by a linear map T whose
// characteristic polynomial p(x) has degree 19937. By Cayley-Hamilton,
// T^N = g(T) with g(x) = x^N mod p(x), so N steps cost the computation of g
// (square-and-multiply in GF(2)[x]) plus one evaluation of g(T) on the state
// (Horner: one step of T and, per nonzero coefficient, one XOR of the
// state). Haramoto, Matsumoto, Nishimura, Panneton, L'Ecuyer, "Efficient
// Jump Ahead for F2-Linear Random Number Generators", INFORMS J. Computing
// 20(3), 2008.
#pragma once

#include <ATen/core/MT19937RNGEngine.h>

#include <array>
#include <cstdint>
#include <vector>

namespace lazyinit {

// A polynomial over GF(2): bit i % 64 of word i / 64 is the coefficient of x^i.
using Gf2Poly = std::vector<uint64_t>;

// Degree of p(x): the dimension of MT19937's state space (32 * 624 - 31).
constexpr int kMt19937Degree = 19937;

using Mt19937Words = std::array<uint32_t, at::MERSENNE_STATE_N>;

// One next_state() of the engine: the 624 words of the next block.
void mt19937_twist(Mt19937Words& state);

// The shortest linear recurrence generating `bits` (Berlekamp-Massey over
// GF(2)), as its characteristic polynomial (degree = linear complexity,
// leading coefficient 1). Needs at least twice the complexity in bits.
Gf2Poly gf2_berlekamp_massey(const std::vector<uint8_t>& bits);

// Degree of `a` (-1 for the zero polynomial).
int gf2_degree(const Gf2Poly& a);

// The characteristic polynomial of MT19937's one-word transition T,
// computed at first use (Berlekamp-Massey on one bit of the untempered
// words; about 20 ms) and cached for the process.
const Gf2Poly& mt19937_charpoly();

// a(x)^2 mod p(x) and x^n mod p(x), p = mt19937_charpoly(), for `a` of
// degree < 19937 (the representation used throughout: 312 words).
Gf2Poly mt19937_square_mod(const Gf2Poly& a);
Gf2Poly mt19937_x_pow_mod(uint64_t n);

// The 624 words as `twists` calls of next_state() would leave them.
// Stepping below mt19937_jump_twists(), a jump from it on.
void mt19937_twist_ahead(Mt19937Words& state, int64_t twists);

// Same, by the jump whatever the count (tests and benchmarks). About 0.3 ms
// plus 30 us per bit of the count above 14 bits (one squaring modulo p each),
// the latter skipped for a count among the last 16 jumped.
void mt19937_twist_ahead_jump(Mt19937Words& state, int64_t twists);

enum class Mt19937Skip { kAuto, kStep, kJump };

// `engine` as n calls of operator() would leave it (state words, left_ and
// next_ included; seed_ untouched). kStep twists block by block (O(n), the
// former discard loop), kJump uses the jump for every whole block crossed,
// kAuto picks by mt19937_jump_twists().
void mt19937_discard(at::mt19937& engine, int64_t n, Mt19937Skip how = Mt19937Skip::kAuto);

// Number of next_state() calls (624 outputs each) from which the jump is
// used. Measured on the development machine (2-core x86-64 VM, gcc 12 -O2):
// a twist costs about 0.3 us; a jump of this size about 0.5 ms, of which
// 0.25 ms is x^N mod p (skipped when N was among the last 16 jumps) and 0.3
// ms the Horner evaluation. The break-even is 1000 to 2000 twists.
constexpr int64_t kMt19937JumpTwists = 2048;

// The threshold kAuto uses: kMt19937JumpTwists unless set (process-wide).
// Benchmarks set INT64_MAX to time the stepping path end to end.
int64_t mt19937_jump_twists();
void set_mt19937_jump_twists(int64_t twists);

}  // namespace lazyinit
