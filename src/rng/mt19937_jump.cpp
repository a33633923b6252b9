// Jump-ahead for at::mt19937 (see include/lazyinit/rng/mt19937_jump.h for
// the method).
//
// Representations:
// - The state as the Horner loop sees it: a window of 624 words x[k..k+623]
//   of the untempered sequence, of which only the top bit of x[k] matters
//   for what follows (next_state() reads x[k] only through UMASK). The low
//   31 bits of the first word may hold anything; XOR and the transition are
//   linear and never move those bits into the meaningful ones, so the
//   19937-bit state they stand for is exact. A final ordinary next_state()
//   turns such a window into a whole block.
// - Polynomials of degree < 19937 in kWords 64-bit words; products of two
//   in kWideWords.
#include <lazyinit/rng/mt19937_jump.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <list>
#include <mutex>
#include <utility>

namespace lazyinit {
namespace {

constexpr int kN = at::MERSENNE_STATE_N;
constexpr int kM = at::MERSENNE_STATE_M;
constexpr int kWords = (kMt19937Degree + 63) / 64;  // 312: a reduced polynomial

// The word that x[k + 624] is: twist of x[k] (top bit) and x[k + 1].
inline uint32_t twist(uint32_t u, uint32_t v) {
  const uint32_t mixed = (u & at::UMASK) | (v & at::LMASK);
  return (mixed >> 1) ^ ((v & 1) ? at::MATRIX_A : 0u);
}

inline bool coefficient(const Gf2Poly& a, int64_t i) {
  return (a[i >> 6] >> (i & 63)) & 1;
}

// 64 bits of `a` from bit `pos` on; `a` must have a word past pos / 64.
inline uint64_t bits_at(const std::vector<uint64_t>& a, int64_t pos) {
  const int64_t w = pos >> 6;
  const int s = static_cast<int>(pos & 63);
  // `(x << 1) << (63 - s)` is `x << (64 - s)` without the undefined shift by 64.
  return (a[w] >> s) | ((a[w + 1] << 1) << (63 - s));
}

// dst ^= src * x^shift, growing dst as needed.
void xor_shifted(Gf2Poly& dst, const Gf2Poly& src, int64_t shift) {
  const int64_t words = shift >> 6;
  const int s = static_cast<int>(shift & 63);
  const size_t need = src.size() + static_cast<size_t>(words) + 1;
  if (dst.size() < need) {
    dst.resize(need, 0);
  }
  for (size_t i = 0; i < src.size(); ++i) {
    dst[i + words] ^= src[i] << s;
    dst[i + words + 1] ^= (src[i] >> 1) >> (63 - s);
  }
  while (dst.size() > 1 && dst.back() == 0) {
    dst.pop_back();  // the loops over a polynomial's words stay at its degree
  }
}

// Interleaves the 32 bits of x with zeros: bit i goes to bit 2i. Squaring
// in GF(2)[x] is exactly this, since cross terms cancel in pairs.
inline uint64_t spread(uint32_t x) {
  uint64_t v = x;
  v = (v | (v << 16)) & 0x0000FFFF0000FFFFull;
  v = (v | (v << 8)) & 0x00FF00FF00FF00FFull;
  v = (v | (v << 4)) & 0x0F0F0F0F0F0F0F0Full;
  v = (v | (v << 2)) & 0x3333333333333333ull;
  v = (v | (v << 1)) & 0x5555555555555555ull;
  return v;
}

// Reduction modulo p(x) = x^d + r(x). x^d = r(x), so a bit at position
// q >= d is replaced by r's terms shifted by q - d. p has 135 terms and
// deg r = 19314 (623 below d), so a word's image lands at least 9 words
// below it: the high part is taken kBand words at a time from the top, each
// band XORed once per term of r, and nothing a band writes falls into
// itself. A term's shift modulo 64 is the same for every word, which makes
// each XOR a plain shifted word loop, of a length fixed at compile time
// (unrolled; a runtime length, or a chain of XORs into the same word from
// one iteration to the next, measured twice as slow).
constexpr int kBand = 9;
constexpr int kFirstHigh = kWords;  // the first word wholly at or above x^d
constexpr int kHighBands = (2 * kWords - kFirstHigh + kBand - 1) / kBand;
// A product of two reduced polynomials, padded to whole bands.
constexpr int kWideWords = kFirstHigh + kHighBands * kBand;

struct Modulus {
  struct Term {
    int word;   // floor((e - d) / 64), e the term's exponent
    int shift;  // (e - d) mod 64
    int exponent;
  };
  Gf2Poly p;                // kWords words
  std::vector<Term> terms;  // those of r(x)

