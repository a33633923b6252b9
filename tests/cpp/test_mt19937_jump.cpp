// The mt19937 jump-ahead (src/rng/mt19937_jump.cpp) against the engine's
// own operator(): every comparison is of the full engine state (words,
// left_, next_, seed_) and of the outputs drawn after it.
//
// Seeds chosen at test time are printed; LAZYINIT_JUMP_SEED=<n> repeats a run.
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <lazyinit/rng/mt19937_jump.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <random>
#include <thread>
#include <vector>

namespace lazyinit {
namespace {

uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("LAZYINIT_JUMP_SEED");
    const uint64_t s = env ? std::strtoull(env, nullptr, 10)
                           : (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
    std::cout << "[mt19937 jump] random seed " << s << " (LAZYINIT_JUMP_SEED=" << s
              << " repeats it)" << std::endl;
    return s;
  }();
  return seed;
}

std::string describe(const at::mt19937_data_pod& d) {
  return "left_ " + std::to_string(d.left_) + " next_ " + std::to_string(d.next_);
}

// Same pod, and the same next outputs.
void expect_same(at::mt19937 a, at::mt19937 b, const std::string& what) {
  const at::mt19937_data_pod x = a.data();
  const at::mt19937_data_pod y = b.data();
  ASSERT_EQ(x.seed_, y.seed_) << what;
  ASSERT_EQ(x.seeded_, y.seeded_) << what;
  ASSERT_EQ(x.left_, y.left_) << what << ": " << describe(x) << " vs " << describe(y);
  ASSERT_EQ(x.next_, y.next_) << what << ": " << describe(x) << " vs " << describe(y);
  ASSERT_TRUE(x.state_ == y.state_) << what;
  for (int i = 0; i < 1300; ++i) {  // across two regenerations
    ASSERT_EQ(a(), b()) << what << ", output " << i << " after";
  }
}

void draw(at::mt19937& e, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    e();
  }
}

// Starting engines: fresh from a seed (left_ = 1, next_ = 0), part way into
// a block, at a block's end, and 624 arbitrary words (torch.set_rng_state
// accepts any).
std::vector<std::pair<std::string, at::mt19937>> starts(std::mt19937_64& rng) {
  std::vector<std::pair<std::string, at::mt19937>> out;
  const uint64_t seed = rng() & 0xffffffff;
  for (int64_t k : {0, 1, 2, 311, 622, 623, 624, 625, 1248, 5000}) {
    at::mt19937 e(seed);
    draw(e, k);
    out.emplace_back("seed " + std::to_string(seed) + " +" + std::to_string(k), e);
  }
  at::mt19937 e(seed);
  at::mt19937_data_pod d = e.data();
  for (auto& w : d.state_) {
    w = static_cast<uint32_t>(rng());
  }
  for (int next : {0, 1, 400, 623, 624}) {
    d.next_ = next;
    d.left_ = next == 0 ? 1 : at::MERSENNE_STATE_N + 1 - next;
    e.set_data(d);
    out.emplace_back("random words, next_ " + std::to_string(next), e);
  }
  return out;
}

TEST(Mt19937Jump, MatchesDrawsAtBoundaries) {
  std::mt19937_64 rng(test_seed());
  const int64_t n_ = at::MERSENNE_STATE_N;
  std::vector<int64_t> counts = {
      0,      1,          2,      n_ - 2,      n_ - 1,  n_,          n_ + 1,    2 * n_ - 1,
      2 * n_, 2 * n_ + 1, 3 * n_, 10 * n_ - 1, 10 * n_, 10 * n_ + 1, 1000 * n_, 1000 * n_ + 313};
  for (int i = 0; i < 4; ++i) {
    counts.push_back(static_cast<int64_t>(rng() % 3000000));
  }
  for (const auto& start : starts(rng)) {
    for (int64_t n : counts) {
      at::mt19937 drawn = start.second;
      draw(drawn, n);
      for (auto how : {Mt19937Skip::kJump, Mt19937Skip::kStep, Mt19937Skip::kAuto}) {
        at::mt19937 skipped = start.second;
        mt19937_discard(skipped, n, how);
        expect_same(
            drawn, skipped,
            start.first + ", n " + std::to_string(n) + ", method " +
                std::to_string(static_cast<int>(how)));
      }
    }
  }
}