  explicit Modulus(const Gf2Poly& poly) : p(poly) {
    TORCH_INTERNAL_ASSERT(static_cast<int>(p.size()) == kWords);
    int deg_r = -1;
    for (int e = 0; e < kMt19937Degree; ++e) {
      if (coefficient(p, e)) {
        const int biased = e - kMt19937Degree + 64 * kWords;  // > 0: floor by division
        terms.push_back(Term{biased / 64 - kWords, biased % 64, e});
        deg_r = e;
      }
    }
    TORCH_INTERNAL_ASSERT(
        kMt19937Degree - deg_r >= 64 * kBand,
        "mt19937 jump: p(x) has a term too close to its degree (", deg_r, ")");
  }

  // a (kWideWords words, degree < 2d - 1) mod p, in its first kWords words.
  void reduce(uint64_t* a) const {
    for (int lo = kWideWords - kBand; lo >= kFirstHigh; lo -= kBand) {
      // The band with a zero word either side, copied out: each output
      // word is then one read-modify-write made of two input words (no
      // chain through memory from one word to the next), and the compiler
      // knows the XORs never write the input.
      uint64_t src[kBand + 2] = {};
      std::copy(a + lo, a + lo + kBand, src + 1);
      for (const Term& t : terms) {
        uint64_t* dst = a + lo + t.word;
        const int s = t.shift;
        for (int j = 0; j <= kBand; ++j) {
          dst[j] ^= (src[j + 1] << s) | ((src[j] >> 1) >> (63 - s));
        }
      }
    }
    // The top bits of the word holding x^d.
    constexpr int partial = kMt19937Degree / 64;
    constexpr int offset = kMt19937Degree % 64;
    if (offset != 0) {
      const uint64_t v = a[partial] >> offset;
      a[partial] &= (uint64_t{1} << offset) - 1;
      for (const Term& t : terms) {
        const int w = t.exponent >> 6;
        const int s = t.exponent & 63;
        a[w] ^= v << s;
        a[w + 1] ^= (v >> 1) >> (63 - s);
      }
    }
  }
};

const Modulus& modulus() {
  static const Modulus m(mt19937_charpoly());  // thread-safe first use
  return m;
}

// a *= x (mod p), in place.
void mul_x_mod(Gf2Poly& a, const Modulus& m) {
  for (int i = kWords - 1; i > 0; --i) {
    a[i] = (a[i] << 1) | (a[i - 1] >> 63);
  }
  a[0] <<= 1;
  if (coefficient(a, kMt19937Degree)) {
    for (int i = 0; i < kWords; ++i) {
      a[i] ^= m.p[i];  // clears x^d too
    }
  }
}

Gf2Poly compute_charpoly() {
  // One bit (the lowest) of consecutive untempered words is a linear
  // recurrence sequence of T; as p is irreducible its minimal polynomial is
  // p itself, which 2 * 19937 bits determine.
  Mt19937Words s = at::mt19937(5489).data().state_;
  std::vector<uint8_t> bits;
  bits.reserve(2 * kMt19937Degree + kN);
  while (bits.size() < 2 * static_cast<size_t>(kMt19937Degree)) {
    mt19937_twist(s);
    for (uint32_t w : s) {
      bits.push_back(w & 1);
    }
  }
  Gf2Poly p = gf2_berlekamp_massey(bits);
  TORCH_INTERNAL_ASSERT(
      gf2_degree(p) == kMt19937Degree, "mt19937 jump: linear complexity ", gf2_degree(p),
      ", expected 19937");
  TORCH_INTERNAL_ASSERT(p[0] & 1, "mt19937 jump: p(0) = 0, T would not be invertible");
  p.resize(kWords);
  return p;
}

// Coefficients i .. i + count - 1 of `a` as an integer (count <= 32).
inline uint32_t coefficients(const Gf2Poly& a, int i, int count) {
  const size_t w = static_cast<size_t>(i) >> 6;
  const int s = i & 63;
  uint64_t v = a[w] >> s;
  if (w + 1 < a.size()) {
    v |= (a[w + 1] << 1) << (63 - s);
  }
  return static_cast<uint32_t>(v & ((uint64_t{1} << count) - 1));
}

inline void xor_window(uint32_t* __restrict__ acc, const uint32_t* __restrict__ add) {
  for (int j = 0; j < kN; ++j) {
    acc[j] ^= add[j];
  }
}

// Coefficients of g(x) taken kGroup at a time in Horner's rule (Haramoto et
// al.'s sliding window): acc = T^kGroup acc + h(T) s, h(x) the group's
// polynomial, with h(T) s for every h of degree < kGroup tabulated first.
// That is 2^kGroup + d / kGroup state XORs instead of about d / 2 (one per
// nonzero coefficient): 0.3 ms instead of 0.7 ms. Groups of 4 to 7 measured
// alike; 5 keeps the table at 80 KB.
constexpr int kGroup = 5;

// g(T) applied to `s`. The window of 624 words slides along a buffer that
// holds the whole run of words, so a step of T writes one word and adding
// a state is one contiguous loop.
Mt19937Words apply_poly(const Gf2Poly& g, const Mt19937Words& s) {
  const int deg = gf2_degree(g);
  TORCH_INTERNAL_ASSERT(deg >= 0, "mt19937 jump: x^n mod p is never 0");
  // T^i s is the window at i of s's run of words, for i < kGroup.
  std::vector<uint32_t> run(kN + kGroup);
  std::copy(s.begin(), s.end(), run.begin());
  for (int i = 0; i < kGroup; ++i) {
    run[i + kN] = run[i + kM] ^ twist(run[i], run[i + 1]);
  }
  std::vector<uint32_t> table(static_cast<size_t>(kN) << kGroup, 0);
  for (uint32_t h = 1; h < (1u << kGroup); ++h) {
    uint32_t* entry = table.data() + static_cast<size_t>(h) * kN;
    const uint32_t rest = h & (h - 1);
    std::copy_n(table.data() + static_cast<size_t>(rest) * kN, kN, entry);
    xor_window(entry, run.data() + __builtin_ctz(h));
  }
  const int groups = deg / kGroup + 1;
  std::vector<uint32_t> buf(kN + static_cast<size_t>(groups - 1) * kGroup);
  const uint32_t top = coefficients(g, (groups - 1) * kGroup, kGroup);
  std::copy_n(table.data() + static_cast<size_t>(top) * kN, kN, buf.begin());
  uint32_t* x = buf.data();
  for (int k = groups - 2; k >= 0; --k) {
    for (int i = 0; i < kGroup; ++i, ++x) {
      x[kN] = x[kM] ^ twist(x[0], x[1]);
    }
    const uint32_t h = coefficients(g, k * kGroup, kGroup);
    if (h != 0) {
      xor_window(x, table.data() + static_cast<size_t>(h) * kN);
    }
  }
  Mt19937Words out;
  std::copy(x, x + kN, out.begin());
  return out;
}

// x^steps mod p for recently used step counts. Equal skips recur: a model's
// identical layers give the same draw counts node after node, and so do the
// seeks to one rank's piece of them; a hit leaves only the Horner part.
Gf2Poly jump_poly(uint64_t steps) {
  constexpr size_t kCached = 16;
  static std::mutex mutex;
  static std::list<std::pair<uint64_t, Gf2Poly>> recent;  // most recent first
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = recent.begin(); it != recent.end(); ++it) {
      if (it->first == steps) {
        recent.splice(recent.begin(), recent, it);
        return it->second;
      }
    }
  }
  Gf2Poly g = mt19937_x_pow_mod(steps);
  std::lock_guard<std::mutex> lock(mutex);
  recent.emplace_front(steps, g);
  if (recent.size() > kCached) {
    recent.pop_back();
  }
  return g;
}

// The threshold of kAuto (set_mt19937_jump_twists).
std::atomic<int64_t> g_jump_twists{kMt19937JumpTwists};

}  // namespace

void mt19937_twist(Mt19937Words& state) {
  for (int i = 0; i < kN - kM; ++i) {
    state[i] = state[i + kM] ^ twist(state[i], state[i + 1]);
  }
  for (int i = kN - kM; i < kN - 1; ++i) {
    state[i] = state[i + kM - kN] ^ twist(state[i], state[i + 1]);
  }
  state[kN - 1] = state[kM - 1] ^ twist(state[kN - 1], state[0]);
}

int gf2_degree(const Gf2Poly& a) {
  for (int64_t w = static_cast<int64_t>(a.size()) - 1; w >= 0; --w) {
    if (a[w] != 0) {
      return static_cast<int>(w * 64 + 63 - __builtin_clzll(a[w]));
    }
  }
  return -1;
}

Gf2Poly gf2_berlekamp_massey(const std::vector<uint8_t>& bits) {
  const int64_t n = static_cast<int64_t>(bits.size());
  // The sequence reversed, so that s[i], s[i-1], ..., s[i-L] (what the
  // connection polynomial's coefficients 0..L meet) is one run of bits
  // from n - 1 - i on, read a word at a time. Padded for bits_at.
  std::vector<uint64_t> rev(2 * (n / 64) + 8, 0);
  for (int64_t j = 0; j < n; ++j) {
    if (bits[n - 1 - j]) {
      rev[j >> 6] |= uint64_t{1} << (j & 63);
    }
  }
  Gf2Poly c{1};  // connection polynomial: s[i] = sum_{k=1..L} c_k s[i-k]
  Gf2Poly b{1};  // c before the last length change
  Gf2Poly t;
  int64_t length = 0;
  int64_t gap = 1;  // steps since b was saved
  for (int64_t i = 0; i < n; ++i) {
    const int64_t start = n - 1 - i;
    uint64_t acc = 0;
    for (size_t w = 0; w < c.size(); ++w) {
      acc ^= c[w] & bits_at(rev, start + 64 * static_cast<int64_t>(w));
    }
    if (__builtin_parityll(acc) == 0) {
      ++gap;
    } else if (2 * length <= i) {
      t.assign(c.begin(), c.end());
      xor_shifted(c, b, gap);
      length = i + 1 - length;
      b.swap(t);
      gap = 1;
    } else {
      xor_shifted(c, b, gap);
      ++gap;
    }
  }
  // The characteristic polynomial is c reversed over its length.
  Gf2Poly p(length / 64 + 1, 0);
  for (int64_t k = 0; k <= length; ++k) {
    if (k / 64 < static_cast<int64_t>(c.size()) && coefficient(c, k)) {
      p[(length - k) >> 6] |= uint64_t{1} << ((length - k) & 63);
    }
  }
  return p;
}