// Up to where drawing is still quick: 3e8 draws, past kMt19937JumpTwists.
TEST(Mt19937Jump, MatchesDrawsFarAhead) {
  std::mt19937_64 rng(test_seed() + 1);
  at::mt19937 start(rng() & 0xffffffff);
  draw(start, static_cast<int64_t>(rng() % 624));
  at::mt19937 drawn = start;
  int64_t done = 0;
  for (int64_t n : {int64_t{1} << 20, int64_t{10000000}, int64_t{300000000} + 7}) {
    draw(drawn, n - done);
    done = n;
    at::mt19937 jumped = start;
    mt19937_discard(jumped, n, Mt19937Skip::kJump);
    expect_same(drawn, jumped, "n " + std::to_string(n));
  }
}

// Beyond 2^32 outputs (no 32-bit count anywhere) against the block loop,
// and at 2^40 + 12345 against jumps composed in other ways: two jumps of
// other sizes, and a jump short by a million followed by real draws.
TEST(Mt19937Jump, LargeCounts) {
  std::mt19937_64 rng(test_seed() + 2);
  at::mt19937 start(rng() & 0xffffffff);
  draw(start, static_cast<int64_t>(rng() % 624));

  const int64_t beyond32 = (int64_t{1} << 32) + 12345;
  at::mt19937 stepped = start;
  at::mt19937 jumped = start;
  mt19937_discard(stepped, beyond32, Mt19937Skip::kStep);
  mt19937_discard(jumped, beyond32, Mt19937Skip::kJump);
  expect_same(stepped, jumped, "2^32 + 12345");

  const int64_t n = (int64_t{1} << 40) + 12345;
  at::mt19937 whole = start;
  mt19937_discard(whole, n, Mt19937Skip::kJump);
  for (int i = 0; i < 3; ++i) {
    const int64_t first = static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
    at::mt19937 split = start;
    mt19937_discard(split, first, Mt19937Skip::kJump);
    mt19937_discard(split, n - first, Mt19937Skip::kJump);
    expect_same(whole, split, "2^40 + 12345 as " + std::to_string(first) + " + rest");
  }
  at::mt19937 tail = start;
  mt19937_discard(tail, n - 1000000, Mt19937Skip::kJump);
  draw(tail, 1000000);
  expect_same(whole, tail, "2^40 + 12345 as a jump and 10^6 draws");
}

// Bit `bit` of the untempered words x[0], x[1], ... after one regeneration.
std::vector<uint8_t> word_bits(uint32_t seed, int bit, size_t count) {
  Mt19937Words s = at::mt19937(seed).data().state_;
  std::vector<uint8_t> bits;
  while (bits.size() < count) {
    mt19937_twist(s);
    for (uint32_t w : s) {
      bits.push_back((w >> bit) & 1);
    }
  }
  bits.resize(count);
  return bits;
}

TEST(Mt19937Jump, CharacteristicPolynomial) {
  std::mt19937_64 rng(test_seed() + 3);
  const Gf2Poly& p = mt19937_charpoly();
  ASSERT_EQ(gf2_degree(p), kMt19937Degree);
  ASSERT_TRUE(p[0] & 1);
  std::vector<int> terms;
  for (int i = 0; i <= kMt19937Degree; ++i) {
    if ((p[i / 64] >> (i % 64)) & 1) {
      terms.push_back(i);
    }
  }
  std::cout << "[mt19937 jump] p(x) has " << terms.size() << " terms" << std::endl;

  // Recomputed by Berlekamp-Massey from another seed and another bit.
  const uint32_t seed = static_cast<uint32_t>(rng());
  const int bit = 1 + static_cast<int>(rng() % 31);
  std::cout << "[mt19937 jump] recomputing p from seed " << seed << ", bit " << bit << std::endl;
  Gf2Poly again = gf2_berlekamp_massey(word_bits(seed, bit, 2 * kMt19937Degree));
  again.resize(p.size(), 0);
  ASSERT_TRUE(again == p);

  // Directly: sum_j p_j x[k + j] = 0 for every bit of the words, at many k.
  const uint32_t other = static_cast<uint32_t>(rng());
  std::vector<uint32_t> words;
  Mt19937Words s = at::mt19937(other).data().state_;
  while (words.size() < kMt19937Degree + 3000) {
    mt19937_twist(s);
    words.insert(words.end(), s.begin(), s.end());
  }
  for (size_t k = 0; k + kMt19937Degree < words.size(); k += 7) {
    uint32_t sum = 0;
    for (int j : terms) {
      sum ^= words[k + j];
    }
    ASSERT_EQ(sum, 0u) << "seed " << other << ", k " << k;
  }
}