const Gf2Poly& mt19937_charpoly() {
  static const Gf2Poly p = compute_charpoly();  // thread-safe first use
  return p;
}

Gf2Poly mt19937_square_mod(const Gf2Poly& a) {
  TORCH_CHECK(
      static_cast<int>(a.size()) == kWords, "mt19937_square_mod: expected ", kWords, " words, got ",
      a.size());
  const Modulus& m = modulus();
  std::vector<uint64_t> wide(kWideWords, 0);
  for (int i = 0; i < kWords; ++i) {
    wide[2 * i] = spread(static_cast<uint32_t>(a[i]));
    wide[2 * i + 1] = spread(static_cast<uint32_t>(a[i] >> 32));
  }
  m.reduce(wide.data());
  wide.resize(kWords);
  return wide;
}

Gf2Poly mt19937_x_pow_mod(uint64_t n) {
  const Modulus& m = modulus();
  // Left to right: the leading bits of n while they stay below d give the
  // starting monomial directly, then one squaring per remaining bit.
  int i = 63;
  while (i >= 0 && ((n >> i) & 1) == 0) {
    --i;
  }
  uint64_t head = 0;
  while (i >= 0 && ((head << 1) | ((n >> i) & 1)) < kMt19937Degree) {
    head = (head << 1) | ((n >> i) & 1);
    --i;
  }
  Gf2Poly g(kWords, 0);
  g[head >> 6] = uint64_t{1} << (head & 63);
  for (; i >= 0; --i) {
    g = mt19937_square_mod(g);
    if ((n >> i) & 1) {
      mul_x_mod(g, m);
    }
  }
  return g;
}

void mt19937_twist_ahead_jump(Mt19937Words& state, int64_t twists) {
  TORCH_CHECK(twists >= 0, "mt19937 jump: negative count ", twists);
  if (twists == 0) {
    return;
  }
  // Jump the 19937-bit state by 624 * (twists - 1) words, then one real
  // next_state() makes the whole block (first word included) from it.
  const uint64_t steps = static_cast<uint64_t>(twists - 1) * kN;
  if (steps > 0) {
    state = apply_poly(jump_poly(steps), state);
  }
  mt19937_twist(state);
}

int64_t mt19937_jump_twists() {
  return g_jump_twists.load(std::memory_order_relaxed);
}

void set_mt19937_jump_twists(int64_t twists) {
  TORCH_CHECK(twists >= 1, "set_mt19937_jump_twists: expected >= 1, got ", twists);
  g_jump_twists.store(twists, std::memory_order_relaxed);
}

void mt19937_twist_ahead(Mt19937Words& state, int64_t twists) {
  if (twists >= mt19937_jump_twists()) {
    mt19937_twist_ahead_jump(state, twists);
    return;
  }
  for (int64_t i = 0; i < twists; ++i) {
    mt19937_twist(state);
  }
}

void mt19937_discard(at::mt19937& engine, int64_t n, Mt19937Skip how) {
  TORCH_CHECK(n >= 0, "mt19937_discard: negative count ", n);
  at::mt19937_data_pod d = engine.data();
  TORCH_CHECK(
      d.left_ >= 1 && d.left_ <= kN && d.next_ <= static_cast<uint32_t>(kN),
      "mt19937_discard: engine state out of range (left_ ", d.left_, ", next_ ", d.next_, ")");
  // operator() is `if (--left_ == 0) next_state(); y = state_[next_++]`:
  // left_ - 1 draws come from the current block, then each draw that
  // brings left_ to 0 regenerates the block and restarts at next_ = 0.
  const int64_t in_block = d.left_ - 1;
  if (n <= in_block) {
    d.left_ -= static_cast<int>(n);
    d.next_ += static_cast<uint32_t>(n);
    engine.set_data(d);
    return;
  }
  const int64_t rest = n - in_block;  // the first of these regenerates
  const int64_t twists = (rest - 1) / kN + 1;
  const int64_t drawn = rest - (twists - 1) * kN;  // from the last block, 1..624
  switch (how) {
    case Mt19937Skip::kStep:
      for (int64_t i = 0; i < twists; ++i) {
        mt19937_twist(d.state_);
      }
      break;
    case Mt19937Skip::kJump:
      mt19937_twist_ahead_jump(d.state_, twists);
      break;
    case Mt19937Skip::kAuto:
      mt19937_twist_ahead(d.state_, twists);
      break;
  }
  d.left_ = kN + 1 - static_cast<int>(drawn);
  d.next_ = static_cast<uint32_t>(drawn);
  engine.set_data(d);
}

}  // namespace lazyinit