// x^n mod p by square-and-multiply against n multiplications by x, done
// here bit by bit from p's coefficients.
TEST(Mt19937Jump, PowerMatchesRepeatedShift) {
  const Gf2Poly& p = mt19937_charpoly();
  const int d = kMt19937Degree;
  const int words = static_cast<int>(p.size());
  Gf2Poly a(words, 0);
  a[0] = 1;
  const std::vector<int64_t> checks = {0,         1,         63,    64,        d - 1, d,    d + 1,
                                       2 * d - 2, 2 * d - 1, 2 * d, 3 * d + 5, 65536, 98765};
  int64_t done = 0;
  for (int64_t n : checks) {
    for (; done < n; ++done) {
      for (int i = words - 1; i > 0; --i) {
        a[i] = (a[i] << 1) | (a[i - 1] >> 63);
      }
      a[0] <<= 1;
      if ((a[d / 64] >> (d % 64)) & 1) {
        for (int i = 0; i < words; ++i) {
          a[i] ^= p[i];
        }
      }
    }
    ASSERT_TRUE(mt19937_x_pow_mod(static_cast<uint64_t>(n)) == a) << "x^" << n;
  }
}

// 2^19937 - 1 is prime, so p irreducible <=> x^(2^19937) = x mod p: then T
// has order 2^19937 - 1, the full period, as MT19937's must.
TEST(Mt19937Jump, PolynomialIsIrreducible) {
  Gf2Poly g = mt19937_x_pow_mod(2);
  for (int i = 1; i < kMt19937Degree; ++i) {
    g = mt19937_square_mod(g);
  }
  EXPECT_TRUE(g == mt19937_x_pow_mod(1));
}

TEST(Mt19937Jump, ConcurrentJumps) {
  std::mt19937_64 rng(test_seed() + 4);
  const at::mt19937 start(rng() & 0xffffffff);
  std::vector<int64_t> counts;
  for (int i = 0; i < 4; ++i) {
    counts.push_back(static_cast<int64_t>(rng() >> 20));
  }
  std::vector<at::mt19937> serial(counts.size(), start);
  for (size_t i = 0; i < counts.size(); ++i) {
    mt19937_discard(serial[i], counts[i], Mt19937Skip::kJump);
  }
  std::vector<at::mt19937> parallel(counts.size(), start);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < counts.size(); ++i) {
    threads.emplace_back([&, i] { mt19937_discard(parallel[i], counts[i], Mt19937Skip::kJump); });
  }
  for (auto& t : threads) {
    t.join();
  }
  for (size_t i = 0; i < counts.size(); ++i) {
    expect_same(serial[i], parallel[i], "thread " + std::to_string(i));
  }
}

// kAuto under any threshold, the defaults restored after.
TEST(Mt19937Jump, ThresholdSetting) {
  const int64_t n = 5 * int64_t{at::MERSENNE_STATE_N} + 17;
  at::mt19937 drawn(11);
  draw(drawn, n);
  for (int64_t twists : {int64_t{1}, int64_t{6}, int64_t{7}, std::numeric_limits<int64_t>::max()}) {
    set_mt19937_jump_twists(twists);
    at::mt19937 skipped(11);
    mt19937_discard(skipped, n);
    expect_same(drawn, skipped, "threshold " + std::to_string(twists));
  }
  set_mt19937_jump_twists(kMt19937JumpTwists);
  EXPECT_EQ(mt19937_jump_twists(), kMt19937JumpTwists);
  EXPECT_THROW(set_mt19937_jump_twists(0), c10::Error);
}

TEST(Mt19937Jump, RejectsBadInput) {
  at::mt19937 e(1);
  EXPECT_THROW(mt19937_discard(e, -1), c10::Error);
  at::mt19937_data_pod d = e.data();
  d.left_ = 0;
  e.set_data(d);
  EXPECT_THROW(mt19937_discard(e, 5), c10::Error);
}

}  // namespace
}  // namespace lazyinit
